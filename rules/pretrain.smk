# Stage 3: DepthContrast pretraining of each run under `pretrain:` (GPU when present, else CPU).
# The trainer always resumes from results/pretrain/{run}/resume/last.pth when a previous attempt
# left one with the same settings (after pre-emption, a time limit or a crash).
# Slurm resources come from the run's `resources:` block; with more than one task the trainer starts
# them with srun inside the allocation (locally it trains as one process).


rule pretrain:
    input:
        indexes=pretrain_shard_indexes,
    output:
        last="results/pretrain/{run}/last.pth",
        metrics="results/pretrain/{run}/metrics.csv",
        config="results/pretrain/{run}/config.yaml",
    params:
        run_json=lambda wildcards: shell_quoted_json(training_settings(wildcards)),
        shards=lambda wildcards, input: " ".join(os.path.dirname(path) for path in input.indexes),
        out=lambda wildcards: f"results/pretrain/{wildcards.run}",
        tasks=task_layout,
    log:
        "results/logs/pretrain/{run}.log",
    benchmark:
        "results/benchmarks/pretrain/{run}.tsv"
    threads: lambda wildcards: config["pretrain"][wildcards.run]["resources"]["cpus_per_task"]
    resources:
        **pretrain_job_resources(),
    conda:
        "../envs/data.yaml"
    shell:
        # exec: the trainer takes the shell's place, so Slurm's SIGTERM reaches it with nothing in between
        "exec depthcontrast pretrain {wildcards.run} --run-json {params.run_json} --shards {params.shards}"
        " --out {params.out} --resume {params.tasks} --gpus-per-task {resources.gpus_per_task}"
        " --cpus-per-task {resources.cpus_per_task} > {log} 2>&1"
