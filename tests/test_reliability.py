"""A run killed with SIGKILL mid-extraction resumes to exactly the result of an uninterrupted run."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import flip_bits, run_snakemake, small_config, snakemake_command
from emoprobe.h5io import read_layer


def wait_for(predicate, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "timed out waiting for the run to reach extraction"
        time.sleep(0.2)


def test_killed_run_resumes_to_the_uninterrupted_result(e2e_run, tmp_path):
    """The extraction of both layer chunks (every later job is a function of those bytes, as the rebuild test below
    shows) killed while it writes, then resumed by the same command: the same bytes as the uninterrupted run's."""
    chunks = [f"results/hidden/smollm2-135m/{chunk}.h5" for chunk in ("layers01-15", "layers16-30")]
    shutil.copytree(e2e_run / "resources", tmp_path / "resources")  # the prepared model, not prepared again
    command, env = snakemake_command(tmp_path, small_config(), *chunks, "--cores", "2")
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
    locked = run_snakemake(tmp_path, small_config(), *chunks, "--cores", "2")
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    assert run_snakemake(tmp_path, small_config(), "--unlock").returncode == 0
    resumed = run_snakemake(tmp_path, small_config(), *chunks, "--cores", "2")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    # same config, same machine: byte-identical states, the interruption left no trace
    for name in chunks:
        assert (tmp_path / name).read_bytes() == (e2e_run / name).read_bytes(), name
    assert not list(hidden.glob(".*.partial"))


def test_a_byte_changed_in_a_finished_run_is_refused_by_name_and_the_rebuild_is_byte_identical(e2e_run, tmp_path):
    """Silent corruption, as a disk or a copy makes it: the bytes change, the modification times do not, so
    Snakemake sees nothing to redo; every job that reads the changed file refuses it, naming it."""
    run, config = tmp_path / "run", small_config()
    shutil.copytree(e2e_run, run, symlinks=True)  # modification times kept: Snakemake's view of the finished run
    model = run / "resources/models/smollm2-135m/model.safetensors"
    hidden = run / "results/hidden/smollm2-135m/layers16-30.h5"
    probes = run / "results/probes/smollm2-135m/residual/layers00-15"
    predictions, directions = Path(f"{probes}.predictions.h5"), Path(f"{probes}.directions.h5")

    def flip_model_byte():
        times = os.stat(model)
        with open(model, "r+b") as handle:
            handle.seek(os.path.getsize(model) // 2)  # inside a weight tensor
            byte = handle.read(1)[0]
            handle.seek(-1, os.SEEK_CUR)
            handle.write(bytes([byte ^ 0x10]))
        os.utime(model, ns=(times.st_atime_ns, times.st_mtime_ns))

    def command(*targets):  # what a user runs to remake files
        return run_snakemake(run, config, *targets, "--forcerun", *targets, "--keep-going", "--cores", "2")

    def refused(target):
        result = command(target)
        assert result.returncode != 0
        return result.stdout + result.stderr  # the profile prints a failed job's log

    # a flipped byte in the prepared model's weights: refused before any text is run through it
    flip_model_byte()
    output = refused("results/answers/smollm2-135m.tsv")
    assert ("error: resources/models/smollm2-135m: model.safetensors differ from the sha256 recorded when model "
            "smollm2-135m was prepared" in output), output[-3000:]
    assert "answer tokens" not in (run / "logs/answer_emotions/smollm2-135m.log").read_text()
    flip_model_byte()  # back as it was
    # Snakemake deleted the failed job's output: put it back as it was, with its record
    answers = run / "results/answers/smollm2-135m.tsv"
    answers.parent.mkdir(exist_ok=True)
    shutil.copy2(e2e_run / answers.relative_to(run), answers)
    shutil.copytree(e2e_run / ".snakemake/metadata", run / ".snakemake/metadata", dirs_exist_ok=True)

    # a few bits of a stored array of each kind: hidden states, predictions, directions (layer 1's: the file's
    # first chunk holds layer 0, which steering does not read)
    flip_bits(hidden, "residual_16")
    flip_bits(predictions, "all/label/predicted")
    flip_bits(directions, "all/label/weights", chunk=1)
    assert "Nothing to be done" in run_snakemake(run, config, "--dry-run").stdout  # Snakemake itself sees nothing
    # each reader in a run of its own: a failed job's outputs are deleted, and their readers would wait for it
    for target, path, dataset in (("results/localisation/smollm2-135m.tsv", predictions, "all/label/predicted"),
                                  ("results/interventions/smollm2-135m/promotion.tsv", directions, "all/label/weights"),
                                  ("results/probes/smollm2-135m/residual/layers16-30.tsv", hidden, "residual_16")):
        output = refused(target)
        message = (f"error: {path.relative_to(run)}: dataset '/{dataset}' fails its checksum (Can't synchronously "
                   f"read data (filter returned failure during read)): its bytes changed after it was written: delete "
                   f"the file and run the same command again, which rebuilds it")
        assert message in output, (message, output[-4000:])
        assert "Traceback" not in output

    # deleted, the files are rebuilt by the same command, and every result is what the clean run made, to the byte
    for path in (hidden, predictions, directions):
        path.unlink()
    rebuilt = command("results/localisation/smollm2-135m.tsv", "results/interventions/smollm2-135m/promotion.tsv",
                      "results/probes/smollm2-135m/residual/layers16-30.tsv")
    assert rebuilt.returncode == 0, rebuilt.stdout[-3000:] + rebuilt.stderr[-3000:]
    assert hidden.exists() and predictions.exists() and directions.exists()
    tables = sorted(path.relative_to(e2e_run) for path in (e2e_run / "results").rglob("*.tsv"))
    assert len(tables) > 20
    for name in tables + [hidden.relative_to(run), predictions.relative_to(run), directions.relative_to(run)]:
        assert (run / name).read_bytes() == (e2e_run / name).read_bytes(), name


def test_batching_sorting_and_chunking_do_not_change_the_results(e2e_run, tmp_path):
    """One prompt per batch, no shared prefix, three 10-layer chunks (their bounds not the 15-layer run's): the same
    states and probe accuracies."""
    import numpy as np
    import pandas as pd

    from conftest import with_changes

    config = with_changes(small_config(), extraction__max_batch_size=1, extraction__share_prefix=False,
                          locations=["residual"], probe__subsets=["all"])
    config["models"]["smollm2-135m"]["layer_chunk_size"] = 10
    config["probe"]["nonlinear"]["fit"] = False  # the linear probes are what is compared
    shutil.copytree(e2e_run / "resources", tmp_path / "resources")  # the prepared model, not prepared again
    result = run_snakemake(tmp_path, config, "results/accuracy.tsv", "--cores", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(list((tmp_path / "results/hidden/smollm2-135m").glob("*.h5"))) == 3

    for layer, chunk in ((1, "layers01-10"), (11, "layers11-20"), (17, "layers11-20"), (30, "layers21-30")):
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
