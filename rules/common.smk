import os
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.sourcecache import LocalSourceFile
from snakemake.utils import min_version

min_version("9.0")

import emoprobe
from emoprobe import experiments, grid, jobs, plan
from emoprobe.architecture import package_file
from emoprobe.config import code_sha256, prepare_config
from emoprobe.corpus import checked_corpus
from emoprobe.errors import ConfigError, UserError

# This workflow's own directory, the one holding its Snakefile, found from this file (rules/common.smk): not
# workflow.basedir, which is the directory of the outermost Snakefile, another workflow's where this one is used as
# a module (`module emoprobe: snakefile: ...`). None where the Snakefile is not a file of this machine (a module
# included from a URL, a git host or a local git repository at a tag): then the scripts are read through
# Snakemake's source cache, and the emoprobe code from the package installed in the launching environment, which
# is the code the jobs run.
_RULES_DIR = workflow.current_basedir
WORKFLOW_DIR = (
    os.path.dirname(_RULES_DIR.get_path_or_uri(secret_free=False)) if isinstance(_RULES_DIR, LocalSourceFile) else None
)
PACKAGE_DIR = os.path.join(WORKFLOW_DIR, "emoprobe") if WORKFLOW_DIR else os.path.dirname(emoprobe.__file__)

# emoprobe is installed like any package: in the launching venv by `make install` (pip install
# --editable .), in each conda env of envs/ from this workflow's directory, which pip finds here
# (the envs' "-e ${EMOPROBE_WORKFLOW}"; Snakemake runs conda, and conda pip, from .snakemake/conda).
# Set for conda, not read: no envvars entry. For a remote module, the directory the launching environment's
# emoprobe was installed from (editable), if any.
os.environ.update(EMOPROBE_WORKFLOW=WORKFLOW_DIR or os.path.dirname(PACKAGE_DIR))

try:
    # Hub models are looked up online by the main process only: a job (on a compute node, maybe offline) reads
    # what it was told (emoprobe/hub.py).
    prepare_config(
        config,
        workflow.configfiles,
        workflow.source_path("../schemas/config.schema.yaml"),
        Path.cwd(),
        ask_hub=workflow.is_main_process,
    )
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
    *[
        name
        for name in ("HF_HOME", "HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HDF5_USE_FILE_LOCKING")
        if name in os.environ
    ],


MODELS = list(config["models"])
N_TEXTS = plan.n_texts(config)


def wildcard_choice(values):
    """A wildcard's regular expression matching exactly ``values`` (nothing, where there are none)."""
    return "|".join(re.escape(str(v)) for v in values) or "(?!)"


wildcard_constraints:
    model=wildcard_choice(MODELS),
    experiment="|".join(experiments.editing()),
    first=r"\d+",
    last=r"\d+",
    location="|".join(config["locations"]),


def script_code(name, modules=()):
    """sha256 of the emoprobe code that scripts/{name}.py runs, with the package ``modules`` it runs by name (see
    emoprobe.config.code_sha256): a param of its rule, so that a change of that code reruns the rule."""
    if WORKFLOW_DIR:
        script = os.path.join(WORKFLOW_DIR, "scripts", f"{name}.py")
    else:
        script = workflow.source_path(f"../scripts/{name}.py")  # a local copy, relative to this file
    return code_sha256(script, PACKAGE_DIR, modules)


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
    return plan.path(plan.CORPUS_DOWNLOAD, filename=os.path.basename(path))


def model_inputs(wildcards):
    """Files a job loading the model depends on: the folder it loads the model from (plan.model_dir). A hub model's
    download is marked ancient: the commit, a param of every job that loads it, decides whether it is out of date,
    so that downloading the same commit again reruns nothing."""
    folder = plan.model_dir(config, wildcards.model)
    return {"model_dir": ancient(folder) if wildcards.model in plan.models_from(config, "hub") else folder}


def gguf_parts(wildcards):
    """The GGUF file (or its parts, in order) of a model, inside the installed packages that ship it."""
    return [str(package_file(spec)) for spec in config["models"][wildcards.model]["gguf"]["files"]]


def answers_input(wildcards):
    """The model's answers, where a subset or target needs them."""
    return {"answers": plan.path(plan.ANSWERS, model=wildcards.model)} if plan.uses_answers(config) else {}


def conditional_answers_input(wildcards):
    """The model's answers, where a conditional probe's problem needs them."""
    return {"answers": plan.path(plan.ANSWERS, model=wildcards.model)} if plan.conditional_uses_answers(config) else {}


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
