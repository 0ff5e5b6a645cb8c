"""Probe fitting: the reference split, the chance baseline, and the same optimum as scikit-learn."""

import numpy as np
import pandas as pd
import pytest
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
    assert z_train.shape == (1, 2, 2) and z_test.shape == (1, 1, 2)  # positions first
    assert z_train[0, :, 0].tolist() == [-1.0, 1.0] and z_test[0, 0, 0] == 3.0
    assert z_train[0, :, 1].tolist() == [0.0, 0.0] and z_test[0, 0, 1] == 2.0  # constant feature: scale 1


@pytest.fixture(params=[1, 2, 4])
def threads(request):
    """Run the test with this many torch threads: the summation order, so float32 rounding, changes with it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def test_fit_reaches_scikit_learns_optimum(threads):
    """Same objective as LogisticRegression(C) on standardised features: same weights and predictions, and
    converged whatever the thread count (with 1 or 4 threads float32 L-BFGS used to stall short of ``tol``)."""
    digits = load_digits()
    x = (digits.data * np.logspace(-3, 3, 64)).astype(np.float32)  # wildly different feature scales
    y = digits.target
    train, test = probes.split_indices(y, 0.2, 42, stratify=False)
    z_train, z_test = probes.standardise(x[train, None, :], x[test, None, :])
    [(weights, intercepts, n_iter, converged)] = probes.fit_multinomial(z_train, [y[train]], 10, C=0.5,
                                                                        max_iter=1000, tol=1e-5)
    reference = LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000).fit(z_train[0], y[train])
    assert converged and n_iter < 1000
    assert np.abs(weights[0] - reference.coef_).max() <= 1e-2 * np.abs(reference.coef_).max()
    ours = (probes.predict(z_test, weights, intercepts)[0] == y[test]).mean()
    assert abs(ours - reference.score(z_test[0], y[test])) <= 1 / len(test)
    assert ours > 0.9


def test_minimise_lbfgs_steps_as_torch_optim_lbfgs_does():
    """Same iterates to the last bit as torch.optim.LBFGS, whose Optimizer it replaces, on a softmax
    regression of digits (a smooth, ill-conditioned problem that takes dozens of steps)."""
    import torch

    digits = load_digits()
    x = torch.from_numpy(digits.data[:400] / 16).float()
    onehot = torch.nn.functional.one_hot(torch.from_numpy(digits.target[:400]), 10).float()

    def loss_of(w):
        logits = x @ w.view(64, 10)
        return -(torch.log_softmax(logits, dim=1) * onehot).sum() / len(x) + 1e-3 * (w * w).sum()

    def objective(w):
        w = w.detach().requires_grad_()
        loss = loss_of(w)
        loss.backward()
        return loss.item(), w.grad

    ours, grad, n_iter = probes.minimise_lbfgs(objective, torch.zeros(640), max_iter=200, max_eval=400, tol=1e-6)
    w = torch.zeros(640, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], lr=1, max_iter=200, max_eval=400, tolerance_grad=1e-6, tolerance_change=0,
                                  history_size=10, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = loss_of(w)
        loss.backward()
        return loss

    optimizer.step(closure)
    assert 20 < n_iter == optimizer.state[w]["n_iter"]
    assert torch.equal(ours, w.detach())
    assert torch.equal(grad, objective(ours)[1])  # the gradient returned is the last point's


def test_labellings_fitted_together_are_fitted_as_alone():
    """The control shares the preconditioner with the probe, nothing else: each fit is the one it would be alone."""
    states, y = labelled_states()
    z = probes.standardise(states, states[:1])[0]
    shuffled = np.random.default_rng(0).permutation(y)
    together = probes.fit_multinomial(z, [y, shuffled], 4, C=1.0, max_iter=1000, tol=1e-4)
    for labels, fit in zip([y, shuffled], together):
        [alone] = probes.fit_multinomial(z, [labels], 4, C=1.0, max_iter=1000, tol=1e-4)
        assert np.array_equal(fit[0], alone[0]) and np.array_equal(fit[1], alone[1]) and fit[2:] == alone[2:]
    assert not np.allclose(together[0][0], together[1][0])


def labelled_states(seed=0):
    """120 texts of 4 labels; position -1 carries the label, positions -2 and -3 are noise."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), 30)
    states = rng.normal(size=(len(y), 3, 8)).astype(np.float32)
    states[:, 0, :4] += np.eye(4)[y] * 3
    return states, y


def test_probe_layer_on_one_split_gives_one_row_per_position():
    states, y = labelled_states()
    table = probes.probe_layer(states, y, [-1, -2, -3], C=1.0, max_iter=1000, tol=1e-4, folds=0, test_size=0.25,
                               seed=42, stratify=True, n_classes=4, control=False)
    assert table["position"].tolist() == [-1, -2, -3]
    assert (table["n_train"] == 90).all() and (table["n_test"] == 30).all() and (table["folds"] == 1).all()
    assert table.loc[0, "accuracy"] > 0.9 > table.loc[1:, "accuracy"].max()
    assert table["converged"].all() and (table["chance"] == table.loc[0, "chance"]).all()
    assert 0.2 <= table.loc[0, "chance"] <= 0.3
    assert table["control_accuracy"].isna().all()
    assert (table["ci_low"] < table["accuracy"]).all() and (table["accuracy"] < table["ci_high"]).all()


def test_k_fold_probe_with_a_shuffled_label_control():
    states, y = labelled_states()
    table = probes.probe_layer(states, y, [-1, -2, -3], C=1.0, max_iter=1000, tol=1e-4, folds=5, test_size=0.25,
                               seed=42, stratify=False, n_classes=4, control=True)
    assert (table["folds"] == 5).all() and (table["n_train"] == 96).all() and (table["n_test"] == 24).all()
    assert table.loc[0, "accuracy"] > 0.8 and table.loc[0, "macro_f1"] > 0.8
    # the control cannot learn shuffled labels: near chance (0.25), so the informative position is selective
    assert table["control_accuracy"].between(0.05, 0.45).all()
    assert table.loc[0, "selectivity"] > 0.5 > table.loc[1:, "selectivity"].abs().max()
    assert np.allclose(table["selectivity"], table["accuracy"] - table["control_accuracy"])
    assert (table["ci_low"] <= table["accuracy"]).all() and (table["accuracy"] <= table["ci_high"]).all()


def test_folds_are_stratified_and_cover_every_text_once():
    y = np.repeat(np.arange(13), [50] * 4 + [25] + [50] * 5 + [25] + [50] * 2)
    splits = probes.fold_indices(y, folds=5, test_size=0.2, seed=42, stratify=False)
    assert sorted(np.concatenate([test for _, test in splits]).tolist()) == list(range(len(y)))
    for train, test in splits:
        assert np.bincount(y[test]).tolist() == [10] * 4 + [5] + [10] * 5 + [5] + [10] * 2
        assert not set(train) & set(test)
    assert len(probes.fold_indices(y, folds=0, test_size=0.2, seed=42, stratify=False)) == 1


def test_interval():
    low, high = probes.interval(np.array([0.5, 0.6, 0.55, 0.45, 0.5]), n_test=100)
    assert low < 0.52 < high and round(high - low, 3) == round(2 * 2.776 * 0.0570 / 5**0.5, 3)
    low, high = probes.interval(np.array([0.5]), n_test=100)  # Wilson, one split
    assert round(low, 3) == 0.404 and round(high, 3) == 0.596
    assert probes.interval(np.array([1.0, 1.0, 0.9]), n_test=10)[1] == 1.0


def test_subset_rows():
    answers = pd.DataFrame({"row_id": [7, 3, 5], "correct": [True, False, True]})
    assert probes.subset_rows("all", np.array([3, 5, 7]), None).tolist() == [0, 1, 2]
    assert probes.subset_rows("model_correct", np.array([3, 5, 7]), answers).tolist() == [1, 2]
    with pytest.raises(ValueError, match=r"no row for row_id\(s\) \[9\]"):
        probes.subset_rows("model_correct", np.array([9]), answers)


def test_fewer_texts_than_features_reach_the_same_optimum():
    """Fitting in the span of the training rows (n < d) gives scikit-learn's weights in the full space."""
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 10)
    x = rng.normal(size=(30, 1, 50)).astype(np.float32)
    x[:, 0, :3] += np.eye(3)[y]
    z, _ = probes.standardise(x, x[:1])
    [(weights, intercepts, _, converged)] = probes.fit_multinomial(z, [y], 3, C=1.0, max_iter=1000, tol=1e-4)
    reference = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(z[0], y)
    assert converged and weights.shape == (1, 3, 50)
    assert np.abs(weights[0] - reference.coef_).max() <= 2e-3 * np.abs(reference.coef_).max()


def test_too_few_texts_give_a_row_of_nan():
    states, y = labelled_states()
    table = probes.probe_layer(states[:3], y[:3], [-1, -2, -3], C=1.0, max_iter=100, tol=1e-4, folds=5,
                               test_size=0.2, seed=42, stratify=False, n_classes=4, control=True)
    assert table["accuracy"].isna().all() and (table["n_texts"] == 3).all() and not table["converged"].any()


def test_probe_device():
    import torch

    assert probes.probe_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert probes.probe_device("cpu").type == "cpu"


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_probes_on_cuda_match_the_cpu():
    states, y = labelled_states()
    settings = dict(C=1.0, max_iter=1000, tol=1e-4, folds=5, test_size=0.2, seed=42, stratify=False, n_classes=4,
                    control=True)
    cpu = probes.probe_layer(states, y, [-1, -2, -3], **settings, device="cpu")
    cuda = probes.probe_layer(states, y, [-1, -2, -3], **settings, device="cuda")
    assert np.abs(cpu["accuracy"] - cuda["accuracy"]).max() <= 1 / 24 and cuda["converged"].all()
