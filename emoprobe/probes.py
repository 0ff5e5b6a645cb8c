"""Probes: the probing protocol from hidden states to emotion labels.

One multinomial logistic regression (or, for the non-linear probes, one MLP: :func:`fit_trainer`) per (layer,
position, problem) of the probe grid (:mod:`emoprobe.grid`),
scored on its pooled out-of-fold predictions over stratified k folds (or the reference's single train/test
split), all positions and the shuffled-label control sharing a problem's folds; features standardised with each
fold's training rows. The fits of one problem and position (every fold, its control, the fit on all texts where
directions are asked) are one solve of :func:`emoprobe.logistic.fit_logistic`, scikit-learn's
``LogisticRegression(C)`` objective.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import singledispatch
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from emoprobe.grid import Cell, describe, positions_of
from emoprobe.logistic import Probe, fit_logistic, logits, whitening as whitening_of
from emoprobe.mlp import fit_mlp, mlp_logits
from emoprobe.problems import Problem, fold_indices, prior_log2, probe_problem, probe_targets
from emoprobe.progress import Progress, layer_range
from emoprobe.settings import MLP, Logistic, Probing, Split
from emoprobe.scores import (INTEGER_COLUMNS, INTERVAL, SCORE_COLUMNS, balanced_accuracy, information_scores,
                             log2_probability_of, score_predictions)


def scored_rows(label_id: np.ndarray, predicted: np.ndarray, labels: np.ndarray, *,
                control_labels: np.ndarray | None = None, control_predicted: np.ndarray | None = None,
                majority: np.ndarray | None = None, log2_probability: np.ndarray | None = None,
                prior_log2: np.ndarray | None = None) -> list[dict]:
    """One dict of :data:`SCORE_COLUMNS`' scores per row of ``predicted`` (``[n_rows, n]``, label ids).

    ``labels``: the label ids of the problem (balanced chance is ``1 / len(labels)``); ``control_*``: the
    shuffled-label control's labels ``[n]`` and predictions ``[n_rows, n]`` (a row of -1: no control fitted
    there, its columns left empty); ``majority``: the majority-class prediction of each text ``[n]``;
    ``log2_probability`` ``[n_rows, n]`` and ``prior_log2`` ``[n]``: the held-out log2-probabilities of each text's
    label under its fold's probe and its fold's training priors (:func:`emoprobe.problems.prior_log2`), for the cross-entropy and
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


class OutOfFold:
    """The cross-validation record of one problem's probes at ``n_positions`` positions: its folds and the control's
    shuffled labels, then, filled fold by fold, each position's out-of-fold predictions of its ``test`` rows, its
    fits' training accuracy, iterations and convergence; :meth:`scored` pools and scores them.

    ``y`` (int64 [n]) are the problem's labels ``0..n_classes-1``. The folds are ``split``'s
    (:func:`emoprobe.problems.fold_indices`); the control's labels are ``y`` shuffled once with ``split.seed``.
    """

    def __init__(self, y: np.ndarray, n_classes: int, n_positions: int, split) -> None:
        self.y, self.n_classes = y, n_classes
        self.splits = fold_indices(y, **split._asdict())
        self.shuffled = np.random.default_rng(split.seed).permutation(y)
        self.predicted, self.control_predicted = (np.full((n_positions, len(y)), -1, dtype=np.int64)
                                                  for _ in range(2))
        self.log2_probability = np.full((n_positions, len(y)), np.nan)
        self.fold_accuracy = np.full((n_positions, len(self.splits)), np.nan)
        self.n_iter, self.converged = [0] * n_positions, [False] * n_positions

    def record(self, position: int, outputs: np.ndarray, control: np.ndarray | None = None) -> None:
        """Record the ``position``-th position's fits from their ``outputs`` (float [n_folds, n, k]: each fold's
        logits or log-probabilities of every row) and, where a control is fitted, its folds' predicted labels
        ``control`` (int [n_folds, n])."""
        labels = outputs.argmax(axis=2)
        for f, (train, test) in enumerate(self.splits):
            self.record_fold(position, f, labels[f, test], log2_probability_of(outputs[f, test], self.y[test]),
                             np.mean(labels[f, train] == self.y[train]),
                             None if control is None else control[f, test])

    def record_fold(self, position: int, fold: int, predicted: np.ndarray, log2_probability: np.ndarray,
                    train_accuracy: float, control: np.ndarray | None = None) -> None:
        """Record the ``fold``-th fold's fit at the ``position``-th position: its predicted labels (int) and the
        log2-probability of each label (float) of the fold's test rows, its accuracy on its training rows and, where
        a control is fitted, the control's predicted labels of the test rows. A position's training accuracy is
        the mean of its folds'."""
        test = self.splits[fold][1]
        self.predicted[position, test] = predicted
        self.log2_probability[position, test] = log2_probability
        if control is not None:
            self.control_predicted[position, test] = control
        self.fold_accuracy[position, fold] = train_accuracy

    def record_fits(self, position: int, n_iter: int, converged: bool) -> None:
        """The most iterations any fit at the ``position``-th position took, and whether all converged."""
        self.n_iter[position], self.converged[position] = n_iter, converged

    def scored(self, problem: Problem, positions: Sequence, rows: np.ndarray) -> tuple[pd.DataFrame, dict]:
        """The scores of ``problem`` (the problem ``y`` labels) at ``positions``: one row each, ``position`` and
        :data:`SCORE_COLUMNS`; and its pooled out-of-fold predictions in label ids: ``rows`` [m] (the tested texts,
        each as ``rows`` [n] names the problem's texts; all ``n`` under k-fold, the test split with ``folds=0``),
        ``label_id``, ``predicted`` [P, m], ``control_label_id`` [m] and ``control_predicted``
        [P, m] (-1 without a control), ``log2_probability`` [P, m] (of each row's label under its fold's fit) and
        ``prior_log2`` [m] (of its label under its fold's training priors, :func:`emoprobe.problems.prior_log2`). The majority
        prediction of a row is its training folds' most frequent label (ties: the smallest id)."""
        ids, y, splits = problem.labels, self.y, self.splits
        tested = np.sort(np.concatenate([test for _, test in splits]))
        majority = np.full(len(y), -1, dtype=np.int64)
        for train, test in splits:
            majority[test] = np.bincount(y[train], minlength=self.n_classes).argmax()
        truth, predicted = ids[y[tested]], ids[self.predicted[:, tested]]
        control = self.control_predicted[:, tested]
        fitted = (control >= 0).all(axis=1)
        control_labels = ids[self.shuffled[tested]]
        control_predicted = np.where(fitted[:, None], ids[np.maximum(control, 0)], -1)
        log2_probability, prior = self.log2_probability[:, tested], prior_log2(y, splits, self.n_classes)[tested]
        scores = scored_rows(truth, predicted, np.unique(truth), control_labels=control_labels,
                             control_predicted=control_predicted, majority=ids[majority[tested]],
                             log2_probability=log2_probability, prior_log2=prior)
        table = pd.DataFrame(scores).assign(train_accuracy=self.fold_accuracy.mean(axis=1), folds=len(splits),
                                          n_train=len(splits[0][0]), n_test=len(splits[0][1]), n_iter=self.n_iter,
                                          converged=self.converged, note=problem.note)
        predictions = {"rows": np.asarray(rows)[tested], "label_id": truth, "predicted": predicted,
                       "control_label_id": control_labels if fitted.any() else np.full(len(truth), -1),
                       "control_predicted": control_predicted, "log2_probability": log2_probability,
                       "prior_log2": prior}
        return score_table(table, positions), predictions


@singledispatch
def fit_trainer(trainer, x: np.ndarray, probes: Sequence[Probe], *, seed: int, device: str | torch.device,
                whitening: Callable[[], np.ndarray]) -> list:
    """Fit ``probes`` (their training rows and labels) on ``x`` (float32 [n, d]) with ``trainer``'s settings
    (:mod:`emoprobe.settings`), one implementation per trainer type. ``whitening()`` gives the whitening of all the
    layer's texts at this position (shared by every problem there); ``seed`` draws what a trainer draws."""
    raise TypeError(f"no trainer is registered for {type(trainer).__name__} settings: {trainer!r}")


@fit_trainer.register
def _(trainer: Logistic, x, probes, *, seed, device, whitening) -> list:
    # a convex objective: its optimum does not depend on the whitening, so the layer's is shared; nothing is drawn
    return fit_logistic(x, probes, C=trainer.C, max_iter=trainer.max_iter, tol=trainer.tol, q=whitening(),
                        device=device)


@fit_trainer.register
def _(trainer: MLP, x, probes, *, seed, device, whitening) -> list:
    # a non-convex objective depends on the whitening: each probe whitens its own training rows
    return fit_mlp(x, probes, hidden=trainer.hidden, alpha=trainer.alpha, max_iter=trainer.max_iter,
                   tol=trainer.tol, seed=seed, device=device)


@singledispatch
def trainer_logits(trainer, x: np.ndarray, fits: Sequence) -> np.ndarray:
    """float64 [len(fits), n, k]: the logits of every row of ``x`` (float32 [n, d]) under each of ``fits``
    (:func:`fit_trainer`'s, of the same ``trainer`` type)."""
    raise TypeError(f"no trainer is registered for {type(trainer).__name__} settings: {trainer!r}")


trainer_logits.register(Logistic, lambda trainer, x, fits: logits(x, fits))
trainer_logits.register(MLP, lambda trainer, x, fits: mlp_logits(x, fits))


class LayerProbes(NamedTuple):
    """One problem's probes at one layer: its table, its pooled out-of-fold predictions (None when nothing is
    scored, as :meth:`OutOfFold.scored` gives them, ``rows`` indexing the layer's states) and the probes fitted on
    all its texts (None unless the grid asks for them): ``classes`` (int64 [k], label ids), ``positions`` (those
    fitted), ``weights`` (float32 [len(positions), k, hidden]) and ``intercepts`` (float32 [len(positions), k]) in
    the raw state space."""

    table: pd.DataFrame
    predictions: dict | None
    directions: dict | None


def probe_layer(states: np.ndarray, positions: Sequence[int], problems: Sequence[tuple[np.ndarray, np.ndarray]],
                cells: Sequence[dict[int, Cell]], *, label_names: Sequence[str], split: Split,
                trainer: Logistic | MLP, device: str | torch.device = "cpu", progress: Progress | None = None
                ) -> list[LayerProbes]:
    """Fit and score each problem's probes at the positions of its grid cells, one layer.

    Parameters
    ----------
    states : numpy.ndarray of float32, shape [n_texts, len(positions), hidden_size]
    positions : the token position of each of ``states``' second axis
    problems : ``(rows, label_id)`` per problem: indices into ``states`` and the labels of those rows (indices into
        ``label_names``); labels with fewer texts than folds are set aside (:func:`emoprobe.problems.probe_problem`)
    cells : per problem, ``{position: Cell}``: where it is fitted, with a shuffled-label control (labels shuffled
        once with ``split.seed``, on the same folds) and with a fit on all its texts (its directions) where asked
    split : the folds (:class:`emoprobe.settings.Split`)
    trainer : :class:`emoprobe.settings.Logistic` (the linear probes) or :class:`emoprobe.settings.MLP` (the
        non-linear ones, seeded with ``split.seed``, which give no directions)
    device : where to fit (see :func:`emoprobe.device.pick_device`)
    progress : counts each cell (a problem at a position: its folds, control and fit on all texts) when done

    Returns
    -------
    One :class:`LayerProbes` per problem; its table has a row per position of its cells: ``position`` and
    :data:`SCORE_COLUMNS` (scores NaN and ``note`` saying why when nothing can be scored; the control's columns
    empty where no control was fitted).
    """
    whitened = {}  # one whitening per position, of all texts, shared by every problem's linear solve there

    def whitening(position: int) -> np.ndarray:
        if position not in whitened:
            whitened[position] = whitening_of(states[:, list(positions).index(position)])
        return whitened[position]

    out = []
    for (rows, label_id), by_position in zip(problems, cells):
        wanted = list(by_position)
        problem = probe_problem(label_id, label_names, split.folds)
        if not problem.scorable:
            out.append(LayerProbes(unscored_table(problem, wanted), None, None))
            if progress is not None:
                progress.update(len(wanted))
            continue
        y = np.searchsorted(problem.labels, problem.label_id)  # 0..k-1
        k, n = len(problem.labels), len(y)
        record = OutOfFold(y, k, len(wanted), split)
        texts = np.asarray(rows)[problem.rows]
        fitted_on_all = {}
        for i, position in enumerate(wanted):
            cell = by_position[position]
            if cell.directions and not trainer.gives_directions:
                raise ValueError(f"{type(trainer).__name__} probes have no directions: their grid cells must not ask "
                                 "for them")
            x = np.ascontiguousarray(states[texts, list(positions).index(position)])
            probes = [Probe(train, y[train], k) for train, _ in record.splits]
            probes += [Probe(train, record.shuffled[train], k) for train, _ in record.splits] if cell.control else []
            probes += [Probe(np.arange(n), y, k)] if cell.directions else []
            fits = fit_trainer(trainer, x, probes, seed=split.seed, device=device,
                               whitening=lambda: whitening(position))
            # every fold's (and control's) logits of every text in one product, then each fold's rows read off it
            outputs = trainer_logits(trainer, x, fits[:len(fits) - cell.directions])
            folds = len(record.splits)
            record.record(i, outputs[:folds], outputs[folds:].argmax(axis=2) if cell.control else None)
            record.record_fits(i, max(fit.n_iter for fit in fits), all(fit.converged for fit in fits))
            if cell.directions:
                fitted_on_all[position] = fits[-1]
            if progress is not None:
                progress.update(1)
        table, predictions = record.scored(problem, wanted, texts)
        directions = None
        if fitted_on_all:
            directions = {"classes": np.asarray(problem.labels, dtype=np.int64), "positions": list(fitted_on_all),
                          "weights": np.stack([fit.weights for fit in fitted_on_all.values()]),
                          "intercepts": np.stack([fit.intercepts for fit in fitted_on_all.values()])}
        out.append(LayerProbes(table, predictions, directions))
    return out


class LocationProbes(NamedTuple):
    """A location's probes over layers, as its job writes them: ``table`` (a row per layer, problem and position:
    ``position``, :data:`SCORE_COLUMNS`, ``model``, ``location``, ``subset``, ``target``, ``layer``);
    ``predictions``, per scored problem (``subset/target``): ``positions``, ``row_id``, ``label_id``,
    ``control_label_id`` and ``prior_log2`` [m], and :data:`PER_POSITION`'s arrays stacked along the layers
    [n_layers, P, m]; ``directions``, per problem fitted on all texts: ``classes``, ``positions``, ``weights``
    [n_layers, P, k, hidden] and ``intercepts`` [n_layers, P, k] (float32)."""

    table: pd.DataFrame
    predictions: dict[str, dict]
    directions: dict[str, dict]


# the arrays of a problem's predictions that differ from layer to layer (one row per position)
PER_POSITION = ("predicted", "control_predicted", "log2_probability")


def probe_location(read_layer: Callable[[int], tuple[np.ndarray, dict]], layers: Sequence[int],
                   cells: dict[str, dict[int, Cell]], settings: Probing, *, device: str | torch.device,
                   answers: pd.DataFrame | None, labels: Sequence[str], model: str, location: str,
                   progress: Progress | None = None, log: logging.Logger | None = None) -> LocationProbes:
    """Fit and score the probes of ``cells`` at every one of ``layers`` of one location.

    Parameters
    ----------
    read_layer : ``layer -> (states, meta)``: the layer's states (float32 [n_texts, P, hidden] at the cells'
        positions, in :func:`emoprobe.grid.positions_of` order) and their ``row_id``, ``label_id`` (int64 [n_texts])
    cells : ``{"subset/target": {position: Cell}}``: the problems (of ``settings.problems``, :func:`emoprobe.problems.probe_targets`)
        probed and where
    settings : the problems, folds and trainer (:class:`emoprobe.settings.Probing`); ``device`` the resolved device
    answers : the model's answers (:func:`emoprobe.answers.answer_table`), where a problem needs them
    labels : the label names, in label-id order
    model, location : what the table calls them
    log : where each layer's best score is told
    """
    positions = positions_of(cells)
    tables, predictions, directions = [], {}, {}
    for layer in layers:
        states, meta = read_layer(layer)
        problems = [(f"{subset}/{target}", rows, label_id) for subset, target, rows, label_id in
                    probe_targets(settings.problems.subsets, settings.problems.answer_probe, meta["row_id"],
                                  meta["label_id"], answers, labels) if f"{subset}/{target}" in cells]
        fitted = probe_layer(states, positions, [(rows, label_id) for _, rows, label_id in problems],
                             [cells[name] for name, _, _ in problems], label_names=labels, split=settings.split,
                             trainer=settings.trainer, device=device, progress=progress)
        for (name, _, _), result in zip(problems, fitted):
            subset, target = name.split("/")
            tables.append(result.table.assign(model=model, location=location, subset=subset, target=target,
                                              layer=layer))
            if result.predictions is not None:
                predicted = result.predictions
                kept = predictions.setdefault(name, {
                    "positions": list(cells[name]), "row_id": meta["row_id"][predicted["rows"]],
                    **{key: predicted[key] for key in ("label_id", "control_label_id", "prior_log2")},
                    **{key: [] for key in PER_POSITION}})
                for key in PER_POSITION:
                    kept[key].append(predicted[key])
            if result.directions is not None:
                on_all = directions.setdefault(name, {key: result.directions[key] for key in ("classes", "positions")}
                                               | {"weights": [], "intercepts": []})
                for key in ("weights", "intercepts"):
                    on_all[key].append(result.directions[key])
            if log is not None:
                log_best(log, result.table, f"{location} layer {layer}, {name}", settings.trainer.tol)
    for stacked, keys in ((predictions, PER_POSITION), (directions, ("weights", "intercepts"))):
        for arrays in stacked.values():
            arrays.update({key: np.stack(arrays[key]) for key in keys})
    return LocationProbes(pd.concat(tables, ignore_index=True), predictions, directions)


def count_cells(layers: Sequence[int], cells: dict[str, dict[int, Cell]]) -> int:
    """How many cells (a problem at a position of a layer) a probe job fits: what its progress counts."""
    return len(layers) * sum(map(len, cells.values()))


def describe_job(what: str, model: str, location: str, layers: Sequence[int], cells: dict[str, dict[int, Cell]],
                 settings: Probing, device) -> str:
    """The first line of a probe job's log: what it fits, at which layers and cells (:func:`emoprobe.grid.describe`),
    on which folds, with which trainer and where."""
    where = describe({location: cells}).replace("\n", "; ")
    return (f"{what}: model {model}, location {location}, layers {layer_range(layers)} x ({where}) = "
            f"{count_cells(layers, cells)} cells, {settings.split}, {settings.trainer}, on {device}")


def log_best(log: logging.Logger, table: pd.DataFrame, what: str, tol: float) -> None:
    """Tell ``log`` the best balanced accuracy of a problem's ``table`` (:func:`probe_layer`'s) and where, or why
    nothing was scored."""
    scored = table.dropna(subset=["balanced_accuracy"])
    if scored.empty:
        log.info("%s: nothing scored: %s", what, table["note"].iloc[0])
        return
    best = scored.loc[scored["balanced_accuracy"].idxmax()]
    log.info("%s (%d texts): best balanced accuracy %.3f at token %d, %d iterations at most%s%s", what, best.n_texts,
             best.balanced_accuracy, best.position, table["n_iter"].max(),
             "" if table["converged"].all() else f", NOT converged to tol={tol:g}",
             f"; {best.note}" if best.note else "")
