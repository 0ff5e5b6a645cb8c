"""Probe fitting: the reference split, the chance baseline, and the same optimum as scikit-learn."""

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from emoprobe import logistic, probes, problems
from emoprobe.grid import Cell
from emoprobe.settings import Logistic, Split


def test_split_is_the_reference_train_test_split():
    y = np.repeat(np.arange(13), 20)
    x = np.arange(len(y))
    x_train, x_test, _, _ = train_test_split(x, y, test_size=0.2, random_state=42)
    train, test = problems.split_indices(y, 0.2, 42, stratify=False)
    assert train.tolist() == x_train.tolist() and test.tolist() == x_test.tolist()


@pytest.fixture(params=[1, 2, 4])
def threads(request):
    """Run the test with this many torch threads: the summation order, so float32 rounding, changes with it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def standardised(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``x`` standardised with the mean and standard deviation of ``rows`` (float64), and those two."""
    mean, std = x[rows].astype(np.float64).mean(axis=0), x[rows].astype(np.float64).std(axis=0)
    std[std == 0] = 1.0
    return (x - mean) / std, mean, std


def test_fit_reaches_scikit_learns_optimum(threads):
    """Same objective as LogisticRegression(C) on features standardised with the training rows: same weights (in
    the raw space, w / std) and predictions, and converged whatever the thread count (float32 L-BFGS stalled
    short of ``tol`` with 1 or 4 threads before the float64 finish)."""
    digits = load_digits()
    x = (digits.data * np.logspace(-3, 3, 64)).astype(np.float32)  # wildly different feature scales
    y = digits.target
    train, test = problems.split_indices(y, 0.2, 42, stratify=False)
    [fit] = logistic.fit_logistic(x, [logistic.Probe(train, y[train], 10)], C=0.5, max_iter=1000, tol=1e-5)
    z, _, std = standardised(x, train)
    reference = LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000).fit(z[train], y[train])
    assert fit.converged and fit.n_iter < 1000
    # compared on the standardised features, where the objective (and tol) lives
    assert np.abs(fit.weights * std - reference.coef_).max() <= 1e-2 * np.abs(reference.coef_).max()
    ours = (logistic.predict(x[test], fit) == y[test]).mean()
    assert abs(ours - reference.score(z[test], y[test])) <= 1 / len(test)
    assert ours > 0.9


def test_probes_fitted_together_are_fitted_as_alone():
    """A probe's fit depends on its own rows and labels only: the same to the last bit whether its solve also
    holds the shuffled-label controls (which finish at other iterations and leave the product) or not."""
    states, y = labelled_states()
    x = states[:, 0]
    splits = problems.fold_indices(y, folds=5, test_size=0.2, seed=42, stratify=False)
    shuffled = np.random.default_rng(0).permutation(y)
    label = [logistic.Probe(train, y[train], 4) for train, _ in splits]
    control = [logistic.Probe(train, shuffled[train], 4) for train, _ in splits]
    together = logistic.fit_logistic(x, label + control, C=1.0, max_iter=1000, tol=1e-4)
    alone = logistic.fit_logistic(x, label, C=1.0, max_iter=1000, tol=1e-4)
    for ours, theirs in zip(together, alone):
        assert np.array_equal(ours.weights, theirs.weights) and np.array_equal(ours.intercepts, theirs.intercepts)
        assert ours.n_iter == theirs.n_iter
    assert len({fit.n_iter for fit in together}) > 1  # they did finish at different iterations
    assert not np.allclose(together[0].weights, together[5].weights)


def test_a_fold_is_standardised_with_its_training_rows_only():
    """An outlier among a fold's test rows (in the training rows of the other folds) leaves that fold's probe where
    it was: its mean and scale come from its own training rows. Standardised with every row, the outlier's
    feature would shrink to nothing and the weights move by far more than the tolerance."""
    states, y = labelled_states()
    x = states[:, 0].copy()
    splits = problems.fold_indices(y, folds=5, test_size=0.2, seed=42, stratify=False)
    train, test = splits[0]
    fold_probes = [logistic.Probe(rows, y[rows], 4) for rows, _ in splits]
    clean = logistic.fit_logistic(x, fold_probes, C=1.0, max_iter=1000, tol=1e-6)[0]
    x[test[0], 0] = 1e6
    spoilt = logistic.fit_logistic(x, fold_probes, C=1.0, max_iter=1000, tol=1e-6)[0]
    assert np.abs(spoilt.weights - clean.weights).max() <= 1e-3 * np.abs(clean.weights).max()
    assert np.abs(spoilt.intercepts - clean.intercepts).max() <= 1e-3 * np.abs(clean.intercepts).max()
    # the same probe on features standardised with all rows, as the guard prevents
    z, _, _ = standardised(x, np.arange(len(x)))
    everything = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(z[train], y[train])
    assert abs(everything.coef_[:, 0]).max() < 0.1 * abs(clean.weights[:, 0] * x[train, 0].std()).max()


def labelled_states(seed=0):
    """120 texts of 4 labels; position -1 carries the label, positions -2 and -3 are noise."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), 30)
    states = rng.normal(size=(len(y), 3, 8)).astype(np.float32)
    states[:, 0, :4] += np.eye(4)[y] * 3
    return states, y


LABELS = [f"label{i}" for i in range(13)]
SETTINGS = dict(label_names=LABELS, trainer=Logistic(C=1.0, max_iter=1000, tol=1e-4))


def probe_layer(states, y, positions, *, control, directions=False, **settings):
    """One problem on all of ``states``' rows, fitted at every one of ``positions``: ``(table, predictions)``."""
    [result] = probes.probe_layer(states, positions, [(np.arange(len(y)), y)],
                                  [{p: Cell(control, directions) for p in positions}], **settings)
    return result.table, result.predictions


def test_probe_layer_on_one_split_gives_one_row_per_position():
    states, y = labelled_states()
    table, predictions = probe_layer(states, y, [-1, -2, -3], split=Split(0, 0.25, 42, True),
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
    table, predictions = probe_layer(states, y, [-1, -2, -3], split=Split(5, 0.25, 42, False), control=True, **SETTINGS)
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
    table, _ = probe_layer(states, y, [-1], split=Split(5, 0.2, 42, False), control=True,
                                  **SETTINGS)
    assert table.loc[0, "accuracy"] > 0.7 and table.loc[0, "majority_accuracy"] == 0.8
    assert table.loc[0, "balanced_accuracy"] < 0.35 and abs(table.loc[0, "kappa"]) < 0.1
    assert abs(table.loc[0, "selectivity"]) < 0.1


def test_folds_are_stratified_and_cover_every_text_once():
    y = np.repeat(np.arange(13), [50] * 4 + [25] + [50] * 5 + [25] + [50] * 2)
    splits = problems.fold_indices(y, folds=5, test_size=0.2, seed=42, stratify=False)
    assert sorted(np.concatenate([test for _, test in splits]).tolist()) == list(range(len(y)))
    for train, test in splits:
        assert np.bincount(y[test]).tolist() == [10] * 4 + [5] + [10] * 5 + [5] + [10] * 2
        assert not set(train) & set(test)
    assert len(problems.fold_indices(y, folds=0, test_size=0.2, seed=42, stratify=False)) == 1


def test_subset_rows():
    answers = pd.DataFrame({"row_id": [7, 3, 5], "correct": [True, False, True]})
    assert problems.subset_rows("all", np.array([3, 5, 7]), None).tolist() == [0, 1, 2]
    assert problems.subset_rows("model_correct", np.array([3, 5, 7]), answers).tolist() == [1, 2]
    with pytest.raises(ValueError, match=r"no row for row_id\(s\) \[9\]"):
        problems.subset_rows("model_correct", np.array([9]), answers)


def test_fewer_texts_than_features_reach_the_same_optimum():
    """30 texts of 50 features (as a small subset of a wide model): scikit-learn's optimum all the same."""
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 10)
    x = rng.normal(size=(30, 50)).astype(np.float32)
    x[:, :3] += np.eye(3)[y]
    [fit] = logistic.fit_logistic(x, [logistic.Probe(np.arange(30), y, 3)], C=1.0, max_iter=1000, tol=1e-5)
    z, _, std = standardised(x, np.arange(30))
    reference = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(z, y)
    raw = reference.coef_ / std
    assert fit.converged and fit.weights.shape == (3, 50)
    assert np.abs(fit.weights - raw).max() <= 2e-3 * np.abs(raw).max()


@pytest.mark.parametrize("n, expected", [(3, "fewer than two labels"), (0, "fewer than two labels")])
def test_too_few_texts_give_a_row_that_says_why(n, expected):
    states, y = labelled_states()
    table, predictions = probe_layer(states[:n], y[:n], [-1, -2, -3], split=Split(5, 0.2, 42, False), control=True,
                                     **SETTINGS)
    assert predictions is None and table["balanced_accuracy"].isna().all() and not table["converged"].any()
    assert table["note"].str.contains(expected).all() and (table["n_texts"] == 0).all()


def test_labels_with_fewer_texts_than_folds_are_set_aside_and_named():
    states, y = labelled_states()
    keep = np.r_[0:30, 30:33, 60:120]  # label 1 keeps 3 texts
    table, predictions = probe_layer(states[keep][:, :1], y[keep], [-1], split=Split(5, 0.2, 42, False),
                                     control=True, **SETTINGS)
    assert table.loc[0, "note"] == "set aside labels with fewer than 5 texts: label1 (3)"
    assert table.loc[0, "n_texts"] == 90 and table.loc[0, "n_labels"] == 3 and table.loc[0, "balanced_chance"] == 1 / 3
    assert 1 not in predictions["label_id"] and 1 not in predictions["predicted"]


def test_probe_targets_the_models_answer():
    answers = pd.DataFrame({"row_id": [5, 3], "answer": ["label2", "label0"], "correct": [True, False]})
    targets = problems.probe_targets(["all", "model_correct"], True, np.array([3, 5]), np.array([0, 2]), answers,
                                     LABELS)
    assert [(s, t, r.tolist(), y.tolist()) for s, t, r, y in targets] == [
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
    settings = dict(split=Split(5, 0.2, 42, False), control=True, **SETTINGS)
    cpu, _ = probe_layer(states, y, [-1, -2, -3], **settings, device="cpu")
    cuda, _ = probe_layer(states, y, [-1, -2, -3], **settings, device="cuda")
    assert np.abs(cpu["accuracy"] - cuda["accuracy"]).max() <= 1 / 24 and cuda["converged"].all()


def test_every_probe_of_a_layer_reaches_scikit_learns_scores():
    """Every fold and control of three problems (imbalanced labels, the answers of a model that mostly answers
    one label, a subset), two positions, as a probe job fits them: the pooled out-of-fold scores of converged
    scikit-learn fits on the same folds, each standardised with its training rows, give or take a text or two
    of the tolerance."""
    rng = np.random.default_rng(5)
    y = rng.choice(5, size=600, p=[0.4, 0.25, 0.15, 0.12, 0.08])
    states = (rng.normal(size=(600, 2, 40)) * np.linspace(0.1, 20, 40) + 3).astype(np.float32)
    states[:, 0, :5] += np.eye(5)[y] * 1.5
    answer = np.where(rng.random(600) < 0.6, 0, y)
    texts = [(np.arange(600), y), (np.arange(600), answer), (np.flatnonzero(y < 3), y[y < 3])]
    cells = [{-1: Cell(True, False), -2: Cell(True, False)}] * 3
    settings = dict(split=Split(5, 0.2, 42, False), **SETTINGS)
    results = probes.probe_layer(states, [-1, -2], texts, cells, **settings)
    for (rows, labels), result in zip(texts, results):
        table = result.table
        assert table["converged"].all() and np.array_equal(result.predictions["rows"], rows)
        splits = problems.fold_indices(labels, folds=5, test_size=0.2, seed=42, stratify=False)
        shuffled = np.random.default_rng(42).permutation(labels)
        for p in range(2):
            x = states[rows, p]
            for column, target in (("accuracy", labels), ("control_accuracy", shuffled)):
                predicted, log2_probability = np.empty(len(rows), dtype=np.int64), np.empty(len(rows))
                for train, test in splits:
                    z, _, _ = standardised(x, train)
                    reference = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(z[train], target[train])
                    predicted[test] = reference.predict(z[test])
                    log2_probability[test] = reference.predict_log_proba(z[test])[
                        np.arange(len(test)), np.searchsorted(reference.classes_, target[test])] / np.log(2)
                assert abs(table[column].iloc[p] - (predicted == target).mean()) <= 3 / len(rows), column
                if column == "accuracy":  # the held-out cross-entropy, each text's probability of its own label
                    assert table["cross_entropy"].iloc[p] == pytest.approx(-log2_probability.mean(), abs=2e-3)
                    stored = result.predictions["log2_probability"][p]  # each text's own, in the probes' rows
                    gap = np.abs(2 ** stored - 2 ** log2_probability)  # the tolerance's spread, a text or two
                    assert np.quantile(gap, 0.95) < 0.01 and gap.max() < 0.05


def test_the_probe_fitted_on_all_texts_is_kept_in_the_raw_space():
    """Where the grid asks for directions, the probe fitted on all of a problem's texts is scikit-learn's
    LogisticRegression(C) on them, standardised, mapped back to the raw states (w / sigma): what steering along a
    probe's direction reads; only at those positions."""
    rng = np.random.default_rng(6)
    y = rng.choice(4, size=400, p=[0.4, 0.3, 0.2, 0.1])
    states = (rng.normal(size=(400, 2, 30)) * np.linspace(0.1, 20, 30) + 3).astype(np.float32)
    states[:, 0, :4] += np.eye(4)[y] * 1.5
    rows = np.flatnonzero(y != 1)  # a problem without label 1: its probes' rows are classes 0, 2, 3
    settings = dict(split=Split(5, 0.2, 42, False), **SETTINGS)
    [result] = probes.probe_layer(states, [-1, -2], [(rows, y[rows])], [{-1: Cell(True, True), -2: Cell(False, False)}],
                                  **settings)
    directions = result.directions
    assert directions["classes"].tolist() == [0, 2, 3] and directions["positions"] == [-1]
    assert directions["weights"].shape == (1, 3, 30) and directions["weights"].dtype == np.float32
    assert directions["intercepts"].shape == (1, 3)
    x = states[rows, 0].astype(np.float64)
    z, _, std = standardised(x, np.arange(len(rows)))
    reference = LogisticRegression(C=1.0, tol=1e-8, max_iter=10_000).fit(z, y[rows])
    raw = reference.coef_ / std
    weights = directions["weights"][0].astype(np.float64)
    # within the workflow's tol (1e-4 on the gradient); a missing w / sigma would be off by the scales (0.1-20)
    assert np.abs(weights - raw).max() <= 1e-2 * np.abs(raw).max()
    logits = x @ weights.T + directions["intercepts"][0]
    assert np.abs(logits - reference.decision_function(z)).max() <= 1e-2 * np.abs(logits).max()
    # no control at -2: its columns are empty, its predictions -1
    assert np.isnan(result.table["control_accuracy"].iloc[1]) and (result.predictions["control_predicted"][1] == -1).all()


def test_a_new_probe_setting_reaches_the_trainer_through_the_settings_alone(monkeypatch):
    """A linear trainer with one more field (``shrink``, dividing the penalty's C), read from the config's probe
    section by its name, and its fit: the plan's settings carry it, Snakemake's params trigger sees its value (a
    rerun when it changes), and the layer loop of every probe job hands it to the fit, with no other file changed."""
    from typing import NamedTuple

    from snakemake.persistence import PersistenceBase

    from conftest import small_config
    from emoprobe import logistic, plan, settings

    class Shrunk(NamedTuple):  # settings.Logistic with the new field
        C: float
        max_iter: int
        tol: float
        shrink: float

        gives_directions = True
        from_config = classmethod(settings._from_section)

    seen = []

    def fit(trainer, x, probes_, *, seed, device, whitening):  # the trainer, using it
        seen.append(trainer.shrink)
        return logistic.fit_logistic(x, probes_, C=trainer.C / trainer.shrink, max_iter=trainer.max_iter,
                                     tol=trainer.tol, q=whitening(), device=device)

    monkeypatch.setattr(plan, "Logistic", Shrunk)
    probes.fit_trainer.register(Shrunk, fit)
    probes.trainer_logits.register(Shrunk, lambda trainer, x, fits: logistic.logits(x, fits))
    config = small_config()
    config["probe"].update(shrink=1.0, subsets=["all"], answer_probe=False)  # no answers to read
    weak, strong = plan.probe_settings(config), plan.probe_settings(with_shrink(config, 100.0))
    assert weak.trainer == Shrunk(1.0, 1000, 1e-4, 1.0) and strong.trainer.shrink == 100.0
    serialise = PersistenceBase._serialize_param_builtin  # what the params trigger compares
    assert serialise(None, weak) != serialise(None, strong) and "shrink=100.0" in serialise(None, strong)
    states, y = labelled_states()
    cells = {"all/label": {-1: Cell(False, False)}}
    tables = {}
    for settings_ in (weak, strong):
        probed = probes.probe_location(lambda layer: (states[:, :1], {"row_id": np.arange(len(y)), "label_id": y}),
                                       [1, 2], cells, settings_, device="cpu", answers=None, labels=LABELS[:4],
                                       model="m", location="residual")
        tables[settings_.trainer.shrink] = probed.table
    assert seen == [1.0, 1.0, 100.0, 100.0]  # two layers each
    # a penalty 100 times stronger: flatter probabilities of the held-out labels
    assert (tables[100.0]["cross_entropy"] > tables[1.0]["cross_entropy"] + 0.3).all()


def test_settings_without_a_trainer_are_refused_by_name():
    with pytest.raises(TypeError, match="no trainer is registered for dict settings"):
        probes.fit_trainer({"C": 1.0}, np.zeros((4, 2), np.float32), [], seed=0, device="cpu", whitening=None)


def with_shrink(config, shrink):
    import copy

    config = copy.deepcopy(config)
    config["probe"]["shrink"] = shrink
    return config
