rule fit_probes:
    input:
        unpack(probe_inputs),
    output:
        "results/probes/{model}/{location}/layers{first}-{last}.tsv",
    params:
        code=script_code("fit_probes"),
        probe=config["probe"],
        n_classes=len(config["dataset"]["labels"]),
    log:
        "logs/fit_probes/{model}/{location}/layers{first}-{last}.log",
    benchmark:
        "logs/benchmarks/fit_probes/{model}/{location}/layers{first}-{last}.tsv"
    threads: 1
    resources:
        mem_mb=probe_mem_mb,
        runtime=probe_runtime,
    conda:
        "../envs/probe.yaml"
    script:
        "../scripts/fit_probes.py"


rule fit_appraisal_probes:
    input:
        states=lambda wc: chunk_files(wc.model),
        prompts="results/corpus/prompts.tsv",
    output:
        "results/appraisal/{model}.tsv",
    params:
        code=script_code("fit_appraisal_probes"),
        appraisal=config["appraisal"],
        columns=config["dataset"]["appraisal_columns"],
        # the emotion probes' folds, not their other settings, whose change need not rerun these
        split={key: config["probe"][key] for key in ("folds", "test_size", "seed", "stratify")},
    log:
        "logs/fit_appraisal_probes/{model}.log",
    benchmark:
        "logs/benchmarks/fit_appraisal_probes/{model}.tsv"
    threads: 1
    resources:
        mem_mb=appraisal_mem_mb,
        runtime=lambda wc, attempt: 30 * attempt,
    conda:
        "../envs/probe.yaml"
    script:
        "../scripts/fit_appraisal_probes.py"
