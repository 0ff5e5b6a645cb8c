"""Linear probes: multinomial logistic regression from hidden states to emotion labels.

One probe per (layer, position), all sharing one train/test split. Features are
standardised with training-split statistics: on raw residual-stream features
lbfgs does not converge in 1000 iterations (their scales differ by orders of
magnitude across dimensions), on standardised ones it does, to the same optimum
of the same objective up to the feature scaling the L2 penalty sees.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split


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


def standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and scale both by the training rows' mean and standard deviation (float64).

    Constant features keep scale 1, so they stay constant (zero) instead of dividing by zero.
    """
    mean = train.mean(axis=0, dtype=np.float64)
    std = train.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0
    return (train - mean) / std, (test - mean) / std


def majority_baseline(y_train: np.ndarray, y_test: np.ndarray) -> float:
    """Test accuracy of always answering the most frequent training label (ties: smallest id)."""
    majority = np.bincount(y_train).argmax()
    return float(np.mean(y_test == majority))


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *,
              C: float, max_iter: int, tol: float, standardize: bool) -> dict:
    """Fit one multinomial logistic-regression probe and score it on the test rows.

    Parameters
    ----------
    x_train, x_test : numpy.ndarray, shape [n_rows, hidden_size]
    y_train, y_test : numpy.ndarray of int, shape [n_rows]

    Returns
    -------
    dict with ``accuracy``, ``train_accuracy`` (float), ``n_iter`` (int) and ``converged`` (bool).
    """
    if standardize:
        x_train, x_test = standardise(x_train, x_test)
    model = LogisticRegression(C=C, max_iter=max_iter, tol=tol, solver="lbfgs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x_train, y_train)
    n_iter = int(np.max(model.n_iter_))
    return {
        "accuracy": float(model.score(x_test, y_test)),
        "train_accuracy": float(model.score(x_train, y_train)),
        "n_iter": n_iter,
        "converged": n_iter < max_iter,
    }


def probe_layer(states: np.ndarray, label_id: np.ndarray, positions: list[int], *, C: float, max_iter: int,
                tol: float, standardize: bool, test_size: float, seed: int, stratify: bool) -> pd.DataFrame:
    """Fit a probe at every position of one layer.

    Parameters
    ----------
    states : numpy.ndarray of float32, shape [n_texts, len(positions), hidden_size]
    label_id : numpy.ndarray of int64, shape [n_texts]

    Returns
    -------
    pandas.DataFrame
        One row per position: ``position, accuracy, train_accuracy, n_train, n_test,
        chance, n_iter, converged``.
    """
    train, test = split_indices(label_id, test_size, seed, stratify)
    chance = majority_baseline(label_id[train], label_id[test])
    rows = []
    for k, position in enumerate(positions):
        result = fit_probe(states[train, k], label_id[train], states[test, k], label_id[test],
                           C=C, max_iter=max_iter, tol=tol, standardize=standardize)
        rows.append({"position": position, **result, "n_train": len(train), "n_test": len(test), "chance": chance})
    columns = ["position", "accuracy", "train_accuracy", "n_train", "n_test", "chance", "n_iter", "converged"]
    return pd.DataFrame(rows)[columns]
