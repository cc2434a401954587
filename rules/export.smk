# Stage 4: write each run's final checkpoint in the layouts downstream code bases load.


rule export:
    input:
        checkpoint="results/pretrain/{run}/last.pth",
    output:
        weights="results/export/{run}/{target}.pth",
        sidecar="results/export/{run}/{target}.json",
    log:
        "results/logs/export/{run}/{target}.log",
    benchmark:
        "results/benchmarks/export/{run}/{target}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/data.yaml"
    container:
        cpu_container()
    shell:
        "depthcontrast --log {log} export {input.checkpoint} --target {wildcards.target}"
        " --out results/export/{wildcards.run}"
