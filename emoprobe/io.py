"""Atomic writes: every output of the workflow appears whole under its name, or not at all; and the digests of the
folders it prepares (:func:`write_folder_record`, :func:`changed_files`)."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

# In every folder the workflow prepares (a downloaded hub model, a dequantised GGUF one): what it holds and the sha256
# of each of its files, recorded when the folder is written and verified before a job loads from it.
FOLDER_RECORD = "emoprobe-snapshot.json"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path`` to write to; on a clean exit it is renamed to ``path``, on an
    exception removed, so a killed or failed job never leaves a file that a rerun would trust."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        yield str(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_tsv(table, path: str | os.PathLike, float_format: str = "%.6f") -> None:
    """Write a pandas table as TSV, atomically."""
    with atomic_path(path) as partial:
        table.to_csv(partial, sep="\t", index=False, float_format=float_format)


def read_optional_tsv(inputs, name: str):
    """The table of a job's input ``name`` (``snakemake.input``), a TSV file, where its rule has that input, else
    ``None`` (the model's answers, which a rule reads only where a subset or probe needs them)."""
    import pandas as pd  # here: the workflow's plan imports this module when Snakemake parses it

    return pd.read_csv(getattr(inputs, name), sep="\t") if name in inputs.keys() else None


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary directory beside ``path`` to fill; on a clean exit it takes the place of ``path``
    (a directory already there is moved aside first and deleted only once the new one is in place), on an
    exception it is removed and ``path`` is left as it was. Temporary directories of ``path`` that a killed job
    left (gigabytes, for a model) are removed first: Snakemake's lock on the working directory lets one job at a
    time write ``path``."""
    import shutil
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.partial"):
        shutil.rmtree(stale, ignore_errors=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    old = path.with_name(f".{path.name}.old")
    try:
        yield partial
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(partial, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def sha256_of(paths: list[str | os.PathLike]) -> str:
    """Hex sha256 of the concatenation of ``paths``."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def folder_files(folder: str | os.PathLike) -> list[str]:
    """Every file under ``folder`` but its :data:`FOLDER_RECORD` and hidden files and folders (Snakemake marks a
    directory output with ``.snakemake_timestamp``; nothing loads them), as sorted paths relative to it."""
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and p.name != FOLDER_RECORD
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def write_folder_record(folder: str | os.PathLike, fields: dict) -> dict:
    """Write ``folder``'s :data:`FOLDER_RECORD`: ``fields`` (what the folder holds, JSON-able) and ``files``, the
    sha256 of each of its files (:func:`folder_files`). Returns the record."""
    folder = Path(folder)
    record = {**fields, "files": {name: sha256_of([folder / name]) for name in folder_files(folder)}}
    (folder / FOLDER_RECORD).write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
    return record


def changed_files(folder: str | os.PathLike) -> list[str]:
    """The files of ``folder`` that differ from its :data:`FOLDER_RECORD` (:func:`write_folder_record`): a sha256
    that changed, a file gone or one added since, sorted; empty when the folder is as it was written. Raises
    ``OSError``, ``ValueError`` or ``KeyError`` when the folder has no readable record."""
    folder = Path(folder)
    recorded = json.loads((folder / FOLDER_RECORD).read_text(encoding="utf-8"))["files"]
    held = folder_files(folder)
    return sorted(name for name in set(held) | set(recorded)
                  if name not in recorded or name not in held or sha256_of([folder / name]) != recorded[name])
