# Stage 5: the built-in downstream evaluation of each run (pretrained vs scratch, linear + finetune).


rule finetune:
    input:
        settings="results/settings/evaluate/{run}/{task}.yaml",
        checkpoint="results/pretrain/{run}/last.pth",
        shards=lambda wildcards: f"results/shards/{config['evaluate']['tasks'][wildcards.task]['dataset']}/index.json",
        train_shards=train_shards_of,
    output:
        metrics="results/finetune/{run}/{task}/metrics.json",
    params:
        train_shards=lambda wildcards, input: f"--train-shards {input.train_shards}" if input.train_shards else "",
    log:
        "results/logs/finetune/{run}/{task}.log",
    benchmark:
        "results/benchmarks/finetune/{run}/{task}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=evaluation_gpu,  # a GPU run's evaluation gets one GPU (Slurm --gpus=1); the evaluation uses it
    conda:
        "../envs/data.yaml"
    container:
        cpu_container()
    shell:
        "depthcontrast --log {log} evaluate --task {wildcards.task} --settings {input.settings}"
        " --checkpoint {input.checkpoint} --shards {input.shards}"
        " {params.train_shards}"
        " --out results/finetune/{wildcards.run}/{wildcards.task}"
