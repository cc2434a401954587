# Stage 1: fetch (http, licensed URLs) or locate (builtin, local, official layouts) the raw files.


rule download:
    input:
        settings="results/settings/download/{dataset}.yaml",
    output:
        manifest="results/raw/{dataset}/MANIFEST.json",
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
    container:
        cpu_container()
    shell:
        "depthcontrast --log {log} download --dataset {wildcards.dataset} --settings {input.settings}"
        " --out results/raw/{wildcards.dataset}"
