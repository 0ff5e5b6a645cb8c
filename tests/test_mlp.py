"""The non-linear probes (emoprobe/mlp.py): scikit-learn's MLPClassifier objective, stationary where they stop,
reproducible to the bit, and non-linear where a linear probe cannot be."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from emoprobe import mlp, probes
from emoprobe.grid import Cell
from emoprobe.logistic import Probe
from emoprobe.settings import MLP, Logistic, Split


@pytest.fixture(scope="module")
def digits():
    """1,797 8x8 digits (64 features, 10 classes) in float32, the first 1,400 for training."""
    x, y = load_digits(return_X_y=True)
    return x.astype(np.float32), y, np.arange(1400)


def objective_at(x, train, y, fitted_standardised, alpha):
    """This module's objective at scikit-learn's weights (fitted on the standardised training rows)."""
    x64 = torch.as_tensor(x, dtype=torch.float64)
    problem = mlp._MLP(x64, [Probe(train, y[train], 10)], hidden=fitted_standardised.coefs_[0].shape[1], alpha=alpha)
    (w1, w2), (b1, b2) = fitted_standardised.coefs_, fitted_standardised.intercepts_
    m1 = torch.as_tensor(w1.T) @ torch.linalg.inv(problem.q[0])  # the first layer's weights in whitened coordinates
    theta = torch.cat([m1.reshape(-1), torch.as_tensor(b1), torch.as_tensor(w2.T).reshape(-1), torch.as_tensor(b2)])
    loss, grad, _ = problem.evaluate(theta[None])
    return float(loss[0]), grad


def test_the_objective_is_scikit_learns(digits):
    x, y, train = digits
    scaled = StandardScaler().fit(x[train]).transform(x[train])
    reference = MLPClassifier(hidden_layer_sizes=(8,), solver="lbfgs", alpha=1.0, max_iter=3000, tol=1e-10,
                              random_state=0).fit(scaled, y[train])
    loss, grad = objective_at(x, train, y, reference, alpha=1.0)
    assert loss == pytest.approx(reference.loss_, rel=1e-6)
    # scikit-learn's optimum is one of ours: no gradient left there
    assert float(grad.abs().max()) < 1e-3


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # the max_iter=1 shell for our weights
def test_fits_converge_reproducibly_to_scikit_learns_objective_and_accuracy(digits):
    x, y, train = digits
    test = np.setdiff1d(np.arange(len(y)), train)
    probes_ = [Probe(train, y[train], 10), Probe(train[::2], y[train[::2]], 10)]
    settings = {"hidden": 8, "alpha": 1.0, "max_iter": 3000, "tol": 1e-5, "seed": 3}
    fits, again = mlp.fit_mlp(x, probes_, **settings), mlp.fit_mlp(x, probes_, **settings)
    assert all(fit.converged for fit in fits) and all(fit.n_iter < 3000 for fit in fits)
    for fit, other in zip(fits, again):
        for a, b in zip(fit[:4], other[:4]):
            assert a.tobytes() == b.tobytes()
    # ours as scikit-learn's weights on its standardised features: the same objective value and the same labels
    scaled = StandardScaler().fit(x[train])
    ours = MLPClassifier(hidden_layer_sizes=(8,), alpha=1.0, max_iter=1).fit(scaled.transform(x[train]), y[train])
    ours.coefs_ = [(fits[0].first * scaled.scale_).T.astype(np.float64), fits[0].second.T.astype(np.float64)]
    ours.intercepts_ = [(fits[0].first_bias + fits[0].first @ scaled.mean_).astype(np.float64),
                        fits[0].second_bias.astype(np.float64)]
    assert (ours.predict(scaled.transform(x[test])) == mlp.predict_mlp(x[test], fits[:1])[0]).all()
    reference = MLPClassifier(hidden_layer_sizes=(8,), solver="lbfgs", alpha=1.0, max_iter=3000, tol=1e-10,
                              random_state=0).fit(scaled.transform(x[train]), y[train])
    our_loss, _ = objective_at(x, train, y, ours, alpha=1.0)
    # a different local optimum, as low as scikit-learn's converged one to within a few per cent
    assert our_loss < reference.loss_ * 1.05
    accuracy = np.mean(mlp.predict_mlp(x[test], fits[:1])[0] == y[test])
    assert accuracy > 0.9 and accuracy >= reference.score(scaled.transform(x[test]), y[test]) - 0.03


def test_the_mlp_probe_reads_what_a_linear_probe_cannot():
    # the label is the sign of the product of two features (XOR): no linear probe beats chance, one hidden layer does
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 6)).astype(np.float32)
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)
    cell = [{-1: Cell(control=True, directions=False)}]
    split = {"label_names": ["no", "yes"], "split": Split(folds=5, test_size=0.2, seed=0, stratify=True)}
    [linear] = probes.probe_layer(x[:, None], [-1], [(np.arange(600), y)], cell, **split,
                                  trainer=Logistic(C=1.0, max_iter=1000, tol=1e-4))
    [nonlinear] = probes.probe_layer(x[:, None], [-1], [(np.arange(600), y)], cell, **split,
                                     trainer=MLP(hidden=16, alpha=1.0, max_iter=3000, tol=1e-4))
    assert linear.table["balanced_high"].iloc[0] < 0.6
    assert nonlinear.table["balanced_low"].iloc[0] > 0.85
    assert nonlinear.table["converged"].iloc[0]
    # the shuffled-label control is fitted on the same folds and stays near chance
    assert abs(nonlinear.table["control_balanced_accuracy"].iloc[0] - 0.5) < 0.1
    assert nonlinear.directions is None


def test_the_rows_a_probe_is_tested_on_cannot_move_its_fit(digits):
    """The objective is not convex, so whatever sets the start or the parametrisation decides the optimum reached:
    each probe's standardisation and whitening are its training rows' own, and changing every other row (the fold's
    test rows) leaves its fit the same to the last bit, through the layer fit the workflow calls."""
    x, y, train = digits
    test = np.setdiff1d(np.arange(len(y)), train)
    settings = {"hidden": 8, "alpha": 1.0, "max_iter": 200, "tol": 1e-5, "seed": 3}
    fits = mlp.fit_mlp(x, [Probe(train, y[train], 10)], **settings)
    moved = x.copy()
    moved[test] = np.random.default_rng(0).standard_normal(moved[test].shape).astype(np.float32) * 50 + 7
    again = mlp.fit_mlp(moved, [Probe(train, y[train], 10)], **settings)
    for a, b in zip(fits[0][:4], again[0][:4]):
        assert a.tobytes() == b.tobytes()
    # through the layer fit the workflow calls: rows of the layer outside a problem (another subset's texts) do not
    # move the problem's fits, as a whitening of all the layer's rows did
    cell = [{-1: Cell(control=False, directions=False)}]
    split = {"label_names": [str(k) for k in range(10)], "split": Split(folds=5, test_size=0.2, seed=0, stratify=True)}
    small = MLP(hidden=8, alpha=1.0, max_iter=100, tol=1e-5)
    rows = np.arange(600)
    [before] = probes.probe_layer(x[:, None], [-1], [(rows, y[rows])], cell, **split, trainer=small)
    [after] = probes.probe_layer(moved[:, None], [-1], [(rows, y[rows])], cell, **split, trainer=small)
    assert np.array_equal(before.predictions["predicted"], after.predictions["predicted"])
