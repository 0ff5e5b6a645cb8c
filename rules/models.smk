rule prepare_gguf_model:
    output:
        directory("resources/models/{model}"),
    params:
        code=script_code("prepare_gguf_model"),
        gguf=lambda wc: config["models"][wc.model]["gguf"],
        dtype=config["extraction"]["dtype"],
    log:
        "logs/prepare_gguf_model/{model}.log",
    benchmark:
        "logs/benchmarks/prepare_gguf_model/{model}.tsv"
    resources:
        # the dequantised weights in float32, the GGUF blocks and transformers' staging copies
        mem_mb=lambda wc, attempt: int(config["models"][wc.model]["params_m"] * 4 * 4 + 2048) * attempt,
        runtime=30,
    conda:
        "../envs/models.yaml"
    script:
        "../scripts/prepare_gguf_model.py"
