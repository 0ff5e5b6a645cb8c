import os
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.0")

# emoprobe is installed like any package: in the launching venv by `make install` (pip install
# --editable .), in each conda env of envs/ from this workflow's directory, which pip finds here
# (the envs' "-e ${EMOPROBE_WORKFLOW}"; Snakemake runs conda, and conda pip, from .snakemake/conda).
os.environ.update(EMOPROBE_WORKFLOW=workflow.basedir)  # set for conda, not read: no envvars entry

from emoprobe import grid, jobs
from emoprobe.architecture import model_source, package_file
from emoprobe.config import (
    code_sha256,
    count_records,
    prepare_config,
    prompt_template,
    sha256_of,
)
from emoprobe.corpus import checked_corpus
from emoprobe.errors import ConfigError, UserError

try:
    prepare_config(config, workflow.configfiles, workflow.source_path("../schemas/config.schema.yaml"), Path.cwd())
except ConfigError as err:
    raise WorkflowError(f"invalid config: {err}") from None

TEMPLATE = prompt_template(config["prompt"])
# A local corpus is checked now, so that a bad one stops the workflow within seconds, before any job (a
# model's download or dequantising) starts; prepare_prompts checks a downloaded one.
if os.path.exists(config["dataset"]["path"]):
    try:
        checked_corpus(config["dataset"]["path"], config["dataset"])
    except UserError as err:
        raise WorkflowError(f"invalid corpus: {err}") from None


# Declared so that executors whose jobs do not inherit this environment pass them on (SLURM's jobs
# inherit it, and the plugin never writes them into a command line). Only those that are set: a
# declared variable must be.
envvars:
    *[name for name in ("HF_HOME", "HF_TOKEN", "HF_HUB_OFFLINE", "HDF5_USE_FILE_LOCKING") if name in os.environ],


MODELS = list(config["models"])
GRID = grid.cells(config)
LAYERS = {m: list(range(1, config["models"][m]["n_layers"] + 1)) for m in MODELS}
CHUNKS = {m: jobs.extraction_chunks(config, m) for m in MODELS}
# Extraction stores the token embeddings as layer 0 of the residual stream, in the first chunk.
EMBEDDING_LAYER = "residual" in config["locations"]
# the locations with non-linear probes (probe.nonlinear)
NONLINEAR = grid.nonlinear_locations(config, GRID)


EXPERIMENTS = config["interventions"]["experiments"]
# The experiments that edit the model (one intervene job and table each); "attention" only reads it (rule attend).
INTERVENTIONS = [e for e in EXPERIMENTS if e != "attention"]
# Experiments whose tables share the combined heatmap with the probes: where a location is used.
HEATMAP_EXPERIMENTS = [e for e in ("zero", "random", "patching") if e in EXPERIMENTS]


wildcard_constraints:
    model="|".join(re.escape(m) for m in MODELS),
    experiment="zero|random|patching|promotion|surgery",
    first=r"\d+",
    last=r"\d+",
    location="|".join(config["locations"]),


def corpus_csv():
    """The configured corpus file if it exists, else where the download rule puts it.

    A local corpus is marked ancient: its content (:func:`corpus_sha256`, a param of the rule reading
    it) and not its modification time decides whether the prompts are out of date, so a corpus copied,
    unpacked or downloaded again with the same bytes reruns nothing.
    """
    path = config["dataset"]["path"]
    if os.path.exists(path):
        return ancient(path)
    if not config["dataset"]["url"]:
        raise WorkflowError(f"dataset.path: {path!r} does not exist and dataset.url is not set")
    return f"resources/corpus/{os.path.basename(path)}"


def corpus_sha256():
    """sha256 of the local corpus; for one still to be downloaded, the sha256 the download checks."""
    path = config["dataset"]["path"]
    return sha256_of([path]) if os.path.exists(path) else config["dataset"]["sha256"]


def script_code(name):
    """sha256 of the emoprobe code that scripts/{name}.py runs (see emoprobe.config.code_sha256): a param
    of its rule, so that a change of that code reruns the rule."""
    return code_sha256(
        os.path.join(workflow.basedir, "scripts", f"{name}.py"), os.path.join(workflow.basedir, "emoprobe")
    )


# Texts in the run, for resource estimates: the sample size, else the corpus's records, else (the
# corpus is yet to be downloaded) the configured guess.
N_TEXTS = config["dataset"]["limit"] or count_records(config["dataset"]["path"]) or config["dataset"]["texts_guess"]


def chunk_file(model, first, last):
    return f"results/hidden/{model}/layers{int(first):02d}-{int(last):02d}.h5"


def chunk_files(model):
    return [chunk_file(model, first, last) for first, last in CHUNKS[model]]


def chunk_of_layer(model, layer):
    """The chunk file holding ``layer`` (layer 0, the embeddings, is in the first)."""
    first, last = next(c for c in CHUNKS[model] if c[0] <= max(int(layer), 1) <= c[1])
    return chunk_file(model, first, last)


def first_stored_layer(wildcards):
    """The first layer an extraction job stores: 0 (the token embeddings) in the first chunk."""
    return 0 if EMBEDDING_LAYER and int(wildcards.first) == 1 else int(wildcards.first)


def last_chunk_file(wildcards):
    """The chunk holding the last layer, from which the model's answers are read."""
    return chunk_of_layer(wildcards.model, LAYERS[wildcards.model][-1])


def probe_inputs(wildcards):
    return {"states": chunk_of_layer(wildcards.model, wildcards.first), **answers_input(wildcards)}


def answers_input(wildcards):
    """The model's answers, where a subset or target needs them."""
    if "model_correct" in config["probe"]["subsets"] or config["probe"]["answer_probe"]:
        return {"answers": f"results/answers/{wildcards.model}.tsv"}
    return {}


def chunk_index_of_layers(model):
    """For each layer (0, the embeddings, included), the index of its chunk file in :func:`chunk_files`."""
    return {
        layer: next(i for i, (first, last) in enumerate(CHUNKS[model]) if first <= max(layer, 1) <= last)
        for layer in range(0, config["models"][model]["n_layers"] + 1)
    }


def localisation_inputs(wildcards):
    """The predictions of every location's probes, of the logit lens and of the text probe, by location."""
    inputs = {location: probe_files(wildcards.model, location, "predictions.h5") for location in config["locations"]}
    inputs = {location: files for location, files in inputs.items() if files}
    inputs["logit_lens"] = [f"results/baselines/{wildcards.model}/logit_lens.predictions.h5"]
    inputs["text"] = [f"results/baselines/{wildcards.model}/text.predictions.h5"]  # paired with each probe
    return inputs


def probe_files(model, location=None, suffix="tsv"):
    """The probe tables (``tsv``) or predictions (``predictions.h5``) of every job of a model, or of one location."""
    return [
        f"results/probes/{model}/{loc}/layers{first:02d}-{last:02d}.{suffix}"
        for loc in ([location] if location else config["locations"])
        for first, last in jobs.probe_groups(config, model, loc)
    ]


def score_files():
    """Every table of probe and baseline scores of the run."""
    kinds = ["text", "logit_lens"] + (["appraisal_ratings"] if config["dataset"]["appraisal_columns"] else [])
    return (
        [path for model in MODELS for path in probe_files(model)]
        + [f"results/probes/{model}/{location}/nonlinear.tsv" for model in MODELS for location in NONLINEAR]
        + [f"results/baselines/{model}/{kind}.tsv" for model in MODELS for kind in kinds]
    )


def score_locations():
    """The locations of results/accuracy.tsv in order: each configured one, then its non-linear probes."""
    return [
        name
        for location in config["locations"]
        for name in [location] + ([f"{location}-nonlinear"] if location in NONLINEAR else [])
    ]


def nonlinear_cells(location):
    """The non-linear probes' cells at ``location`` (:func:`emoprobe.grid.nonlinear_cells`) as plain data."""
    return {
        problem: {position: cell._asdict() for position, cell in by_position.items()}
        for problem, by_position in grid.nonlinear_cells(GRID[location]).items()
    }


def probe_layers(model, location):
    """The layers the linear probes of ``location`` are fitted at (the embeddings, 0, on the residual stream)."""
    return [layer for first, last in jobs.probe_groups(config, model, location) for layer in range(first, last + 1)]


def appraisal_files():
    return [f"results/appraisal/{model}.tsv" for model in MODELS] if config["dataset"]["appraisal_columns"] else []


def model_inputs(wildcards):
    """Files the extraction of a model depends on: its prepared or local directory."""
    model = config["models"][wildcards.model]
    source = model_source(wildcards.model, model)
    if source == "gguf":
        return {"model_dir": f"resources/models/{wildcards.model}"}
    if source == "local":
        return {"model_dir": model["local"]}
    return {}


def gguf_parts(wildcards):
    """The GGUF file (or its parts, in order) of a model, inside the installed packages that ship it."""
    return [str(package_file(spec)) for spec in config["models"][wildcards.model]["gguf"]["files"]]


# Params hold exactly what decides a rule's output: these helpers leave out the keys that only size,
# schedule or locate work, so that editing those reruns nothing (tests/test_workflow.py edits each).


def dataset_settings():
    """The dataset settings that decide the prompts: not where the corpus lies or comes from (its sha256 is
    the param that stands for its bytes) nor the size guess for resource requests."""
    return {k: v for k, v in config["dataset"].items() if k not in ("path", "url", "sha256", "texts_guess")}


def model_identity(model):
    """What decides which model a job loads: its source entry and whether its own code may run; not its
    size estimates or job layout."""
    entry = config["models"][model]
    source = model_source(model, entry)
    return {"name": model, "source": source, source: entry[source], "trust_remote_code": entry["trust_remote_code"]}


def probe_settings():
    """The probe settings that decide a linear probe's fit and scores: not the grid (a job's cells are its own param),
    the non-linear probes, the job layout or the localisation's bootstrap."""
    return {k: v for k, v in config["probe"].items() if k not in ("grid", "nonlinear", "fits_per_job", "bootstrap")}


def baseline_settings():
    """The probe settings that decide the text and appraisal-ratings baselines: a probe's less ``device``, since they
    are fitted on the CPU."""
    return {k: v for k, v in probe_settings().items() if k != "device"}


def grid_cells(location):
    """The grid's cells at ``location`` (:func:`emoprobe.grid.cells`) as plain data: ``{problem: {position:
    {"control": bool, "directions": bool}}}``."""
    return {
        problem: {position: cell._asdict() for position, cell in by_position.items()}
        for problem, by_position in GRID[location].items()
    }


def text_control():
    """Whether the text baseline fits a shuffled-label control: when any probe of the grid has one."""
    return any(cell.control for by_problem in GRID.values() for cells in by_problem.values() for cell in cells.values())


def model_shape(model):
    """The depth and width the model has (read from it at parse time, :mod:`emoprobe.architecture`)."""
    return {key: config["models"][model][key] for key in ("n_layers", "hidden_size")}


def extraction_settings(model):
    """The extraction settings that decide a model's states (not threads or chunking)."""
    settings = {k: v for k, v in config["extraction"].items() if k not in ("threads", "layer_chunk_size")}
    settings["storage_dtype"] = config["models"][model].get("storage_dtype", settings["storage_dtype"])
    return settings


def hidden_provenance(model):
    """File attributes each reader of the model's hidden-state files expects
    (:func:`emoprobe.h5io.check_provenance`): the model, its source, the prompt template and the sample."""
    entry = config["models"][model]
    source = model_source(model, entry)
    return {
        "model": model,
        "source": {source: entry[source]},
        "prompt_template": TEMPLATE,
        "dataset_limit": config["dataset"]["limit"],
        "dataset_seed": config["dataset"]["seed"],
        "storage_dtype": extraction_settings(model)["storage_dtype"],
    }


def predictions_provenance(model, location):
    """File attributes the readers of a probe or logit-lens predictions file expect."""
    return {"model": model, "location": location, "labels": sorted(config["dataset"]["labels"])}


def recorded_config():
    """The config behind the results, defaults filled in, for results/config.yaml: every seed and setting
    that decides a number, with the sha256 of the corpus read; without the keys that only size or schedule
    jobs, so that editing those does not rewrite the record."""
    recorded = {section: dict(values) if isinstance(values, dict) else values for section, values in config.items()}
    recorded["dataset"] = {**dataset_settings(), "path": config["dataset"]["path"], "sha256": corpus_sha256()}
    recorded["extraction"] = {k: v for k, v in config["extraction"].items() if k != "threads"}
    recorded["probe"] = {k: v for k, v in config["probe"].items() if k != "fits_per_job"}
    recorded["interventions"] = {k: v for k, v in config["interventions"].items() if k != "threads"}
    recorded["models"] = {
        name: {k: v for k, v in entry.items() if k not in ("params_m", "compute_params_m")}
        for name, entry in config["models"].items()
    }
    return recorded


def sample_inputs(wildcards):
    """What the experiments' sample of texts needs: the model, the prompts, and the answers where it is drawn from
    model_correct."""
    inputs = {**model_inputs(wildcards), "prompts": "results/corpus/prompts.tsv"}
    if config["interventions"]["subset"] == "model_correct":
        inputs["answers"] = f"results/answers/{wildcards.model}.tsv"
    return inputs


def intervention_inputs(wildcards):
    """What an experiment reads: its sample's inputs, and the directions it pushes along (promotion: the residual
    stream's emotion probes; surgery: the appraisal probes). Ablation and patching read no probe, so that refitting
    probes never reruns them."""
    inputs = sample_inputs(wildcards)
    if wildcards.experiment == "promotion":
        inputs["directions"] = probe_files(wildcards.model, "residual", "directions.h5")
    elif wildcards.experiment == "surgery":
        inputs["directions"] = f"results/appraisal/{wildcards.model}.directions.h5"
    return inputs


def sample_settings():
    """The settings that decide the experiments' sample of texts."""
    return {key: config["interventions"][key] for key in ("subset", "texts", "seed")}


def intervention_settings(experiment):
    """The settings that decide an experiment's table: the sample, windows, and the experiment's own section
    (ablation and patching: the locations too); not the batching or threads."""
    settings = config["interventions"]
    decided = {**sample_settings(), "clip_windows": settings["clip_windows"]}
    if experiment in ("zero", "random", "patching"):
        decided["locations"] = settings["locations"]
    return {**decided, **settings[experiment]}


def directions_provenance(model, experiment):
    """File attributes of the directions file(s) an experiment reads (none for ablation and patching)."""
    if experiment == "promotion":
        return predictions_provenance(model, "residual")
    if experiment == "surgery":
        return {"model": model, "appraisals": config["dataset"]["appraisal_columns"]}
    return {}


def heatmap_probe_subset():
    """The probes drawn beside the interventions: those of the texts intervened on, where the probes fit them."""
    subset = config["interventions"]["subset"]
    return subset if subset in config["probe"]["subsets"] else config["probe"]["subsets"][0]


def intervention_files(model=None, experiments=None):
    """The experiment tables of one model (or all), of the given experiments (default: every configured)."""
    return [
        f"results/interventions/{m}/{experiment}.tsv"
        for m in ([model] if model else MODELS)
        for experiment in (INTERVENTIONS if experiments is None else experiments)
    ]


def all_targets():
    """Every table and figure of the configured run."""
    figures = ["accuracy_by_layer", "accuracy_by_depth"]
    figures += [f"{kind}/{model}" for kind in ("layer_position", "confusion") for model in MODELS]
    tables = [
        "results/accuracy.tsv",
        "results/localisation.tsv",
        "results/subsets.tsv",
        "results/answers.tsv",
        "results/config.yaml",
    ]
    tables += expand("results/tables/{model}_accuracy_by_layer.txt", model=MODELS)
    if config["dataset"]["appraisal_columns"]:
        figures += [f"appraisal_r2/{model}" for model in MODELS]
        tables.append("results/appraisal_r2.tsv")
    if "attention" in EXPERIMENTS:
        tables += expand("results/attention/{model}.tsv", model=MODELS)
        figures += [f"attention/{model}" for model in MODELS]
    if INTERVENTIONS:
        tables.append("results/interventions.tsv")
        kinds = (["interventions"] if HEATMAP_EXPERIMENTS else []) + [
            e for e in ("promotion", "surgery") if e in EXPERIMENTS
        ]
        figures += [f"{kind}/{model}" for kind in kinds for model in MODELS]
        figures += ["interventions_by_depth"] if HEATMAP_EXPERIMENTS else []
    return tables + [f"results/figures/{figure}.{suffix}" for figure in figures for suffix in ("png", "pdf")]
