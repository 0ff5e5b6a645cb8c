import os
import sys

import yaml

from snakemake.utils import min_version, validate

min_version("9.0")

# The emoprobe package sits beside this workflow. Jobs import it through the
# symlink scripts/emoprobe, since Snakemake puts each script's directory on
# sys.path whatever the software deployment (venv, conda, cluster).
sys.path.insert(0, workflow.basedir)

from emoprobe.config import (
    ConfigError,
    check_config,
    chunk_size,
    code_sha256,
    count_records,
    duplicate_keys,
    layer_chunks,
    model_source,
    prompt_template,
    schema_errors,
    sha256_of,
)

for configfile_path in workflow.configfiles:
    if duplicates := duplicate_keys(configfile_path):
        raise WorkflowError(f"invalid config: {configfile_path}: keys given twice: {', '.join(duplicates)}")

errors = schema_errors(config, yaml.safe_load(open(workflow.source_path("../schemas/config.schema.yaml"))))
if errors:
    raise WorkflowError("invalid config:\n  " + "\n  ".join(errors))
validate(config, schema="../schemas/config.schema.yaml")  # fills in the defaults
try:
    check_config(config, Path.cwd())
except ConfigError as err:
    raise WorkflowError(f"invalid config: {err}") from None

TEMPLATE = prompt_template(config["prompt"])
# Declared so that executors whose jobs do not inherit this environment pass them on (SLURM's jobs
# inherit it, and the plugin never writes them into a command line). Only those that are set: a
# declared variable must be.
envvars:
    *[name for name in ("HF_HOME", "HF_TOKEN", "HF_HUB_OFFLINE", "HDF5_USE_FILE_LOCKING") if name in os.environ],


MODELS = list(config["models"])
GGUF_MODELS = [m for m in MODELS if model_source(m, config["models"][m]) == "gguf"]
LAYERS = {m: list(range(1, config["models"][m]["n_layers"] + 1)) for m in MODELS}
CHUNKS = {m: layer_chunks(config["models"][m]["n_layers"], chunk_size(config, m)) for m in MODELS}
# Probing problems per layer: each subset with the true labels, and all texts with the model's answer.
PROBLEMS_PER_LAYER = len(config["probe"]["subsets"]) + bool(config["probe"]["answer_probe"])
# Fits of one probe job per layer: every fold of every problem, and each fit's control.
FITS_PER_LAYER = max(config["probe"]["folds"], 1) * PROBLEMS_PER_LAYER * (2 if config["probe"]["control"] else 1)
# Layers per probe job, within one chunk file: about probe.fits_per_job fits each.
PROBE_GROUPS = {
    m: [
        (first + a - 1, first + b - 1)
        for first, last in CHUNKS[m]
        for a, b in layer_chunks(last - first + 1, max(config["probe"]["fits_per_job"] // FITS_PER_LAYER, 1))
    ]
    for m in MODELS
}
# Extraction stores the token embeddings as layer 0 of the residual stream, in the first chunk.
EMBEDDING_LAYER = "residual" in config["locations"]


wildcard_constraints:
    model="|".join(re.escape(m) for m in MODELS),
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
    return code_sha256(os.path.join(workflow.basedir, "scripts", f"{name}.py"),
                       os.path.join(workflow.basedir, "emoprobe"))


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


def probe_groups(model, location):
    """``(first, last)`` layers of each probe job of ``location``; the residual stream's first starts at 0."""
    return [(0 if location == "residual" and EMBEDDING_LAYER and first == 1 else first, last)
            for first, last in PROBE_GROUPS[model]]


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
    return {layer: next(i for i, (first, last) in enumerate(CHUNKS[model]) if first <= max(layer, 1) <= last)
            for layer in range(0, config["models"][model]["n_layers"] + 1)}


def localisation_inputs(wildcards):
    """The predictions of every location's probes and of the logit lens, by location."""
    inputs = {location: probe_files(wildcards.model, location, "predictions.h5") for location in config["locations"]}
    inputs["logit_lens"] = [f"results/baselines/{wildcards.model}/logit_lens.predictions.h5"]
    return inputs


def probe_files(model, location=None, suffix="tsv"):
    """The probe tables (``tsv``) or predictions (``predictions.h5``) of every job of a model, or of one location."""
    return [
        f"results/probes/{model}/{loc}/layers{first:02d}-{last:02d}.{suffix}"
        for loc in ([location] if location else config["locations"])
        for first, last in probe_groups(model, loc)
    ]


def score_files():
    """Every table of probe and baseline scores of the run."""
    return [path for model in MODELS for path in probe_files(model)] + [
        f"results/baselines/{model}/{kind}.tsv" for model in MODELS for kind in ("text", "logit_lens")]


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


def extraction_settings(model):
    """The extraction settings that decide a model's states (not threads or chunking)."""
    settings = {k: v for k, v in config["extraction"].items() if k not in ("threads", "layer_chunk_size")}
    settings["storage_dtype"] = config["models"][model].get("storage_dtype", settings["storage_dtype"])
    return settings


# For runtime requests: tokens per prompt (the two-shot prompts average 58 with SmolLM2's
# tokenizer, benchmarks/scaling.py) and a rate well below what a job reaches in float32 on CPUs
# (this 2-core laptop: about 200 GFLOP/s) and in 16-bit on a GPU (an H100: hundreds of TFLOP/s).
TOKENS_PER_TEXT = 64
FLOP_RATE = {"float32": 5e10, "bfloat16": 2e13, "float16": 2e13}


def extraction_runtime(wildcards, attempt):
    """Minutes: 2 x parameters x tokens through the chunk's last layer, at FLOP_RATE, plus loading."""
    model = config["models"][wildcards.model]
    params = model.get("compute_params_m", model["params_m"]) * 1e6 * int(wildcards.last) / model["n_layers"]
    seconds = 2 * params * N_TEXTS * TOKENS_PER_TEXT / FLOP_RATE[config["extraction"]["dtype"]]
    return int(15 + seconds / 60) * attempt


def model_bytes_per_param():
    return 2 if config["extraction"]["dtype"] in ("float16", "bfloat16") else 4


def extraction_mem_mb(wildcards, attempt):
    """Weights plus a batch of activations (batch_tokens x width x a few buffers), growing with attempt."""
    model = config["models"][wildcards.model]
    weights = model["params_m"] * 1e6 * model_bytes_per_param()
    activations = config["extraction"]["batch_tokens"] * model["hidden_size"] * 4 * 64
    return int((weights * 1.5 + activations) / 2**20 + 1024) * attempt


# Seconds per fit per million values. The batched trainer took 0.095 (Gemma) to 0.116 (SmolLM2) on one
# core of the 2-core AVX2 machine of docs/performance.md ("Probes: one batched solve": 30 fits of
# 6,600 x 5 x 576-640 values in 60-66 s per layer), the other core busy; 0.15 leaves room for wider
# layers that need more L-BFGS iterations, and a retry doubles it.
PROBE_SECONDS = 0.15


def layer_mb(model):
    """Size in float32 of one location of one layer: texts x positions x width."""
    return N_TEXTS * len(config["positions"]) * config["models"][model]["hidden_size"] * 4 / 2**20


def probe_mem_mb(wildcards, attempt):
    """One layer in float32, its standardised train/test copies and float64 statistics, and the libraries."""
    return int(layer_mb(wildcards.model) * 5 + 1024) * attempt


def probe_runtime(wildcards, attempt):
    """Minutes: PROBE_SECONDS per fit of a million (text x feature) values of all positions, on one CPU thread."""
    values = layer_mb(wildcards.model) * 2**20 / 4
    seconds = PROBE_SECONDS * FITS_PER_LAYER * values / 1e6 * (int(wildcards.last) - int(wildcards.first) + 1)
    return int(10 + seconds / 60) * attempt


def appraisal_mem_mb(wildcards, attempt):
    """As a probe, plus the ridge's Gram matrix."""
    width = config["models"][wildcards.model]["hidden_size"]
    return int(layer_mb(wildcards.model) * 5 + width * width * 8 * 3 / 2**20 + 1024) * attempt


def all_targets():
    """Every table and figure of the configured run."""
    figures = ["accuracy_by_layer", "accuracy_by_depth"]
    figures += [f"{kind}/{model}" for kind in ("layer_position", "confusion") for model in MODELS]
    tables = ["results/accuracy.tsv", "results/localisation.tsv", "results/subsets.tsv", "results/answers.tsv",
              "results/config.yaml"]
    tables += expand("results/tables/{model}_accuracy_by_layer.txt", model=MODELS)
    if config["dataset"]["appraisal_columns"]:
        figures += [f"appraisal_r2/{model}" for model in MODELS]
        tables.append("results/appraisal_r2.tsv")
    return tables + [f"results/figures/{figure}.{suffix}" for figure in figures for suffix in ("png", "pdf")]
