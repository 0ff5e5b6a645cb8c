rule download_corpus:
    output:
        plan.CORPUS_DOWNLOAD,
    log:
        "logs/download_corpus/{filename}.log",
    benchmark:
        "logs/benchmarks/download_corpus/{filename}.tsv"
    conda:
        "../envs/download.yaml"
    resources:
        mem_mb=512,
        runtime=10,
    params:
        code=script_code("download_corpus"),
        url=config["dataset"]["url"],
        sha256=config["dataset"]["sha256"],
    script:
        "../scripts/download_corpus.py"


rule prepare_prompts:
    input:
        csv=corpus_csv(),
    output:
        plan.PROMPTS,
    log:
        "logs/prepare_prompts.log",
    benchmark:
        "logs/benchmarks/prepare_prompts.tsv"
    conda:
        "../envs/corpus.yaml"
    resources:
        mem_mb=1024,
        runtime=5,
    params:
        code=script_code("prepare_prompts"),
        dataset=plan.dataset_settings(config),
        corpus_sha256=plan.corpus_sha256(config),
        template=lambda wc: plan.template(config),
    script:
        "../scripts/prepare_prompts.py"
