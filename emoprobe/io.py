"""Atomic writes: every output of the workflow appears whole under its name, or not at all."""

from __future__ import annotations

import contextlib
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
