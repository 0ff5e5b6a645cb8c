rule fit_probes:
    input:
        unpack(probe_inputs),
    output:
        table="results/probes/{model}/{location}/layers{first}-{last}.tsv",
        predictions="results/probes/{model}/{location}/layers{first}-{last}.predictions.h5",
        directions="results/probes/{model}/{location}/layers{first}-{last}.directions.h5",
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
        probe=probe_settings(),
        cells=lambda wc: grid_cells(wc.location),
        labels=sorted(config["dataset"]["labels"]),
        location=lambda wc: wc.location,
        layers=lambda wc: list(range(int(wc.first), int(wc.last) + 1)),
        provenance=lambda wc: hidden_provenance(wc.model),
    script:
        "../scripts/fit_probes.py"


rule fit_nonlinear_probes:
    input:
        unpack(answers_input),
        states=lambda wc: chunk_files(wc.model),
    output:
        "results/probes/{model}/{location}/nonlinear.tsv",
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
        # the folds and problems of the linear probes, not their optimiser
        probe={
            key: config["probe"][key]
            for key in ("subsets", "answer_probe", "folds", "test_size", "seed", "stratify", "device")
        },
        nonlinear={key: config["probe"]["nonlinear"][key] for key in ("hidden", "alpha", "max_iter", "tol")},
        cells=lambda wc: nonlinear_cells(wc.location),
        labels=sorted(config["dataset"]["labels"]),
        location=lambda wc: wc.location,
        layers=lambda wc: probe_layers(wc.model, wc.location),
        chunk_index=lambda wc: chunk_index_of_layers(wc.model),
        provenance=lambda wc: hidden_provenance(wc.model),
    script:
        "../scripts/fit_nonlinear_probes.py"


rule fit_appraisal_probes:
    input:
        states=lambda wc: chunk_files(wc.model),
        prompts="results/corpus/prompts.tsv",
    output:
        table="results/appraisal/{model}.tsv",
        directions="results/appraisal/{model}.directions.h5",
    log:
        "logs/fit_appraisal_probes/{model}.log",
    benchmark:
        "logs/benchmarks/fit_appraisal_probes/{model}.tsv"
    conda:
        "../envs/probe.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: jobs.appraisal_mem_mb(config, wc.model, N_TEXTS, attempt),
        runtime=lambda wc, attempt: 30 * attempt,
    params:
        code=script_code("fit_appraisal_probes"),
        appraisal=config["appraisal"],
        columns=config["dataset"]["appraisal_columns"],
        # the emotion probes' folds, not their other settings, whose change need not rerun these
        split={key: config["probe"][key] for key in ("folds", "test_size", "seed", "stratify")},
        # the layers of each chunk file, in the order of input.states
        layers=lambda wc: [list(range(first, last + 1)) for first, last in CHUNKS[wc.model]],
        provenance=lambda wc: hidden_provenance(wc.model),
    script:
        "../scripts/fit_appraisal_probes.py"


rule fit_text_baseline:
    input:
        unpack(answers_input),
        prompts="results/corpus/prompts.tsv",
    output:
        table="results/baselines/{model}/text.tsv",
        predictions="results/baselines/{model}/text.predictions.h5",
    log:
        "logs/fit_text_baseline/{model}.log",
    benchmark:
        "logs/benchmarks/fit_text_baseline/{model}.tsv"
    conda:
        "../envs/probe.yaml"
    threads: 1
    resources:
        mem_mb=2048,
        runtime=lambda wc, attempt: 30 * attempt,
    params:
        code=script_code("fit_text_baseline"),
        probe={**baseline_settings(), "control": text_control()},
        labels=sorted(config["dataset"]["labels"]),
    script:
        "../scripts/fit_text_baseline.py"


rule fit_ratings_baseline:
    input:
        unpack(answers_input),
        prompts="results/corpus/prompts.tsv",
    output:
        "results/baselines/{model}/appraisal_ratings.tsv",
    log:
        "logs/fit_ratings_baseline/{model}.log",
    benchmark:
        "logs/benchmarks/fit_ratings_baseline/{model}.tsv"
    conda:
        "../envs/probe-prompts.yaml"
    threads: 1
    resources:
        mem_mb=2048,
        runtime=lambda wc, attempt: 15 * attempt,
    params:
        code=script_code("fit_ratings_baseline"),
        probe=baseline_settings(),
        control=text_control(),
        labels=sorted(config["dataset"]["labels"]),
        columns=config["dataset"]["appraisal_columns"],
    script:
        "../scripts/fit_ratings_baseline.py"


rule logit_lens:
    input:
        unpack(model_inputs),
        states=lambda wc: chunk_files(wc.model),
        answers="results/answers/{model}.tsv",
    output:
        table="results/baselines/{model}/logit_lens.tsv",
        predictions="results/baselines/{model}/logit_lens.predictions.h5",
    log:
        "logs/logit_lens/{model}.log",
    benchmark:
        "logs/benchmarks/logit_lens/{model}.tsv"
    conda:
        "../envs/logit-lens.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: jobs.extraction_mem_mb(config, wc.model, attempt),
        runtime=lambda wc, attempt: 15 * attempt,
    params:
        code=script_code("logit_lens"),
        model=lambda wc: model_identity(wc.model),
        labels=sorted(config["dataset"]["labels"]),
        words=config["answer"]["words"],
        dtype=config["extraction"]["dtype"],
        device=config["extraction"]["device"],
        probe={key: config["probe"][key] for key in ("subsets", "answer_probe", "folds")},
        layers=lambda wc: list(range(0 if EMBEDDING_LAYER else 1, config["models"][wc.model]["n_layers"] + 1)),
        chunk_index=lambda wc: chunk_index_of_layers(wc.model),
        provenance=lambda wc: hidden_provenance(wc.model),
    script:
        "../scripts/logit_lens.py"


rule localise:
    input:
        unpack(localisation_inputs),
    output:
        "results/localisation/{model}.tsv",
    log:
        "logs/localise/{model}.log",
    benchmark:
        "logs/benchmarks/localise/{model}.tsv"
    conda:
        "../envs/localise.yaml"
    threads: 1
    resources:
        mem_mb=4096,
        runtime=lambda wc, attempt: 15 * attempt,
    params:
        code=script_code("localise"),
        probe={key: config["probe"][key] for key in ("bootstrap", "seed")},
        locations=lambda wc: [location for location in localisation_inputs(wc) if location != "text"],
        provenance=lambda wc: {
            location: predictions_provenance(wc.model, location) for location in localisation_inputs(wc)
        },
        text_provenance=lambda wc: predictions_provenance(wc.model, "text"),
        n_layers=lambda wc: config["models"][wc.model]["n_layers"],
    script:
        "../scripts/localise.py"


rule count_subsets:
    input:
        prompts="results/corpus/prompts.tsv",
        answers=expand("results/answers/{model}.tsv", model=MODELS),
    output:
        report("results/subsets.tsv", caption="../report/subsets_table.rst", category="Tables"),
    log:
        "logs/count_subsets.log",
    benchmark:
        "logs/benchmarks/count_subsets.tsv"
    conda:
        "../envs/probe-prompts.yaml"
    resources:
        mem_mb=1024,
        runtime=5,
    params:
        code=script_code("count_subsets"),
        probe={key: config["probe"][key] for key in ("subsets", "answer_probe", "folds")},
        labels=sorted(config["dataset"]["labels"]),
        models=MODELS,
    script:
        "../scripts/count_subsets.py"
