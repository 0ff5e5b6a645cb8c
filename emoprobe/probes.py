"""Linear probes: the probing protocol from hidden states to emotion labels.

One multinomial logistic regression per (layer, position, problem) of the probe grid (:mod:`emoprobe.grid`),
scored on its pooled out-of-fold predictions over stratified k folds (or the reference's single train/test
split), all positions and the shuffled-label control sharing a problem's folds; features standardised with each
fold's training rows. The fits of one problem and position (every fold, its control, the fit on all texts where
directions are asked) are one solve of :func:`emoprobe.logistic.fit_logistic`, scikit-learn's
``LogisticRegression(C)`` objective.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from emoprobe.grid import Cell
from emoprobe.logistic import Probe, fit_logistic, logits, whitening
from emoprobe.mlp import fit_mlp, mlp_logits
from emoprobe.progress import Progress
from emoprobe.scores import (INTEGER_COLUMNS, INTERVAL, SCORE_COLUMNS, balanced_accuracy, information_scores,
                             log2_probability_of, score_predictions)


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


def scored_rows(label_id: np.ndarray, predicted: np.ndarray, labels: np.ndarray, *,
                control_labels: np.ndarray | None = None, control_predicted: np.ndarray | None = None,
                majority: np.ndarray | None = None, log2_probability: np.ndarray | None = None,
                prior_log2: np.ndarray | None = None) -> list[dict]:
    """One dict of :data:`SCORE_COLUMNS`' scores per row of ``predicted`` (``[n_rows, n]``, label ids).

    ``labels``: the label ids of the problem (balanced chance is ``1 / len(labels)``); ``control_*``: the
    shuffled-label control's labels ``[n]`` and predictions ``[n_rows, n]`` (a row of -1: no control fitted
    there, its columns left empty); ``majority``: the majority-class prediction of each text ``[n]``;
    ``log2_probability`` ``[n_rows, n]`` and ``prior_log2`` ``[n]``: the held-out log2-probabilities of each text's
    label under its fold's probe and its fold's training priors (:func:`prior_log2`), for the cross-entropy and
    usable information (:func:`emoprobe.scores.information_scores`; left empty without them). Intervals: see
    :mod:`emoprobe.scores`.
    """
    rows = []
    for r in range(len(predicted)):
        row = {"n_texts": len(label_id), "n_labels": len(labels), "balanced_chance": 1.0 / len(labels),
               **score_predictions(label_id, predicted[r], labels), "interval": INTERVAL}
        if log2_probability is not None:
            row.update(information_scores(log2_probability[r], prior_log2))
        if control_predicted is not None and (control_predicted[r] >= 0).all():
            row["control_accuracy"] = float(np.mean(control_predicted[r] == control_labels))
            row["control_balanced_accuracy"] = balanced_accuracy(control_labels, control_predicted[r], labels)
            row["selectivity"] = row["balanced_accuracy"] - row["control_balanced_accuracy"]
        if majority is not None:
            row["majority_accuracy"] = float(np.mean(majority == label_id))
        rows.append(row)
    return rows


def score_table(rows, positions: Sequence) -> pd.DataFrame:
    """``position`` and :data:`SCORE_COLUMNS` from ``rows`` (dicts or a table), counts as nullable integers."""
    table = pd.DataFrame(rows).assign(position=list(positions)).reindex(columns=["position", *SCORE_COLUMNS])
    return table.astype({column: "Int64" for column in ["position", *INTEGER_COLUMNS]})


def unscored_table(problem: Problem, positions: Sequence) -> pd.DataFrame:
    """Rows of :data:`SCORE_COLUMNS` for a problem with nothing to score: NaN scores, the note saying why."""
    return score_table({"n_texts": [0] * len(positions), "n_labels": len(problem.labels), "converged": False,
                        "note": problem.note}, positions)


def cross_validated_table(problem: Problem, y: np.ndarray, cv: dict, positions: Sequence) -> tuple[pd.DataFrame, dict]:
    """The scores (one row per position) and pooled out-of-fold predictions of ``problem``, whose labels are ``y``
    (``0..k-1`` over ``problem.labels``), from ``cv``:

    tested : int64 [m], the rows predicted (all ``n`` under k-fold, the test split with ``folds=0``)
    predicted, control_predicted : int64 [P, m], ``0..k-1`` (the control's: a row of -1 where none was fitted)
    log2_probability : float64 [P, m], log2 of the probability each tested row's fold gave its label; prior_log2 :
        float64 [m], of its label under the fold's training priors (:func:`prior_log2`)
    shuffled : int64 [n], the control's labels; majority : int64 [m], each tested row's training folds' most
        frequent label (ties: smallest id)
    train_accuracy : float64 [P]; n_iter, converged : per position (the most iterations, all converged)
    n_train, n_test : of the first fold; folds

    Predictions are in label ids: ``rows`` [m] (indices into ``problem``'s texts as ``problem.rows`` gives them),
    ``label_id``, ``predicted`` [P, m], ``control_label_id`` [m] and ``control_predicted`` [P, m] (-1 without a
    control), with ``log2_probability`` [P, m] and ``prior_log2`` [m] as ``cv`` gives them.
    """
    ids = problem.labels
    truth, predicted, majority = ids[y[cv["tested"]]], ids[cv["predicted"]], ids[cv["majority"]]
    fitted = (cv["control_predicted"] >= 0).all(axis=1)
    control_labels = ids[cv["shuffled"][cv["tested"]]]
    control_predicted = np.where(fitted[:, None], ids[np.maximum(cv["control_predicted"], 0)], -1)
    rows = scored_rows(truth, predicted, np.unique(truth), control_labels=control_labels,
                       control_predicted=control_predicted, majority=majority,
                       log2_probability=cv["log2_probability"], prior_log2=cv["prior_log2"])
    table = pd.DataFrame(rows).assign(train_accuracy=cv["train_accuracy"], folds=cv["folds"], n_train=cv["n_train"],
                                      n_test=cv["n_test"], n_iter=cv["n_iter"], converged=cv["converged"],
                                      note=problem.note)
    predictions = {"rows": problem.rows[cv["tested"]], "label_id": truth, "predicted": predicted,
                   "control_label_id": control_labels if fitted.any() else np.full(len(truth), -1),
                   "control_predicted": control_predicted, "log2_probability": cv["log2_probability"],
                   "prior_log2": cv["prior_log2"]}
    return score_table(table, positions), predictions


class LayerProbes(NamedTuple):
    """One problem's probes at one layer: its table, its pooled out-of-fold predictions (None when nothing is
    scored, as :func:`cross_validated_table` gives them) and the probes fitted on all its texts (None unless
    the grid asks for them): ``classes`` (int64 [k], label ids), ``positions`` (those fitted),
    ``weights`` (float32 [len(positions), k, hidden]) and ``intercepts`` (float32 [len(positions), k]) in the raw
    state space."""

    table: pd.DataFrame
    predictions: dict | None
    directions: dict | None


def probe_layer(states: np.ndarray, positions: Sequence[int], problems: Sequence[tuple[np.ndarray, np.ndarray]],
                cells: Sequence[dict[int, Cell]], *, label_names: Sequence[str], C: float = 1.0, max_iter: int = 1000,
                tol: float = 1e-4, folds: int, test_size: float, seed: int, stratify: bool, device: str | torch.device = "cpu",
                mlp: dict | None = None, progress: Progress | None = None) -> list[LayerProbes]:
    """Fit and score each problem's probes at the positions of its grid cells, one layer.

    Parameters
    ----------
    states : numpy.ndarray of float32, shape [n_texts, len(positions), hidden_size]
    positions : the token position of each of ``states``' second axis
    problems : ``(rows, label_id)`` per problem: indices into ``states`` and the labels of those rows (indices into
        ``label_names``); labels with fewer texts than folds are set aside (:func:`probe_problem`)
    cells : per problem, ``{position: Cell}``: where it is fitted, with a shuffled-label control (labels shuffled
        once with ``seed``, on the same folds) and with a fit on all its texts (its directions) where asked
    folds, test_size, stratify, seed : see :func:`fold_indices`
    device : where to fit (see :func:`emoprobe.device.pick_device`)
    mlp : None for the linear probes (``C``, ``max_iter``, ``tol``); else the non-linear probes of
        :func:`emoprobe.mlp.fit_mlp` with these settings (``hidden``, ``alpha``, ``max_iter``, ``tol``), seeded with
        ``seed``, on the same folds (no directions: they are linear)
    progress : counts each cell (a problem at a position: its folds, control and fit on all texts) when done

    Returns
    -------
    One :class:`LayerProbes` per problem; its table has a row per position of its cells: ``position`` and
    :data:`SCORE_COLUMNS` (scores NaN and ``note`` saying why when nothing can be scored; the control's columns
    empty where no control was fitted).
    """
    # one whitening per position, of all texts, shared by every problem's linear solve there: a convex objective's
    # optimum does not depend on it (the non-linear probes whiten their own training rows: theirs does)
    whitened = {}
    out = []
    for (rows, label_id), by_position in zip(problems, cells):
        wanted = list(by_position)
        problem = probe_problem(label_id, label_names, folds)
        if not problem.scorable:
            out.append(LayerProbes(unscored_table(problem, wanted), None, None))
            if progress is not None:
                progress.update(len(wanted))
            continue
        y = np.searchsorted(problem.labels, problem.label_id)  # 0..k-1
        k, n = len(problem.labels), len(y)
        splits = fold_indices(y, folds=folds, test_size=test_size, seed=seed, stratify=stratify)
        shuffled = np.random.default_rng(seed).permutation(y)
        texts = np.asarray(rows)[problem.rows]
        predicted, control_predicted = (np.full((len(wanted), n), -1, dtype=np.int64) for _ in range(2))
        log2_probability = np.full((len(wanted), n), np.nan)
        train_accuracy, n_iter, converged, fitted_on_all = [], [], [], {}
        for i, position in enumerate(wanted):
            cell = by_position[position]
            x = np.ascontiguousarray(states[texts, list(positions).index(position)])
            probes = [Probe(train, y[train], k) for train, _ in splits]
            probes += [Probe(train, shuffled[train], k) for train, _ in splits] if cell.control else []
            probes += [Probe(np.arange(n), y, k)] if cell.directions else []
            if mlp is None:
                if position not in whitened:
                    whitened[position] = whitening(states[:, list(positions).index(position)])
                fits = fit_logistic(x, probes, C=C, max_iter=max_iter, tol=tol, q=whitened[position], device=device)
                # every fold's (and control's) logits of every text in one product, then each fold's rows read off it
                outputs = logits(x, fits[:len(probes) - cell.directions])
            elif cell.directions:
                raise ValueError("a non-linear probe has no directions: its grid cells must not ask for them")
            else:
                fits = fit_mlp(x, probes, **mlp, seed=seed, device=device)
                outputs = mlp_logits(x, fits)
            labels = outputs.argmax(axis=2)
            accuracy = []
            for f, (train, test) in enumerate(splits):
                predicted[i, test] = labels[f, test]
                log2_probability[i, test] = log2_probability_of(outputs[f, test], y[test])
                accuracy.append(np.mean(labels[f, train] == y[train]))
                if cell.control:
                    control_predicted[i, test] = labels[len(splits) + f, test]
            if cell.directions:
                fitted_on_all[position] = fits[-1]
            train_accuracy.append(np.mean(accuracy))
            n_iter.append(max(fit.n_iter for fit in fits))
            converged.append(all(fit.converged for fit in fits))
            if progress is not None:
                progress.update(1)
        tested = np.sort(np.concatenate([test for _, test in splits]))
        majority = np.full(n, -1, dtype=np.int64)
        for train, test in splits:
            majority[test] = np.bincount(y[train], minlength=k).argmax()
        cv = {"tested": tested, "predicted": predicted[:, tested], "control_predicted": control_predicted[:, tested],
              "shuffled": shuffled, "majority": majority[tested], "train_accuracy": np.asarray(train_accuracy),
              "log2_probability": log2_probability[:, tested], "prior_log2": prior_log2(y, splits, k)[tested],
              "n_train": len(splits[0][0]), "n_test": len(splits[0][1]), "folds": len(splits), "n_iter": n_iter,
              "converged": converged}
        table, predictions = cross_validated_table(problem, y, cv, wanted)
        predictions["rows"] = texts[cv["tested"]]
        directions = None
        if fitted_on_all:
            directions = {"classes": np.asarray(problem.labels, dtype=np.int64), "positions": list(fitted_on_all),
                          "weights": np.stack([fit.weights for fit in fitted_on_all.values()]),
                          "intercepts": np.stack([fit.intercepts for fit in fitted_on_all.values()])}
        out.append(LayerProbes(table, predictions, directions))
    return out


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
