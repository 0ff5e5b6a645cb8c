rule intervene:
    input:
        unpack(intervention_inputs),
    output:
        "results/interventions/{model}/{experiment}.tsv",
    log:
        "logs/intervene/{model}/{experiment}.log",
    benchmark:
        "logs/benchmarks/intervene/{model}/{experiment}.tsv"
    conda:
        "../envs/interventions.yaml"
    threads: config["interventions"]["threads"]
    resources:
        mem_mb=lambda wc, attempt: jobs.intervention_mem_mb(config, wc.model, N_TEXTS, attempt),
        runtime=lambda wc, attempt: jobs.intervention_runtime(config, wc.model, wc.experiment, N_TEXTS, attempt),
    params:
        code=script_code("run_intervention"),
        model=lambda wc: model_identity(wc.model),
        labels=config["dataset"]["labels"],
        words=config["answer"]["words"],
        dtype=config["extraction"]["dtype"],
        device=config["extraction"]["device"],
        settings=lambda wc: intervention_settings(wc.experiment),
        # the batches decide the last bits of the logits, as the extraction's do its states
        batching={key: config["interventions"][key] for key in ("batch_tokens", "max_batch_size", "max_padding")},
        directions_provenance=lambda wc: directions_provenance(wc.model, wc.experiment),
    script:
        "../scripts/run_intervention.py"


rule attend:
    input:
        unpack(sample_inputs),
    output:
        table="results/attention/{model}.tsv",
        weights="results/attention/{model}.h5",
    log:
        "logs/attend/{model}.log",
    benchmark:
        "logs/benchmarks/attend/{model}.tsv"
    conda:
        "../envs/interventions.yaml"
    threads: config["interventions"]["threads"]
    resources:
        mem_mb=lambda wc, attempt: jobs.intervention_mem_mb(config, wc.model, N_TEXTS, attempt),
        runtime=lambda wc, attempt: 15 * attempt,
    params:
        code=script_code("attend"),
        model=lambda wc: model_identity(wc.model),
        dtype=config["extraction"]["dtype"],
        device=config["extraction"]["device"],
        template=lambda wc: TEMPLATE,
        settings={**sample_settings(), "attention": config["interventions"]["attention"]},
        batching={key: config["interventions"][key] for key in ("batch_tokens", "max_batch_size", "max_padding")},
    script:
        "../scripts/attend.py"


rule aggregate_interventions:
    input:
        intervention_files(),
    output:
        report("results/interventions.tsv", caption="../report/interventions_table.rst", category="Tables"),
    log:
        "logs/aggregate_interventions.log",
    benchmark:
        "logs/benchmarks/aggregate_interventions.tsv"
    conda:
        "../envs/tables.yaml"
    resources:
        mem_mb=1024,
        runtime=5,
    params:
        code=script_code("aggregate_interventions"),
    script:
        "../scripts/aggregate_interventions.py"
