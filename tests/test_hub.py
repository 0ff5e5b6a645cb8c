"""From a hub id to results, against a Hugging Face hub served on 127.0.0.1 (hub_server.py) from the bundled models'
folders: the model looked up when the workflow is parsed, refused there with a message that names the fix when it
cannot be used, downloaded once by a local rule, and every job reading the downloaded folder offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import run_snakemake, small_config
from hub_server import HubServer, Repo

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
GEMMA3 = "google/gemma-3-270m"


@pytest.fixture(scope="module")
def no_weights(tmp_path_factory) -> Path:
    """A repository with a config.json and pickled weights only."""
    folder = tmp_path_factory.mktemp("pickled")
    (folder / "config.json").write_text(json.dumps({"num_hidden_layers": 2, "hidden_size": 8}))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not a real pickle")
    return folder


@pytest.fixture(scope="module")
def hub(smollm2_dir, gemma3_dir, no_weights):
    """The hub: SmolLM2 and Gemma-3 as their repositories, a gated copy of SmolLM2, one without safetensors, and one
    whose weights are listed but cannot be fetched (a download that breaks off)."""
    repos = {SMOLLM2: Repo(smollm2_dir), GEMMA3: Repo(gemma3_dir), "acme/gated": Repo(smollm2_dir, gated=True),
             "acme/pickled": Repo(no_weights), "acme/broken": Repo(smollm2_dir, unservable=("model.safetensors",))}
    with HubServer(repos) as server:
        yield server


def hub_env(hub: HubServer, workdir: Path, **extra) -> dict:
    """The environment of a run against ``hub``, with a Hugging Face cache of the run's own."""
    return {"HF_ENDPOINT": hub.url, "HF_HOME": str(workdir / "hf-home"), **extra}


def hub_config(repo_id: str = SMOLLM2, **hub_keys) -> dict:
    """The small slice's config (tests/conftest.py) on SmolLM2 named by its hub id alone, its states extracted as
    there, fitting only the probes of results/accuracy.tsv's residual stream at token -1."""
    config = small_config()
    config["models"] = {"smollm2-135m": {"hub": {"id": repo_id, **hub_keys}, "layer_chunk_size": 15}}
    config["dataset"]["appraisal_columns"] = []
    config["probe"].update(subsets=["all"], answer_probe=False, fits_per_job=100,
                           grid=[{"locations": ["residual"], "positions": [-1], "problems": "all"}])
    config["probe"]["nonlinear"]["fit"] = False
    config["interventions"]["experiments"] = []
    return config


def downloads(hub: HubServer, since: int = 0) -> list[str]:
    """The files fetched from ``hub`` (GET of a file), from request ``since`` on."""
    return [r.path.rsplit("/", 1)[1] for r in hub.requests[since:] if r.method == "GET" and "/resolve/" in r.path]


def test_a_hub_model_runs_from_its_id_to_the_accuracy_table_and_downloads_once(hub, e2e_run, tmp_path):
    workdir = tmp_path / "run"
    start = len(hub.requests)
    result = run_snakemake(workdir, hub_config(), "--cores", "2", "results/accuracy.tsv", env=hub_env(hub, workdir))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "rule download_model" in result.stdout + result.stderr  # a local rule, like the aggregations
    fetched = downloads(hub, start)
    # config.json at parse time (the shapes), then the snapshot, each weight file once
    assert fetched.count("model.safetensors") == 1 and "config.json" in fetched
    folder = workdir / "resources/models/smollm2-135m"
    record = json.loads((folder / "emoprobe-snapshot.json").read_text())
    commit = hub.repos[SMOLLM2].commit(SMOLLM2)
    assert record["commit"] == commit and record["repo_id"] == SMOLLM2 and record["revision"] is None
    assert not list(folder.glob("*.bin")) and not (folder / ".cache").exists()

    # the same weights as the bundled GGUF model's run of the same texts: the same states, to the bit
    with h5py.File(workdir / "results/hidden/smollm2-135m/layers16-30.h5") as ours, \
            h5py.File(e2e_run / "results/hidden/smollm2-135m/layers16-30.h5") as local:
        assert json.loads(ours.attrs["source"]) == {"hub": {"id": SMOLLM2, "commit": commit}}  # id and commit decide
        np.testing.assert_array_equal(ours["row_id"][:], local["row_id"][:])
        for layer in (16, 30):
            for location in ("residual", "attention", "mlp"):
                np.testing.assert_array_equal(ours[f"{location}_{layer:02d}"][:], local[f"{location}_{layer:02d}"][:])
    accuracy = (workdir / "results/accuracy.tsv").read_text()
    assert accuracy.count("smollm2-135m\tresidual\t") >= 30

    # a second run downloads nothing and plans nothing; offline, or with the hub failing (503), the parse reads what
    # the hub said before; the same commit written as the revision changes nothing either
    again = len(hub.requests)
    for down, env, config in ((False, hub_env(hub, workdir), hub_config()),
                              (False, hub_env(hub, workdir, HF_HUB_OFFLINE="1"), hub_config()),
                              (True, hub_env(hub, workdir), hub_config()),
                              (False, hub_env(hub, workdir), hub_config(revision=commit))):
        hub.down = down
        try:
            result = run_snakemake(workdir, config, "--dry-run", "results/accuracy.tsv", env=env)
        finally:
            hub.down = False
        assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr, result.stderr[-3000:]
    assert "model.safetensors" not in downloads(hub, again)


def test_a_gemma_model_from_the_hub_is_described_from_its_config_json(hub, tmp_path):
    """Gemma-3's shapes, where its config.json keeps them (a dry run; the download is SmolLM2's code path)."""
    config = small_config()
    config["models"] = {"gemma3-270m": {"hub": {"id": GEMMA3, "revision": "main"}}}
    result = run_snakemake(tmp_path, config, "--dry-run", env=hub_env(hub, tmp_path))
    assert result.returncode == 0, result.stderr[-4000:]
    from emoprobe.architecture import shape_from_config

    kept = json.loads((tmp_path / ".snakemake/emoprobe/hub/gemma3-270m.json").read_text())
    assert shape_from_config(kept["config"]) == {"n_layers": 18, "hidden_size": 640}
    assert kept["commit"] == hub.repos[GEMMA3].commit(GEMMA3) and kept["revision"] == "main"
    # 18 layers in chunks of the default size, each extraction job reading the folder download_model fills
    assert "rule download_model:" in result.stdout and "resources/models/gemma3-270m" in result.stdout


REFUSED = {
    "a misspelt id": (dict(repo_id=SMOLLM2[:-1]), {}, ["models.smollm2-135m.hub.id", "no model repository",
                                                        "misspelt"]),
    "a revision that does not exist": (dict(revision="v9.9"), {}, ["models.smollm2-135m.hub.revision", "'v9.9'",
                                                                   "not a branch, tag or commit"]),
    "a gated repository the token cannot read": (dict(repo_id="acme/gated"), {}, ["gated", "accept its licence",
                                                                                   "HF_TOKEN"]),
    "a repository without safetensors": (dict(repo_id="acme/pickled"), {}, ["no *.safetensors weights",
                                                                           "pytorch_model.bin", "models.smollm2-135m.local"]),
    "a given value the model contradicts": (dict(n_layers=29), {}, ["models.smollm2-135m.n_layers: the config says 29",
                                                                    "says 30"]),
    "no hub and nothing looked up before": (dict(), {"HF_HUB_OFFLINE": "1"}, [
        "n_layers, hidden_size, params_m not given", "HF_HUB_OFFLINE is set", "hf download " + SMOLLM2]),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_model_that_cannot_be_used_is_refused_when_the_workflow_is_parsed(hub, tmp_path, case):
    keys, env, said = REFUSED[case]
    config = hub_config(keys.pop("repo_id", SMOLLM2), **{k: v for k, v in keys.items() if k == "revision"})
    config["models"]["smollm2-135m"].update({k: v for k, v in keys.items() if k != "revision"})
    result = run_snakemake(tmp_path, config, "--dry-run", env=hub_env(hub, tmp_path, **env))
    message = result.stdout + result.stderr
    assert result.returncode != 0 and "invalid config" in message, message[-3000:]
    for words in said:
        assert words in message, (words, message[-3000:])
    assert "Traceback" not in message and not (tmp_path / "resources").exists()


def test_a_download_that_breaks_off_leaves_nothing_a_rerun_trusts(hub, tmp_path):
    """The weights are listed and described, but their transfer fails after the other files came: no folder, nothing
    left beside it."""
    out = tmp_path / "resources/models/broken"
    commit = hub.repos["acme/broken"].commit("acme/broken")
    script = ("from pathlib import Path; from emoprobe.hub import download_snapshot, patterns\n"
              f"download_snapshot('acme/broken', None, {commit!r}, Path({str(out)!r}), patterns(False))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **hub_env(hub, tmp_path)})
    assert result.returncode != 0, result.stderr[-2000:]
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_every_model_loads_from_its_folder_and_a_downloaded_one_of_another_commit_is_refused(tmp_path):
    from emoprobe.io import FOLDER_RECORD, write_folder_record
    from emoprobe.models import ModelError, model_folder

    (tmp_path / "model.safetensors").write_bytes(b"weights")
    write_folder_record(tmp_path, {"commit": "a" * 40})
    identity = {"name": "m", "source": "hub", "hub": {"id": "o/m", "revision": None, "commit": "b" * 40}}
    with pytest.raises(ModelError, match=f"holds commit {'a' * 40} of model m, the workflow resolved {'b' * 40}"):
        model_folder("m", identity, str(tmp_path))
    record = (tmp_path / FOLDER_RECORD).read_text()
    (tmp_path / FOLDER_RECORD).unlink()
    with pytest.raises(ModelError, match="not a folder download_model wrote"):
        model_folder("m", identity, str(tmp_path))
    identity["hub"]["commit"] = "a" * 40
    (tmp_path / FOLDER_RECORD).write_text(record)
    assert model_folder("m", identity, str(tmp_path)) == str(tmp_path)
    assert model_folder("m", {"local": "models/m"}, "models/m") == "models/m"  # the user's folder, loaded as it is
    write_folder_record(tmp_path, {"gguf": ["f.gguf"]})
    assert model_folder("m", {"gguf": {"files": ["p/f.gguf"]}}, str(tmp_path)) == str(tmp_path)


def test_a_prepared_model_folder_whose_bytes_changed_is_refused_naming_the_file(tmp_path):
    from emoprobe.io import FOLDER_RECORD, write_folder_record
    from emoprobe.models import ModelError, model_folder

    gguf = {"gguf": {"files": ["p/f.gguf"]}}
    (tmp_path / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (tmp_path / "config.json").write_text("{}")
    write_folder_record(tmp_path, {"gguf": ["f.gguf"]})
    model_folder("m", gguf, str(tmp_path))
    weights = bytearray((tmp_path / "model.safetensors").read_bytes())
    weights[5000] ^= 0x04  # one bit, the size unchanged
    (tmp_path / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(ModelError, match=r"model\.safetensors differ from the sha256 recorded when model m was "
                                         r"prepared .*Delete the folder"):
        model_folder("m", gguf, str(tmp_path))
    weights[5000] ^= 0x04
    (tmp_path / "model.safetensors").write_bytes(bytes(weights))
    (tmp_path / "extra.safetensors").write_bytes(b"x")  # transformers would load a shard added beside the others
    with pytest.raises(ModelError, match=r"extra\.safetensors differ"):
        model_folder("m", gguf, str(tmp_path))
    (tmp_path / "extra.safetensors").unlink()
    (tmp_path / FOLDER_RECORD).unlink()  # a folder prepared before the digests were recorded
    with pytest.raises(ModelError, match="prepared by an older emoprobe"):
        model_folder("m", gguf, str(tmp_path))
