# Stage 6: results/summary.md (terminal) and the plots that `snakemake --report report.html` shows.
# When jobs failed (e.g. one run of a sweep, with --keep-going), the Snakefile's `onerror` hook still
# writes the summary of the finished runs and lists the others.


rule summary:
    input:
        checkpoints=expand("results/pretrain/{run}/last.pth", run=enabled_runs()),
        metrics=finetune_outputs(),
    output:
        summary="results/summary.md",
        downstream=report(
            downstream_plots(),
            caption="../report/downstream.rst",
            category="Downstream",
        ),
        training=report(
            expand("results/report/training_{run}.png", run=enabled_runs()),
            caption="../report/training.rst",
            category="Pretraining",
        ),
    params:
        runs=enabled_runs(),
        evaluations=evaluations(),
    log:
        "results/logs/summary.log",
    benchmark:
        "results/benchmarks/summary.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/data.yaml"
    container:
        cpu_container()
    shell:
        "depthcontrast --log {log} summarize --results results --runs {params.runs} --evaluations {params.evaluations}"
