"""Probe fitting: the reference split, the chance baseline, and the same optimum as scikit-learn."""

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from emoprobe import probes


def test_split_is_the_reference_train_test_split():
    y = np.repeat(np.arange(13), 20)
    x = np.arange(len(y))
    x_train, x_test, _, _ = train_test_split(x, y, test_size=0.2, random_state=42)
    train, test = probes.split_indices(y, 0.2, 42, stratify=False)
    assert train.tolist() == x_train.tolist() and test.tolist() == x_test.tolist()


def test_majority_baseline():
    assert probes.majority_baseline(np.array([1, 1, 2, 0]), np.array([1, 2, 2, 1, 0])) == 0.4


def test_standardise_uses_training_statistics_only():
    train = np.array([[[1.0, 5.0]], [[3.0, 5.0]]])
    test = np.array([[[5.0, 7.0]]])
    z_train, z_test = probes.standardise(train, test)
    assert z_train[:, 0, 0].tolist() == [-1.0, 1.0] and z_test[0, 0, 0] == 3.0
    assert z_train[:, 0, 1].tolist() == [0.0, 0.0] and z_test[0, 0, 1] == 2.0  # constant feature: scale 1


def test_fit_reaches_scikit_learns_optimum():
    """Same objective as LogisticRegression(C) on standardised features: same weights and predictions."""
    digits = load_digits()
    x = (digits.data * np.logspace(-3, 3, 64)).astype(np.float32)  # wildly different feature scales
    y = digits.target
    train, test = probes.split_indices(y, 0.2, 42, stratify=False)
    z_train, z_test = probes.standardise(x[train, None, :], x[test, None, :])
    z_train, z_test = z_train.transpose(1, 0, 2), z_test.transpose(1, 0, 2)
    weights, intercepts, n_iter, converged = probes.fit_multinomial(z_train, y[train], 10, C=0.5, max_iter=1000,
                                                                    tol=1e-5)
    reference = LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000).fit(z_train[0], y[train])
    assert converged and n_iter < 1000
    assert np.abs(weights[0] - reference.coef_).max() <= 1e-2 * np.abs(reference.coef_).max()
    ours = probes.accuracy(z_test, y[test], weights, intercepts)[0]
    assert abs(ours - reference.score(z_test[0], y[test])) <= 1 / len(test)
    assert ours > 0.9


def test_probe_layer_gives_one_row_per_position():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 30)
    states = rng.normal(size=(len(y), 3, 8)).astype(np.float32)
    states[:, 0, :4] += np.eye(4)[y] * 3  # position -1 carries the label, the others are noise
    table = probes.probe_layer(states, y, [-1, -2, -3], C=1.0, max_iter=1000, tol=1e-4, test_size=0.25, seed=42,
                               stratify=True, n_classes=4)
    assert table["position"].tolist() == [-1, -2, -3]
    assert (table["n_train"] == 90).all() and (table["n_test"] == 30).all()
    assert table.loc[0, "accuracy"] > 0.9 > table.loc[1:, "accuracy"].max()
    assert table["converged"].all() and (table["chance"] == table.loc[0, "chance"]).all()
    assert 0.2 <= table.loc[0, "chance"] <= 0.3
