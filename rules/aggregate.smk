rule aggregate_accuracy:
    input:
        scores=plan.score_files(config),
        localisation=expand(plan.LOCALISATION, model=MODELS),
    output:
        table=report(plan.ACCURACY, caption="../report/accuracy_table.rst", category="Tables"),
        localisation=report(plan.LOCALISATIONS, caption="../report/localisation_table.rst", category="Tables"),
        text=expand(plan.TEXT_TABLE, model=MODELS),
    log:
        "logs/aggregate_accuracy.log",
    benchmark:
        "logs/benchmarks/aggregate_accuracy.tsv"
    localrule: True
    conda:
        "../envs/scores.yaml"
    resources:
        mem_mb=1024,
        runtime=5,
    params:
        code=script_code("aggregate_accuracy"),
        order={"models": MODELS, "locations": plan.score_locations(config), "subsets": config["probe"]["subsets"]},
        grid=grid.describe(grid.cells(config)),
    script:
        "../scripts/aggregate_accuracy.py"


rule record_config:
    output:
        plan.RECORDED_CONFIG,
    log:
        "logs/record_config.log",
    benchmark:
        "logs/benchmarks/record_config.tsv"
    localrule: True
    conda:
        "../envs/record-config.yaml"
    resources:
        mem_mb=512,
        runtime=5,
    params:
        code=script_code("record_config"),
        config=lambda wc: plan.recorded_config(config),
    script:
        "../scripts/record_config.py"


rule summarise_answers:
    input:
        expand(plan.ANSWERS, model=MODELS),
    output:
        report(plan.ANSWER_SUMMARY, caption="../report/answers_table.rst", category="Tables"),
    log:
        "logs/summarise_answers.log",
    benchmark:
        "logs/benchmarks/summarise_answers.tsv"
    localrule: True
    conda:
        "../envs/scores.yaml"
    resources:
        mem_mb=1024,
        runtime=5,
    params:
        code=script_code("summarise_answers"),
        models=MODELS,
    script:
        "../scripts/summarise_answers.py"


rule aggregate_appraisal:
    input:
        plan.appraisal_files(config),
    output:
        report(plan.APPRAISAL_R2, caption="../report/appraisal_table.rst", category="Tables"),
    log:
        "logs/aggregate_appraisal.log",
    benchmark:
        "logs/benchmarks/aggregate_appraisal.tsv"
    localrule: True
    conda:
        "../envs/tables.yaml"
    resources:
        mem_mb=1024,
        runtime=5,
    params:
        code=script_code("aggregate_appraisal"),
        models=MODELS,
    script:
        "../scripts/aggregate_appraisal.py"
