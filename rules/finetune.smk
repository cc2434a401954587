# Stage 5: the built-in downstream evaluation of each run (pretrained vs scratch, linear + finetune).


rule finetune:
    input:
        checkpoint="results/pretrain/{run}/last.pth",
        index=lambda wildcards: f"results/shards/{config['evaluate']['tasks'][wildcards.task]['dataset']}/index.json",
    output:
        metrics="results/finetune/{run}/{task}/metrics.json",
    params:
        task=lambda wildcards: config["evaluate"]["tasks"][wildcards.task],
        settings=lambda wildcards: {k: v for k, v in config["evaluate"].items() if k != "tasks"},
    log:
        "results/logs/finetune/{run}/{task}.log",
    benchmark:
        "results/benchmarks/finetune/{run}/{task}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/finetune.py"
