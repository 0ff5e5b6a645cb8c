rule aggregate_accuracy:
    input:
        [path for model in MODELS for path in probe_files(model)],
    output:
        table="results/accuracy.tsv",
        text=expand("results/tables/{model}_accuracy_by_layer.txt", model=MODELS),
        config="results/config.yaml",
    params:
        # the complete config, defaults filled in: every seed and setting behind the table
        config=lambda wc: config,
    log:
        "logs/aggregate_accuracy.log",
    benchmark:
        "logs/benchmarks/aggregate_accuracy.tsv"
    resources:
        mem_mb=1024,
        runtime=5,
    conda:
        "../envs/probe.yaml"
    script:
        "../scripts/aggregate_accuracy.py"


rule plot_accuracy:
    input:
        "results/accuracy.tsv",
    output:
        png="results/figures/accuracy_by_layer.png",
        pdf="results/figures/accuracy_by_layer.pdf",
    log:
        "logs/plot_accuracy.log",
    benchmark:
        "logs/benchmarks/plot_accuracy.tsv"
    resources:
        mem_mb=1024,
        runtime=5,
    conda:
        "../envs/plot.yaml"
    script:
        "../scripts/plot_accuracy.py"
