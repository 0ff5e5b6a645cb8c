"""Linear probes: multinomial logistic regression from hidden states to emotion labels.

One probe per (layer, position), scored over stratified k folds (or the
reference's single train/test split), all positions sharing the folds. Features
are standardised with each fold's training statistics. Each probe minimises exactly
scikit-learn's objective for ``LogisticRegression(C=C)`` (multinomial, L2 on the
weights, intercept free)::

    C * sum_i -log softmax(W x_i + b)[y_i]  +  1/2 ||W||^2

All positions of a layer are fitted at once with L-BFGS in torch, on gradients
written out by hand, after a change of variables ``W = M Q`` with
``Q = L^-1``, ``L L^T = cov + shrinkage I``: the objective and its optimum are unchanged,
but the residual stream's strongly correlated features no longer make the problem
ill-conditioned, so L-BFGS needs a few hundred iterations instead of thousands.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
from torch.optim.lbfgs import _strong_wolfe  # torch.optim.LBFGS's line search, a plain function

from emoprobe.scores import INTEGER_COLUMNS, INTERVAL, SCORE_COLUMNS, balanced_accuracy, score_predictions

# Ridge added to the feature covariance in the preconditioner Q. It only changes how
# fast L-BFGS converges, not where to; 0.2 (on standardised features) was fastest on
# the bundled models' layers among 0.06-2.
PRECONDITIONER_SHRINKAGE = 0.2


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


def standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and scale both by the training rows' mean and standard deviation, per position and feature,
    into the positions-first layout the probes are fitted in.

    Parameters
    ----------
    train, test : numpy.ndarray, shape [n_rows, n_positions, hidden_size]

    Returns
    -------
    The two arrays, float32, shape [n_positions, n_rows, hidden_size]. Constant features keep scale 1
    (they become zero).
    """
    n_rows, n_positions, _ = train.shape
    z_train, z_test = (np.empty((n_positions, len(x), x.shape[2]), dtype=np.float32) for x in (train, test))
    # In float32 with float64 sums, written straight into the outputs: temporaries of the whole array
    # cost more in fresh pages than the arithmetic.
    for position in range(n_positions):
        z = z_train[position]
        mean = train[:, position].mean(axis=0, dtype=np.float64).astype(np.float32)
        np.subtract(train[:, position], mean, out=z)
        std = np.sqrt(np.einsum("ij,ij->j", z, z, dtype=np.float64) / n_rows)
        std[std == 0] = 1.0
        scale = (1.0 / std).astype(np.float32)
        z *= scale
        np.subtract(test[:, position], mean, out=z_test[position])
        z_test[position] *= scale
    return z_train, z_test


def preconditioner(x: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """``L^-1`` with ``L L^T = cov + shrinkage I`` per position, from standardised features ``x`` ``[P, n, d]``.

    Returns ``[P, d, d]``, lower triangular; ``L^-1 cov L^-T`` is close to the identity, which is all
    the change of variables needs (a Cholesky factor costs a fraction of an eigendecomposition).
    """
    cov = (x.transpose(1, 2) @ x).double() / x.shape[1]
    cov.diagonal(dim1=1, dim2=2).add_(shrinkage)
    factor = torch.linalg.cholesky(cov)
    identity = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device).expand_as(cov)
    return torch.linalg.solve_triangular(factor, identity, upper=False).to(x.dtype)


def fit_multinomial(x: np.ndarray, labellings: Sequence[np.ndarray], n_classes: int, *, C: float, max_iter: int,
                    tol: float, device: str | torch.device = "cpu") -> list[tuple[np.ndarray, np.ndarray, int, bool]]:
    """Fit one L2 multinomial logistic regression per position, all positions at once, for each
    labelling of the same rows (e.g. the labels and their shuffled control, which then share the
    preconditioner).

    Parameters
    ----------
    x : numpy.ndarray of float32, shape [n_positions, n_rows, hidden_size], standardised
    labellings : sequence of numpy.ndarray of int, each of shape [n_rows]
    tol : converged when no entry of the gradient of the objective divided by ``C * n_rows`` exceeds it
    device : where to compute (see :func:`emoprobe.device.pick_device`)

    Returns
    -------
    One tuple per labelling, on the CPU:
    weights : numpy.ndarray of float32, shape [n_positions, n_classes, hidden_size]
    intercepts : numpy.ndarray of float32, shape [n_positions, n_classes]
    n_iter : int, L-BFGS iterations
    converged : bool, whether the gradient tolerance was reached
    """
    features = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    basis = None
    if features.shape[1] < features.shape[2]:
        # With an L2 penalty the optimal weights lie in the span of the training rows: fitting in
        # that n_rows-dimensional span gives the same optimum, far cheaper when texts are few. The
        # problem is then small, so it is solved in float64, where float32 rounding would stop
        # L-BFGS short of the tolerance on a few dozen texts.
        features = features.double()
        basis = torch.linalg.svd(features, full_matrices=False)[2].transpose(1, 2)  # [P, d, n_rows]
        features = features @ basis
    q = preconditioner(features, PRECONDITIONER_SHRINKAGE)
    fits = []
    for y in labellings:
        labels = torch.from_numpy(np.asarray(y)).long().to(features.device)
        m, b, n_iter, converged = _lbfgs(features, q, labels, n_classes, C=C, max_iter=max_iter, tol=tol)
        if not converged and n_iter < max_iter and features.dtype != torch.float64:
            # L-BFGS stopped short: its line search found no decrease of a loss rounded to float32
            # (the point at which that happens moves with the summation order, so with the thread
            # count). Finish in float64 from where it stopped; this is rare and takes a few iterations.
            m, b, more, converged = _lbfgs(features.double(), q.double(), labels, n_classes, C=C,
                                           max_iter=max_iter - n_iter, tol=tol, start=(m.double(), b.double()))
            n_iter += more
        weights = m @ q.to(m.dtype) if basis is None else m @ q @ basis.transpose(1, 2)
        fits.append((weights.float().cpu().numpy(), b.float().cpu().numpy(), n_iter, converged))
    return fits


def _lbfgs(features: torch.Tensor, q: torch.Tensor, y: torch.Tensor, n_classes: int, *, C: float, max_iter: int,
           tol: float, start: tuple[torch.Tensor, torch.Tensor] | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """Minimise the objective over ``m`` (``W = m q``) and ``b``; ``features`` ``[P, n, d]``, ``q`` ``[P, d, d]``,
    from ``start`` (``m``, ``b``) or from zeros.

    Returns ``m`` ``[P, n_classes, d]``, ``b`` ``[P, n_classes]``, the iterations and whether ``tol`` was met.
    """
    n_positions, n_rows, width = features.shape
    n_weights = n_positions * n_classes * width
    # classes first: a softmax over a last axis of ~13 classes runs 20x slower than over rows
    onehot = torch.nn.functional.one_hot(y, n_classes).to(features.dtype).T.contiguous()  # [K, n]
    if start is None:
        x = torch.zeros(n_weights + n_positions * n_classes, dtype=features.dtype, device=features.device)
    else:
        x = torch.cat([t.reshape(-1) for t in start]).to(features.dtype)
    penalty = 1.0 / (C * n_rows)

    def unflatten(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Views ``m`` ``[P, K, d]`` and ``b`` ``[P, K]`` of ``x``, which holds them one after the other."""
        return x[:n_weights].view(n_positions, n_classes, width), x[n_weights:].view(n_positions, n_classes)

    def objective(x: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Mean loss plus penalty at ``W = m q``, and its gradient, both written out by hand (3x faster
        than autograd here)."""
        m, b = unflatten(x)
        weights = m @ q
        logits = torch.baddbmm(b.unsqueeze(1), features, weights.transpose(1, 2).contiguous())
        log_p = torch.log_softmax(logits.transpose(1, 2).contiguous(), dim=1)  # [P, K, n]
        loss = -(log_p * onehot).sum() / n_rows + 0.5 * penalty * (weights * weights).sum()
        residual = log_p.exp_().sub_(onehot)  # d loss / d logits, times n_rows
        grad_m = (torch.bmm(residual, features).div_(n_rows) + penalty * weights) @ q.transpose(1, 2)
        grad_b = residual.sum(dim=2).div_(n_rows)
        return float(loss), torch.cat([grad_m.view(-1), grad_b.view(-1)])

    x, grad, n_iter = minimise_lbfgs(objective, x, max_iter=max_iter, max_eval=2 * max_iter, tol=tol)
    return *unflatten(x), n_iter, float(grad.abs().max()) <= tol


def minimise_lbfgs(objective: Callable[[torch.Tensor], tuple[float, torch.Tensor]], x: torch.Tensor, *,
                   max_iter: int, max_eval: int, tol: float, history_size: int = 10
                   ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """L-BFGS with a strong-Wolfe line search, step for step ``torch.optim.LBFGS(lr=1, tolerance_change=0,
    line_search_fn="strong_wolfe")`` on one flat parameter vector, without the ``Optimizer`` machinery,
    whose first use imports ``torch._dynamo`` (about a second of every probe job).

    Parameters
    ----------
    objective : ``x`` -> (loss, gradient), the gradient shaped like ``x``
    x : 1-D tensor, the starting point (not modified)
    max_iter, max_eval : at most this many iterations and objective evaluations (line search included)
    tol : stop when no entry of the gradient exceeds it

    Returns
    -------
    The last point, its gradient and the number of iterations.
    """
    loss, grad = objective(x)
    evals, n_iter = 1, 0
    if grad.abs().max() <= tol:
        return x, grad, n_iter
    old_dirs, old_steps, rho, h_diag = [], [], [], 1
    for n_iter in range(1, max_iter + 1):
        if n_iter == 1:
            direction = grad.neg()
        else:
            change = grad.sub(previous_grad)
            step_taken = direction.mul(t)
            curvature = change.dot(step_taken)
            if curvature > 1e-10:  # else the pair would spoil the inverse Hessian estimate: skip it
                if len(old_dirs) == history_size:
                    old_dirs.pop(0), old_steps.pop(0), rho.pop(0)
                old_dirs.append(change)
                old_steps.append(step_taken)
                rho.append(1.0 / curvature)
                h_diag = curvature / change.dot(change)
            alpha = [None] * len(old_dirs)
            r = grad.neg()
            for i in range(len(old_dirs) - 1, -1, -1):
                alpha[i] = old_steps[i].dot(r) * rho[i]
                r.add_(old_dirs[i], alpha=-alpha[i])
            direction = r = torch.mul(r, h_diag)
            for i in range(len(old_dirs)):
                beta = old_dirs[i].dot(r) * rho[i]
                r.add_(old_steps[i], alpha=alpha[i] - beta)
        previous_grad = grad
        t = min(1.0, 1.0 / grad.abs().sum()) if n_iter == 1 else 1.0
        slope = grad.dot(direction)
        if slope > 0:  # not a descent direction
            break
        loss, grad, t, line_evals = _strong_wolfe(lambda x, t, d: objective(torch.add(x, d, alpha=t)),
                                                  x, t, direction, loss, grad, slope, max_ls=max_eval - evals)
        x = torch.add(x, direction, alpha=t)  # the point the line search evaluated, to the last bit
        evals += line_evals
        if evals >= max_eval or grad.abs().max() <= tol or direction.mul(t).abs().max() <= 0:
            break
    return x, grad, n_iter


def predict(x: np.ndarray, weights: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """Predicted label of each row by each position's probe; ``x`` ``[P, n, d]`` -> int64 ``[P, n]``."""
    return (np.matmul(x, weights.transpose(0, 2, 1)) + intercepts[:, None, :]).argmax(-1)


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


FoldFit = Callable[[np.ndarray, np.ndarray, Sequence[np.ndarray]], list[tuple[np.ndarray, np.ndarray, int, bool]]]


def out_of_fold(y: np.ndarray, n_classes: int, fit_fold: FoldFit, *, folds: int, test_size: float, seed: int,
                stratify: bool, control: bool) -> dict:
    """Out-of-fold predictions of a probe (and of its shuffled-label control), over the folds of
    :func:`fold_indices`.

    Parameters
    ----------
    y : numpy.ndarray of int64, shape [n], labels ``0..n_classes-1``, each present
    fit_fold : ``(train, test, labellings)`` -> one ``(test_predicted [P, len(test)], train_predicted
        [P, len(train)], n_iter, converged)`` per labelling, for ``P`` probes fitted on the same rows
        (e.g. one per token position); ``labellings`` are the labels of the training rows
    folds, test_size, stratify, seed : see :func:`fold_indices`
    control : also fit each fold on ``y`` shuffled once with ``seed`` (same rows, same settings)

    Returns
    -------
    dict with
    tested : int64 [m], the rows predicted (all ``n`` under k-fold, the test split with ``folds=0``)
    predicted, control_predicted : int64 [P, m] (control: -1 without control)
    shuffled : int64 [m], the control's labels of the tested rows
    majority : int64 [m], each tested row's training folds' most frequent label (ties: smallest id)
    train_accuracy : float64 [P], mean over folds
    n_train, n_test : of the first fold; folds, n_iter (the most over fits), converged (all fits)
    """
    splits = fold_indices(y, folds=folds, test_size=test_size, seed=seed, stratify=stratify)
    shuffled = np.random.default_rng(seed).permutation(y)
    predicted = control_predicted = None
    majority = np.full(len(y), -1, dtype=np.int64)
    train_accuracy, n_iters, converged = [], [], []
    for train, test in splits:
        labellings = [y, shuffled] if control else [y]
        fits = fit_fold(train, test, [labels[train] for labels in labellings])
        if predicted is None:
            predicted, control_predicted = (np.full((len(fits[0][0]), len(y)), -1, dtype=np.int64) for _ in range(2))
        predicted[:, test] = fits[0][0]
        train_accuracy.append((fits[0][1] == y[train]).mean(axis=1))
        if control:
            control_predicted[:, test] = fits[1][0]
        majority[test] = np.bincount(y[train], minlength=n_classes).argmax()
        n_iters += [fit[2] for fit in fits]
        converged += [fit[3] for fit in fits]
    tested = np.sort(np.concatenate([test for _, test in splits]))
    return {"tested": tested, "predicted": predicted[:, tested], "control_predicted": control_predicted[:, tested],
            "shuffled": shuffled[tested], "majority": majority[tested],
            "train_accuracy": np.mean(train_accuracy, axis=0), "n_train": len(splits[0][0]),
            "n_test": len(splits[0][1]), "folds": len(splits), "n_iter": max(n_iters), "converged": all(converged)}


def hidden_state_fits(states: np.ndarray, n_classes: int, *, C: float, max_iter: int, tol: float,
                      device: str | torch.device = "cpu") -> FoldFit:
    """The :data:`FoldFit` of the probes on ``states`` ``[n, n_positions, hidden_size]`` (float32): standardised
    with the training rows' statistics, one probe per position (:func:`fit_multinomial`)."""

    def fit_fold(train, test, labellings):
        x_train, x_test = standardise(states[train], states[test])
        fits = fit_multinomial(x_train, labellings, n_classes, C=C, max_iter=max_iter, tol=tol, device=device)
        return [(predict(x_test, w, b), predict(x_train, w, b), n_iter, ok) for w, b, n_iter, ok in fits]

    return fit_fold


def scored_rows(label_id: np.ndarray, predicted: np.ndarray, labels: np.ndarray, *,
                control_labels: np.ndarray | None = None, control_predicted: np.ndarray | None = None,
                majority: np.ndarray | None = None) -> list[dict]:
    """One dict of :data:`SCORE_COLUMNS`' scores per row of ``predicted`` (``[n_rows, n]``, label ids).

    ``labels``: the label ids of the problem (balanced chance is ``1 / len(labels)``); ``control_*``: the
    shuffled-label control's labels ``[n]`` and predictions ``[n_rows, n]``; ``majority``: the majority-class
    prediction of each text ``[n]``. Intervals: see :mod:`emoprobe.scores`.
    """
    rows = []
    for r in range(len(predicted)):
        row = {"n_texts": len(label_id), "n_labels": len(labels), "balanced_chance": 1.0 / len(labels),
               **score_predictions(label_id, predicted[r], labels), "interval": INTERVAL}
        if control_predicted is not None:
            row["control_accuracy"] = float(np.mean(control_predicted[r] == control_labels))
            row["control_balanced_accuracy"] = balanced_accuracy(control_labels, control_predicted[r], labels)
            row["selectivity"] = row["balanced_accuracy"] - row["control_balanced_accuracy"]
        if majority is not None:
            row["majority_accuracy"] = float(np.mean(majority == label_id))
        rows.append(row)
    return rows


def probe_layer(states: np.ndarray, label_id: np.ndarray, positions: list[int], *, label_names: Sequence[str],
                C: float, max_iter: int, tol: float, folds: int, test_size: float, seed: int, stratify: bool,
                control: bool, device: str | torch.device = "cpu") -> tuple[pd.DataFrame, dict | None]:
    """Fit and score a probe at every position of one layer, over every fold, one fit at a time: the per-fit
    trainer. The workflow runs :func:`emoprobe.batched.probe_layer_batched`; this is its reference in
    ``tests/test_probes.py`` and ``benchmarks/probes.py``.

    Parameters
    ----------
    states : numpy.ndarray of float32, shape [n_texts, len(positions), hidden_size]
    label_id : numpy.ndarray of int64, shape [n_texts], indices into ``label_names``
    folds, test_size, stratify, seed : see :func:`fold_indices`; labels with fewer than ``folds`` texts are
        set aside (:func:`probe_problem`)
    control : also fit each fold on labels shuffled once with ``seed``
    device : where to fit (see :func:`emoprobe.device.pick_device`)

    Returns
    -------
    table : pandas.DataFrame, one row per position: ``position`` and :data:`SCORE_COLUMNS` (scores NaN and
        ``note`` saying why when nothing can be scored)
    predictions : None when nothing was scored, else a dict of the pooled out-of-fold predictions in label
        ids: ``rows`` int64 [m] (indices into ``states``), ``label_id`` [m], ``predicted`` [P, m],
        ``control_label_id`` [m] and ``control_predicted`` [P, m] (-1 without control)
    """
    problem = probe_problem(label_id, label_names, folds)
    if not problem.scorable:
        return unscored_table(problem, positions), None
    y = np.searchsorted(problem.labels, problem.label_id)  # 0..k-1
    fit_fold = hidden_state_fits(states[problem.rows], len(problem.labels), C=C, max_iter=max_iter, tol=tol,
                                 device=device)
    cv = out_of_fold(y, len(problem.labels), fit_fold, folds=folds, test_size=test_size, seed=seed, stratify=stratify,
                     control=control)
    return cross_validated_table(problem, y, cv, positions, control=control)


def score_table(rows, positions: Sequence) -> pd.DataFrame:
    """``position`` and :data:`SCORE_COLUMNS` from ``rows`` (dicts or a table), counts as nullable integers."""
    table = pd.DataFrame(rows).assign(position=list(positions)).reindex(columns=["position", *SCORE_COLUMNS])
    return table.astype({column: "Int64" for column in ["position", *INTEGER_COLUMNS]})


def unscored_table(problem: Problem, positions: Sequence) -> pd.DataFrame:
    """Rows of :data:`SCORE_COLUMNS` for a problem with nothing to score: NaN scores, the note saying why."""
    return score_table({"n_texts": [0] * len(positions), "n_labels": len(problem.labels), "converged": False,
                        "note": problem.note}, positions)


def cross_validated_table(problem: Problem, y: np.ndarray, cv: dict, positions: Sequence, *, control: bool
                          ) -> tuple[pd.DataFrame, dict]:
    """The scores (one row per position) and predictions of :func:`probe_layer` from :func:`out_of_fold`'s
    ``cv`` of ``problem``, whose labels are ``y`` (``0..k-1`` over ``problem.labels``)."""
    ids = problem.labels
    truth, predicted, majority = ids[y[cv["tested"]]], ids[cv["predicted"]], ids[cv["majority"]]
    control_labels, control_predicted = (ids[cv["shuffled"]], ids[cv["control_predicted"]]) if control else (None, None)
    rows = scored_rows(truth, predicted, np.unique(truth), control_labels=control_labels,
                       control_predicted=control_predicted, majority=majority)
    table = pd.DataFrame(rows).assign(train_accuracy=cv["train_accuracy"], folds=cv["folds"], n_train=cv["n_train"],
                                      n_test=cv["n_test"], n_iter=cv["n_iter"], converged=cv["converged"],
                                      note=problem.note)
    predictions = {"rows": problem.rows[cv["tested"]], "label_id": truth, "predicted": predicted,
                   "control_label_id": control_labels if control else np.full(len(truth), -1),
                   "control_predicted": control_predicted if control else np.full_like(predicted, -1)}
    return score_table(table, positions), predictions


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
