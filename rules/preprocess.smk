# Stage 2: decode raw files into checked, deterministic HDF5 shards (+ index.json, quarantine.json).


rule preprocess:
    input:
        manifest="results/raw/{dataset}/MANIFEST.json",
    output:
        index="results/shards/{dataset}/index.json",
        quarantine="results/shards/{dataset}/quarantine.json",
    params:
        format=lambda wildcards: dataset_entry(wildcards)["format"],
        preprocess=lambda wildcards: dataset_entry(wildcards)["preprocess"],
    log:
        "results/logs/preprocess/{dataset}.log",
    benchmark:
        "results/benchmarks/preprocess/{dataset}.tsv"
    threads: 8
    resources:
        mem_mb=4000,
        runtime=600,
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/preprocess.py"
