# Stage 3: DepthContrast pretraining of each run under `pretrain:` (GPU when present, else CPU).
# The trainer always resumes from results/pretrain/{run}/resume/last.pth when a previous attempt
# left one with the same settings (after pre-emption, a time limit or a crash).
# Slurm resources come from the run's `resources:` block; with more than one task the trainer starts
# them with srun inside the allocation (locally it trains as one process).


rule pretrain:
    input:
        settings="results/settings/pretrain/{run}.yaml",
        shards=pretrain_shard_indexes,
    output:
        last="results/pretrain/{run}/last.pth",
        metrics="results/pretrain/{run}/metrics.csv",
        config="results/pretrain/{run}/config.yaml",
    log:
        "results/logs/pretrain/{run}.log",
    benchmark:
        "results/benchmarks/pretrain/{run}.tsv"
    threads: lambda wildcards: config["pretrain"][wildcards.run]["resources"]["cpus_per_task"]
    resources:
        **pretrain_job_resources(),
    conda:
        "../envs/data.yaml"
    container:
        pretrain_container
    shell:
        # exec: the trainer takes the shell's place, so Slurm's SIGTERM reaches it with nothing in between
        "exec depthcontrast --log {log} pretrain {wildcards.run} --settings {input.settings} --shards {input.shards}"
        " --out results/pretrain/{wildcards.run} --resume --gpus-per-task {resources.gpus_per_task}"
        " --cpus-per-task {resources.cpus_per_task}"
