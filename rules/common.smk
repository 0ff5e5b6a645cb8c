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

from emoprobe import experiments, grid, jobs, plan
from emoprobe.architecture import model_source, package_file
from emoprobe.config import code_sha256, prepare_config
from emoprobe.corpus import checked_corpus
from emoprobe.errors import ConfigError, UserError

try:
    prepare_config(config, workflow.configfiles, workflow.source_path("../schemas/config.schema.yaml"), Path.cwd())
except ConfigError as err:
    raise WorkflowError(f"invalid config: {err}") from None

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
N_TEXTS = plan.n_texts(config)


wildcard_constraints:
    model="|".join(re.escape(m) for m in MODELS),
    experiment="|".join(experiments.editing()),
    first=r"\d+",
    last=r"\d+",
    location="|".join(config["locations"]),


def script_code(name):
    """sha256 of the emoprobe code that scripts/{name}.py runs (see emoprobe.config.code_sha256): a param
    of its rule, so that a change of that code reruns the rule."""
    return code_sha256(
        os.path.join(workflow.basedir, "scripts", f"{name}.py"), os.path.join(workflow.basedir, "emoprobe")
    )


def corpus_csv():
    """The configured corpus file if it exists, else where the download rule puts it.

    A local corpus is marked ancient: its content (plan.corpus_sha256, a param of the rule reading it) and not
    its modification time decides whether the prompts are out of date, so a corpus copied, unpacked or
    downloaded again with the same bytes reruns nothing.
    """
    path = config["dataset"]["path"]
    if os.path.exists(path):
        return ancient(path)
    if not config["dataset"]["url"]:
        raise WorkflowError(f"dataset.path: {path!r} does not exist and dataset.url is not set")
    return f"resources/corpus/{os.path.basename(path)}"


def model_inputs(wildcards):
    """Files a job loading the model depends on: its prepared or local directory."""
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


def answers_input(wildcards):
    """The model's answers, where a subset or target needs them."""
    return {"answers": plan.path(plan.ANSWERS, model=wildcards.model)} if plan.uses_answers(config) else {}


def probe_inputs(wildcards):
    """A probe job's hidden states (one file) and the answers where needed."""
    states = plan.hidden_file_of_layer(config, wildcards.model, wildcards.first)
    return {"states": states, **answers_input(wildcards)}


def sample_inputs(wildcards):
    """What the experiments' sample of texts needs: the model, the prompts, and the answers where it is drawn from
    model_correct."""
    inputs = {**model_inputs(wildcards), "prompts": plan.PROMPTS}
    if config["interventions"]["subset"] == "model_correct":
        inputs["answers"] = plan.path(plan.ANSWERS, model=wildcards.model)
    return inputs


def intervention_inputs(wildcards):
    """What an experiment reads: its sample's inputs, and the directions it pushes along (promotion: the residual
    stream's emotion probes; surgery: the appraisal probes). Ablation and patching read no probe, so that refitting
    probes never reruns them."""
    directions = plan.directions_files(config, wildcards.model, wildcards.experiment)
    return {**sample_inputs(wildcards), **({"directions": directions} if directions else {})}
