# Optional: real downstream code bases (VoteNet, OpenPCDet, ...) finetuned on the exported weights,
# through the user's own templated command (config `external:`, every job off unless enabled).


rule external_finetune:
    input:
        settings="results/settings/external/{name}.yaml",
        weights=lambda wildcards: external_weights(wildcards.name),
    output:
        done="results/finetune/external/{name}/done.json",
    log:
        "results/logs/external/{name}.log",
    benchmark:
        "results/benchmarks/external/{name}.tsv"
    threads: 1
    resources:
        mem_mb=16000,
        runtime=2880,
    conda:
        "../envs/data.yaml"
    container:
        cpu_container()
    shell:
        "depthcontrast --log {log} external --job {wildcards.name} --settings {input.settings}"
        " --weights {input.weights} --out results/finetune/external/{wildcards.name}"
