rule fit_probes:
    input:
        chunk_of_layer,
    output:
        "results/probes/{model}/layer{layer}.tsv",
    params:
        probe=config["probe"],
        n_classes=len(config["dataset"]["labels"]),
    log:
        "logs/fit_probes/{model}/layer{layer}.log",
    benchmark:
        "logs/benchmarks/fit_probes/{model}/layer{layer}.tsv"
    threads: 1
    resources:
        mem_mb=probe_mem_mb,
        runtime=lambda wc, attempt: 30 * attempt,
    conda:
        "../envs/probe.yaml"
    script:
        "../scripts/fit_probes.py"
