# Stage 1: fetch (http, licensed URLs) or locate (builtin, local, official layouts) the raw files.


rule download:
    output:
        manifest="results/raw/{dataset}/MANIFEST.json",
    params:
        source=lambda wildcards: dataset_entry(wildcards)["source"],
    log:
        "results/logs/download/{dataset}.log",
    benchmark:
        "results/benchmarks/download/{dataset}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=240,
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/download.py"
