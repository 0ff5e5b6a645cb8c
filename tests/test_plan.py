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
    files = [plan.hidden_file_of_layer(small, model, layer) for layer in range(31)]
    assert files == plan.hidden_files(small, model)[:1] * 16 + plan.hidden_files(small, model)[1:] * 15
    assert plan.hidden_file_of_layer(small, model, 16).endswith("layers16-30.h5")
    assert plan.first_stored_layer(small, 1) == 0 and plan.first_stored_layer(small, 16) == 16
    assert plan.first_stored_layer(with_changes(small, locations=["mlp"]), 1) == 1
    assert plan.lens_layers(small, model) == list(range(0, 31))


@pytest.fixture(scope="module")
def job_params(tmp_path_factory):
    """``job_params(config)``: every job of the workflow run with ``config`` (as a config file replacing config.yaml),
    ``(rule, wildcards) -> params``, the params as the rules compute them. Snakemake parses the workflow and builds the
    whole DAG in this process and runs nothing; its public API runs or prints a DAG but returns no job, so this goes
    through the internal one of the pinned version (requirements.txt)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (ConfigSettings, DAGSettings, OutputSettings, Quietness, ResourceSettings,
                                          StorageSettings)

    def build(config: dict) -> dict[tuple, dict]:
        workdir = tmp_path_factory.mktemp("dag")
        configfile = workdir / "config.yaml"
        configfile.write_text(yaml.safe_dump(config, sort_keys=False))
        with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
            workflow = api.workflow(resource_settings=ResourceSettings(cores=1), storage_settings=StorageSettings(),
                                    config_settings=ConfigSettings(configfiles=[configfile],
                                                                   replace_workflow_config=True),
                                    snakefile=ROOT / "Snakefile", workdir=workdir)
            workflow.dag(DAGSettings())
            parsed = workflow._workflow
            parsed._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True, nolock=True)
            parsed._build_dag()
            return {(job.rule.name, tuple(sorted(job.wildcards.items()))): dict(job.params.items())
                    for job in parsed.dag.jobs}

    return build


@pytest.fixture(scope="module")
def small_params(job_params):
    return job_params(small_config())


def rules_changed(before: dict, after: dict) -> tuple[set[str], set[str]]:
    """The rules with a job whose params differ between two :func:`job_params` results, and those with a job in one
    of them only."""
    both = before.keys() & after.keys()
    return {job[0] for job in both if before[job] != after[job]}, {job[0] for job in before.keys() ^ after.keys()}


# Keys that cut the work into jobs: other jobs, each with the same params as the work it takes over.
RECUT = {("models", "layer_chunk_size"): {"extract_hidden_states", "fit_probes"}, ("probe", "fits_per_job"): {"fit_probes"}}


@pytest.mark.parametrize("section, key", [(section, key) for section, keys in plan.SCHEDULING.items()
                                          for key in keys])
def test_no_param_of_any_job_holds_a_scheduling_key(job_params, small_params, section, key):
    changed = small_config()
    entries = changed["models"].values() if section == "models" else [changed[section]]
    for entry in entries:  # values the config's checks accept (params_m within 5 % of the model's own count)
        entry[key] = {"threads": 3, "params_m": 135.0, "compute_params_m": 100.0}.get(key, 7)
    differ, recut = rules_changed(small_params, job_params(changed))
    assert not differ and recut == RECUT.get((section, key), set()), (differ, recut)


@pytest.mark.parametrize("change, decides", [
    ({"dataset__seed": 7}, {"prepare_prompts", "extract_hidden_states", "answer_emotions", "embed_words", "fit_probes",
                            "fit_nonlinear_probes", "fit_conditional_probes", "fit_appraisal_probes", "logit_lens"}),
    ({"extraction__storage_dtype": "float16"}, {"extract_hidden_states", "answer_emotions", "fit_probes",
                                                "fit_nonlinear_probes", "fit_conditional_probes", "fit_appraisal_probes",
                                                "logit_lens"}),
    ({"extraction__dtype": "bfloat16"}, {"prepare_gguf_model", "extract_hidden_states", "answer_emotions", "logit_lens",
                                         "embed_words", "attend", "intervene"}),
    ({"answer__words": {"joy": "happy"}}, {"answer_emotions", "logit_lens", "intervene"}),
    ({"probe__C": 2.0}, {"fit_probes", "fit_text_baseline", "fit_ratings_baseline"}),
    ({"probe__bootstrap": 300}, {"localise", "localise_conditional"}),
    ({"appraisal__alpha": 10.0}, {"fit_appraisal_probes"}),
    ({"probe__device": "cpu"}, {"fit_probes", "fit_nonlinear_probes", "fit_conditional_probes"}),
    ({"probe__folds": 3}, {"count_subsets", "fit_probes", "fit_nonlinear_probes", "fit_conditional_probes",
                           "fit_appraisal_probes", "fit_text_baseline", "fit_ratings_baseline", "logit_lens"}),
    ({"probe__conditional__C": [0.0, 0.01]}, {"fit_conditional_probes"}),
    ({"interventions__batch_tokens": 512}, {"attend", "intervene"}),
    ({"interventions__seed": 1}, {"attend", "intervene"}),
])
def test_a_setting_decides_exactly_the_jobs_it_should(job_params, small_params, change, decides):
    """The rules' own params, as Snakemake computes them for each job: a key reruns exactly the jobs whose output it
    decides (and the recorded config), through Snakemake's params trigger; a rerun job reruns its readers in turn."""
    differ, recut = rules_changed(small_params, job_params(with_changes(small_config(), **change)))
    assert differ == decides | {"record_config"} and not recut


def test_no_conditional_locations_plan_no_conditional_jobs(job_params, small_params):
    differ, recut = rules_changed(small_params, job_params(with_changes(small_config(),
                                                                        probe__conditional__locations=[])))
    assert differ == {"record_config"}
    assert recut == {"embed_words", "fit_conditional_probes", "aggregate_conditional", "localise_conditional",
                     "plot_conditional"}


def test_a_hidden_state_file_carries_what_its_readers_expect(small, small_params):
    """The attributes the extraction jobs write from their params are those every reader's params expect."""
    model = "smollm2-135m"
    extractions = [params for (rule, _), params in small_params.items() if rule == "extract_hidden_states"]
    written = [provenance.hidden_states(p["model"], p["template"], p["sample"], p["extraction"]["storage_dtype"])
               for p in extractions]
    readers = {(rule, wildcards): params["provenance"] for (rule, wildcards), params in small_params.items()
               if rule != "extract_hidden_states" and "storage_dtype" in params.get("provenance", {})}
    assert {rule for rule, _ in readers} == {"answer_emotions", "logit_lens", "fit_probes", "fit_nonlinear_probes",
                                             "fit_conditional_probes", "fit_appraisal_probes"}
    assert len(written) == 2 and all(found == written[0] for found in written + list(readers.values()))
    assert written[0]["source"] == {"gguf": small["models"][model]["gguf"]} and written[0]["dataset_limit"] == 144
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
    from emoprobe import figures
    from emoprobe.edits import implementation

    for name, entry in experiments.EXPERIMENTS.items():  # each names a runner, reader and figure that exist
        assert all(callable(implementation(spec)) for spec in (entry.runner, entry.read_directions) if spec), name
        assert entry.figure is None or callable(getattr(figures, entry.figure)), name
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
