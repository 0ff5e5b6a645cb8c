rule answer_emotions:
    input:
        unpack(model_inputs),
        states=last_chunk_file,
    output:
        "results/answers/{model}.tsv",
    log:
        "logs/answer_emotions/{model}.log",
    benchmark:
        "logs/benchmarks/answer_emotions/{model}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: jobs.extraction_mem_mb(config, wc.model, attempt),
        runtime=lambda wc, attempt: 15 * attempt,
    params:
        code=script_code("answer_emotions"),
        model=lambda wc: model_identity(wc.model),
        layer=lambda wc: LAYERS[wc.model][-1],
        provenance=lambda wc: hidden_provenance(wc.model),
        labels=config["dataset"]["labels"],
        words=config["answer"]["words"],
        dtype=config["extraction"]["dtype"],
        device=config["extraction"]["device"],
    script:
        "../scripts/answer_emotions.py"
