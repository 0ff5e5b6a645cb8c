"""The engine every experiment that edits the model runs on: conditions run over batches of texts, the clean pass.

Each experiment (:mod:`emoprobe.experiments`) edits one location in windows of layers (:mod:`emoprobe.windows`) at
the prompt's last token (:mod:`emoprobe.last_token`) and compares the model's answer, the argmax over the label
logits, with its *clean* answer (the unedited run's): the bundled models answer few texts correctly, and almost
always with one label, so every metric is defined on the clean answer, as the paper's code effectively does. An
experiment's runner gives a :data:`Plan` of conditions per batch; :func:`condition_logits` runs them,
:func:`clean_outputs` reads the clean run; :func:`run_experiment` calls the runner its registry entry names.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from emoprobe.experiments import EXPERIMENTS, editing
from emoprobe.last_token import Edit, LastTokenBatch
from emoprobe.progress import Progress
from emoprobe.windows import centre_layers, edited_layers

Condition = Mapping[tuple[str, int], Edit]
# one batch's conditions, in groups whose edits start at one layer (each group runs in passes of one start)
Plan = Callable[[np.ndarray, LastTokenBatch], list[list[Condition]]]
# one pass's batches of prompts, from their token ids (:func:`emoprobe.last_token.iter_last_token_batches`)
Batches = Callable[[Sequence[Sequence[int]]], Iterable[tuple[np.ndarray, LastTokenBatch]]]


class NothingToRun(Exception):
    """An experiment that has nothing to run on these texts or these probes; its message says why (the note of the
    table's single row, as the probe tables give for a subset they cannot score)."""


def over_texts(batches: Iterable[tuple[np.ndarray, LastTokenBatch]], n_texts: int,
               found: Callable[[np.ndarray, LastTokenBatch], Mapping[str, tuple[int, np.ndarray]]]
               ) -> dict[str, np.ndarray]:
    """``found(indices, batch)`` of every batch, gathered over the texts ``0 .. n_texts - 1``: for each name, its
    ``(axis, values)`` put in place along ``axis`` (the batch's texts) of an array of ``n_texts`` there.

    Raises
    ------
    ValueError
        where the batches do not cover every text.
    """
    gathered, covered = {}, np.zeros(n_texts, dtype=bool)
    for indices, batch in batches:
        for name, (axis, values) in found(indices, batch).items():
            if name not in gathered:
                shape = list(values.shape)
                shape[axis] = n_texts
                gathered[name] = np.zeros(shape, dtype=values.dtype)
            np.moveaxis(gathered[name], axis, 0)[indices] = np.moveaxis(values, axis, 0)
        covered[indices] = True
    if not covered.all():
        raise ValueError(f"the batches do not cover all {n_texts} texts")
    return gathered


def condition_logits(batches: Iterable[tuple[np.ndarray, LastTokenBatch]], plan: Plan,
                     readout: Callable[[torch.Tensor], torch.Tensor], n_texts: int, max_rows: int = 2048,
                     progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Label logits of every condition of ``plan`` on every text, and the clean logits.

    Parameters
    ----------
    batches : ``(indices, batch)`` pairs covering the texts ``0 .. n_texts - 1`` once
        (:func:`emoprobe.last_token.iter_last_token_batches`).
    plan : gives a batch's conditions, grouped; every batch must give the same number in the same order.
    readout : the last block's output ``[..., hidden]`` -> label logits ``[..., n_labels]``
        (:func:`emoprobe.answers.label_readout`).
    max_rows : at most this many rows (conditions x texts) in one pass.
    progress : counts the runs (a condition on a text) of each pass when done.

    Returns
    -------
    logits : numpy.ndarray of float32, shape [n_conditions, n_texts, n_labels]
    clean : numpy.ndarray of float32, shape [n_texts, n_labels]
    """
    def found(indices, batch):
        out = []
        for group in plan(indices, batch):
            per_pass = max(1, max_rows // len(batch))
            for start in range(0, len(group), per_pass):
                out.append(readout(batch.run_many(group[start:start + per_pass])))
                if progress is not None:
                    progress.update(len(group[start:start + per_pass]) * len(indices))
        clean = readout(batch.clean[("residual", len(batch.blocks))])
        return {"logits": (1, torch.cat(out).cpu().numpy()), "clean": (0, clean.cpu().numpy())}

    gathered = over_texts(batches, n_texts, found)
    return gathered["logits"], gathered["clean"]


def clean_outputs(batches: Iterable[tuple[np.ndarray, LastTokenBatch]], keys: Sequence[tuple[str, int]],
                  readout: Callable[[torch.Tensor], torch.Tensor], n_texts: int, progress: Progress | None = None
                  ) -> tuple[dict[tuple[str, int], np.ndarray], np.ndarray]:
    """The clean outputs at ``keys`` ``(location, layer)``, float32 ``[n_texts, hidden]`` each, and the clean
    label logits ``[n_texts, n_labels]``, of the texts ``0 .. n_texts - 1`` that ``batches`` cover (``progress``
    counts them)."""
    def found(indices, batch):
        outputs = {key: (0, batch.clean[key].float().cpu().numpy()) for key in keys}
        outputs["clean"] = (0, readout(batch.clean[("residual", len(batch.blocks))]).cpu().numpy())
        if progress is not None:
            progress.update(len(indices))
        return outputs

    gathered = over_texts(batches, n_texts, found)
    return {key: gathered[key] for key in keys}, gathered["clean"]


class ExperimentInputs(NamedTuple):
    """What every experiment runs on (the arguments of :func:`run_experiment`)."""

    settings: Mapping
    batches: Batches
    readout: Callable[[torch.Tensor], torch.Tensor]
    token_ids: Sequence[Sequence[int]]
    row_ids: np.ndarray
    n_layers: int
    labels: Sequence[str]
    directions: object
    max_rows: int
    log: logging.Logger | None = None  # where each pass logs how far it is

    def clean_pass(self, what: str, n_texts: int) -> Progress:
        """The progress of a pass of the clean prompts, in texts."""
        return Progress(self.log, n_texts, "texts", what=f"{what}, clean pass")

    def edited_runs(self, what: str, n_conditions: int, n_texts: int) -> Progress:
        """The progress of the edited runs, a condition on a text each; first a line that says how many."""
        if self.log is not None:
            self.log.info("%s: %d conditions x %d texts = %d edited runs", what, n_conditions, n_texts,
                          n_conditions * n_texts)
        return Progress(self.log, n_conditions * n_texts, "runs", what=f"{what}, edited runs")

    def conditions(self, plan: Plan, n_conditions: int, what: str, token_ids: Sequence[Sequence[int]] | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`condition_logits` of ``plan``'s ``n_conditions`` conditions on ``token_ids`` (default: every
        text), logged as ``what``'s edited runs."""
        token_ids = self.token_ids if token_ids is None else token_ids
        with self.edited_runs(what, n_conditions, len(token_ids)) as progress:
            return condition_logits(self.batches(token_ids), plan, self.readout, len(token_ids), self.max_rows,
                                    progress)

    @property
    def centres(self) -> list[int]:
        return centre_layers(self.n_layers, self.settings["every"])

    def edited_layers(self) -> list[int]:
        """Every layer some window edits (the union of the windows around the centres, clipped to the model)."""
        return edited_layers(self.centres, self.settings["span"], self.n_layers)


def implementation(spec: str) -> Callable:
    """The function ``"module:function"`` (a registry entry's runner or reader), its module imported."""
    module, function = spec.split(":")
    return getattr(importlib.import_module(module), function)


def read_directions(kind: str, paths: Sequence[str], settings: Mapping, layers: Sequence[int], provenance: Mapping):
    """The directions experiment ``kind`` pushes along, at ``layers``, from ``paths`` (their attributes checked
    against ``provenance``), as its runner takes them; ``None`` for an experiment that pushes along none.

    Raises :class:`NothingToRun` where the files hold none of the directions it needs."""
    reader = EXPERIMENTS[kind].read_directions
    return implementation(reader)(paths, settings, layers, provenance) if reader else None


def run_experiment(kind: str, settings: Mapping, *, batches: Batches, readout: Callable[[torch.Tensor], torch.Tensor],
                   token_ids: Sequence[Sequence[int]], row_ids: np.ndarray, n_layers: int, labels: Sequence[str],
                   directions: object = None, max_rows: int = 2048, log: logging.Logger | None = None
                   ) -> pd.DataFrame:
    """One experiment that edits the model (:func:`emoprobe.experiments.editing`) on the texts ``token_ids`` (whole
    prompts; ``row_ids[i]`` is text ``i``'s corpus row), its tidy table: the runner its registry entry names.

    ``settings``: ``span``, ``every`` (centre layers, :func:`emoprobe.windows.centre_layers`), ``clip_windows``
    (:func:`emoprobe.windows.windows`), ``seed``, and the experiment's own (:func:`emoprobe.plan.intervention_settings`).
    ``directions``: what :func:`read_directions` gives for it. ``labels`` are the label names in the order of
    ``readout``'s logits (and of the probes' class ids). With ``log``, each pass over the texts logs how far it is
    (:class:`emoprobe.progress.Progress`): the clean pass in texts, the edited runs in runs (a condition on a text).

    Raises :class:`NothingToRun` where the experiment has nothing to run (patching texts that all get one clean
    answer, a probe with no row of the emotions asked for).
    """
    if kind not in editing():
        raise ValueError(f"experiment {kind!r} is not one of {editing()}")
    runner = implementation(EXPERIMENTS[kind].runner)
    return runner(ExperimentInputs(settings, batches, readout, token_ids, row_ids, n_layers, labels, directions,
                                   max_rows, log))
