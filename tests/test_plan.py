"""The workflow's plan (emoprobe.plan): paths, which settings decide which output, provenance, the experiments."""

import copy
import re

import pytest
import yaml

from conftest import ROOT, default_config, small_config, with_changes
from emoprobe import experiments, plan, provenance
from emoprobe.config import prepare_config

SCHEMA = ROOT / "schemas/config.schema.yaml"


def prepared(config: dict) -> dict:
    """``config`` as the workflow holds it after parsing (validated, defaults filled in, models described)."""
    config = copy.deepcopy(config)
    prepare_config(config, [], SCHEMA, ROOT)
    return config


@pytest.fixture(scope="module")
def default():
    return prepared(default_config())


@pytest.fixture(scope="module")
def small():
    return prepared(small_config())


def pattern(template: str) -> re.Pattern:
    """The regular expression a Snakemake wildcard pattern matches (every wildcard one path component at most)."""
    return re.compile(re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$")


def test_paths_fill_wildcards_and_write_layers_with_two_digits():
    assert plan.path(plan.HIDDEN, model="m", first=1, last=15) == "results/hidden/m/layers01-15.h5"
    assert plan.path(plan.HIDDEN, model="m") == "results/hidden/m/layers{first}-{last}.h5"  # the rest for Snakemake
    assert plan.path(plan.BASELINE, baseline="text") + ".tsv" == "results/baselines/{model}/text.tsv"


def test_every_file_the_plan_lists_matches_the_pattern_its_rule_writes(small):
    model = "smollm2-135m"
    for path in plan.hidden_files(small, model):
        assert pattern(plan.HIDDEN).match(path), path
    assert plan.hidden_files(small, model) == ["results/hidden/smollm2-135m/layers01-15.h5",
                                               "results/hidden/smollm2-135m/layers16-30.h5"]
    for suffix in ("tsv", "predictions.h5", "directions.h5"):
        files = plan.probe_files(small, model, suffix=suffix)
        assert files and all(pattern(f"{plan.PROBES}.{suffix}").match(path) for path in files), files
    assert plan.probe_files(small, model, "residual")[0] == "results/probes/smollm2-135m/residual/layers00-15.tsv"
    for path in plan.score_files(small):
        assert any(pattern(template).match(path) for template in
                   (f"{plan.PROBES}.tsv", plan.NONLINEAR, f"{plan.BASELINE}.tsv")), path
    assert plan.intervention_files(small) == [f"results/interventions/{model}/{e}.tsv"
                                              for e in small["interventions"]["experiments"] if e != "attention"]


def test_each_layer_is_read_from_the_file_that_stores_it(small):
    model = "smollm2-135m"
    index = plan.chunk_index_of_layers(small, model)
    assert index[0] == index[1] == index[15] == 0 and index[16] == index[30] == 1
    assert plan.hidden_file_of_layer(small, model, 0) == plan.hidden_file_of_layer(small, model, 15)
    assert plan.hidden_file_of_layer(small, model, 16).endswith("layers16-30.h5")
    assert plan.first_stored_layer(small, 1) == 0 and plan.first_stored_layer(small, 16) == 16
    assert plan.first_stored_layer(with_changes(small, locations=["mlp"]), 1) == 1
    assert plan.lens_layers(small, model) == list(range(0, 31))


# One function per rule's settings, each as the rules call it.
SETTINGS = {
    "dataset": plan.dataset_settings,
    "identity": lambda config: {m: plan.model_identity(config, m) for m in config["models"]},
    "extraction": lambda config: {m: plan.extraction_settings(config, m) for m in config["models"]},
    "hidden": lambda config: {m: plan.hidden_provenance(config, m) for m in config["models"]},
    "forward": plan.forward_settings,
    "words": plan.answer_words,
    "probe": plan.probe_settings,
    "baseline": plan.baseline_settings,
    "nonlinear": plan.nonlinear_settings,
    "conditional": plan.conditional_settings,
    "localise": plan.localise_settings,
    "appraisal": lambda config: (plan.appraisal_settings(config), plan.appraisal_columns(config),
                                 plan.split_settings(config)),
    "interventions": lambda config: {e: plan.intervention_settings(config, e)
                                     for e in plan.editing_experiments(config)},
    "batching": plan.batching,
    "attention": plan.attention_settings,
    "recorded": plan.recorded_config,
}


@pytest.mark.parametrize("section, key", [(section, key) for section, keys in plan.SCHEDULING.items()
                                          for key in keys])
def test_no_setting_of_any_rule_holds_a_scheduling_key(small, section, key):
    changed = copy.deepcopy(small)
    entries = changed["models"].values() if section == "models" else [changed[section]]
    for entry in entries:
        entry[key] = 7 if key != "threads" else 3
    for name, settings in SETTINGS.items():
        assert settings(changed) == settings(small), (name, section, key)


@pytest.mark.parametrize("change, decides", [
    ({"dataset__seed": 7}, {"dataset", "hidden", "recorded"}),
    ({"extraction__storage_dtype": "float16"}, {"extraction", "hidden", "recorded"}),
    ({"extraction__dtype": "bfloat16"}, {"extraction", "forward", "recorded"}),
    ({"answer__words": {"joy": "happy"}}, {"words", "recorded"}),
    ({"probe__C": 2.0}, {"probe", "baseline", "recorded"}),
    ({"probe__bootstrap": 100}, {"localise", "recorded"}),
    ({"appraisal__alpha": 10.0}, {"appraisal", "recorded"}),
    ({"probe__device": "cpu"}, {"probe", "nonlinear", "conditional", "recorded"}),
    ({"probe__folds": 3}, {"probe", "baseline", "nonlinear", "conditional", "appraisal", "recorded"}),
    ({"probe__conditional__C": [0.0, 0.01]}, {"conditional", "recorded"}),
    ({"probe__conditional__locations": []}, {"recorded"}),
    ({"interventions__batch_tokens": 512}, {"batching", "recorded"}),
    ({"interventions__seed": 1}, {"interventions", "attention", "recorded"}),
])
def test_a_setting_decides_exactly_the_outputs_it_should(small, change, decides):
    changed = with_changes(small, **change)
    assert {name for name, settings in SETTINGS.items() if settings(changed) != settings(small)} == decides


def test_a_hidden_state_file_carries_what_its_readers_expect(small):
    """The extraction's params give its writer the same attributes the plan gives every reader."""
    model = "smollm2-135m"
    written = provenance.hidden_states(plan.model_identity(small, model), plan.template(small), plan.sample(small),
                                       plan.extraction_settings(small, model)["storage_dtype"])
    assert written == plan.hidden_provenance(small, model)
    assert written["source"] == {"gguf": small["models"][model]["gguf"]} and written["dataset_limit"] == 144
    assert plan.predictions_provenance(small, model, "mlp") == {"model": model, "location": "mlp",
                                                                "labels": sorted(small["dataset"]["labels"])}


def test_the_recorded_config_holds_every_deciding_key_and_the_corpus_sha256(small):
    recorded = plan.recorded_config(small)
    assert recorded["dataset"]["sha256"] == plan.corpus_sha256(small) and len(recorded["dataset"]["sha256"]) == 64
    assert "texts_guess" not in recorded["dataset"] and "url" not in recorded["dataset"]
    assert "layer_chunk_size" not in recorded["models"]["smollm2-135m"]
    assert recorded["probe"] == {k: v for k, v in small["probe"].items() if k != "fits_per_job"}
    assert recorded["interventions"] == {k: v for k, v in small["interventions"].items() if k != "threads"}


def test_every_probe_key_of_the_schema_is_read_into_the_settings_or_decides_elsewhere():
    """A new ``probe`` key reaches the probes only as a field of their settings (emoprobe/settings.py): one the
    schema allows but no settings type reads would change no param, so rerun nothing."""
    from emoprobe.settings import MLP, Logistic, Problems, Split

    schema = yaml.safe_load(SCHEMA.read_text())["properties"]["probe"]["properties"]
    read = {*Problems._fields, *Split._fields, *Logistic._fields, "device"}
    elsewhere = {"grid": "each job's cells", "nonlinear": "its own section", "conditional": "its own settings",
                 "bootstrap": "the localisation's param", "fits_per_job": "scheduling (plan.SCHEDULING)"}
    assert set(schema) == read | set(elsewhere) and not read & set(elsewhere)
    assert set(schema["nonlinear"]["properties"]) == {*MLP._fields, "fit", "locations"}  # whether and where: the plan


def test_the_probes_per_position_arrays_are_those_the_predictions_files_stack():
    from emoprobe import h5io, probes

    assert set(probes.PER_POSITION) == set(h5io.STACKED)


def test_the_experiment_registry_is_what_the_schema_allows():
    schema = yaml.safe_load(SCHEMA.read_text())
    allowed = schema["properties"]["interventions"]["properties"]["experiments"]["items"]["enum"]
    assert sorted(allowed) == sorted(experiments.EXPERIMENTS)
    assert "attention" not in experiments.editing() and set(experiments.with_figure()) == {"promotion", "surgery"}
    assert experiments.per_location() == ["zero", "random", "patching"]
    from emoprobe import report
    from emoprobe.edits import implementation

    for name, entry in experiments.EXPERIMENTS.items():  # each names a runner, reader and figure that exist
        assert all(callable(implementation(spec)) for spec in (entry.runner, entry.read_directions) if spec), name
        assert entry.figure is None or callable(getattr(report, entry.figure)), name
        assert entry.per_location == (entry.heatmap is not None) and entry.edits == (entry.conditions is not None)


def test_each_experiment_reads_the_directions_it_pushes_along(small):
    model = "smollm2-135m"
    assert plan.directions_files(small, model, "promotion") == plan.probe_files(small, model, "residual",
                                                                                "directions.h5")
    assert plan.directions_files(small, model, "surgery") == [f"results/appraisal/{model}.directions.h5"]
    assert plan.directions_provenance(small, model, "surgery")["appraisals"] == small["dataset"]["appraisal_columns"]
    for experiment in ("zero", "random", "patching"):
        assert plan.directions_files(small, model, experiment) == [] and "locations" in plan.intervention_settings(
            small, experiment)
    assert "locations" not in plan.intervention_settings(small, "promotion")


def test_the_targets_follow_the_configured_experiments(default):
    targets = plan.all_targets(default)
    assert "results/figures/attention/gemma3-270m.png" in targets and "results/interventions.tsv" in targets
    assert "results/figures/surgery/smollm2-135m.pdf" in targets
    assert "results/figures/interventions_by_depth.png" in targets
    only_attention = plan.all_targets(with_changes(default, interventions__experiments=["attention"]))
    assert "results/attention/smollm2-135m.tsv" in only_attention
    assert not [t for t in only_attention if "interventions" in t]
    only_promotion = plan.all_targets(with_changes(default, interventions__experiments=["promotion"]))
    assert "results/figures/promotion/smollm2-135m.png" in only_promotion
    assert not [t for t in only_promotion if "interventions_by_depth" in t or "figures/interventions/" in t]
