rule aggregate_accuracy:
    input:
        scores=score_files(),
        localisation=expand("results/localisation/{model}.tsv", model=MODELS),
    output:
        table=report("results/accuracy.tsv", caption="../report/accuracy_table.rst", category="Tables"),
        localisation=report("results/localisation.tsv", caption="../report/localisation_table.rst",
                            category="Tables"),
        text=expand("results/tables/{model}_accuracy_by_layer.txt", model=MODELS),
    params:
        code=script_code("aggregate_accuracy"),
        order={"models": MODELS, "locations": config["locations"], "subsets": config["probe"]["subsets"]},
    log:
        "logs/aggregate_accuracy.log",
    benchmark:
        "logs/benchmarks/aggregate_accuracy.tsv"
    resources:
        mem_mb=1024,
        runtime=5,
    conda:
        "../envs/probe.yaml"
    script:
        "../scripts/aggregate_accuracy.py"


rule record_config:
    output:
        "results/config.yaml",
    params:
        code=script_code("record_config"),
        # the complete config, defaults filled in: every seed and setting behind the results
        config=lambda wc: config,
    log:
        "logs/record_config.log",
    benchmark:
        "logs/benchmarks/record_config.tsv"
    resources:
        mem_mb=512,
        runtime=5,
    conda:
        "../envs/corpus.yaml"
    script:
        "../scripts/record_config.py"


rule summarise_answers:
    input:
        expand("results/answers/{model}.tsv", model=MODELS),
    output:
        report("results/answers.tsv", caption="../report/answers_table.rst", category="Tables"),
    params:
        code=script_code("summarise_answers"),
    log:
        "logs/summarise_answers.log",
    benchmark:
        "logs/benchmarks/summarise_answers.tsv"
    resources:
        mem_mb=1024,
        runtime=5,
    conda:
        "../envs/probe.yaml"
    script:
        "../scripts/summarise_answers.py"


rule aggregate_appraisal:
    input:
        appraisal_files(),
    output:
        report("results/appraisal_r2.tsv", caption="../report/appraisal_table.rst", category="Tables"),
    params:
        code=script_code("aggregate_appraisal"),
    log:
        "logs/aggregate_appraisal.log",
    benchmark:
        "logs/benchmarks/aggregate_appraisal.tsv"
    resources:
        mem_mb=1024,
        runtime=5,
    conda:
        "../envs/probe.yaml"
    script:
        "../scripts/aggregate_appraisal.py"


rule plot_accuracy:
    input:
        table="results/accuracy.tsv",
        localisation="results/localisation.tsv",
    output:
        layer_png=report("results/figures/accuracy_by_layer.png", caption="../report/accuracy_by_layer.rst",
                         category="Figures", subcategory="All models"),
        layer_pdf="results/figures/accuracy_by_layer.pdf",
        depth_png=report("results/figures/accuracy_by_depth.png", caption="../report/accuracy_by_depth.rst",
                         category="Figures", subcategory="All models"),
        depth_pdf="results/figures/accuracy_by_depth.pdf",
    params:
        code=script_code("plot_accuracy"),
        n_layers={model: config["models"][model]["n_layers"] for model in MODELS},
    log:
        "logs/plot_accuracy.log",
    benchmark:
        "logs/benchmarks/plot_accuracy.tsv"
    resources:
        mem_mb=1024,
        runtime=5,
    conda:
        "../envs/plot.yaml"
    script:
        "../scripts/plot_accuracy.py"


rule plot_layer_position:
    input:
        lambda wc: probe_files(wc.model),
    output:
        png=report("results/figures/layer_position/{model}.png", caption="../report/layer_position.rst",
                   category="Figures", subcategory="{model}"),
        pdf="results/figures/layer_position/{model}.pdf",
    params:
        code=script_code("plot_layer_position"),
        model=lambda wc: wc.model,
    log:
        "logs/plot_layer_position/{model}.log",
    benchmark:
        "logs/benchmarks/plot_layer_position/{model}.tsv"
    resources:
        mem_mb=1024,
        runtime=5,
    conda:
        "../envs/plot.yaml"
    script:
        "../scripts/plot_layer_position.py"


rule plot_appraisal:
    input:
        "results/appraisal/{model}.tsv",
    output:
        png=report("results/figures/appraisal_r2/{model}.png", caption="../report/appraisal_r2.rst",
                   category="Figures", subcategory="{model}"),
        pdf="results/figures/appraisal_r2/{model}.pdf",
    params:
        code=script_code("plot_appraisal"),
        position=config["appraisal"]["positions"][0],
    log:
        "logs/plot_appraisal/{model}.log",
    benchmark:
        "logs/benchmarks/plot_appraisal/{model}.tsv"
    resources:
        mem_mb=1024,
        runtime=5,
    conda:
        "../envs/plot.yaml"
    script:
        "../scripts/plot_appraisal.py"


rule plot_confusion:
    input:
        "results/answers/{model}.tsv",
    output:
        png=report("results/figures/confusion/{model}.png", caption="../report/confusion.rst",
                   category="Figures", subcategory="{model}"),
        pdf="results/figures/confusion/{model}.pdf",
    params:
        code=script_code("plot_confusion"),
        labels=config["dataset"]["labels"],
    log:
        "logs/plot_confusion/{model}.log",
    benchmark:
        "logs/benchmarks/plot_confusion/{model}.tsv"
    resources:
        mem_mb=1024,
        runtime=5,
    conda:
        "../envs/plot.yaml"
    script:
        "../scripts/plot_confusion.py"
