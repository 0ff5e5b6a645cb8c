"""The workflow's plan: which files a run writes, where, and which settings decide each of them.

Plain functions of the prepared config (:func:`emoprobe.config.prepare_config`: validated, defaults filled in,
models described, keys sorted). ``rules/*.smk`` take their output paths, the files a job reads and the params
that decide a job's output from here; what a job writes into a file's attributes and what its readers expect
come from one function (:mod:`emoprobe.provenance`).

Params hold exactly what decides an output, so that editing anything else reruns nothing: the keys that only
size or schedule work are listed once, in :data:`SCHEDULING`; the rest of each rule's choice is its function
below, and a config value that a rule passes on as it stands (the positions, the locations, a model's depth) is
read in the rule itself. ``tests/test_plan.py`` checks the rules' params as Snakemake computes them. Nothing
third-party is imported here at module level: this runs every time Snakemake parses the workflow.
"""

from __future__ import annotations

import os

from emoprobe import experiments, grid, hub, jobs, provenance
from emoprobe.architecture import model_source
from emoprobe.config import count_records, prompt_template
from emoprobe.io import sha256_of
from emoprobe.settings import MLP, Forward, Logistic, Probing, Problems, Split

# Output paths, as Snakemake wildcard patterns (the rules' outputs); :func:`path` fills them in.
CORPUS_DOWNLOAD = "resources/corpus/{filename}"  # where dataset.url is downloaded, when dataset.path is missing
PROMPTS = "results/corpus/prompts.tsv"
MODEL_DIR = f"{hub.DOWNLOADS}/{{model}}"  # a hub model's download, a GGUF model's dequantised weights
HIDDEN = "results/hidden/{model}/layers{first}-{last}.h5"
ANSWERS = "results/answers/{model}.tsv"
PROBES = "results/probes/{model}/{location}/layers{first}-{last}"  # + .tsv, .predictions.h5, .directions.h5
NONLINEAR = "results/probes/{model}/{location}/nonlinear.tsv"
APPRAISAL = "results/appraisal/{model}"  # + .tsv, .directions.h5
BASELINE = "results/baselines/{model}/{baseline}"  # + .tsv, .predictions.h5
LOCALISATION = "results/localisation/{model}.tsv"
WORDS = "results/baselines/{model}/words.h5"  # each text's mean word embedding
CONDITIONAL = "results/conditional/{model}/{location}"  # + .tsv, .h5
CONDITIONAL_LOCALISATION = "results/conditional/{model}.localisation.tsv"
INTERVENTION = "results/interventions/{model}/{experiment}.tsv"
ATTENTION = "results/attention/{model}"  # + .tsv, .h5
TEXT_TABLE = "results/tables/{model}_accuracy_by_layer.txt"
FIGURE = "results/figures/{figure}.{suffix}"
# the tables of every model
ACCURACY = "results/accuracy.tsv"
LOCALISATIONS = "results/localisation.tsv"
CONDITIONAL_TABLE = "results/conditional.tsv"
CONDITIONAL_LOCALISATIONS = "results/conditional_localisation.tsv"
INTERVENTIONS = "results/interventions.tsv"
SUBSETS = "results/subsets.tsv"
ANSWER_SUMMARY = "results/answers.tsv"
APPRAISAL_R2 = "results/appraisal_r2.tsv"
RECORDED_CONFIG = "results/config.yaml"

# The keys that only size, schedule or cut work into jobs: no param holds them and the recorded config leaves
# them out, so that editing one reruns nothing. ``models`` applies to every model's entry.
SCHEDULING = {
    "dataset": ("texts_guess",),
    "extraction": ("threads", "layer_chunk_size"),
    "probe": ("fits_per_job",),
    "interventions": ("threads",),
    "models": ("params_m", "compute_params_m", "layer_chunk_size"),
}
# Where the corpus lies or comes from: its sha256 (:func:`corpus_sha256`) stands for its bytes.
CORPUS_LOCATION = ("path", "url", "sha256")


def layer_range(first: str | int, last: str | int) -> list[int]:
    """The layers ``first .. last`` of a job's wildcards, ascending."""
    return list(range(int(first), int(last) + 1))


def path(template: str, **values) -> str:
    """``template`` with the wildcards named in ``values`` filled in (others left for Snakemake); layer numbers
    (``first``, ``last``) written with two digits, as the rules' outputs match them."""
    for key, value in values.items():
        text = f"{int(value):02d}" if key in ("first", "last") else str(value)
        template = template.replace("{" + key + "}", text)
    return template


def figure(name: str, suffix: str) -> str:
    """The path of figure ``name`` (``accuracy_by_layer``, ``confusion/{model}``, …) as ``suffix`` (png, pdf)."""
    return path(FIGURE, figure=name, suffix=suffix)


def without_scheduling(section: str, settings: dict) -> dict:
    """``settings`` (a section of the config, or a model's entry for ``models``) less its :data:`SCHEDULING` keys."""
    return {key: value for key, value in settings.items() if key not in SCHEDULING.get(section, ())}


# --- the corpus and its sample


def corpus_sha256(config: dict) -> str:
    """sha256 of the local corpus; for one still to be downloaded, the sha256 the download checks."""
    location = config["dataset"]["path"]
    return sha256_of([location]) if os.path.exists(location) else config["dataset"]["sha256"]


def n_texts(config: dict) -> int:
    """Texts in the run, for resource estimates: the sample size, else the corpus's records, else (the corpus is
    yet to be downloaded) ``dataset.texts_guess``."""
    dataset = config["dataset"]
    return dataset["limit"] or count_records(dataset["path"]) or dataset["texts_guess"]


def dataset_settings(config: dict) -> dict:
    """The dataset settings that decide the prompts: not where the corpus lies or comes from (its sha256 is the
    param that stands for its bytes) nor the size guess for resource requests."""
    return {k: v for k, v in without_scheduling("dataset", config["dataset"]).items() if k not in CORPUS_LOCATION}


def template(config: dict) -> str:
    """The prompt template's text (:func:`emoprobe.config.prompt_template`)."""
    return prompt_template(config["prompt"])


def sample(config: dict) -> dict:
    """The settings that decide which texts are in the run (``dataset.limit``, ``dataset.seed``)."""
    return {key: config["dataset"][key] for key in ("limit", "seed")}


# --- models and their hidden states


def model_identity(config: dict, model: str) -> dict:
    """What decides which model a job loads: its source entry and whether its own code may run; not its size
    estimates or job layout. A hub model is its id and the commit its revision resolved to (the revision only where
    none was resolved): writing a branch as the commit it points to changes nothing."""
    entry = config["models"][model]
    source = model_source(model, entry)
    return {"name": model, "source": source, source: hub_identity(entry) if source == "hub" else entry[source],
            "trust_remote_code": entry["trust_remote_code"]}


def hub_identity(entry: dict) -> dict:
    """A hub model's ``id`` and ``commit``; the ``revision`` too where the commit is unknown (a dry run without the
    hub, emoprobe/hub.py)."""
    found = entry["hub"]
    commit = found.get("commit")
    return {"id": found["id"], "commit": commit, **({} if commit else {"revision": found.get("revision")})}


def models_from(config: dict, source: str) -> list[str]:
    """The configured models that come from ``source`` (``hub``, ``local`` or ``gguf``)."""
    return [name for name, entry in config["models"].items() if model_source(name, entry) == source]


def model_dir(config: dict, model: str) -> str:
    """The folder a job loads the model from: its download (hub) or dequantised weights (GGUF) under
    :data:`MODEL_DIR`, or the configured folder of a local model."""
    entry = config["models"][model]
    return entry["local"] if model_source(model, entry) == "local" else path(MODEL_DIR, model=model)


def download_settings(config: dict, model: str) -> dict:
    """What decides a hub model's download: the repository and the commit its revision resolved to
    (:func:`hub_identity`), and the files fetched besides the weights (the model's own code only where it may run)."""
    entry = config["models"][model]
    return {"hub": hub_identity(entry), "patterns": hub.patterns(entry["trust_remote_code"])}


def model_shape(config: dict, model: str) -> dict:
    """The depth and width the model has (read from it at parse time, :mod:`emoprobe.architecture`)."""
    return {key: config["models"][model][key] for key in ("n_layers", "hidden_size")}


def layers(config: dict, model: str) -> list[int]:
    """The model's decoder layers, 1-based."""
    return list(range(1, config["models"][model]["n_layers"] + 1))


def stores_embeddings(config: dict) -> bool:
    """Whether extraction stores the token embeddings, as layer 0 of the residual stream (in the first chunk)."""
    return "residual" in config["locations"]


def extraction_settings(config: dict, model: str) -> dict:
    """The extraction settings that decide a model's states (not threads or chunking), with the model's own
    ``storage_dtype`` where it has one."""
    settings = without_scheduling("extraction", config["extraction"])
    settings["storage_dtype"] = config["models"][model].get("storage_dtype", settings["storage_dtype"])
    return settings


def forward_settings(config: dict) -> Forward:
    """How the jobs other than the extraction run a model (:class:`emoprobe.settings.Forward`)."""
    return Forward.from_config(config["extraction"])


def answer_words(config: dict) -> dict[str, str]:
    """The word each label is answered with where it is not the label itself (``answer.words``)."""
    return config["answer"]["words"]


def hidden_provenance(config: dict, model: str) -> dict:
    """The attributes the model's hidden-state files carry and their readers expect
    (:func:`emoprobe.provenance.hidden_states`)."""
    return provenance.hidden_states(model_identity(config, model), template(config), sample(config),
                                    extraction_settings(config, model)["storage_dtype"])


def hidden_files(config: dict, model: str) -> list[str]:
    """The model's hidden-state files, one per extraction job (:func:`emoprobe.jobs.extraction_chunks`)."""
    return [path(HIDDEN, model=model, first=first, last=last) for first, last in jobs.extraction_chunks(config, model)]


def first_stored_layer(config: dict, first: int) -> int:
    """The first layer the extraction job of the chunk starting at ``first`` stores: 0 (the token embeddings) in the
    first chunk where they are stored."""
    return 0 if stores_embeddings(config) and int(first) == 1 else int(first)


def hidden_file_of_layer(config: dict, model: str, layer: int) -> str:
    """The hidden-state file holding ``layer`` (layer 0, the embeddings, is in the first)."""
    chunks = jobs.extraction_chunks(config, model)
    index = next(i for i, (first, last) in enumerate(chunks) if first <= max(int(layer), 1) <= last)
    return hidden_files(config, model)[index]


# --- probes and baselines


def labels(config: dict) -> list[str]:
    """The emotion labels; a label's id is its index here (the config keeps them sorted)."""
    return sorted(config["dataset"]["labels"])


def uses_answers(config: dict) -> bool:
    """Whether the probes read the model's answers: for the ``model_correct`` subset or the answer probe."""
    return "model_correct" in config["probe"]["subsets"] or config["probe"]["answer_probe"]


def probe_settings(config: dict) -> Probing:
    """What decides a linear probe's fit and scores (:class:`emoprobe.settings.Probing`): not the grid (a job's
    cells are its own param), the non-linear or conditional probes, the job layout or the localisation's
    bootstrap."""
    probe = config["probe"]
    return Probing(Problems.from_config(probe), Split.from_config(probe), Logistic.from_config(probe),
                   probe["device"])


def baseline_settings(config: dict) -> Probing:
    """What decides the text and appraisal-ratings baselines: a linear probe's settings, on the CPU whatever
    ``probe.device`` says."""
    return probe_settings(config)._replace(device="cpu")


def localise_settings(config: dict) -> dict:
    """What decides a localisation besides its inputs: the bootstrap's replicates and seed."""
    return {key: config["probe"][key] for key in ("bootstrap", "seed")}


def appraisal_settings(config: dict) -> dict:
    """What decides the appraisal probes besides their folds: the ridge penalty and the positions (``appraisal``)."""
    return config["appraisal"]


def appraisal_columns(config: dict) -> list[str]:
    """The corpus's appraisal-rating columns, in the order the appraisal tables and directions keep them."""
    return config["dataset"]["appraisal_columns"]


def n_layers(config: dict, model: str) -> int:
    """The model's decoder layers."""
    return config["models"][model]["n_layers"]


def split_settings(config: dict) -> Split:
    """The probes' folds, which the appraisal probes share."""
    return Split.from_config(config["probe"])


def problem_settings(config: dict) -> dict:
    """The settings that decide which probing problems there are and how many folds score them."""
    return {key: config["probe"][key] for key in ("subsets", "answer_probe", "folds")}


def nonlinear_settings(config: dict) -> Probing:
    """What decides a non-linear probe: the linear probes' problems, folds and device, its own trainer (not the
    linear probes' optimiser, nor where it is fitted: a job's cells are its own param)."""
    probe = config["probe"]
    return Probing(Problems.from_config(probe), Split.from_config(probe), MLP.from_config(probe["nonlinear"]),
                   probe["device"])


def grid_cells(config: dict, location: str) -> dict[str, dict[int, grid.Cell]]:
    """The linear probes' cells at ``location`` (:func:`emoprobe.grid.cells`)."""
    return grid.cells(config)[location]


def nonlinear_cells(config: dict, location: str) -> dict[str, dict[int, grid.Cell]]:
    """The non-linear probes' cells at ``location`` (:func:`emoprobe.grid.nonlinear_cells`)."""
    return grid.nonlinear_cells(grid.cells(config)[location])


def nonlinear_locations(config: dict) -> list[str]:
    """The locations with non-linear probes (``probe.nonlinear``)."""
    return grid.nonlinear_locations(config, grid.cells(config))


def text_control(config: dict) -> bool:
    """Whether the text baselines fit a shuffled-label control: when any probe of the grid has one."""
    cells = grid.cells(config)
    return any(cell.control for by_problem in cells.values() for by_position in by_problem.values()
               for cell in by_position.values())


def probe_files(config: dict, model: str, location: str | None = None, suffix: str = "tsv") -> list[str]:
    """The probe tables (``tsv``), predictions (``predictions.h5``) or directions (``directions.h5``) of every probe
    job of a model, or of one location (none where the grid fits nothing)."""
    return [f"{path(PROBES, model=model, location=loc, first=first, last=last)}.{suffix}"
            for loc in ([location] if location else config["locations"])
            for first, last in jobs.probe_groups(config, model, loc)]


def probe_layers(config: dict, model: str, location: str) -> list[int]:
    """The layers the linear probes of ``location`` are fitted at (the embeddings, 0, on the residual stream)."""
    return [layer for first, last in jobs.probe_groups(config, model, location) for layer in range(first, last + 1)]


def lens_layers(config: dict, model: str) -> list[int]:
    """The layers the logit lens reads: every stored layer of the residual stream."""
    return list(range(0 if stores_embeddings(config) else 1, config["models"][model]["n_layers"] + 1))


def appraisal_files(config: dict) -> list[str]:
    """Every model's appraisal-probe table, where the corpus has appraisal ratings (``dataset.appraisal_columns``)."""
    if not config["dataset"]["appraisal_columns"]:
        return []
    return [f"{path(APPRAISAL, model=model)}.tsv" for model in config["models"]]


def baselines(config: dict) -> list[str]:
    """The baselines every model's probes are compared with (:data:`emoprobe.grid.BASELINES`)."""
    return [name for name in grid.BASELINES if name != "appraisal_ratings" or config["dataset"]["appraisal_columns"]]


def predictions_provenance(config: dict, model: str, location: str) -> dict:
    """The attributes of the predictions (and directions) files of ``location``'s probes, or of a baseline
    (:func:`emoprobe.provenance.predictions`)."""
    return provenance.predictions(model, location, labels(config))


def localised(config: dict, model: str) -> dict[str, list[str]]:
    """The predictions files the localisation compares, by location: every location's probes (where the grid fits
    any), then the logit lens."""
    files = {location: probe_files(config, model, location, "predictions.h5") for location in config["locations"]}
    files = {location: paths for location, paths in files.items() if paths}
    return {**files, "logit_lens": [f"{path(BASELINE, model=model, baseline='logit_lens')}.predictions.h5"]}


def score_files(config: dict) -> list[str]:
    """Every table of probe and baseline scores of the run."""
    models = list(config["models"])
    return ([table for model in models for table in probe_files(config, model)]
            + [path(NONLINEAR, model=model, location=location) for model in models
               for location in nonlinear_locations(config)]
            + [f"{path(BASELINE, model=model, baseline=kind)}.tsv" for model in models for kind in baselines(config)])


def score_locations(config: dict) -> list[str]:
    """The locations of results/accuracy.tsv in order: each configured one, then its non-linear probes."""
    nonlinear = nonlinear_locations(config)
    return [name for location in config["locations"]
            for name in [location] + ([f"{location}-nonlinear"] if location in nonlinear else [])]


# --- experiments on the forward pass


def editing_experiments(config: dict) -> list[str]:
    """The configured experiments that edit the model (an ``intervene`` job and table each)."""
    return experiments.editing(config["interventions"]["experiments"])


def heatmap_experiments(config: dict) -> list[str]:
    """The configured experiments drawn beside the probes in the heatmap (each location edited in turn)."""
    return experiments.per_location(config["interventions"]["experiments"])


def sample_settings(config: dict) -> dict:
    """The settings that decide the experiments' sample of texts."""
    return {key: config["interventions"][key] for key in ("subset", "texts", "seed")}


def batching(config: dict) -> dict:
    """The experiments' batching: it decides the last bits of the logits, as the extraction's does the states."""
    return {key: config["interventions"][key] for key in ("batch_tokens", "max_batch_size", "max_padding")}


def intervention_settings(config: dict, experiment: str) -> dict:
    """The settings that decide an experiment's table: the sample, windows, and the experiment's own section (those
    that edit each location: the locations too); not the batching or threads."""
    settings = config["interventions"]
    decided = {**sample_settings(config), "clip_windows": settings["clip_windows"]}
    if experiments.EXPERIMENTS[experiment].per_location:
        decided["locations"] = settings["locations"]
    return {**decided, **settings[experiment]}


def attention_settings(config: dict) -> dict:
    """The settings that decide the attention table: the sample and the attention section."""
    return {**sample_settings(config), "attention": config["interventions"]["attention"]}


def attention_patching(config: dict) -> list[str]:
    """The experiment drawn beside the attention weights, where configured: patching the attention output."""
    return [name for name in ("patching",) if name in editing_experiments(config)]


def directions_files(config: dict, model: str, experiment: str) -> list[str]:
    """The directions an experiment pushes along (none for those that push along none)."""
    directions = experiments.EXPERIMENTS[experiment].directions
    if directions == "emotion":
        return probe_files(config, model, "residual", "directions.h5")
    if directions == "appraisal":
        return [f"{path(APPRAISAL, model=model)}.directions.h5"]
    return []


def directions_provenance(config: dict, model: str, experiment: str) -> dict:
    """The attributes of the directions file(s) an experiment reads (none where it reads none)."""
    directions = experiments.EXPERIMENTS[experiment].directions
    if directions == "emotion":
        return predictions_provenance(config, model, "residual")
    if directions == "appraisal":
        return provenance.appraisal_directions(model, config["dataset"]["appraisal_columns"])
    return {}


def heatmap_probe_subset(config: dict) -> str:
    """The probes drawn beside the interventions: those of the texts intervened on, where the probes fit them."""
    subset = config["interventions"]["subset"]
    return subset if subset in config["probe"]["subsets"] else config["probe"]["subsets"][0]


def intervention_files(config: dict, model: str | None = None, names: list[str] | None = None) -> list[str]:
    """The experiment tables of one model (or all), of the experiments ``names`` (default: every configured one
    that edits the model)."""
    return [path(INTERVENTION, model=m, experiment=experiment)
            for m in ([model] if model else config["models"])
            for experiment in (editing_experiments(config) if names is None else names)]


# --- what the run records and produces


def recorded_config(config: dict) -> dict:
    """The config behind the results, defaults filled in, for results/config.yaml: every seed and setting that
    decides a number, with the sha256 of the corpus read; without the :data:`SCHEDULING` keys."""
    recorded = {section: without_scheduling(section, values) if isinstance(values, dict) else values
                for section, values in config.items()}
    recorded["dataset"] = {**dataset_settings(config), "path": config["dataset"]["path"],
                           "sha256": corpus_sha256(config)}
    recorded["models"] = {name: without_scheduling("models", entry) for name, entry in config["models"].items()}
    return recorded


def words_provenance(config: dict, model: str) -> dict:
    """The attributes of ``model``'s word-embeddings file (:func:`emoprobe.provenance.word_embeddings`)."""
    return provenance.word_embeddings(model_identity(config, model), sample(config))


def conditional_settings(config: dict) -> dict:
    """What decides the conditional probes' fits and scores (where they are fitted is each job's own param): their
    penalties and inner folds, the probes' folds and trainer settings."""
    where = ("locations", "positions", "problems")
    return {**{k: v for k, v in config["probe"]["conditional"].items() if k not in where},
            **split_settings(config)._asdict(), **{key: config["probe"][key] for key in ("max_iter", "tol", "device")}}


def conditional_uses_answers(config: dict) -> bool:
    """Whether a conditional probe's problem needs the models' answers (a subset of them, or the answer target)."""
    return any(problem != "all/label" for cells in grid.conditional_cells(config).values() for problem in cells)


def conditional_baselines(config: dict) -> list[str]:
    """The conditional probes' baselines in the order of their files' axis: the label frequencies, then the
    configured ones."""
    return ["frequencies", *config["probe"]["conditional"]["baselines"]]


def conditional_cells(config: dict, location: str) -> dict[str, list[int]]:
    """``{problem: [positions]}`` of the conditional probes at ``location``
    (:func:`emoprobe.grid.conditional_cells`)."""
    return grid.conditional_cells(config)[location]


def conditional_jobs(config: dict, model: str) -> list[dict]:
    """``model``'s conditional probe jobs, as its localisation reads them: the location, the job's index into the
    lists of files (:func:`conditional_files`), and the provenance of its file."""
    return [{"index": i, "location": location,
             "provenance": provenance.conditional(model, location, labels(config), conditional_baselines(config))}
            for i, location in enumerate(grid.conditional_cells(config))]


def conditional_files(config: dict, model: str, suffix: str) -> list[str]:
    """``model``'s conditional probe jobs' files (``tsv`` or ``h5``), in the order of :func:`conditional_jobs`."""
    return [f"{path(CONDITIONAL, model=model, location=location)}.{suffix}"
            for location in grid.conditional_cells(config)]


def all_targets(config: dict) -> list[str]:
    """Every table and figure of the configured run."""
    models = list(config["models"])
    figures = ["accuracy_by_layer", "accuracy_by_depth"]
    figures += [f"{kind}/{model}" for kind in ("layer_position", "confusion") for model in models]
    tables = [ACCURACY, LOCALISATIONS, SUBSETS, ANSWER_SUMMARY, RECORDED_CONFIG]
    tables += [path(TEXT_TABLE, model=model) for model in models]
    if grid.conditional_cells(config):
        tables += [CONDITIONAL_TABLE, CONDITIONAL_LOCALISATIONS]
        figures += [f"conditional/{model}" for model in models]
    if config["dataset"]["appraisal_columns"]:
        figures += [f"appraisal_r2/{model}" for model in models]
        tables.append(APPRAISAL_R2)
    configured = config["interventions"]["experiments"]
    if "attention" in configured:
        tables += [f"{path(ATTENTION, model=model)}.tsv" for model in models]
        figures += [f"attention/{model}" for model in models]
    if editing_experiments(config):
        tables.append(INTERVENTIONS)
        kinds = (["interventions"] if heatmap_experiments(config) else []) + experiments.with_figure(configured)
        figures += [f"{kind}/{model}" for kind in kinds for model in models]
        figures += ["interventions_by_depth"] if heatmap_experiments(config) else []
    return tables + [figure(name, suffix) for name in figures for suffix in ("png", "pdf")]
