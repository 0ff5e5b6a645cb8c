"""Probe fitting: the reference split, standardisation, convergence and the chance baseline."""

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from emoprobe import probes


def test_split_is_the_reference_train_test_split():
    y = np.repeat(np.arange(13), 20)
    x = np.arange(len(y))
    x_train, x_test, _, _ = train_test_split(x, y, test_size=0.2, random_state=42)
    train, test = probes.split_indices(y, 0.2, 42, stratify=False)
    assert train.tolist() == x_train.tolist() and test.tolist() == x_test.tolist()


def test_majority_baseline():
    assert probes.majority_baseline(np.array([1, 1, 2, 0]), np.array([1, 2, 2, 1, 0])) == 0.4


def test_probe_matches_a_standardised_sklearn_pipeline_and_converges():
    digits = load_digits()
    x = (digits.data * np.logspace(-3, 3, 64)).astype(np.float32)  # wildly different feature scales
    y = digits.target
    train, test = probes.split_indices(y, 0.2, 42, stratify=False)
    result = probes.fit_probe(x[train], y[train], x[test], y[test], C=1.0, max_iter=1000, tol=1e-4, standardize=True)
    scaler = StandardScaler().fit(x[train])
    reference = LogisticRegression(C=1.0, max_iter=1000).fit(scaler.transform(x[train]), y[train])
    assert result["converged"] and result["n_iter"] < 1000
    assert abs(result["accuracy"] - reference.score(scaler.transform(x[test]), y[test])) <= 1 / len(test)
    assert result["accuracy"] > 0.9


def test_probe_layer_gives_one_row_per_position():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 30)
    states = rng.normal(size=(len(y), 3, 8)).astype(np.float32)
    states[:, 0, :4] += np.eye(4)[y] * 3  # position -1 carries the label, the others are noise
    table = probes.probe_layer(states, y, [-1, -2, -3], C=1.0, max_iter=1000, tol=1e-4, standardize=True,
                               test_size=0.25, seed=42, stratify=True)
    assert table["position"].tolist() == [-1, -2, -3]
    assert (table["n_train"] == 90).all() and (table["n_test"] == 30).all()
    assert table.loc[0, "accuracy"] > 0.9 > table.loc[1:, "accuracy"].max()
    assert table["converged"].all() and (table["chance"] == table.loc[0, "chance"]).all()
    assert 0.2 <= table.loc[0, "chance"] <= 0.3
