# Stage 3: DepthContrast pretraining of each run under `pretrain:` (GPU when present, else CPU).
# The trainer always resumes from results/pretrain/{run}/resume/last.pth when a previous attempt
# left one with the same settings (after pre-emption, a time limit or a crash).


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
    log:
        "results/logs/pretrain/{run}.log",
    benchmark:
        "results/benchmarks/pretrain/{run}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=1440,
    conda:
        "../envs/data.yaml"
    shell:
        "depthcontrast pretrain {wildcards.run} --run-json {params.run_json}"
        " --shards {params.shards} --out {params.out} --resume > {log} 2>&1"
