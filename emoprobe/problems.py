"""Which texts a probe is fitted and scored on, and how they are split: the probing problems of a layer (the true
label on each subset of texts, the model's own answer), the labels set aside when they have too few texts to be
scored, the folds, and the label frequencies each fold's training texts give (the reference of usable information).
Shared by the probes, the baselines, the conditional probes, the appraisal probes and the subsets' table."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split


def split_indices(label_id: np.ndarray, test_size: float, seed: int, stratify: bool) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices; identical to ``train_test_split(X, y, test_size, random_state=seed)``.

    Returns
    -------
    train, test : numpy.ndarray of int64
    """
    rows = np.arange(len(label_id))
    train, test = train_test_split(
        rows, test_size=test_size, random_state=seed, stratify=label_id if stratify else None
    )
    return train, test


def fold_indices(label_id: np.ndarray, *, folds: int, test_size: float, seed: int, stratify: bool
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, test)`` row indices of each fold: stratified k-fold, or with ``folds=0`` one
    :func:`split_indices` split. Labels with fewer than ``folds`` texts are spread as far as they go;
    when no label has ``folds`` texts (a small subset), the folds are not stratified."""
    if folds == 0:
        return [split_indices(label_id, test_size, seed, stratify)]
    if np.bincount(label_id).max() < folds:
        return list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(label_id))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(label_id, label_id))


def prior_log2(y: np.ndarray, splits: Sequence[tuple[np.ndarray, np.ndarray]], n_classes: int) -> np.ndarray:
    """``log2`` of each tested text's label frequency among its fold's training texts, with one text of each label
    added (so that a label a fold's training texts lack does not get probability 0): float64 ``[n]``, NaN for a text
    no fold tests. What predicting from the label frequencies alone gives, the reference of usable information
    (:func:`emoprobe.scores.information_scores`)."""
    out = np.full(len(y), np.nan)
    for train, test in splits:
        counts = np.bincount(y[train], minlength=n_classes) + 1.0
        out[test] = np.log2(counts[y[test]] / counts.sum())
    return out


def subset_rows(subset: str, row_id: np.ndarray, answers: pd.DataFrame | None) -> np.ndarray:
    """Indices into ``row_id`` of the texts in ``subset``: ``all``, or ``model_correct`` (the texts whose
    ``answers`` row, as written by :func:`emoprobe.answers.answer_table`, is correct)."""
    if subset == "all":
        return np.arange(len(row_id))
    correct = answers.set_index("row_id")["correct"]
    missing = np.setdiff1d(row_id, correct.index.to_numpy())
    if len(missing):
        raise ValueError(f"the answers have no row for row_id(s) {missing[:5].tolist()}")
    return np.flatnonzero(correct.loc[row_id].to_numpy(dtype=bool))


class Problem(NamedTuple):
    """The texts and labels a probe is fitted and scored on, after setting aside what cannot be scored."""

    rows: np.ndarray  # int64 [n]: indices of the texts kept
    label_id: np.ndarray  # int64 [n]: their labels
    labels: np.ndarray  # int64 [k]: the label ids kept, sorted
    note: str  # why texts were set aside or nothing can be scored; "" when all is well

    @property
    def scorable(self) -> bool:
        return len(self.rows) > 0


def probe_problem(label_id: np.ndarray, label_names: Sequence[str], folds: int) -> Problem:
    """Keep the labels with at least ``max(folds, 1)`` texts (each must appear in every test fold for
    stratified folds and per-label recall to mean anything); refuse, with a note, a problem left with
    fewer than two labels or fewer texts than folds.

    ``label_names[i]`` names label id ``i``, for the note.
    """
    label_id = np.asarray(label_id, dtype=np.int64)
    need = max(folds, 1)
    counts = np.bincount(label_id, minlength=len(label_names))
    kept = np.flatnonzero(counts >= need)
    dropped = [f"{label_names[k]} ({counts[k]})" for k in np.flatnonzero((counts > 0) & (counts < need))]
    notes = [f"set aside labels with fewer than {need} texts: {', '.join(dropped)}"] if dropped else []
    rows = np.flatnonzero(np.isin(label_id, kept))
    if len(kept) < 2 or len(rows) < max(folds, 2):
        present = [label_names[k] for k in kept]
        why = (f"{len(label_id)} text(s) of {np.count_nonzero(counts)} label(s): fewer than two labels with "
               f"{need} or more texts ({', '.join(present) or 'none'}); nothing scored")
        return Problem(np.empty(0, np.int64), np.empty(0, np.int64), kept, "; ".join(notes + [why]))
    return Problem(rows, label_id[rows], kept, "; ".join(notes))


def probe_targets(subsets: Sequence[str], answer_probe: bool, row_id: np.ndarray, label_id: np.ndarray,
                  answers: pd.DataFrame | None, labels: Sequence[str]
                  ) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """The probing problems of one layer: ``(subset, target, rows, label_id)`` with ``rows`` indices into
    ``row_id`` and ``label_id`` the labels to predict there.

    ``target`` ``label`` predicts the true label on each of ``subsets``; with ``answer_probe``, ``answer``
    predicts the model's own answer (``answers``, as written by :func:`emoprobe.answers.answer_table`;
    ``labels`` in label-id order) on all texts: where the model's decision forms.
    """
    problems = []
    for subset in subsets:
        rows = subset_rows(subset, row_id, answers)
        problems.append((subset, "label", rows, label_id[rows]))
    if answer_probe:
        answer = answers.set_index("row_id")["answer"].loc[row_id]
        unknown = sorted(set(answer) - set(labels))
        if unknown:
            raise ValueError(f"the answers name labels {unknown} that are not in dataset.labels")
        problems.append(("all", "answer", np.arange(len(row_id)), np.searchsorted(np.asarray(labels),
                                                                                  answer.to_numpy(dtype=str))))
    return problems


def subset_table(prompts: pd.DataFrame, answers: dict[str, pd.DataFrame], *, subsets: Sequence[str],
                 answer_probe: bool, labels: Sequence[str], folds: int) -> pd.DataFrame:
    """One row per (model, subset, target): ``n_texts`` in the subset, ``n_scored`` after :func:`probe_problem`
    sets aside labels with too few texts, ``n_labels`` kept, a column of texts per label, and the ``note``.

    ``prompts``: the prompts table (``row_id``, ``label_id``); ``answers``: each model's answers table.
    """
    rows = []
    for model, table in answers.items():
        for subset, target, picked, label_id in probe_targets(subsets, answer_probe, prompts["row_id"].to_numpy(),
                                                              prompts["label_id"].to_numpy(), table, labels):
            problem = probe_problem(label_id, labels, folds)
            counts = np.bincount(label_id, minlength=len(labels))
            rows.append({"model": model, "subset": subset, "target": target, "n_texts": len(picked),
                         "n_scored": len(problem.rows), "n_labels": len(problem.labels),
                         **dict(zip(labels, counts.tolist())), "note": problem.note})
    return pd.DataFrame(rows)
