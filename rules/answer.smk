rule answer_emotions:
    input:
        unpack(model_inputs),
        states=lambda wc: plan.hidden_files(config, wc.model)[-1],
    output:
        plan.ANSWERS,
    log:
        "logs/answer_emotions/{model}.log",
    benchmark:
        "logs/benchmarks/answer_emotions/{model}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: jobs.extraction_mem_mb(config, wc.model, attempt),
        runtime=lambda wc, attempt: jobs.forward_runtime(config, wc.model, N_TEXTS, attempt),
    params:
        code=script_code("answer_emotions"),
        model=lambda wc: plan.model_identity(config, wc.model),
        layer=lambda wc: plan.layers(config, wc.model)[-1],
        provenance=lambda wc: plan.hidden_provenance(config, wc.model),
        labels=plan.labels(config),
        words=plan.answer_words(config),
        forward=plan.forward_settings(config),
    script:
        "../scripts/answer_emotions.py"
