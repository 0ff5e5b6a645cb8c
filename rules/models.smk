# A local rule: it runs where snakemake runs (a cluster's login node, which reaches the hub), so that the jobs, on
# nodes that often cannot, read the downloaded folder.
rule download_model:
    output:
        directory(plan.MODEL_DIR),
    log:
        "logs/download_model/{model}.log",
    benchmark:
        "logs/benchmarks/download_model/{model}.tsv"
    wildcard_constraints:
        model=wildcard_choice(plan.models_from(config, "hub")),
    localrule: True
    conda:
        "../envs/download-model.yaml"
    resources:
        mem_mb=1024,
        runtime=120,
    params:
        code=script_code("download_model"),
        model=lambda wc: plan.download_settings(config, wc.model),
    script:
        "../scripts/download_model.py"


rule prepare_gguf_model:
    input:
        # the GGUF file or its parts, inside their installed packages (resolved at parse time)
        parts=gguf_parts,
    output:
        directory(plan.MODEL_DIR),
    log:
        "logs/prepare_gguf_model/{model}.log",
    benchmark:
        "logs/benchmarks/prepare_gguf_model/{model}.tsv"
    wildcard_constraints:
        model=wildcard_choice(plan.models_from(config, "gguf")),
    conda:
        "../envs/models.yaml"
    resources:
        mem_mb=lambda wc, attempt: jobs.gguf_mem_mb(config, wc.model, attempt),
        runtime=30,
    params:
        code=script_code("prepare_gguf_model"),
        gguf=lambda wc: config["models"][wc.model]["gguf"],
        dtype=plan.forward_settings(config).dtype,
    script:
        "../scripts/prepare_gguf_model.py"
