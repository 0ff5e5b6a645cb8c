"""The workflow used as a Snakemake module of another workflow, in another directory: `module emoprobe: snakefile:
...; config: config` and `use rule * from emoprobe as emoprobe_*`, from a local path and from a URL."""

from __future__ import annotations

import functools
import http.server
import re
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT, default_config, run_snakemake, small_config
from test_workflow import planned_jobs

PREFIX = "emoprobe_"


def outer_workflow(directory, snakefile: str = str(ROOT / "Snakefile")):
    """A workflow of its own in ``directory`` that uses every rule of emoprobe's ``snakefile`` (a path or URL) as
    ``emoprobe_*``, passing its config in (the module's own ``configfile: config.yaml`` is then not read)."""
    directory.mkdir(parents=True, exist_ok=True)
    outer = directory / "Snakefile"
    outer.write_text(f'module emoprobe:\n    snakefile: "{snakefile}"\n    config: config\n\n\n'
                     f"use rule * from emoprobe as {PREFIX}*\n")
    return outer


@pytest.fixture(scope="module")
def direct_plan(tmp_path_factory) -> dict[str, int]:
    """The jobs a dry run of the workflow itself plans for the small config."""
    return planned_jobs(run_snakemake(tmp_path_factory.mktemp("direct"), small_config(), "--dry-run"))


def as_module(jobs: dict[str, int]) -> dict[str, int]:
    return {PREFIX + rule: n for rule, n in jobs.items()}


def test_an_outer_workflow_plans_every_job_of_the_workflow(tmp_path, direct_plan):
    outer = outer_workflow(tmp_path / "outer")
    jobs = planned_jobs(run_snakemake(tmp_path / "work", small_config(), "--dry-run", snakefile=outer))
    assert direct_plan["fit_probes"] == 6 and direct_plan["intervene"] == 5  # the whole plan, not a part
    assert jobs == as_module(direct_plan)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served_workflow():
    """The workflow's directory served over HTTP on loopback: a module whose files are not on this machine for
    Snakemake (it reads them through its source cache), as from a git host. Yields the Snakefile's URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(ROOT)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/Snakefile"
    server.shutdown()
    thread.join()


def test_a_module_from_a_url_plans_the_same_jobs(tmp_path, direct_plan, served_workflow):
    outer = outer_workflow(tmp_path / "outer", served_workflow)
    jobs = planned_jobs(run_snakemake(tmp_path / "work", small_config(), "--dry-run", snakefile=outer))
    assert jobs == as_module(direct_plan)


def declared_local_rules() -> set[str]:
    """The rules whose definition says ``localrule: True``."""
    text = "".join(path.read_text() for path in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))])
    return {rule for rule, body in re.findall(r"(?ms)^rule (\w+):\n(.*?)(?=^\S|\Z)", text)
            if re.search(r"^\s+localrule: True$", body, flags=re.M)}


# all, the hub models' download, the aggregating and plotting rules (docs/cluster.md): they run where snakemake runs,
# never as a cluster job
LOCAL_RULES = {"all", "download_model", "aggregate_accuracy", "count_subsets", "record_config", "summarise_answers",
               "aggregate_appraisal", "plot_accuracy", "plot_layer_position", "plot_appraisal", "plot_confusion",
               "aggregate_interventions", "plot_interventions", "plot_experiment", "plot_interventions_by_depth",
               "plot_attention"}
# Snakemake's `localrules:` directive keeps the names it is given, which a module's `as emoprobe_*` changes: each
# local rule says `localrule: True` itself. Printed by the workflow Snakemake parses (no public API lists them).
PRINT_LOCAL_RULES = """
import sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings
snakefile, workdir, configfile = map(Path, sys.argv[1:])
with SnakemakeApi(OutputSettings()) as api:
    workflow = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=snakefile, workdir=workdir,
                            config_settings=ConfigSettings(configfiles=[configfile], replace_workflow_config=True))
    workflow.dag()  # parses the Snakefile
    print("LOCAL", " ".join(sorted(workflow._workflow._localrules)))
"""


@pytest.mark.parametrize("module", [False, True])
def test_the_local_rules_stay_local_in_a_module(tmp_path, module):
    import yaml

    snakefile = outer_workflow(tmp_path / "outer") if module else ROOT / "Snakefile"
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(small_config()))
    result = subprocess.run([sys.executable, "-c", PRINT_LOCAL_RULES, str(snakefile), str(tmp_path), str(configfile)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    local = result.stdout.split("LOCAL", 1)[1].split()
    assert declared_local_rules() >= LOCAL_RULES
    assert set(local) == {(PREFIX if module else "") + rule for rule in declared_local_rules()}
    assert not re.search(r"(?m)^localrules:", (ROOT / "Snakefile").read_text())
    assert "localrules directive specifies rules" not in result.stdout + result.stderr


def tiny_config() -> dict:
    """Real SmolLM2 on 65 real texts, the residual stream at the last token, one probe per layer (no control, no
    directions), on all texts and their true labels, no experiments."""
    config = default_config()
    config["dataset"]["limit"] = 65
    config["models"] = {"smollm2-135m": config["models"]["smollm2-135m"]}
    config["locations"], config["positions"] = ["residual"], [-1]
    config["probe"].update(subsets=["all"], answer_probe=False, bootstrap=200,
                           grid=[{"locations": "all", "positions": "all", "problems": "all"}])
    config["probe"]["nonlinear"]["fit"] = False
    config["interventions"]["experiments"] = []
    # one thread: two torch threads on a 2-core machine that runs anything else wait on each other (measured: the
    # extraction of these 65 texts 54 s with 2 threads, 6 s with 1, beside another test run); decides no number
    config["extraction"]["threads"] = 1
    return config


PROBES = "results/probes/smollm2-135m/residual/layers00-30.tsv"  # the token embeddings and SmolLM2's 30 layers


def test_an_outer_workflow_runs_the_workflow(tmp_path):
    """From the GGUF package to a probe job's table: the model dequantised, the states extracted, the probes
    fitted, each by the module's rules in the outer workflow's directory."""
    import pandas as pd

    outer = outer_workflow(tmp_path / "outer")
    workdir = tmp_path / "work"
    start = time.monotonic()
    result = run_snakemake(workdir, tiny_config(), PROBES, "--cores", "2", snakefile=outer, timeout=900)
    print(f"\nthe outer workflow's run to {PROBES}: {time.monotonic() - start:.0f} s")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert planned_jobs(run_snakemake(workdir, tiny_config(), PROBES, "--dry-run", snakefile=outer)) == {}
    ran = re.findall(r"^(?:local)?rule (\w+):", result.stdout + result.stderr, flags=re.M)
    assert sorted(ran) == sorted(PREFIX + rule for rule in ("prepare_gguf_model", "prepare_prompts",
                                                              "extract_hidden_states", "fit_probes"))
    probes = pd.read_csv(workdir / PROBES, sep="\t")
    assert sorted(set(probes["layer"])) == list(range(31)) and set(probes["position"]) == {-1}
    assert probes["balanced_accuracy"].between(0, 1).all()
    # and the workflow's outputs, in the outer workflow's directory only
    assert not (outer.parent / "results").exists() and (workdir / "results/hidden/smollm2-135m").is_dir()
