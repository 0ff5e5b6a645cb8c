# What each layer adds beyond a baseline, in bits: conditional probes (emoprobe/conditional.py).


rule embed_words:
    input:
        unpack(model_inputs),
        prompts=plan.PROMPTS,
    output:
        plan.WORDS,
    log:
        "logs/embed_words/{model}.log",
    benchmark:
        "logs/benchmarks/embed_words/{model}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: jobs.extraction_mem_mb(config, wc.model, attempt),
        runtime=lambda wc, attempt: jobs.fixed_runtime("embed_words", attempt),
    params:
        code=script_code("embed_words"),
        model=lambda wc: plan.model_identity(config, wc.model),
        sample=plan.sample(config),
        forward=plan.forward_settings(config),
    script:
        "../scripts/embed_words.py"


rule fit_conditional_probes:
    input:
        unpack(conditional_answers_input),
        states=lambda wc: plan.hidden_files(config, wc.model),
        prompts=plan.PROMPTS,
        words=plan.WORDS,
    output:
        table=f"{plan.CONDITIONAL}.tsv",
        probabilities=f"{plan.CONDITIONAL}.h5",
    log:
        "logs/fit_conditional_probes/{model}/{location}.log",
    benchmark:
        "logs/benchmarks/fit_conditional_probes/{model}/{location}.tsv"
    conda:
        "../envs/probe.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: jobs.probe_mem_mb(config, wc.model, N_TEXTS, attempt),
        runtime=lambda wc, attempt: jobs.conditional_runtime(config, wc.model, wc.location, N_TEXTS, attempt),
    params:
        code=script_code("fit_conditional_probes"),
        conditional=plan.conditional_settings(config),
        cells=lambda wc: plan.conditional_cells(config, wc.location),
        baselines=plan.conditional_baselines(config),
        labels=plan.labels(config),
        positions=config["positions"],
        layers=lambda wc: plan.probe_layers(config, wc.model, wc.location),
        provenance=lambda wc: plan.hidden_provenance(config, wc.model),
        words_provenance=lambda wc: plan.words_provenance(config, wc.model),
    script:
        "../scripts/fit_conditional_probes.py"


rule localise_conditional:
    input:
        probabilities=lambda wc: plan.conditional_files(config, wc.model, "h5"),
    output:
        plan.CONDITIONAL_LOCALISATION,
    log:
        "logs/localise_conditional/{model}.log",
    benchmark:
        "logs/benchmarks/localise_conditional/{model}.tsv"
    conda:
        "../envs/probe.yaml"
    threads: 1
    resources:
        mem_mb=2048,
        runtime=lambda wc, attempt: jobs.fixed_runtime("localise_conditional", attempt),
    params:
        code=script_code("localise_conditional"),
        probe=plan.localise_settings(config),
        jobs=lambda wc: plan.conditional_jobs(config, wc.model),
        n_layers=lambda wc: plan.n_layers(config, wc.model),
    script:
        "../scripts/localise_conditional.py"


rule aggregate_conditional:
    input:
        tables=[path for model in MODELS for path in plan.conditional_files(config, model, "tsv")],
        localisations=expand(plan.CONDITIONAL_LOCALISATION, model=MODELS),
    output:
        table=report(plan.CONDITIONAL_TABLE, caption="../report/conditional_table.rst", category="Tables"),
        localisation=report(
            plan.CONDITIONAL_LOCALISATIONS, caption="../report/conditional_localisation_table.rst", category="Tables"
        ),
    log:
        "logs/aggregate_conditional.log",
    benchmark:
        "logs/benchmarks/aggregate_conditional.tsv"
    localrule: True
    conda:
        "../envs/tables.yaml"
    resources:
        mem_mb=1024,
        runtime=5,
    params:
        code=script_code("aggregate_conditional"),
    script:
        "../scripts/aggregate_conditional.py"


rule plot_conditional:
    input:
        tables=lambda wc: plan.conditional_files(config, wc.model, "tsv"),
        localisation=plan.CONDITIONAL_LOCALISATION,
    output:
        png=report(
            plan.figure("conditional/{model}", "png"),
            caption="../report/conditional.rst",
            category="Figures",
            subcategory="{model}",
        ),
        pdf=plan.figure("conditional/{model}", "pdf"),
    log:
        "logs/plot_conditional/{model}.log",
    benchmark:
        "logs/benchmarks/plot_conditional/{model}.tsv"
    localrule: True
    conda:
        "../envs/plot.yaml"
    resources:
        mem_mb=1024,
        runtime=5,
    params:
        code=script_code("plot_conditional"),
    script:
        "../scripts/plot_conditional.py"
