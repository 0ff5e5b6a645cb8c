rule intervene:
    input:
        unpack(intervention_inputs),
    output:
        plan.INTERVENTION,
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
        code=lambda wc: script_code("run_intervention", experiments.modules(wc.experiment)),
        model=lambda wc: plan.model_identity(config, wc.model),
        labels=plan.labels(config),
        words=plan.answer_words(config),
        forward=plan.forward_settings(config),
        settings=lambda wc: plan.intervention_settings(config, wc.experiment),
        batching=plan.batching(config),
        directions_provenance=lambda wc: plan.directions_provenance(config, wc.model, wc.experiment),
    script:
        "../scripts/run_intervention.py"


rule attend:
    input:
        unpack(sample_inputs),
    output:
        table=f"{plan.ATTENTION}.tsv",
        weights=f"{plan.ATTENTION}.h5",
    log:
        "logs/attend/{model}.log",
    benchmark:
        "logs/benchmarks/attend/{model}.tsv"
    conda:
        "../envs/attention.yaml"
    threads: config["interventions"]["threads"]
    resources:
        mem_mb=lambda wc, attempt: jobs.intervention_mem_mb(config, wc.model, N_TEXTS, attempt),
        runtime=lambda wc, attempt: jobs.forward_runtime(
            config, wc.model, jobs.intervention_texts(config, N_TEXTS), attempt
        ),
    params:
        code=script_code("attend"),
        model=lambda wc: plan.model_identity(config, wc.model),
        forward=plan.forward_settings(config),
        template=lambda wc: plan.template(config),
        settings=plan.attention_settings(config),
        batching=plan.batching(config),
    script:
        "../scripts/attend.py"


rule aggregate_interventions:
    input:
        plan.intervention_files(config),
    output:
        report(plan.INTERVENTIONS, caption="../report/interventions_table.rst", category="Tables"),
    log:
        "logs/aggregate_interventions.log",
    benchmark:
        "logs/benchmarks/aggregate_interventions.tsv"
    localrule: True
    conda:
        "../envs/tables.yaml"
    resources:
        mem_mb=1024,
        runtime=5,
    params:
        code=script_code("aggregate_interventions"),
    script:
        "../scripts/aggregate_interventions.py"
