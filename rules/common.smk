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
    duplicate_keys,
    layer_chunks,
    model_source,
    schema_errors,
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

MODELS = list(config["models"])
GGUF_MODELS = [m for m in MODELS if model_source(m, config["models"][m]) == "gguf"]
LAYERS = {m: list(range(1, config["models"][m]["n_layers"] + 1)) for m in MODELS}
CHUNKS = {m: layer_chunks(config["models"][m]["n_layers"], chunk_size(config, m)) for m in MODELS}


wildcard_constraints:
    model="|".join(re.escape(m) for m in MODELS),
    first=r"\d+",
    last=r"\d+",
    layer=r"\d+",


def corpus_csv():
    """The configured corpus file if it exists, else where the download rule puts it."""
    path = config["dataset"]["path"]
    if os.path.exists(path):
        return path
    if not config["dataset"]["url"]:
        raise WorkflowError(f"dataset.path: {path!r} does not exist and dataset.url is not set")
    return f"resources/corpus/{os.path.basename(path)}"


def chunk_file(model, first, last):
    return f"results/hidden/{model}/layers{int(first):02d}-{int(last):02d}.h5"


def chunk_files(model):
    return [chunk_file(model, first, last) for first, last in CHUNKS[model]]


def chunk_of_layer(wildcards):
    layer = int(wildcards.layer)
    first, last = next(c for c in CHUNKS[wildcards.model] if c[0] <= layer <= c[1])
    return chunk_file(wildcards.model, first, last)


def probe_files(model):
    return [f"results/probes/{model}/layer{layer:02d}.tsv" for layer in LAYERS[model]]


def model_inputs(wildcards):
    """Files the extraction of a model depends on: its prepared or local directory."""
    model = config["models"][wildcards.model]
    source = model_source(wildcards.model, model)
    if source == "gguf":
        return {"model_dir": f"resources/models/{wildcards.model}"}
    if source == "local":
        return {"model_dir": model["local"]}
    return {}


def model_bytes_per_param():
    return 2 if config["extraction"]["dtype"] in ("float16", "bfloat16") else 4


def extraction_mem_mb(wildcards, attempt):
    """Weights plus a batch of activations (batch_tokens x width x a few buffers), growing with attempt."""
    model = config["models"][wildcards.model]
    weights = model["params_m"] * 1e6 * model_bytes_per_param()
    activations = config["extraction"]["batch_tokens"] * model["hidden_size"] * 4 * 64
    return int((weights * 1.5 + activations) / 2**20 + 1024) * attempt


def probe_mem_mb(wildcards, input, attempt):
    """One layer of the chunk file in float32, plus standardised float64 copies of one position."""
    first, last = next(c for c in CHUNKS[wildcards.model] if c[0] <= int(wildcards.layer) <= c[1])
    layer_mb = input.size_mb / (last - first + 1)
    return int(layer_mb * 4 + 1024) * attempt
