rule extract_hidden_states:
    input:
        unpack(model_inputs),
        prompts="results/corpus/prompts.tsv",
    output:
        "results/hidden/{model}/layers{first}-{last}.h5",
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
        model=lambda wc: model_identity(wc.model),
        shape=lambda wc: model_shape(wc.model),
        positions=config["positions"],
        locations=config["locations"],
        template=lambda wc: TEMPLATE,
        sample={key: config["dataset"][key] for key in ("limit", "seed")},
        extraction=lambda wc: extraction_settings(wc.model),
        first_layer=first_stored_layer,
    script:
        "../scripts/extract_hidden_states.py"
