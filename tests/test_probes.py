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


LABELS = [f"label{i}" for i in range(13)]
SETTINGS = dict(label_names=LABELS, C=1.0, max_iter=1000, tol=1e-4)


def test_probe_layer_on_one_split_gives_one_row_per_position():
    states, y = labelled_states()
    table, predictions = probes.probe_layer(states, y, [-1, -2, -3], folds=0, test_size=0.25, seed=42, stratify=True,
                                            control=False, **SETTINGS)
    assert table["position"].tolist() == [-1, -2, -3]
    assert (table["n_train"] == 90).all() and (table["n_test"] == 30).all() and (table["folds"] == 1).all()
    assert (table["n_texts"] == 30).all()  # one split: its 30 test texts are scored
    assert table.loc[0, "balanced_accuracy"] > 0.9 > table.loc[1:, "balanced_accuracy"].max()
    assert table["converged"].all() and (table["majority_accuracy"] == table.loc[0, "majority_accuracy"]).all()
    assert (table["balanced_chance"] == 0.25).all()
    assert table["control_accuracy"].isna().all() and table["selectivity"].isna().all()
    for low, score, high in (("accuracy_low", "accuracy", "accuracy_high"),
                             ("balanced_low", "balanced_accuracy", "balanced_high")):
        assert (table[low] <= table[score]).all() and (table[score] <= table[high]).all()
    assert predictions["predicted"].shape == (3, 30) and len(predictions["rows"]) == 30


def test_k_fold_probe_with_a_shuffled_label_control():
    states, y = labelled_states()
    table, predictions = probes.probe_layer(states, y, [-1, -2, -3], folds=5, test_size=0.25, seed=42,
                                            stratify=False, control=True, **SETTINGS)
    assert (table["folds"] == 5).all() and (table["n_train"] == 96).all() and (table["n_test"] == 24).all()
    assert (table["n_texts"] == 120).all() and table["note"].eq("").all()
    assert table.loc[0, "balanced_accuracy"] > 0.8 and table.loc[0, "macro_f1"] > 0.8 and table.loc[0, "kappa"] > 0.7
    # the control cannot learn shuffled labels: near chance (0.25), so the informative position is selective
    assert table["control_balanced_accuracy"].between(0.05, 0.45).all()
    assert table.loc[0, "selectivity"] > 0.5 > table.loc[1:, "selectivity"].abs().max()
    assert np.allclose(table["selectivity"], table["balanced_accuracy"] - table["control_balanced_accuracy"])
    # every text is predicted once, and the scores are those of the pooled predictions
    assert sorted(predictions["rows"].tolist()) == list(range(120))
    pooled = (predictions["predicted"] == predictions["label_id"]).mean(axis=1)
    assert np.allclose(table["accuracy"], pooled)
    assert np.allclose(table["balanced_accuracy"], table["accuracy"])  # balanced labels: the same


def test_imbalanced_labels_are_scored_by_balanced_accuracy():
    """A probe that always answers the majority label has accuracy 0.8 on these texts, balanced accuracy 0.25."""
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(4), [160, 14, 13, 13])
    states = rng.normal(size=(len(y), 1, 8)).astype(np.float32)  # no information: the probe learns the prior
    table, _ = probes.probe_layer(states, y, [-1], folds=5, test_size=0.2, seed=42, stratify=False, control=True,
                                  **SETTINGS)
    assert table.loc[0, "accuracy"] > 0.7 and table.loc[0, "majority_accuracy"] == 0.8
    assert table.loc[0, "balanced_accuracy"] < 0.35 and abs(table.loc[0, "kappa"]) < 0.1
    assert abs(table.loc[0, "selectivity"]) < 0.1


def test_folds_are_stratified_and_cover_every_text_once():
    y = np.repeat(np.arange(13), [50] * 4 + [25] + [50] * 5 + [25] + [50] * 2)
    splits = probes.fold_indices(y, folds=5, test_size=0.2, seed=42, stratify=False)
    assert sorted(np.concatenate([test for _, test in splits]).tolist()) == list(range(len(y)))
    for train, test in splits:
        assert np.bincount(y[test]).tolist() == [10] * 4 + [5] + [10] * 5 + [5] + [10] * 2
        assert not set(train) & set(test)
    assert len(probes.fold_indices(y, folds=0, test_size=0.2, seed=42, stratify=False)) == 1


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


@pytest.mark.parametrize("n, expected", [(3, "fewer than two labels"), (0, "fewer than two labels")])
def test_too_few_texts_give_a_row_that_says_why(n, expected):
    states, y = labelled_states()
    table, predictions = probes.probe_layer(states[:n], y[:n], [-1, -2, -3], folds=5, test_size=0.2, seed=42,
                                            stratify=False, control=True, **SETTINGS)
    assert predictions is None and table["balanced_accuracy"].isna().all() and not table["converged"].any()
    assert table["note"].str.contains(expected).all() and (table["n_texts"] == 0).all()


def test_labels_with_fewer_texts_than_folds_are_set_aside_and_named():
    states, y = labelled_states()
    keep = np.r_[0:30, 30:33, 60:120]  # label 1 keeps 3 texts
    table, predictions = probes.probe_layer(states[keep][:, :1], y[keep], [-1], folds=5, test_size=0.2, seed=42,
                                            stratify=False, control=True, **SETTINGS)
    assert table.loc[0, "note"] == "set aside labels with fewer than 5 texts: label1 (3)"
    assert table.loc[0, "n_texts"] == 90 and table.loc[0, "n_labels"] == 3 and table.loc[0, "balanced_chance"] == 1 / 3
    assert 1 not in predictions["label_id"] and 1 not in predictions["predicted"]


def test_probe_targets_the_models_answer():
    answers = pd.DataFrame({"row_id": [5, 3], "answer": ["label2", "label0"], "correct": [True, False]})
    problems = probes.probe_targets(["all", "model_correct"], True, np.array([3, 5]), np.array([0, 2]), answers,
                                    LABELS)
    assert [(s, t, r.tolist(), y.tolist()) for s, t, r, y in problems] == [
        ("all", "label", [0, 1], [0, 2]), ("model_correct", "label", [1], [2]), ("all", "answer", [0, 1], [0, 2])]


def test_one_device_picker_for_every_job(monkeypatch):
    import torch

    from emoprobe.device import pick_device

    assert pick_device("cpu").type == "cpu" and str(pick_device("cuda:1")) == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device("auto").type == "mps"
    assert pick_device("auto", needs_float64=True).type == "cpu"  # MPS has no float64: the probes' fallback needs it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto", needs_float64=True).type == "cuda"


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_probes_on_cuda_match_the_cpu():
    states, y = labelled_states()
    settings = dict(folds=5, test_size=0.2, seed=42, stratify=False, control=True, **SETTINGS)
    cpu, _ = probes.probe_layer(states, y, [-1, -2, -3], **settings, device="cpu")
    cuda, _ = probes.probe_layer(states, y, [-1, -2, -3], **settings, device="cuda")
    assert np.abs(cpu["accuracy"] - cuda["accuracy"]).max() <= 1 / 24 and cuda["converged"].all()


def test_batched_trainer_agrees_with_the_per_fit_trainer():
    """Every fold, control and problem of a layer in one batched solve: the scores of fitting each alone."""
    from emoprobe.batched import probe_layer_batched

    rng = np.random.default_rng(5)
    y = rng.choice(5, size=600, p=[0.4, 0.25, 0.15, 0.12, 0.08])
    states = (rng.normal(size=(600, 2, 40)) * np.linspace(0.1, 20, 40) + 3).astype(np.float32)
    states[:, 0, :5] += np.eye(5)[y] * 1.5
    answer = np.where(rng.random(600) < 0.6, 0, y)
    settings = dict(folds=5, test_size=0.2, seed=42, stratify=False, control=True, **SETTINGS)
    problems = [(np.arange(600), y), (np.arange(600), answer), (np.flatnonzero(y < 3), y[y < 3])]
    batched = probe_layer_batched(states, problems, [-1, -2], **settings)
    for (rows, labels), (table, predictions) in zip(problems, batched):
        alone, reference = probes.probe_layer(states[rows], labels, [-1, -2], **settings)
        for column in ("accuracy", "balanced_accuracy", "control_accuracy"):
            assert np.abs(table[column] - alone[column]).max() <= 3 / len(rows), column
        assert table["converged"].all() and np.array_equal(predictions["rows"], rows[reference["rows"]])


def test_the_batched_trainer_keeps_the_probe_fitted_on_all_texts_in_the_raw_space():
    """Its weights are scikit-learn's LogisticRegression(C) on all of a problem's texts, standardised, mapped
    back to the raw states (w / sigma): what steering along a probe's direction reads."""
    from emoprobe.batched import probe_layer_batched

    rng = np.random.default_rng(6)
    y = rng.choice(4, size=400, p=[0.4, 0.3, 0.2, 0.1])
    states = (rng.normal(size=(400, 2, 30)) * np.linspace(0.1, 20, 30) + 3).astype(np.float32)
    states[:, 0, :4] += np.eye(4)[y] * 1.5
    rows = np.flatnonzero(y != 3)  # a problem without label 3
    settings = dict(folds=5, test_size=0.2, seed=42, stratify=False, control=True, **SETTINGS)
    (_, predictions), = probe_layer_batched(states, [(rows, y[rows])], [-1, -2], **settings)
    assert predictions["classes"].tolist() == [0, 1, 2]
    assert predictions["weights"].shape == (2, 3, 30) and predictions["weights"].dtype == np.float32
    assert predictions["intercepts"].shape == (2, 3)
    for p in range(2):
        x = states[rows, p].astype(np.float64)
        mean, std = x.mean(axis=0), x.std(axis=0)
        reference = LogisticRegression(C=1.0, tol=1e-8, max_iter=10_000).fit((x - mean) / std, y[rows])
        raw = reference.coef_ / std
        weights = predictions["weights"][p].astype(np.float64)
        # within the workflow's tol (1e-4 on the gradient); a missing w / sigma would be off by the scales (0.1-20)
        assert np.abs(weights - raw).max() <= 1e-2 * np.abs(raw).max()
        logits = x @ weights.T + predictions["intercepts"][p]
        assert np.abs(logits - reference.decision_function((x - mean) / std)).max() <= 1e-2 * np.abs(logits).max()
