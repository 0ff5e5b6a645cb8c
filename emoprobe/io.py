"""Atomic writes: every output of the workflow appears whole under its name, or not at all."""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Iterator
from pathlib import Path


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
