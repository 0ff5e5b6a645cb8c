"""Shared fixtures: the real corpus, configs in temporary directories, and one real workflow run."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CORPUS = (ROOT / "../shared/data/enVent_gen_Data.csv").resolve()
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# Every test run of the workflow sees this hub token; no output or log may ever contain it.
TOKEN = "hf_SENTINELtokenNEVERtoBEwritten0123"


# The most a run of the suite holds on disk at once: the session's prepared models and workflow run, one test's
# workflow run (half a GB of it a dequantised model) or env venv (up to 1.5 GB), the envs' wheelhouse; pyproject.toml
# keeps only failed tests' folders. A run that would fill the disk stops before its first test, saying so, rather
# than failing dozens of them with "No space left on device".
NEEDS_FREE_GIB = 8
HEAVY_FIXTURES = {"e2e_run", "smollm2_dir", "gemma3_dir", "venv"}


def pytest_collection_finish(session):
    """Before the first test of the tests selected (after ``-k`` and the like)."""
    if not any(HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())) for item in session.items):
        return
    folder = Path(session.config.option.basetemp or tempfile.gettempdir())
    folder = next(p for p in (folder, *folder.parents) if p.exists())
    free = shutil.disk_usage(folder).free / 2**30
    if free < NEEDS_FREE_GIB:
        pytest.exit(f"{folder} has {free:.1f} GiB free; the tests need about {NEEDS_FREE_GIB} GiB there (workflow runs "
                    f"and env venvs in temporary folders). Free some space, or give pytest --basetemp=DIR on a "
                    f"larger disk.", returncode=1)


def default_config() -> dict:
    """The workflow's config.yaml with the schema's defaults filled in, the corpus path made absolute."""
    from snakemake.utils import validate

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["dataset"]["path"] = str(CORPUS)
    validate(config, str(ROOT / "schemas/config.schema.yaml"))
    return config


def small_config(limit: int = 144) -> dict:
    """Real SmolLM2 on a stratified slice of the real corpus, in two layer chunks (one probe job each)."""
    config = default_config()
    config["dataset"]["limit"] = limit
    config["models"] = {"smollm2-135m": config["models"]["smollm2-135m"]}
    config["models"]["smollm2-135m"]["layer_chunk_size"] = 15
    config["probe"]["fits_per_job"] = 15 * 51  # 15 layers per job: the residual stream's 51 fits per layer (probe.grid)
    # the non-linear probes (off by default for their time) of the residual stream, 4 hidden units, stopped when the
    # objective falls by less than 0.01 over 10 iterations: each iteration is a d x d product per probe (its
    # whitening), the MLP's cost on a slice, and what is tested here is the wiring (tests/test_mlp.py converges them
    # tightly; docs/performance.md has the times)
    config["probe"]["nonlinear"].update(fit=True, locations=["residual"], hidden=4, tol=0.01)
    # every experiment on 32 of the texts, windows on every 2nd layer (promotion and surgery every 5th), one step
    # each besides promotion's two: what each table and figure needs, at a fraction of the run's time
    interventions = config["interventions"]
    interventions["texts"] = 32
    interventions["threads"] = 1
    for experiment in ("zero", "random", "patching"):
        interventions[experiment]["every"] = 2
    interventions["patching"]["n_pairs"] = 32
    interventions["promotion"].update(every=5, betas=[0.0, 1.0])
    interventions["surgery"].update(every=5, betas=[1.0])
    # the conditional probes with one penalty besides leaving the layer out, weaker than the defaults': on 115
    # training texts of 576 dimensions the stronger a penalty, the more L-BFGS iterations a fit takes (the penalty's
    # curvature, not the data's, dominates, which the whitening does not precondition)
    config["probe"]["conditional"].update(C=[0.0, 1.0], text_C=[3.0], words_C=[0.1])
    return config


def snakemake_command(workdir: Path, config: dict | str, *args: str, profile: Path = ROOT / "profiles/local",
                      snakefile: Path = ROOT / "Snakefile") -> tuple[list[str], dict]:
    """Command line and environment running the workflow of ``snakefile`` in ``workdir`` with ``config`` (a dict,
    or the text of a config file) replacing config.yaml."""
    workdir.mkdir(parents=True, exist_ok=True)
    configfile = workdir / "config.test.yaml"
    configfile.write_text(config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False))
    # args first: a target after --configfile would be read as a second config file
    command = SNAKEMAKE + [*args, "--snakefile", str(snakefile), "--directory", str(workdir),
                           "--profile", str(profile), "--replace-workflow-config",
                           "--configfile", str(configfile)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # jobs must find emoprobe by themselves
    env["HF_TOKEN"] = TOKEN
    return command, env


def run_snakemake(workdir: Path, config: dict | str, *args: str, timeout: int = 1800,
                  snakefile: Path = ROOT / "Snakefile", env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the workflow to completion, with ``env`` added to the environment; see :func:`snakemake_command`."""
    command, base = snakemake_command(workdir, config, *args, snakefile=snakefile)
    env = {**base, **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=workdir)


@pytest.fixture(scope="session")
def e2e_run(tmp_path_factory):
    """One real run of the whole workflow on SmolLM2 and 144 real texts; returns its directory."""
    workdir = tmp_path_factory.mktemp("e2e")
    result = run_snakemake(workdir, small_config(), "--cores", "2")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return workdir


def prepared_model(tmp_path_factory, name: str) -> Path:
    """A bundled model, dequantised from its GGUF package as the workflow's prepare_gguf_model does."""
    from emoprobe.architecture import package_file
    from emoprobe.models import prepare_gguf

    gguf = default_config()["models"][name]["gguf"]
    directory = tmp_path_factory.mktemp("models") / name
    prepare_gguf([package_file(spec) for spec in gguf["files"]], gguf["sha256"], directory)
    return directory


def loaded(directory: Path, head: bool):
    import torch

    from emoprobe.models import load_decoder

    return load_decoder(str(directory), dtype="float32", device=torch.device("cpu"),
                        trust_remote_code=False, head=head)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """The bundled SmolLM2-135M-Instruct, prepared once for the tests that load it (not waiting for a workflow run)."""
    return prepared_model(tmp_path_factory, "smollm2-135m")


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    """SmolLM2 without its LM head, on the CPU: ``(model, tokenizer)``."""
    return loaded(smollm2_dir, head=False)


@pytest.fixture(scope="session")
def smollm2_lm(smollm2_dir):
    """SmolLM2 with its LM head, on the CPU: ``(causal_lm, tokenizer)``."""
    return loaded(smollm2_dir, head=True)


@pytest.fixture(scope="session")
def gemma3_dir(tmp_path_factory) -> Path:
    """The bundled Gemma-3-270M, prepared once for the tests that load or serve it."""
    return prepared_model(tmp_path_factory, "gemma3-270m")


@pytest.fixture(scope="session")
def gemma3_lm(gemma3_dir):
    """The bundled Gemma-3-270M with its LM head, on the CPU: ``(causal_lm, tokenizer)``."""
    return loaded(gemma3_dir, head=True)


def flip_bits(path: Path, dataset: str, n: int = 3, chunk: int = 0) -> None:
    """Flip one high bit (a float's exponent, an integer's sign's neighbour) in ``n`` stored values of ``dataset``'s
    ``chunk``-th chunk in the file ``path``, in place: its header, shapes, attributes and modification time
    untouched, so the file still opens and Snakemake sees nothing (as with a disk's or a copy's error). The chunk's
    bytes are its values in C order, as stored (the workflow's filter checksums, it does not compress)."""
    import h5py
    import numpy as np

    with h5py.File(path, "r") as f:
        stored = f[dataset]
        info = stored.id.get_chunk_info(chunk)
        itemsize = stored.dtype.itemsize
        values = int(np.prod(stored.chunks))
    bit = itemsize * 8 - 2
    times = os.stat(path)
    with open(path, "r+b") as handle:
        for value in np.linspace(0, values - 1, n).astype(int):
            handle.seek(info.byte_offset + value * itemsize + bit // 8)
            byte = handle.read(1)[0]
            handle.seek(-1, os.SEEK_CUR)
            handle.write(bytes([byte ^ (1 << (bit % 8))]))
    os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))


def with_changes(config: dict, **paths) -> dict:
    """A deep copy of ``config`` with ``a__b=value`` setting ``config[a][b]``."""
    config = copy.deepcopy(config)
    for path, value in paths.items():
        *parents, key = path.split("__")
        node = config
        for parent in parents:
            node = node[parent]
        node[key] = value
    return config
