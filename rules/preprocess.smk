# Stage 2: decode raw files into checked, deterministic HDF5 shards (+ index.json, quarantine.json).


rule preprocess:
    input:
        settings="results/settings/preprocess/{dataset}.yaml",
        manifest="results/raw/{dataset}/MANIFEST.json",
    output:
        index="results/shards/{dataset}/index.json",
        quarantine="results/shards/{dataset}/quarantine.json",
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
    container:
        cpu_container()
    shell:
        "depthcontrast --log {log} preprocess --dataset {wildcards.dataset} --settings {input.settings}"
        " --manifest {input.manifest} --out results/shards/{wildcards.dataset} --workers {threads}"
