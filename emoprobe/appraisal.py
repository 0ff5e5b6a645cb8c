"""Appraisal probes: ridge regression from hidden states to each appraisal rating.

One multi-output ridge per (layer, position) predicts all appraisal ratings at
once from standardised features (the penalty then means the same at every
layer, whatever the scale of its residual stream); held-out R² is reported per
appraisal, averaged over the same folds as the emotion probes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score



def standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and scale both by the training rows' mean and standard deviation, per position and feature,
    into the positions-first layout the ridge probes are fitted in.

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


def appraisal_r2(states: np.ndarray, ratings: np.ndarray, splits: Sequence[tuple[np.ndarray, np.ndarray]],
                 alpha: float) -> np.ndarray:
    """Held-out R² of a ridge probe per position and appraisal, averaged over ``splits``.

    Parameters
    ----------
    states : numpy.ndarray of float32, shape [n_texts, n_positions, hidden_size]
    ratings : numpy.ndarray of float64, shape [n_texts, n_appraisals]
    splits : ``(train, test)`` row indices of each fold
    alpha : ridge penalty on standardised features

    Returns
    -------
    numpy.ndarray of float64, shape [n_positions, n_appraisals]
    """
    r2 = np.zeros((len(splits), states.shape[1], ratings.shape[1]))
    for fold, (train, test) in enumerate(splits):
        x_train, x_test = standardise(states[train], states[test])
        for position in range(states.shape[1]):
            ridge = Ridge(alpha=alpha).fit(x_train[position], ratings[train])
            r2[fold, position] = r2_score(ratings[test], ridge.predict(x_test[position]),
                                          multioutput="raw_values")
    return r2.mean(axis=0)


def appraisal_directions(states: np.ndarray, ratings: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The ridge probes of :func:`appraisal_r2` fitted on all texts, in the raw state space.

    Parameters
    ----------
    states : numpy.ndarray of float32, shape [n_texts, n_positions, hidden_size]
    ratings : numpy.ndarray of float64, shape [n_texts, n_appraisals]

    Returns
    -------
    weights : numpy.ndarray of float32, shape [n_positions, n_appraisals, hidden_size]
    intercepts : numpy.ndarray of float32, shape [n_positions, n_appraisals]
        The probe of appraisal ``a`` at position ``p`` predicts ``x @ weights[p, a] + intercepts[p, a]``
        from a raw state ``x``: the standardisation (the texts' mean and standard deviation, a constant
        feature's scale 1) folded into the ridge's coefficients.
    """
    weights = np.empty((states.shape[1], ratings.shape[1], states.shape[2]), dtype=np.float64)
    intercepts = np.empty((states.shape[1], ratings.shape[1]))
    for position in range(states.shape[1]):
        raw = states[:, position].astype(np.float64)
        mean, std = raw.mean(axis=0), raw.std(axis=0)
        std[std == 0] = 1.0
        ridge = Ridge(alpha=alpha).fit((raw - mean) / std, ratings)
        weights[position] = ridge.coef_ / std
        intercepts[position] = ridge.intercept_ - weights[position] @ mean
    return weights.astype(np.float32), intercepts.astype(np.float32)


def appraisal_table(r2: np.ndarray, layer: int, positions: Sequence[int], columns: Sequence[str]) -> pd.DataFrame:
    """Tidy ``layer, position, appraisal, r2`` rows of one layer's ``[n_positions, n_appraisals]`` R²."""
    return pd.DataFrame([
        {"layer": layer, "position": position, "appraisal": column, "r2": r2[p, a]}
        for p, position in enumerate(positions) for a, column in enumerate(columns)
    ])
