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

import numpy as np
import pandas as pd
import torch
from scipy import stats
from sklearn.metrics import f1_score
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
from torch.optim.lbfgs import _strong_wolfe  # torch.optim.LBFGS's line search, a plain function

# Ridge added to the feature covariance in the preconditioner Q. It only changes how
# fast L-BFGS converges, not where to; 0.2 (on standardised features) was fastest on
# the bundled models' layers among 0.06-2.
PRECONDITIONER_SHRINKAGE = 0.2


def probe_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU; any other name as given. (Not MPS: the small-subset
    path of :func:`fit_multinomial` needs float64, which MPS lacks.)"""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


def interval(values: np.ndarray, n_test: int) -> tuple[float, float]:
    """95 % interval of a mean accuracy.

    Over k > 1 folds: Student's t interval of the fold accuracies, clipped to [0, 1].
    Over one split: the Wilson score interval of ``n_test`` binary outcomes.
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) > 1:
        half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
        return max(float(values.mean() - half), 0.0), min(float(values.mean() + half), 1.0)
    p, z = float(values[0]), stats.norm.ppf(0.975)
    centre = (p + z * z / (2 * n_test)) / (1 + z * z / n_test)
    half = z * np.sqrt(p * (1 - p) / n_test + z * z / (4 * n_test * n_test)) / (1 + z * z / n_test)
    return centre - half, centre + half


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


def majority_baseline(y_train: np.ndarray, y_test: np.ndarray) -> float:
    """Test accuracy of always answering the most frequent training label (ties: smallest id)."""
    majority = np.bincount(y_train).argmax()
    return float(np.mean(y_test == majority))


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
    device : where to compute (see :func:`probe_device`)

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


def probe_layer(states: np.ndarray, label_id: np.ndarray, positions: list[int], *, n_classes: int, C: float,
                max_iter: int, tol: float, folds: int, test_size: float, seed: int, stratify: bool,
                control: bool, device: str | torch.device = "cpu") -> pd.DataFrame:
    """Fit and score a probe at every position of one layer, over every fold.

    Parameters
    ----------
    states : numpy.ndarray of float32, shape [n_texts, len(positions), hidden_size]
    label_id : numpy.ndarray of int64, shape [n_texts]
    n_classes : number of labels (ids are ``0..n_classes-1``)
    folds, test_size, stratify, seed : see :func:`fold_indices`
    control : also fit each fold on labels shuffled once with ``seed`` (same rows, same settings)
    device : where to fit (see :func:`probe_device`)

    Returns
    -------
    pandas.DataFrame
        One row per position: ``position, accuracy`` (mean over folds), ``ci_low, ci_high`` (see
        :func:`interval`), ``macro_f1, train_accuracy, control_accuracy, selectivity`` (accuracy minus
        control accuracy; NaN without control), ``chance`` (majority-class accuracy), ``n_texts, n_train,
        n_test`` (per fold, the first fold's), ``folds, n_iter`` (the most over fits), ``converged`` (all fits).
    """
    columns = ["position", "accuracy", "ci_low", "ci_high", "macro_f1", "train_accuracy", "control_accuracy",
               "selectivity", "chance", "n_texts", "n_train", "n_test", "folds", "n_iter", "converged"]
    if len(label_id) < max(folds, 2) or len(np.unique(label_id)) < 2:
        # Too few texts (or one label only) to fit and score a probe: a row of NaN says so.
        return pd.DataFrame({"position": positions, "n_texts": len(label_id), "converged": False},
                            columns=columns)
    splits = fold_indices(label_id, folds=folds, test_size=test_size, seed=seed, stratify=stratify)
    shuffled = np.random.default_rng(seed).permutation(label_id)
    fit = dict(C=C, max_iter=max_iter, tol=tol, device=device)
    scores = {key: [] for key in ("accuracy", "macro_f1", "train_accuracy", "control_accuracy", "chance")}
    n_iters, converged = [], []
    for train, test in splits:
        x_train, x_test = standardise(states[train], states[test])
        labellings = [label_id, shuffled] if control else [label_id]
        fits = fit_multinomial(x_train, [y[train] for y in labellings], n_classes, **fit)
        weights, intercepts, n_iter, ok = fits[0]
        predicted = predict(x_test, weights, intercepts)
        scores["accuracy"].append((predicted == label_id[test]).mean(axis=1))
        scores["macro_f1"].append([f1_score(label_id[test], p, average="macro") for p in predicted])
        scores["train_accuracy"].append((predict(x_train, weights, intercepts) == label_id[train]).mean(axis=1))
        scores["chance"].append(np.full(len(positions), majority_baseline(label_id[train], label_id[test])))
        if control:
            weights, intercepts, _, _ = fits[1]
            scores["control_accuracy"].append((predict(x_test, weights, intercepts) == shuffled[test]).mean(axis=1))
        else:
            scores["control_accuracy"].append(np.full(len(positions), np.nan))
        n_iters += [n for _, _, n, _ in fits]
        converged += [ok for _, _, _, ok in fits]
    per_fold = {key: np.asarray(values) for key, values in scores.items()}  # each [n_folds, P]
    table = pd.DataFrame({"position": positions, **{key: v.mean(axis=0) for key, v in per_fold.items()}})
    bounds = [interval(per_fold["accuracy"][:, p], len(splits[0][1])) for p in range(len(positions))]
    table.insert(2, "ci_low", [low for low, _ in bounds])
    table.insert(3, "ci_high", [high for _, high in bounds])
    table["selectivity"] = table["accuracy"] - table["control_accuracy"]
    table["n_texts"] = len(label_id)
    table["n_train"] = len(splits[0][0])
    table["n_test"] = len(splits[0][1])
    table["folds"] = len(splits)
    table["n_iter"] = max(n_iters)
    table["converged"] = all(converged)
    return table[columns]
