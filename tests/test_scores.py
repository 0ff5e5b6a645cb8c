"""Scores and their intervals: known values, and coverage by simulation from a known generating model."""

import numpy as np
import pytest
from scipy import stats

from emoprobe import logistic, probes, problems, scores


def test_wilson_interval():
    low, high = scores.wilson(50, 100)
    assert round(low, 3) == 0.404 and round(high, 3) == 0.596
    assert scores.wilson(10, 10)[1] == pytest.approx(1.0) and scores.wilson(0, 10)[0] == 0.0
    assert all(np.isnan(scores.wilson(0, 0)))
    # exact at the ends, for any size (and an effective one), where rounding would leave 1e-17 or 1 - 1e-16
    for n in [*range(1, 300), 33.3, 1234.5]:
        assert scores.wilson(0, n)[0] == 0.0 and scores.wilson(n, n)[1] == 1.0, n


def test_bootstrap_counts_are_seeded_resamples():
    counts = scores.bootstrap_counts(50, 200, 7)
    assert counts.shape == (200, 50) and (counts.sum(axis=1) == 50).all()
    assert np.array_equal(counts, scores.bootstrap_counts(50, 200, 7).copy())
    assert not np.array_equal(counts, scores.bootstrap_counts(50, 200, 8))


def test_balanced_accuracy_of_each_replicate_is_that_of_the_resampled_texts():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=60)
    predicted = np.where(rng.random((3, 60)) < 0.6, y, rng.integers(0, 4, size=(3, 60)))
    counts = scores.bootstrap_counts(60, 20, 1)
    replicates = scores.balanced_accuracy_replicates(y, predicted == y, counts)
    assert replicates.shape == (20, 3)
    for b in range(20):
        drawn = np.repeat(np.arange(60), counts[b].astype(int))
        for layer in range(3):
            assert replicates[b, layer] == pytest.approx(scores.balanced_accuracy(y[drawn], predicted[layer, drawn]))


def test_landmarks_of_a_known_curve():
    curve = np.array([0.1, 0.12, 0.3, 0.6, 0.7, 0.72, 0.71])
    peak, onset, plateau = scores.landmarks(curve, peak_margin=0.05)
    assert (peak, onset, plateau) == (5, 3, 4)  # half-way is 0.41: first reached at index 3


def test_localise_finds_the_layer_where_the_label_appears():
    """Predictions right on 20 % of texts up to layer 3, on 70 % from layer 4, 90 % from layer 8 of 10."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, size=400)
    rate = np.array([0.2, 0.2, 0.2, 0.7, 0.7, 0.7, 0.7, 0.9, 0.9, 0.9])[:, None]
    predicted = np.where(rng.random((10, 400)) < rate, y, (y + 1) % 4)
    row = scores.localise(y, predicted, list(range(1, 11)), scores.bootstrap_counts(400, 1000, 0))
    assert row["onset_layer"] == 4 and row["onset_low"] == row["onset_high"] == 4
    assert row["plateau_layer"] in (8, 9) and row["plateau_low"] >= 8 and row["peak_layer"] >= 8 and row["peak_low"] >= 8
    assert row["peak_score_low"] < row["peak_score"] < row["peak_score_high"]


# The simulation: four labels of unequal frequency, Gaussian states with identity covariance whose class
# means differ; a probe is scored on 300 texts over the workflow's 5 folds. The truth is the held-out score of
# the probes that were fitted (each fold's probe on the population, weighted as the folds weigh the pooled
# score), measured on 40,000 fresh texts.
PRIORS = np.array([0.5, 0.25, 0.15, 0.1])
MEANS = 1.1 * np.eye(4, 6)


def draw(rng, n):
    y = rng.choice(4, size=n, p=PRIORS)
    return rng.normal(size=(n, 6)) + MEANS[y], y


def stand_in(x_train, y_train, x):
    """Linear discriminant with the known covariance: class means and priors from the training texts."""
    means = np.stack([x_train[y_train == k].mean(axis=0) for k in range(4)])
    prior = np.log(np.bincount(y_train, minlength=4) / len(y_train))
    return (x @ means.T - 0.5 * (means * means).sum(axis=1) + prior).argmax(axis=1)


def coverage(fit, replicates, n=300, seed=0):
    """Share of replicates whose 95 % intervals (accuracy, balanced accuracy) cover the true held-out scores."""
    rng = np.random.default_rng(seed)
    pool_x, pool_y = draw(rng, 40_000)
    covered = np.zeros(2)
    for _ in range(replicates):
        x, y = draw(rng, n)
        splits = problems.fold_indices(y, folds=5, test_size=0.2, seed=42, stratify=False)
        predicted, true_accuracy, true_recall = np.empty(n, dtype=np.int64), 0.0, np.zeros(4)
        for train, test in splits:
            predicted[test], pool_predicted = fit(x[train], y[train], x[test], pool_x)
            true_accuracy += len(test) / n * np.mean(pool_predicted == pool_y)
            for k in range(4):
                true_recall[k] += np.mean(y[test] == k) * len(test) / np.sum(y == k) * np.mean(
                    pool_predicted[pool_y == k] == k)
        row = scores.score_predictions(y, predicted, np.arange(4))
        covered += [row["accuracy_low"] <= true_accuracy <= row["accuracy_high"],
                    row["balanced_low"] <= true_recall.mean() <= row["balanced_high"]]
    return covered / replicates


def test_intervals_cover_the_true_score_by_simulation():
    """1,000 replicates of the stand-in probe: both nominal 95 % intervals cover in 93-97 % of them (0.941 and
    0.937 when written; a percentile bootstrap of the balanced accuracy gave 0.929)."""
    accuracy, balanced = coverage(lambda x_train, y_train, x_test, pool: (stand_in(x_train, y_train, x_test),
                                                                           stand_in(x_train, y_train, pool)), 1000)
    assert 0.93 <= accuracy <= 0.97, accuracy
    assert 0.93 <= balanced <= 0.97, balanced


@pytest.mark.slow
def test_intervals_cover_the_true_score_with_the_workflows_own_fits():
    """200 replicates with the workflow's trainer (standardised features, L-BFGS). With 200 replicates a coverage
    of 0.95 reads anywhere in about 0.92-0.98 (binomial noise), so this checks 0.91-0.98; the 93-97 % bound is held
    by the 1,000 replicates above (600 replicates of this trainer, seed 11, gave 0.955 for both intervals)."""

    def fit(x_train, y_train, x_test, pool):
        [probe] = logistic.fit_logistic(x_train.astype(np.float32), [logistic.Probe(np.arange(len(y_train)), y_train, 4)],
                                        C=1.0, max_iter=1000, tol=1e-4)
        return logistic.predict(x_test, probe), logistic.predict(pool, probe)

    accuracy, balanced = coverage(fit, 200, seed=1)
    assert 0.91 <= accuracy <= 0.98, accuracy
    assert 0.91 <= balanced <= 0.98, balanced


def correlated_layers(rng, true_scores, n, rho=0.9, labels=4):
    """Predictions of ``len(true_scores)`` layers whose per-label recall is ``true_scores[l]``, correlated across
    layers as real layers are (a text hard for one layer is hard for the next: a Gaussian copula with ``rho``)."""
    y = rng.integers(0, labels, size=n)
    latent = rng.standard_normal(n)[None] * np.sqrt(rho) + rng.standard_normal((len(true_scores), n)) * np.sqrt(1 - rho)
    right = stats.norm.cdf(latent) < np.asarray(true_scores)[:, None]
    wrong = (y[None] + rng.integers(1, labels, size=right.shape)) % labels
    return y, np.where(right, y[None], wrong)


@pytest.mark.slow
@pytest.mark.parametrize("case, true_scores", [
    ("every layer the same", [0.4] * 30),
    ("one layer ahead", [0.4] * 29 + [0.5]),
    ("one layer far ahead", [0.4] * 29 + [0.6]),
    ("a slow rise", list(np.linspace(0.25, 0.45, 30))),
    ("a plateau", list(np.minimum(np.linspace(0.2, 0.6, 30), 0.42))),
    ("a single layer", [0.4]),
])
def test_the_peaks_interval_covers_the_best_layers_score_though_the_peak_was_chosen(case, true_scores):
    """400 replicates of correlated layers, 400 texts: the nominal 95 % interval of the chosen peak's score covers the
    best layer's true score in at least 93 % of them (0.95 reads anywhere in 0.93-0.97 at 400 replicates), and, being a
    union of the layers' bounds, in at most 99.5 %. Before the screening's share was charged to alpha and alpha split
    over the two sides (a 90 % interval called 95 %), "one layer far ahead" covered in 0.90 and "a single layer" in
    0.88. The pointwise percentile interval of the highest layer, what the tables gave before that, covers it in under
    85 % where layers tie."""
    rng = np.random.default_rng(len(case))  # a seed of its own per case, the same in every run
    counts = scores.bootstrap_counts(400, 1000, 7)
    layers = np.arange(1, len(true_scores) + 1)
    covered, pointwise = [], []
    for _ in range(400):
        y, predicted = correlated_layers(rng, true_scores, 400)
        row = scores.localise(y, predicted, layers, counts)
        covered.append(row["peak_score_low"] <= max(true_scores) <= row["peak_score_high"])
        replicates = scores.balanced_accuracy_replicates(y, predicted == y, counts)[:, row["peak_layer"] - 1]
        low, high = np.quantile(replicates, [0.025, 0.975])
        pointwise.append(low <= max(true_scores) <= high)
    assert 0.93 <= np.mean(covered) <= 0.995, np.mean(covered)
    if case == "every layer the same":
        assert np.mean(pointwise) < 0.85, np.mean(pointwise)


def test_paired_differences_are_drawn_from_the_same_resampled_texts():
    """Two layers that predict alike but for a few texts: the paired interval of their difference is narrow, far
    narrower than the two layers' own intervals would suggest, and holds the difference."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, size=500)
    first = np.where(rng.random(500) < 0.5, y, (y + 1) % 4)
    peak = first.copy()
    peak[np.flatnonzero(first != y)[:20]] = y[np.flatnonzero(first != y)[:20]]  # 20 more right
    text = np.where(rng.random(500) < 0.5, y, (y + 2) % 4)
    counts = scores.bootstrap_counts(500, 1000, 1)
    row = scores.localise(y, np.stack([first, peak]), [1, 2], counts, baseline=text)
    assert row["peak_layer"] == 2 and row["peak_minus_first"] > 0
    assert row["peak_minus_first_low"] <= row["peak_minus_first"] <= row["peak_minus_first_high"]
    assert row["peak_minus_first_high"] - row["peak_minus_first_low"] < 0.04  # unpaired, each side spans ~0.09
    assert row["peak_minus_baseline_low"] <= row["peak_minus_baseline"] <= row["peak_minus_baseline_high"]


def test_usable_information_of_a_worked_example():
    """Two labels of equal frequency: a probe that gives each text's label probability 1/2 carries nothing (0 bits of
    the 1-bit label entropy); one that gives it 7/8 carries 1 - log2(8/7) bits; a confidently wrong one, less than
    nothing. Through the rows the probe tables are made of, with the folds' training priors of problems.prior_log2."""
    y = np.array([0, 1] * 50)
    splits = problems.fold_indices(y, folds=5, test_size=0.2, seed=0, stratify=False)
    prior = problems.prior_log2(y, splits, 2)
    assert np.allclose(prior, -1.0)  # every training fold holds 40 of each label (+1 each): 1/2
    predicted = np.stack([y, y, 1 - y])
    log2_probability = np.log2(np.stack([np.full(100, 0.5), np.full(100, 7 / 8), np.full(100, 1 / 8)]))
    half, sure, wrong = probes.scored_rows(y, predicted, np.arange(2), log2_probability=log2_probability,
                                           prior_log2=prior)
    assert half["label_entropy"] == pytest.approx(1.0) and half["usable_information"] == pytest.approx(0.0)
    assert half["usable_low"] == half["usable_high"] == pytest.approx(0.0)  # every text alike: no spread
    assert sure["cross_entropy"] == pytest.approx(np.log2(8 / 7))
    assert sure["usable_information"] == pytest.approx(1 - np.log2(8 / 7))
    assert wrong["usable_information"] == pytest.approx(1 - 3.0)
    # no probability at all (a failed fit) says nothing; a probability of 0 costs unbounded bits
    failed = scores.information_scores(np.r_[np.nan, np.full(99, -1.0)], prior)
    assert np.isnan([failed["usable_information"], failed["usable_low"], failed["usable_high"]]).all()
    never = scores.information_scores(np.r_[-np.inf, np.full(99, -1.0)], prior)
    assert never["usable_information"] == never["usable_high"] == -np.inf
    assert scores.log2_probability_of(np.log([[1.0, 7.0], [3.0, 1.0]]), np.array([1, 1])) == pytest.approx(
        np.log2([7 / 8, 1 / 4]))


def lda_logits(x_train, y_train, x):
    """The stand-in probe's logits: the linear discriminant with the known covariance (class means and priors from
    the training texts), a posterior for Gaussian classes."""
    means = np.stack([x_train[y_train == k].mean(axis=0) for k in range(4)])
    prior = np.log(np.bincount(y_train, minlength=4) / len(y_train))
    return x @ means.T - 0.5 * (means * means).sum(axis=1) + prior


def test_usable_information_finds_the_generators_mutual_information():
    """A known answer: on 20,000 texts the held-out usable information of the stand-in probe (near the Bayes
    posterior there) is the generator's mutual information I(X; Y) = H(Y) - H(Y | X), computed from the true
    posterior on 200,000 fresh texts, to within 0.01 bits (0.493 against 0.491 when written; a fitted probe can beat
    it only by the sample's luck), its interval holding it."""
    rng = np.random.default_rng(5)
    pool_x, pool_y = draw(rng, 200_000)
    true_logits = pool_x @ MEANS.T - 0.5 * (MEANS * MEANS).sum(axis=1) + np.log(PRIORS)
    mutual = -np.sum(PRIORS * np.log2(PRIORS)) + np.mean(scores.log2_probability_of(true_logits, pool_y))
    x, y = draw(rng, 20_000)
    splits = problems.fold_indices(y, folds=5, test_size=0.2, seed=42, stratify=False)
    log2_probability = np.empty(len(y))
    for train, test in splits:
        log2_probability[test] = scores.log2_probability_of(lda_logits(x[train], y[train], x[test]), y[test])
    found = scores.information_scores(log2_probability, problems.prior_log2(y, splits, 4))
    assert mutual - 0.01 < found["usable_information"] < mutual + 0.005, (found, mutual)
    assert found["usable_low"] < mutual < found["usable_high"] + 0.01


def test_the_usable_informations_interval_covers_the_fitted_probes_by_simulation():
    """1,000 replicates of 300 texts over 5 folds: the 95 % interval of the usable information covers the fitted
    probes' own (each fold's probe and training priors on 40,000 fresh texts, weighted as the folds weigh the pooled
    score) in 93-97 % of them (0.94 when written)."""
    rng = np.random.default_rng(0)
    pool_x, pool_y = draw(rng, 40_000)
    covered = []
    for _ in range(1000):
        x, y = draw(rng, 300)
        splits = problems.fold_indices(y, folds=5, test_size=0.2, seed=42, stratify=False)
        log2_probability, truth = np.empty(300), 0.0
        for train, test in splits:
            log2_probability[test] = scores.log2_probability_of(lda_logits(x[train], y[train], x[test]), y[test])
            counts = np.bincount(y[train], minlength=4) + 1.0
            pool_gain = scores.log2_probability_of(lda_logits(x[train], y[train], pool_x), pool_y) - np.log2(
                counts[pool_y] / counts.sum())
            truth += len(test) / 300 * pool_gain.mean()
        found = scores.information_scores(log2_probability, problems.prior_log2(y, splits, 4))
        covered.append(found["usable_low"] <= truth <= found["usable_high"])
    assert 0.93 <= np.mean(covered) <= 0.97, np.mean(covered)
