rule extract_hidden_states:
    input:
        unpack(model_inputs),
        prompts=plan.PROMPTS,
    output:
        plan.HIDDEN,
    log:
        "logs/extract_hidden_states/{model}/layers{first}-{last}.log",
    benchmark:
        "logs/benchmarks/extract_hidden_states/{model}/layers{first}-{last}.tsv"
    # Before the probe jobs of a model already extracted: those take one core each, and a
    # multi-threaded extraction queued behind them would leave a core idle until they end.
    priority: 1
    conda:
        "../envs/torch.yaml"
    threads: config["extraction"]["threads"]
    resources:
        mem_mb=lambda wc, attempt: jobs.extraction_mem_mb(config, wc.model, attempt),
        runtime=lambda wc, attempt: jobs.extraction_runtime(config, wc.model, int(wc.last), N_TEXTS, attempt),
    params:
        code=script_code("extract_hidden_states"),
        model=lambda wc: plan.model_identity(config, wc.model),
        shape=lambda wc: plan.model_shape(config, wc.model),
        positions=config["positions"],
        locations=config["locations"],
        template=lambda wc: plan.template(config),
        sample=plan.sample(config),
        extraction=lambda wc: plan.extraction_settings(config, wc.model),
        first_layer=lambda wc: plan.first_stored_layer(config, wc.first),
    script:
        "../scripts/extract_hidden_states.py"
