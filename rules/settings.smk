# Each job's settings: the part of the config that one job reads, as a file that the job's rule has as input and
# passes to its `depthcontrast` verb (--settings). It changes only when what the job reads changes, so Snakemake
# reruns exactly the jobs an edit of the config affects (e.g. a run's export_targets rerun no pretraining).


rule settings:
    output:
        settings="results/settings/{stage}/{item}.yaml",
    params:
        settings=job_settings,  # a change of it rewrites the file
    log:
        "results/logs/settings/{stage}/{item}.log",
    localrule: True
    threads: 1
    conda:
        "../envs/data.yaml"
    container:
        cpu_container()
    script:
        "../workflow_scripts/settings.py"
