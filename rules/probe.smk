rule fit_probes:
    input:
        unpack(probe_inputs),
    output:
        table=f"{plan.PROBES}.tsv",
        predictions=f"{plan.PROBES}.predictions.h5",
        directions=f"{plan.PROBES}.directions.h5",
    log:
        "logs/fit_probes/{model}/{location}/layers{first}-{last}.log",
    benchmark:
        "logs/benchmarks/fit_probes/{model}/{location}/layers{first}-{last}.tsv"
    conda:
        "../envs/probe.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: jobs.probe_mem_mb(config, wc.model, N_TEXTS, attempt),
        runtime=lambda wc, attempt: jobs.probe_runtime(
            config, wc.model, wc.location, int(wc.last) - int(wc.first) + 1, N_TEXTS, attempt
        ),
    params:
        code=script_code("fit_probes"),
        probe=plan.probe_settings(config),
        cells=lambda wc: plan.grid_cells(config, wc.location),
        labels=plan.labels(config),
        location=lambda wc: wc.location,
        layers=lambda wc: plan.layer_range(wc.first, wc.last),
        provenance=lambda wc: plan.hidden_provenance(config, wc.model),
    script:
        "../scripts/fit_probes.py"


rule fit_nonlinear_probes:
    input:
        unpack(answers_input),
        states=lambda wc: plan.hidden_files(config, wc.model),
    output:
        plan.NONLINEAR,
    log:
        "logs/fit_nonlinear_probes/{model}/{location}.log",
    benchmark:
        "logs/benchmarks/fit_nonlinear_probes/{model}/{location}.tsv"
    conda:
        "../envs/probe.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: jobs.probe_mem_mb(config, wc.model, N_TEXTS, attempt),
        runtime=lambda wc, attempt: jobs.nonlinear_runtime(config, wc.model, wc.location, N_TEXTS, attempt),
    params:
        code=script_code("fit_nonlinear_probes"),
        probe=plan.nonlinear_settings(config),
        cells=lambda wc: plan.nonlinear_cells(config, wc.location),
        labels=plan.labels(config),
        location=lambda wc: wc.location,
        layers=lambda wc: plan.probe_layers(config, wc.model, wc.location),
        provenance=lambda wc: plan.hidden_provenance(config, wc.model),
    script:
        "../scripts/fit_nonlinear_probes.py"


rule fit_appraisal_probes:
    input:
        states=lambda wc: plan.hidden_files(config, wc.model),
        prompts=plan.PROMPTS,
    output:
        table=f"{plan.APPRAISAL}.tsv",
        directions=f"{plan.APPRAISAL}.directions.h5",
    log:
        "logs/fit_appraisal_probes/{model}.log",
    benchmark:
        "logs/benchmarks/fit_appraisal_probes/{model}.tsv"
    conda:
        "../envs/appraisal.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: jobs.appraisal_mem_mb(config, wc.model, N_TEXTS, attempt),
        runtime=lambda wc, attempt: jobs.fixed_runtime("fit_appraisal_probes", attempt),
    params:
        code=script_code("fit_appraisal_probes"),
        appraisal=plan.appraisal_settings(config),
        columns=plan.appraisal_columns(config),
        # the emotion probes' folds, not their other settings, whose change need not rerun these
        split=plan.split_settings(config),
        layers=lambda wc: plan.layers(config, wc.model),
        provenance=lambda wc: plan.hidden_provenance(config, wc.model),
    script:
        "../scripts/fit_appraisal_probes.py"


rule fit_text_baseline:
    input:
        unpack(answers_input),
        prompts=plan.PROMPTS,
    output:
        table=plan.path(plan.BASELINE, baseline="text") + ".tsv",
        predictions=plan.path(plan.BASELINE, baseline="text") + ".predictions.h5",
    log:
        "logs/fit_text_baseline/{model}.log",
    benchmark:
        "logs/benchmarks/fit_text_baseline/{model}.tsv"
    conda:
        "../envs/probe.yaml"
    threads: 1
    resources:
        mem_mb=2048,
        runtime=lambda wc, attempt: jobs.fixed_runtime("fit_text_baseline", attempt),
    params:
        code=script_code("fit_text_baseline"),
        probe=plan.baseline_settings(config),
        control=plan.text_control(config),
        labels=plan.labels(config),
    script:
        "../scripts/fit_text_baseline.py"


rule fit_ratings_baseline:
    input:
        unpack(answers_input),
        prompts=plan.PROMPTS,
    output:
        plan.path(plan.BASELINE, baseline="appraisal_ratings") + ".tsv",
    log:
        "logs/fit_ratings_baseline/{model}.log",
    benchmark:
        "logs/benchmarks/fit_ratings_baseline/{model}.tsv"
    conda:
        "../envs/probe-prompts.yaml"
    threads: 1
    resources:
        mem_mb=2048,
        runtime=lambda wc, attempt: jobs.fixed_runtime("fit_ratings_baseline", attempt),
    params:
        code=script_code("fit_ratings_baseline"),
        probe=plan.baseline_settings(config),
        control=plan.text_control(config),
        labels=plan.labels(config),
        columns=plan.appraisal_columns(config),
    script:
        "../scripts/fit_ratings_baseline.py"


rule logit_lens:
    input:
        unpack(model_inputs),
        states=lambda wc: plan.hidden_files(config, wc.model),
        answers=plan.ANSWERS,
    output:
        table=plan.path(plan.BASELINE, baseline="logit_lens") + ".tsv",
        predictions=plan.path(plan.BASELINE, baseline="logit_lens") + ".predictions.h5",
    log:
        "logs/logit_lens/{model}.log",
    benchmark:
        "logs/benchmarks/logit_lens/{model}.tsv"
    conda:
        "../envs/logit-lens.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: jobs.extraction_mem_mb(config, wc.model, attempt),
        runtime=lambda wc, attempt: jobs.fixed_runtime("logit_lens", attempt),
    params:
        code=script_code("logit_lens"),
        model=lambda wc: plan.model_identity(config, wc.model),
        labels=plan.labels(config),
        words=plan.answer_words(config),
        forward=plan.forward_settings(config),
        probe=plan.problem_settings(config),
        layers=lambda wc: plan.lens_layers(config, wc.model),
        provenance=lambda wc: plan.hidden_provenance(config, wc.model),
    script:
        "../scripts/logit_lens.py"


rule localise:
    input:
        unpack(lambda wc: plan.localised(config, wc.model)),
        # paired with each probe
        text=[plan.path(plan.BASELINE, baseline="text") + ".predictions.h5"],
    output:
        plan.LOCALISATION,
    log:
        "logs/localise/{model}.log",
    benchmark:
        "logs/benchmarks/localise/{model}.tsv"
    conda:
        "../envs/localise.yaml"
    threads: 1
    resources:
        mem_mb=4096,
        runtime=lambda wc, attempt: jobs.fixed_runtime("localise", attempt),
    params:
        code=script_code("localise"),
        probe=plan.localise_settings(config),
        locations=lambda wc: list(plan.localised(config, wc.model)),
        provenance=lambda wc: {
            location: plan.predictions_provenance(config, wc.model, location)
            for location in plan.localised(config, wc.model)
        },
        text_provenance=lambda wc: plan.predictions_provenance(config, wc.model, "text"),
        n_layers=lambda wc: plan.n_layers(config, wc.model),
    script:
        "../scripts/localise.py"


rule count_subsets:
    input:
        prompts=plan.PROMPTS,
        answers=expand(plan.ANSWERS, model=MODELS),
    output:
        report(plan.SUBSETS, caption="../report/subsets_table.rst", category="Tables"),
    log:
        "logs/count_subsets.log",
    benchmark:
        "logs/benchmarks/count_subsets.tsv"
    localrule: True
    conda:
        "../envs/corpus.yaml"
    resources:
        mem_mb=1024,
        runtime=5,
    params:
        code=script_code("count_subsets"),
        probe=plan.problem_settings(config),
        labels=plan.labels(config),
        models=MODELS,
    script:
        "../scripts/count_subsets.py"
