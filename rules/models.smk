rule prepare_gguf_model:
    input:
        # the GGUF file or its parts, inside their installed packages (resolved at parse time)
        parts=gguf_parts,
    output:
        directory("resources/models/{model}"),
    log:
        "logs/prepare_gguf_model/{model}.log",
    benchmark:
        "logs/benchmarks/prepare_gguf_model/{model}.tsv"
    conda:
        "../envs/models.yaml"
    resources:
        mem_mb=lambda wc, attempt: jobs.gguf_mem_mb(config, wc.model, attempt),
        runtime=30,
    params:
        code=script_code("prepare_gguf_model"),
        gguf=lambda wc: config["models"][wc.model]["gguf"],
        dtype=config["extraction"]["dtype"],
    script:
        "../scripts/prepare_gguf_model.py"
