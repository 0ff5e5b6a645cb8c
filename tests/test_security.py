"""Remote code runs only when the config says so; weights load from safetensors only."""

import json
import shutil

import pytest
import torch

from emoprobe.models import load_decoder

EVIL = '''
import pathlib
pathlib.Path({marker!r}).write_text("remote code ran")
from transformers import LlamaModel as EvilModel
from transformers import LlamaConfig as EvilConfig
'''


@pytest.fixture
def model_with_custom_code(smollm2_dir, tmp_path):
    """A copy of the prepared SmolLM2 whose config points the auto classes at code shipped beside it."""
    model_dir = tmp_path / "evil"
    shutil.copytree(smollm2_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"}
    (model_dir / "config.json").write_text(json.dumps(config))
    (model_dir / "modeling_evil.py").write_text(EVIL.format(marker=str(tmp_path / "REMOTE_CODE_RAN")))
    return model_dir


def load(model_dir, trust_remote_code):
    return load_decoder(str(model_dir), dtype="float32", device=torch.device("cpu"),
                        trust_remote_code=trust_remote_code)


def test_code_shipped_with_a_model_is_not_run_by_default(model_with_custom_code):
    try:
        load(model_with_custom_code, trust_remote_code=False)
    except ValueError as err:
        assert "trust_remote_code" in str(err)
    assert not (model_with_custom_code.parent / "REMOTE_CODE_RAN").exists()


def test_code_shipped_with_a_model_runs_when_trusted(model_with_custom_code):
    """The counterpart: the same model with trust_remote_code runs its code, so the test above can fail."""
    load(model_with_custom_code, trust_remote_code=True)
    assert (model_with_custom_code.parent / "REMOTE_CODE_RAN").read_text() == "remote code ran"


def test_pickled_weights_are_refused(smollm2_dir, tmp_path):
    model_dir = tmp_path / "pickled"
    shutil.copytree(smollm2_dir, model_dir)
    state = {k: torch.zeros(1) for k in ["x"]}
    torch.save(state, model_dir / "pytorch_model.bin")
    for weights in model_dir.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(OSError, match="safetensors"):
        load(model_dir, trust_remote_code=False)
