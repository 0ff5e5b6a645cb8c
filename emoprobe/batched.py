"""Every probe of one layer and position in one solve: a batched L-BFGS whose step reads the features once.

The probes of a layer share their rows: the folds of a problem, its shuffled-label control, and the problems
on (nearly) the same texts (the true label and the model's answer on all texts). Fitted one at a time, each
L-BFGS step multiplies the whole feature matrix by 13 columns, a shape that streams the matrix from memory
for little arithmetic. Here every probe is a column block of one product ``[B*K, d] @ [d, n]``: the features
are read once per step for all ``B`` probes, each with its own training rows (a mask), labels, standardisation,
curvature pairs, step length and stopping test.

Each probe minimises exactly the objective of :func:`emoprobe.probes.fit_multinomial` (scikit-learn's
``LogisticRegression(C)`` on features standardised with its training rows' statistics, divided by ``C n``),
over ``W = M Q`` with one preconditioner ``Q`` per position (from all rows: it changes the path, not the
optimum), from zero, and stops when no entry of its gradient exceeds ``tol``, as alone. The standardisation
is folded into the weights (``x -> (x - mean) / std`` then ``W``: raw-space weights ``W / std`` and intercept
``b - (W / std) mean``), so the features are never copied per fold.

Not done, measured: starting each fold from the probe fitted on all of its problem's texts saved a
quarter of the iterations, but that start has seen the fold's test texts, and a fit stops within ``tol``
of its optimum, not at it: scores moved by up to 0.047 against fits from zero (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

import pandas as pd

from emoprobe.probes import (PRECONDITIONER_SHRINKAGE, cross_validated_table, fold_indices, probe_problem,
                             unscored_table)

ARMIJO = 1e-4  # sufficient decrease of the backtracking line search
MAX_BACKTRACKS = 30
HISTORY = 10  # curvature pairs per probe: 30 saved no time


class Probe(NamedTuple):
    """One probe to fit: its training rows, their labels ``0..n_classes-1``, and where to start (raw space)."""

    train: np.ndarray  # int64 indices into the rows of the features
    labels: np.ndarray  # int64 [len(train)]
    n_classes: int
    start: tuple[np.ndarray, np.ndarray] | None = None  # weights [K, d], intercepts [K]; None: zero


class Fit(NamedTuple):
    """A fitted probe in the raw feature space: ``argmax(x @ weights.T + intercepts)``."""

    weights: np.ndarray  # float32 [n_classes, d]
    intercepts: np.ndarray  # float32 [n_classes]
    n_iter: int
    converged: bool


def whitening(x: torch.Tensor, shrinkage: float = PRECONDITIONER_SHRINKAGE) -> tuple[torch.Tensor, torch.Tensor]:
    """``Q = L^-1`` and ``L``, with ``L L^T`` the correlation matrix of ``x`` ``[n, d]`` plus ``shrinkage I``
    (the covariance of the features standardised over all rows), both ``[d, d]`` in ``x``'s dtype."""
    centred = x - x.mean(dim=0, dtype=torch.float64).to(x.dtype)
    cov = (centred.T @ centred).double() / len(x)
    scale = cov.diagonal().sqrt().clamp(min=torch.finfo(torch.float64).tiny)
    scale[cov.diagonal() == 0] = 1.0
    cov = cov / scale[:, None] / scale[None, :]
    cov.diagonal().add_(shrinkage)
    factor = torch.linalg.cholesky(cov)
    identity = torch.eye(len(cov), dtype=cov.dtype, device=cov.device)
    return torch.linalg.solve_triangular(factor, identity, upper=False).to(x.dtype), factor.to(x.dtype)


def standardisation(x: torch.Tensor, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of ``x[rows]`` per feature, as :func:`emoprobe.probes.standardise` takes
    them (float64 sums, a constant feature's scale 1), in ``x``'s dtype."""
    part = x[torch.as_tensor(rows, device=x.device)]
    mean = part.mean(dim=0, dtype=torch.float64).to(x.dtype)
    centred = part - mean
    std = torch.sqrt(torch.einsum("ij,ij->j", centred.double(), centred.double()) / len(rows))
    std[std == 0] = 1.0
    return mean, std.to(x.dtype)


def fit_batched(x: np.ndarray | torch.Tensor, probes: Sequence[Probe], *, C: float, max_iter: int, tol: float,
                device: str | torch.device = "cpu") -> list[Fit]:
    """Fit every probe of ``probes`` on the rows of ``x`` ``[n, d]`` (float32, raw: each probe is standardised
    with its own training rows) in one batched L-BFGS; probes whose float32 line search stalls short of
    ``tol`` finish in float64 from where they stopped.

    Returns one :class:`Fit` per probe, in order.
    """
    features = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x).to(device)
    q, factor = whitening(features)
    fits = _solve(features, q, factor, probes, C=C, max_iter=max_iter, tol=tol)
    stalled = [i for i, fit in enumerate(fits) if not fit.converged and fit.n_iter < max_iter]
    if stalled and features.dtype != torch.float64:
        more = _solve(features.double(), q.double(), factor.double(),
                      [probes[i]._replace(start=(fits[i].weights, fits[i].intercepts)) for i in stalled],
                      C=C, max_iter=max_iter, tol=tol, used=[fits[i].n_iter for i in stalled])
        for i, fit in zip(stalled, more):
            fits[i] = fit
    return fits


def _solve(features: torch.Tensor, q: torch.Tensor, factor: torch.Tensor, probes: Sequence[Probe], *, C: float,
           max_iter: int, tol: float, used: Sequence[int] | None = None, history_size: int = HISTORY) -> list[Fit]:
    """The batched L-BFGS of :func:`fit_batched` in ``features``' dtype; ``used``: iterations each probe has had."""
    n, d = features.shape
    dtype, device = features.dtype, features.device
    B, K = len(probes), max(p.n_classes for p in probes)
    features_t = features.T.contiguous()
    # per probe: training mask, one-hot labels [B, K, n], class mask (a probe of k < K classes), standardisation
    mask = torch.zeros(B, n, dtype=dtype, device=device)
    onehot = torch.zeros(B, K, n, dtype=dtype, device=device)
    absent = torch.ones(B, K, dtype=torch.bool, device=device)
    means, stds, n_train = (torch.empty(B, d, dtype=dtype, device=device), torch.empty(B, d, dtype=dtype,
                            device=device), torch.empty(B, dtype=dtype, device=device))
    cache = {}
    for b, probe in enumerate(probes):
        rows = torch.as_tensor(probe.train, device=device)
        mask[b, rows] = 1
        onehot[b, torch.as_tensor(probe.labels, device=device), rows] = 1
        absent[b, :probe.n_classes] = False
        key = probe.train.tobytes()
        if key not in cache:
            cache[key] = standardisation(features, probe.train)
        means[b], stds[b] = cache[key]
        n_train[b] = len(probe.train)
    penalty = 1.0 / (C * n_train)  # [B]
    n_weights = K * d

    def weights_of(theta):
        """Standardised-space weights ``W = M Q`` [B, K, d] and intercepts [B, K] of the parameters [B, N]."""
        return theta[:, :n_weights].view(B, K, d) @ q, theta[:, n_weights:]

    def evaluate(theta):
        """Per-probe objective [B] and gradient [B, N] (written out by hand, classes first)."""
        w, b = weights_of(theta)
        raw = w / stds[:, None, :]  # [B, K, d]
        intercept = b - (raw * means[:, None, :]).sum(dim=2)
        logits = (raw.reshape(B * K, d) @ features_t).view(B, K, n) + intercept[:, :, None]
        logits.masked_fill_(absent[:, :, None], float("-inf"))
        log_p = torch.log_softmax(logits, dim=1)
        log_p.masked_fill_(absent[:, :, None], 0.0)
        loss = -(log_p * onehot).sum(dim=(1, 2)) / n_train + 0.5 * penalty * (w * w).sum(dim=(1, 2))
        residual = log_p.exp_().masked_fill_(absent[:, :, None], 0.0).sub_(onehot).mul_(mask[:, None, :])
        residual /= n_train[:, None, None]
        grad_raw = (residual.reshape(B * K, n) @ features).view(B, K, d)
        grad_b = residual.sum(dim=2)
        grad_w = (grad_raw - grad_b[:, :, None] * means[:, None, :]) / stds[:, None, :] + penalty[:, None, None] * w
        grad_m = grad_w @ q.T
        return loss, torch.cat([grad_m.reshape(B, -1), grad_b], dim=1)

    theta = torch.zeros(B, n_weights + K, dtype=dtype, device=device)
    for b, probe in enumerate(probes):
        if probe.start is not None:
            weights, intercepts = (torch.as_tensor(a, device=device).to(dtype) for a in probe.start)
            k = probe.n_classes
            w = weights * stds[b]  # the same function in this probe's standardisation
            theta[b, :n_weights].view(K, d)[:k] = w @ factor  # M = W Q^-1 = W L
            theta[b, n_weights:n_weights + k] = intercepts + weights @ means[b]
    loss, grad = evaluate(theta)
    budget = torch.as_tensor([max_iter - u for u in (used or [0] * B)], device=device)
    done = grad.abs().amax(dim=1) <= tol
    n_iter = torch.zeros(B, dtype=torch.long, device=device)
    steps, changes, rho = [], [], []
    h_diag = torch.ones(B, dtype=dtype, device=device)
    stalled = torch.zeros(B, dtype=torch.bool, device=device)
    for _ in range(max_iter):
        active = ~done & ~stalled & (n_iter < budget)
        if not bool(active.any()):
            break
        if not steps:
            direction = -grad
        else:
            # two-loop recursion, each probe over its own curvature pairs (rho 0: no pair)
            r = -grad
            alphas = []
            for s, y, p in zip(reversed(steps), reversed(changes), reversed(rho)):
                alpha = p * (s * r).sum(dim=1)
                r = r - alpha[:, None] * y
                alphas.append(alpha)
            r = r * h_diag[:, None]
            for (s, y, p), alpha in zip(zip(steps, changes, rho), reversed(alphas)):
                beta = p * (y * r).sum(dim=1)
                r = r + (alpha - beta)[:, None] * s
            direction = r
        slope = (grad * direction).sum(dim=1)
        stalled |= active & (slope >= 0)  # not a descent direction: rounding, as below
        active &= slope < 0
        first = n_iter == 0
        t = torch.where(first, torch.clamp(1.0 / grad.abs().sum(dim=1), max=1.0), torch.ones_like(slope))
        pending = active.clone()
        new_theta, new_loss, new_grad = theta.clone(), loss.clone(), grad.clone()
        for _ in range(MAX_BACKTRACKS):
            trial = theta + (t * pending)[:, None] * direction
            trial_loss, trial_grad = evaluate(trial)
            accept = pending & (trial_loss <= loss + ARMIJO * t * slope)
            new_theta[accept], new_loss[accept], new_grad[accept] = trial[accept], trial_loss[accept], trial_grad[accept]
            pending &= ~accept
            if not bool(pending.any()):
                break
            t = torch.where(pending, t * 0.5, t)
        stalled |= pending  # no decrease found: float32 rounding, finished in float64
        moved = active & ~pending
        step, change = new_theta - theta, new_grad - grad
        curvature = (step * change).sum(dim=1)
        keep = moved & (curvature > 1e-10)
        if bool(keep.any()):
            if len(steps) == history_size:
                steps.pop(0), changes.pop(0), rho.pop(0)
            steps.append(torch.where(keep[:, None], step, 0.0))
            changes.append(torch.where(keep[:, None], change, 0.0))
            rho.append(torch.where(keep, 1.0 / torch.where(keep, curvature, 1.0), 0.0))
            h_diag = torch.where(keep, curvature / (change * change).sum(dim=1).clamp(min=1e-300), h_diag)
        theta, loss, grad = new_theta, new_loss, new_grad
        n_iter += moved.long()
        done |= moved & (grad.abs().amax(dim=1) <= tol)
    w, b = weights_of(theta)
    raw = w / stds[:, None, :]
    intercept = b - (raw * means[:, None, :]).sum(dim=2)
    fits = []
    for i, probe in enumerate(probes):
        k = probe.n_classes
        fits.append(Fit(raw[i, :k].float().cpu().numpy(), intercept[i, :k].float().cpu().numpy(),
                        int(n_iter[i]) + (used[i] if used else 0), bool(done[i])))
    return fits


def predict_raw(x: np.ndarray, fit: Fit) -> np.ndarray:
    """Labels ``0..k-1`` the probe gives the rows of ``x`` ``[n, d]``, in float64 (whose rounding, unlike
    float32's, moves no argmax with the BLAS's thread count)."""
    return (x.astype(np.float64) @ fit.weights.T.astype(np.float64) + fit.intercepts).argmax(axis=1)


def _groups(row_sets: Sequence[np.ndarray], overlap: float = 0.9) -> list[list[int]]:
    """Indices of ``row_sets`` grouped so that each shares at least ``overlap`` of its rows with the first
    (largest) of its group: probes of one group are fitted on the union of their rows."""
    order = sorted(range(len(row_sets)), key=lambda i: -len(row_sets[i]))
    groups: list[list[int]] = []
    for i in order:
        for group in groups:
            shared = np.intersect1d(row_sets[group[0]], row_sets[i], assume_unique=True)
            if len(shared) >= overlap * len(row_sets[i]) and len(row_sets[i]) >= overlap * len(row_sets[group[0]]):
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def probe_layer_batched(states: np.ndarray, problems: Sequence[tuple[np.ndarray, np.ndarray]], positions: list[int],
                        *, label_names: Sequence[str], C: float, max_iter: int, tol: float, folds: int,
                        test_size: float, seed: int, stratify: bool, control: bool,
                        device: str | torch.device = "cpu") -> list[tuple[pd.DataFrame, dict | None]]:
    """:func:`emoprobe.probes.probe_layer` for several problems of one layer at once, every fit of a position
    (folds, controls, problems on the same texts) in one batched solve (:func:`fit_batched`).

    Parameters
    ----------
    states : numpy.ndarray of float32, shape [n_texts, len(positions), hidden_size]
    problems : ``(rows, label_id)`` per problem: indices into ``states`` and the labels of those rows
    other parameters : as :func:`emoprobe.probes.probe_layer`

    Returns
    -------
    One ``(table, predictions)`` per problem, as :func:`emoprobe.probes.probe_layer` returns them (``rows``
    index ``states``), ``predictions`` with three more arrays: the probe fitted on all of the problem's
    texts at each position, in the raw state space (``argmax(x @ weights[p].T + intercepts[p])``):
    ``classes`` (int64 [k], the label ids of its rows), ``weights`` (float32 [len(positions), k, hidden])
    and ``intercepts`` (float32 [len(positions), k]).
    """
    prepared = []
    for rows, label_id in problems:
        problem = probe_problem(label_id, label_names, folds)
        if not problem.scorable:
            prepared.append(None)
            continue
        y = np.searchsorted(problem.labels, problem.label_id)
        splits = fold_indices(y, folds=folds, test_size=test_size, seed=seed, stratify=stratify)
        labellings = [y, np.random.default_rng(seed).permutation(y)] if control else [y]
        prepared.append((problem, np.asarray(rows)[problem.rows], y, splits, labellings))
    scorable = [i for i, item in enumerate(prepared) if item is not None]
    results: dict[int, dict] = {i: {"predicted": [], "control_predicted": [], "train_accuracy": [], "n_iter": [],
                                    "converged": [], "weights": [], "intercepts": []} for i in scorable}
    for group in _groups([prepared[i][1] for i in scorable]):
        members = [scorable[g] for g in group]
        union = np.unique(np.concatenate([prepared[i][1] for i in members]))
        local = {i: np.searchsorted(union, prepared[i][1]) for i in members}
        for p in range(len(positions)):
            x = torch.from_numpy(np.ascontiguousarray(states[union, p])).to(device)
            fold_probes, owners = [], []
            for i in members:
                _, _, y, splits, labellings = prepared[i]
                for l, labels in enumerate(labellings):
                    for f, (train, _) in enumerate(splits):
                        fold_probes.append(Probe(local[i][train], labels[train], len(prepared[i][0].labels)))
                        owners.append((i, l, f))
                # one more on all of the problem's texts: the probe whose weights are kept (its directions)
                fold_probes.append(Probe(local[i], y, len(prepared[i][0].labels)))
                owners.append((i, 0, None))
            fold_fits = fit_batched(x, fold_probes, C=C, max_iter=max_iter, tol=tol, device=device)
            x_np = x.cpu().numpy()
            per_problem = {i: (np.full(len(local[i]), -1), np.full(len(local[i]), -1), []) for i in members}
            for (i, l, f), fit in zip(owners, fold_fits):
                if f is None:
                    results[i]["weights"].append(fit.weights)
                    results[i]["intercepts"].append(fit.intercepts)
                    continue
                _, _, y, splits, labellings = prepared[i]
                train, test = splits[f]
                predicted, control_predicted, train_accuracy = per_problem[i]
                (predicted if l == 0 else control_predicted)[test] = predict_raw(x_np[local[i][test]], fit)
                if l == 0:
                    train_accuracy.append(np.mean(predict_raw(x_np[local[i][train]], fit) == y[train]))
                results[i]["n_iter"].append(fit.n_iter)
                results[i]["converged"].append(fit.converged)
            for i in members:
                predicted, control_predicted, train_accuracy = per_problem[i]
                results[i]["predicted"].append(predicted)
                results[i]["control_predicted"].append(control_predicted)
                results[i]["train_accuracy"].append(np.mean(train_accuracy))
    out = []
    for i, item in enumerate(prepared):
        if item is None:
            out.append((unscored_table(probe_problem(problems[i][1], label_names, folds), positions), None))
            continue
        problem, _, y, splits, labellings = item
        found = results[i]
        tested = np.sort(np.concatenate([test for _, test in splits]))
        majority = np.full(len(y), -1, dtype=np.int64)
        for train, test in splits:
            majority[test] = np.bincount(y[train], minlength=len(problem.labels)).argmax()
        cv = {"tested": tested, "predicted": np.stack(found["predicted"])[:, tested],
              "control_predicted": np.stack(found["control_predicted"])[:, tested],
              "shuffled": labellings[-1][tested], "majority": majority[tested],
              "train_accuracy": np.asarray(found["train_accuracy"]), "n_train": len(splits[0][0]),
              "n_test": len(splits[0][1]), "folds": len(splits), "n_iter": max(found["n_iter"]),
              "converged": all(found["converged"])}
        table, predictions = cross_validated_table(problem, y, cv, positions, control=control)
        predictions["rows"] = np.asarray(problems[i][0])[predictions["rows"]]
        predictions.update(classes=np.asarray(problem.labels, dtype=np.int64),
                           weights=np.stack(found["weights"]).astype(np.float32),
                           intercepts=np.stack(found["intercepts"]).astype(np.float32))
        out.append((table, predictions))
    return out
