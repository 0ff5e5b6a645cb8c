"""A run killed with SIGKILL mid-extraction resumes to exactly the result of an uninterrupted run."""

import os
import signal
import subprocess
import time

import pytest

from conftest import run_snakemake, small_config, snakemake_command
from emoprobe.h5io import read_layer


def wait_for(predicate, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "timed out waiting for the run to reach extraction"
        time.sleep(0.2)


def test_killed_run_resumes_to_the_uninterrupted_result(e2e_run, tmp_path):
    command, env = snakemake_command(tmp_path, small_config(), "--cores", "2")
    log = tmp_path / "logs/extract_hidden_states/smollm2-135m/layers01-15.log"
    with open(tmp_path / "killed.out", "w") as out:
        # its own session, so the kill takes Snakemake and its running jobs at once, like a lost node
        run = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
        wait_for(lambda: log.is_file() and "ETA" in log.read_text(), 600, run)  # a progress line before the last
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()

    hidden = tmp_path / "results/hidden/smollm2-135m"
    assert not (hidden / "layers01-15.h5").exists(), "a half-written chunk never has its final name"
    assert (hidden / ".layers01-15.h5.partial").exists()
    for finished in hidden.glob("*.h5"):
        read_layer(finished, 30)  # anything under a final name is whole

    # SIGKILL leaves Snakemake's lock behind; the user is told to unlock, then reruns the same command
    locked = run_snakemake(tmp_path, small_config(), "--cores", "2")
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    assert run_snakemake(tmp_path, small_config(), "--unlock").returncode == 0
    resumed = run_snakemake(tmp_path, small_config(), "--cores", "2")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    # same config, same machine: byte-identical results, the interruption left no trace
    for name in ("results/accuracy.tsv", "results/tables/smollm2-135m_accuracy_by_layer.txt"):
        assert (tmp_path / name).read_bytes() == (e2e_run / name).read_bytes(), name
    assert not list(hidden.glob(".*.partial"))


def test_batching_sorting_and_chunking_do_not_change_the_results(e2e_run, tmp_path):
    """One prompt per batch, no shared prefix, ten 3-layer chunks: the same states and probe accuracies."""
    import numpy as np
    import pandas as pd

    from conftest import with_changes

    config = with_changes(small_config(), extraction__max_batch_size=1, extraction__share_prefix=False,
                          locations=["residual"], probe__subsets=["all"])
    config["models"]["smollm2-135m"]["layer_chunk_size"] = 3
    result = run_snakemake(tmp_path, config, "--cores", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(list((tmp_path / "results/hidden/smollm2-135m").glob("*.h5"))) == 10

    for layer, chunk in ((1, "layers01-03"), (17, "layers16-18"), (30, "layers28-30")):
        ours, _ = read_layer(tmp_path / f"results/hidden/smollm2-135m/{chunk}.h5", layer)
        reference, _ = read_layer(e2e_run / f"results/hidden/smollm2-135m/layers{'01-15' if layer <= 15 else '16-30'}.h5",
                                  layer)
        assert np.abs(ours - reference).max() <= 1e-4 * np.linalg.norm(reference, axis=-1).max()

    probes = "location == 'residual' and subset == 'all' and target == 'label'"
    ours = pd.read_csv(tmp_path / "results/accuracy.tsv", sep="\t").query(probes).reset_index(drop=True)
    reference = pd.read_csv(e2e_run / "results/accuracy.tsv", sep="\t").query(probes).reset_index(drop=True)
    assert ours[["model", "layer", "position"]].equals(reference[["model", "layer", "position"]])
    # states equal to 1e-4 of their norm may move a text across a probe's boundary: at most five of 144
    assert (np.abs(ours["accuracy"] - reference["accuracy"]) <= 5 / reference["n_texts"] + 1e-9).all()


def test_an_atomic_directory_replaces_the_old_one_only_when_whole(tmp_path):
    from emoprobe.io import atomic_directory

    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as partial:
            (partial / "new.txt").write_text("half")
            raise RuntimeError("killed")
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and (target / "old.txt").read_text() == "old"
    # a job killed outright (SIGKILL) leaves its temporary directory: the next write removes it, not another's
    (tmp_path / ".model.x1y2.partial").mkdir()
    (tmp_path / ".model-2.x1y2.partial").mkdir()
    with atomic_directory(target) as partial:
        (partial / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model-2.x1y2.partial", "model"]
    assert [p.name for p in target.iterdir()] == ["new.txt"]


def test_scripts_write_through_the_atomic_helpers_and_take_values_from_params():
    """One mechanism, one place: no script renames its own partial files or reads values back out of paths."""
    import re

    from conftest import ROOT

    for script in sorted((ROOT / "scripts").glob("*.py")):
        code = script.read_text()
        assert not re.search(r"os\.replace|\.partial|shutil\.rmtree|re\.(search|match|fullmatch)\(", code), script.name
        assert not re.search(r"open\([^)]*snakemake\.output[^)]*[\"']w", code), script.name
