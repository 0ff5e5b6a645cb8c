rule extract_hidden_states:
    input:
        unpack(model_inputs),
        prompts="results/corpus/prompts.tsv",
    output:
        "results/hidden/{model}/layers{first}-{last}.h5",
    params:
        model=lambda wc: config["models"][wc.model],
        positions=config["positions"],
        template=lambda wc: config["prompt"]["template"],
        sample={key: config["dataset"][key] for key in ("limit", "seed")},
        extraction={k: v for k, v in config["extraction"].items() if k not in ("threads", "layer_chunk_size")},
    log:
        "logs/extract_hidden_states/{model}/layers{first}-{last}.log",
    benchmark:
        "logs/benchmarks/extract_hidden_states/{model}/layers{first}-{last}.tsv"
    threads: config["extraction"]["threads"]
    resources:
        mem_mb=extraction_mem_mb,
        runtime=lambda wc, attempt: 120 * attempt,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/extract_hidden_states.py"
