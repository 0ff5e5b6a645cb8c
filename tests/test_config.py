"""A bad config stops the workflow at parse time with a message naming the key."""

import pytest
import yaml

from conftest import ROOT, default_config, run_snakemake, small_config, with_changes
from emoprobe.config import (
    ConfigError,
    check_config,
    code_sha256,
    duplicate_keys,
    layer_chunks,
    schema_errors,
)

SCHEMA = yaml.safe_load((ROOT / "schemas/config.schema.yaml").read_text())


def problems(config) -> str:
    """The schema's and check_config's complaints about ``config``, as one string ('' if none)."""
    lines = schema_errors(config, SCHEMA)
    if lines:
        return "\n".join(lines)
    try:
        check_config(config, ROOT)
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


def test_layer_chunks_cover_every_layer():
    assert layer_chunks(30, 15) == [(1, 15), (16, 30)]
    assert layer_chunks(18, 4) == [(1, 4), (5, 8), (9, 12), (13, 16), (17, 18)]
    assert layer_chunks(5, 5) == [(1, 5)]


@pytest.mark.parametrize(
    "config, expected",
    [
        (with_changes(small_config(), probe__C=-1, probe__tol="x"), ["probe.C: -1 is less than", "probe.tol: 'x' is not of type"]),
        (with_changes(small_config(), positions=[0]), ["positions.0: 0 is greater than the maximum of -1"]),
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


def test_model_location_by_source():
    from emoprobe.models import model_location

    hub = {"hub": {"id": "org/model", "revision": "abc123"}}
    assert model_location("m", hub, None) == ("org/model", "abc123", False)
    assert model_location("m", {"local": "models/m"}, "models/m") == ("models/m", None, True)
    assert model_location("m", {"gguf": {"files": ["p/f.gguf"]}}, "resources/models/m") == ("resources/models/m", None, True)


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
