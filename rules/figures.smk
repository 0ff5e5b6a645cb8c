rule plot_accuracy:
    input:
        table=plan.ACCURACY,
        localisation=plan.LOCALISATIONS,
    output:
        layer_png=report(
            plan.figure("accuracy_by_layer", "png"),
            caption="../report/accuracy_by_layer.rst",
            category="Figures",
            subcategory="All models",
        ),
        layer_pdf=plan.figure("accuracy_by_layer", "pdf"),
        depth_png=report(
            plan.figure("accuracy_by_depth", "png"),
            caption="../report/accuracy_by_depth.rst",
            category="Figures",
            subcategory="All models",
        ),
        depth_pdf=plan.figure("accuracy_by_depth", "pdf"),
    log:
        "logs/plot_accuracy.log",
    benchmark:
        "logs/benchmarks/plot_accuracy.tsv"
    localrule: True
    conda:
        "../envs/plot.yaml"
    resources:
        mem_mb=1024,
        runtime=5,
    params:
        code=script_code("plot_accuracy"),
        n_layers={model: config["models"][model]["n_layers"] for model in MODELS},
        grid=grid.describe(grid.cells(config)),
    script:
        "../scripts/plot_accuracy.py"


rule plot_layer_position:
    input:
        lambda wc: plan.probe_files(config, wc.model),
    output:
        png=report(
            plan.figure("layer_position/{model}", "png"),
            caption="../report/layer_position.rst",
            category="Figures",
            subcategory="{model}",
        ),
        pdf=plan.figure("layer_position/{model}", "pdf"),
    log:
        "logs/plot_layer_position/{model}.log",
    benchmark:
        "logs/benchmarks/plot_layer_position/{model}.tsv"
    localrule: True
    conda:
        "../envs/plot-seaborn.yaml"
    resources:
        mem_mb=1024,
        runtime=5,
    params:
        code=script_code("plot_layer_position"),
        model=lambda wc: wc.model,
        positions=config["positions"],
        grid=grid.describe(grid.cells(config)),
    script:
        "../scripts/plot_layer_position.py"


rule plot_appraisal:
    input:
        f"{plan.APPRAISAL}.tsv",
    output:
        png=report(
            plan.figure("appraisal_r2/{model}", "png"),
            caption="../report/appraisal_r2.rst",
            category="Figures",
            subcategory="{model}",
        ),
        pdf=plan.figure("appraisal_r2/{model}", "pdf"),
    log:
        "logs/plot_appraisal/{model}.log",
    benchmark:
        "logs/benchmarks/plot_appraisal/{model}.tsv"
    localrule: True
    conda:
        "../envs/plot-seaborn.yaml"
    resources:
        mem_mb=1024,
        runtime=5,
    params:
        code=script_code("plot_appraisal"),
        position=config["appraisal"]["positions"][0],
    script:
        "../scripts/plot_appraisal.py"


rule plot_confusion:
    input:
        plan.ANSWERS,
    output:
        png=report(
            plan.figure("confusion/{model}", "png"),
            caption="../report/confusion.rst",
            category="Figures",
            subcategory="{model}",
        ),
        pdf=plan.figure("confusion/{model}", "pdf"),
    log:
        "logs/plot_confusion/{model}.log",
    benchmark:
        "logs/benchmarks/plot_confusion/{model}.tsv"
    localrule: True
    conda:
        "../envs/plot-seaborn.yaml"
    resources:
        mem_mb=1024,
        runtime=5,
    params:
        code=script_code("plot_confusion"),
        labels=plan.labels(config),
    script:
        "../scripts/plot_confusion.py"


rule plot_interventions:
    input:
        accuracy=plan.ACCURACY,
        tables=lambda wc: plan.intervention_files(config, wc.model, plan.heatmap_experiments(config)),
    output:
        png=report(
            plan.figure("interventions/{model}", "png"),
            caption="../report/interventions.rst",
            category="Figures",
            subcategory="{model}",
        ),
        pdf=plan.figure("interventions/{model}", "pdf"),
    log:
        "logs/plot_interventions/{model}.log",
    benchmark:
        "logs/benchmarks/plot_interventions/{model}.tsv"
    localrule: True
    conda:
        "../envs/plot-seaborn.yaml"
    resources:
        mem_mb=1024,
        runtime=5,
    params:
        code=script_code("plot_interventions"),
        locations=config["interventions"]["locations"],
        subset=plan.heatmap_probe_subset(config),
    script:
        "../scripts/plot_interventions.py"


rule plot_experiment:
    input:
        plan.INTERVENTION,
    output:
        png=report(
            plan.figure("{experiment}/{model}", "png"),
            caption="../report/steering.rst",
            category="Figures",
            subcategory="{model}",
        ),
        pdf=plan.figure("{experiment}/{model}", "pdf"),
    log:
        "logs/plot_experiment/{experiment}/{model}.log",
    benchmark:
        "logs/benchmarks/plot_experiment/{experiment}/{model}.tsv"
    wildcard_constraints:
        experiment="|".join(experiments.with_figure()),
    localrule: True
    conda:
        "../envs/plot-seaborn.yaml"
    resources:
        mem_mb=1024,
        runtime=5,
    params:
        code=script_code("plot_experiment"),
    script:
        "../scripts/plot_experiment.py"


rule plot_interventions_by_depth:
    input:
        accuracy=plan.ACCURACY,
        interventions=plan.INTERVENTIONS,
    output:
        png=report(
            plan.figure("interventions_by_depth", "png"),
            caption="../report/interventions_by_depth.rst",
            category="Figures",
            subcategory="All models",
        ),
        pdf=plan.figure("interventions_by_depth", "pdf"),
    log:
        "logs/plot_interventions_by_depth.log",
    benchmark:
        "logs/benchmarks/plot_interventions_by_depth.tsv"
    localrule: True
    conda:
        "../envs/plot.yaml"
    resources:
        mem_mb=1024,
        runtime=5,
    params:
        code=script_code("plot_interventions_by_depth"),
        n_layers={model: config["models"][model]["n_layers"] for model in MODELS},
        locations=config["interventions"]["locations"],
        subset=plan.heatmap_probe_subset(config),
    script:
        "../scripts/plot_interventions_by_depth.py"


rule plot_attention:
    input:
        attention=f"{plan.ATTENTION}.tsv",
        interventions=lambda wc: plan.intervention_files(config, wc.model, plan.attention_patching(config)),
    output:
        png=report(
            plan.figure("attention/{model}", "png"),
            caption="../report/attention.rst",
            category="Figures",
            subcategory="{model}",
        ),
        pdf=plan.figure("attention/{model}", "pdf"),
    log:
        "logs/plot_attention/{model}.log",
    benchmark:
        "logs/benchmarks/plot_attention/{model}.tsv"
    localrule: True
    conda:
        "../envs/plot-seaborn.yaml"
    resources:
        mem_mb=1024,
        runtime=5,
    params:
        code=script_code("plot_attention"),
    script:
        "../scripts/plot_attention.py"
