"""Conditional probes (emoprobe/conditional.py): what a layer adds beyond a baseline, in bits, on data whose answer
is known."""

import numpy as np
import pytest

from emoprobe import conditional, problems
from emoprobe.logistic import Probe, fit_logistic, logits


def two_channels(rng, n, alpha=2.0, beta=1.5):
    """Four labels ``y = 2 y1 + y2``: ``y1`` from a baseline feature ``b``, ``y2`` from a layer feature ``h``,
    independent: ``p(y1 = 1 | b) = sigmoid(alpha b)``, ``p(y2 = 1 | h) = sigmoid(beta h)``, ``b, h ~ N(0, 1)``. Then
    ``I(h -> Y | b) = I(h; y2)``, and the true posterior is a logistic regression on ``(b, h)``."""
    b, h = rng.standard_normal(n), rng.standard_normal(n)
    y1 = rng.random(n) < 1 / (1 + np.exp(-alpha * b))
    y2 = rng.random(n) < 1 / (1 + np.exp(-beta * h))
    return b, h, 2 * y1.astype(np.int64) + y2


def binary_information(rng, slope, n=2_000_000):
    """``I(z; w)`` in bits of ``w ~ Bernoulli(sigmoid(slope z))``, ``z ~ N(0, 1)``, by Monte Carlo: ``H(w) - H(w|z)``
    with ``H(w) = 1`` by symmetry."""
    p = 1 / (1 + np.exp(-slope * rng.standard_normal(n)))
    return 1 + np.mean(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def noisy_information(rng, slope, sigma, n=400_000, draws=256):
    """``I(b + sigma e; w)`` in bits of ``w ~ Bernoulli(sigmoid(slope b))``, ``b, e ~ N(0, 1)``, by Monte Carlo
    over the posterior of ``b`` given its noisy copy."""
    b = rng.standard_normal(n)
    noisy = b + sigma * rng.standard_normal(n)
    posterior = noisy[:, None] / (1 + sigma**2) + np.sqrt(sigma**2 / (1 + sigma**2)) * rng.standard_normal((n, draws))
    p = (1 / (1 + np.exp(-slope * posterior))).mean(axis=1)
    return 1 + np.mean(p * np.log2(p) + (1 - p) * np.log2(1 - p))


CS, INNER = [0.01, 0.1, 1.0, 10.0], {"inner_folds": 3, "selection_folds": 1, "seed": 0}


def conditional_bits(baseline_features, layer_features, y):
    """``CE(B) - CE(B + X)`` (bits, ``B`` recalibrated) and ``CE(frequencies) - CE(X)`` on 5 outer folds, with the
    recalibrated baselines and the layer's fits."""
    splits = problems.fold_indices(y, folds=5, test_size=0.2, seed=42, stratify=False)
    fit = {"max_iter": 1000, "tol": 1e-4}  # the workflow's
    baselines = {
        "frequencies": conditional.nested(conditional.frequencies(4), y, 4, splits, [None], **INNER),
        "b": conditional.nested(conditional.logistic_baseline(baseline_features, 4, **fit), y, 4, splits, CS,
                                **INNER)}
    references = conditional.recalibrated(baselines, y, 4, splits, Cs=[0.0, *CS], **INNER, **fit)
    found = conditional.conditional_fits(layer_features, y, 4, splits, baselines, Cs=[0.0, *CS], **INNER, **fit,
                                         references=references)
    return {name: float(np.mean(found[name].log2_probability - references[name].log2_probability))
            for name in found}, references, found


def test_the_layer_adds_what_the_baseline_lacks_and_nothing_it_holds():
    """On 6,000 texts: a layer holding ``h`` (and two dimensions of noise) adds ``I(h; y2)`` beyond the baseline
    ``b`` to within 0.03 bits; a layer holding ``b`` itself (and noise) adds nothing beyond it (within 0.015 bits),
    though alone it carries ``I(b; y1)``: usable information alone cannot tell the two apart, beyond the baseline
    can; a layer holding both ``b`` and ``h`` adds ``I(h; y2)`` again."""
    rng = np.random.default_rng(0)
    b, h, y = two_channels(rng, 6000)
    noise = rng.standard_normal((6000, 2))
    truth_h, truth_b = binary_information(rng, 1.5), binary_information(rng, 2.0)
    adds, references, found = conditional_bits(b[:, None].astype(np.float32),
                                               np.c_[h, noise].astype(np.float32), y)
    assert adds["b"] == pytest.approx(truth_h, abs=0.03), (adds, truth_h)
    assert adds["frequencies"] == pytest.approx(truth_h, abs=0.03)  # h alone: y2's bits, y1 independent of it
    redundant, _, _ = conditional_bits(b[:, None].astype(np.float32), np.c_[b, noise].astype(np.float32), y)
    assert abs(redundant["b"]) < 0.015, redundant
    assert redundant["frequencies"] == pytest.approx(truth_b, abs=0.03), (redundant, truth_b)
    # a layer holding what the baseline holds and more adds the more, not the shared part twice
    superset, _, _ = conditional_bits(b[:, None].astype(np.float32), np.c_[b, h, noise].astype(np.float32), y)
    assert superset["b"] == pytest.approx(truth_h, abs=0.03), (superset, truth_h)
    # the penalties chosen are reported, one per outer fold, among those offered
    assert set(found["b"].chosen) <= {0.0, *CS} and len(found["b"].chosen) == 5
    assert set(references["b"].chosen) <= {0.0, *CS}


def test_a_layer_that_knows_the_baselines_part_better_adds_what_it_knows_better():
    """The baseline sees ``b`` through noise, the layer sees ``b`` exactly and ``h``: beyond the baseline the layer adds
    ``I(b; y1) - I(b + e; y1) + I(h; y2)`` (0.425 bits by Monte Carlo), found within 0.02 bits. With the baseline's
    log-probabilities as a fixed offset only (not also reweighted by the probe) it found 0.374: the baseline's noisy
    evidence could not be given less weight once the layer's exact one was there."""
    rng = np.random.default_rng(0)
    b, h, y = two_channels(rng, 6000)
    noise = rng.standard_normal((6000, 2))
    noisy = b + rng.standard_normal(6000)
    truth = binary_information(rng, 2.0) - noisy_information(rng, 2.0, 1.0) + binary_information(rng, 1.5)
    adds, _, _ = conditional_bits(noisy[:, None].astype(np.float32), np.c_[b, h, noise].astype(np.float32), y)
    assert adds["b"] == pytest.approx(truth, abs=0.02), (adds, truth)


def test_a_layer_of_noise_adds_nothing_and_where_it_is_left_out_exactly_nothing():
    """Beyond a baseline, a layer of pure noise is left out (C = 0) or penalised to nothing: it adds -0.005 to 0
    bits; on the folds where it is left out each tested text's probability is the recalibrated baseline's, to the
    bit; and a layer that is one constant (layer 0 at the last token) adds nothing to it at all."""
    rng = np.random.default_rng(5)
    b, _, y = two_channels(rng, 3000)
    noise = rng.standard_normal((3000, 3)).astype(np.float32)
    adds, references, found = conditional_bits(b[:, None].astype(np.float32), noise, y)
    assert -0.005 <= adds["b"] <= 0.0, adds
    splits = problems.fold_indices(y, folds=5, test_size=0.2, seed=42, stratify=False)
    left_out = [f for f, C in enumerate(found["b"].chosen) if C == 0]
    assert left_out, found["b"].chosen
    for f in left_out:
        test = splits[f][1]
        assert np.array_equal(found["b"].log2_probability[test], references["b"].log2_probability[test])
    constant, _, _ = conditional_bits(b[:, None].astype(np.float32), np.ones((3000, 2), dtype=np.float32), y)
    assert abs(constant["b"]) < 1e-4 and abs(constant["frequencies"]) < 1e-4, constant


def test_a_training_rows_offset_comes_from_a_fit_that_did_not_see_it():
    """The baseline's offsets on an outer fold's training rows are cross-fitted: a baseline that memorises its
    training rows (a nearest-row lookup) gives them no better than chance, while its held-out rows it has not seen
    either; the frequencies baseline gives every row of a fold its training rows' frequencies."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, size=300)

    def memorise(train, labels, C, rows):
        known = dict(zip(train.tolist(), labels.tolist()))
        out = np.full((len(rows), 3), np.log(1e-3))
        for i, row in enumerate(rows.tolist()):
            out[i, known.get(row, 0)] = np.log(1 - 2e-3)
        return out

    splits = problems.fold_indices(y, folds=5, test_size=0.2, seed=42, stratify=False)
    found = conditional.nested(memorise, y, 3, splits, [None], **INNER)
    for f, (train, _) in enumerate(splits):
        right = found.offsets[f, train].argmax(axis=1) == y[train]
        assert right.mean() < 0.5  # a lookup that had seen them would be right on all
    freq = conditional.nested(conditional.frequencies(3), y, 3, splits, [None], **INNER)
    train, test = splits[0]
    counts = np.bincount(y[train], minlength=3) + 1.0
    assert np.allclose(freq.offsets[0, test], np.log(counts / counts.sum()))
    assert np.allclose(freq.log2_probability, problems.prior_log2(y, splits, 3))


def test_offsets_are_added_to_the_probes_logits():
    """A probe with offsets fits what the features add to them: offsets that are already the true log-odds leave a
    strongly penalised probe at zero weights, and the offset rows are each probe's own (two groups)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((500, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    truth = np.stack([np.zeros(500), 4.0 * x[:, 0]], axis=1)
    offsets = np.stack([truth, np.zeros((500, 2))]).astype(np.float32)
    rows = np.arange(500)
    with_truth, without = fit_logistic(x, [Probe(rows, y, 2, C=1e-4, offset=0), Probe(rows, y, 2, C=1.0, offset=1)],
                                       C=1.0, max_iter=500, tol=1e-4, offsets=offsets)
    assert np.abs(with_truth.weights).max() < 1e-2
    assert np.abs(without.weights[1, 0] - without.weights[0, 0]) > 1.0  # without them it learns x0 itself
    assert (logits(x, [without])[0].argmax(axis=1) == y).mean() > 0.9


def log2_softmax(logits):
    return conditional.log_softmax(logits) / np.log(2)


def fitted_gains(rng, n, K=13):
    """Per-text ``(log2 p_joint(y), log2 p_baseline(y))`` in the shape conditional probes give them: a baseline that
    knows part of each text's label, a layer that knows more, the joint probe overconfident about the layer's part
    (some texts lose many bits), labels drawn from the truth."""
    base = rng.normal(0.0, 1.5, (n, K))
    layer = rng.normal(0.0, 0.8, (n, K))
    truth = conditional.log_softmax(base + layer)
    y = (rng.random(n)[:, None] > np.cumsum(np.exp(truth), axis=1)).sum(axis=1).clip(max=K - 1)
    rows = np.arange(n)
    return log2_softmax(base + 1.6 * layer)[rows, y], log2_softmax(base)[rows, y]


def test_the_information_interval_covers_in_the_shape_of_the_data():
    """The studentised bootstrap interval of ``information`` (:func:`conditional.information_row`) covers the
    population's mean gain of fixed probes in 0.93-0.97 of 400 samples of 400 texts."""
    rng = np.random.default_rng(3)
    joint, base = fitted_gains(rng, 400_000)
    truth = float(np.mean(joint - base))
    covered = []
    for _ in range(400):
        joint, base = fitted_gains(rng, 400)
        row = conditional.information_row(conditional.Conditional(joint, np.array([0.01]), np.array([0.0])),
                                          conditional.Conditional(base, np.array([0.1]), np.array([0.0])),
                                          conditional.Nested(None, base, np.array([1.0])),
                                          conditional.Nested(None, np.full(400, -np.log2(13)), np.array([np.nan])))
        assert row["information"] == pytest.approx(np.mean(joint - base))
        covered.append(row["information_low"] <= truth <= row["information_high"])
    assert 0.93 <= np.mean(covered) <= 0.97, np.mean(covered)


@pytest.mark.parametrize("means", [
    np.full(20, 0.3),  # every layer alike
    np.r_[np.full(19, 0.1), 0.6],  # one layer far ahead
    np.linspace(-0.4, 0.05, 20),  # negative but the last
    np.array([0.2]),  # a single layer
], ids=["all-alike", "one-far-ahead", "negative-rise", "single-layer"])
def test_the_peak_information_interval_covers_the_best_layer(means):
    """The peak's interval of :func:`conditional.information_localisation` (bits, unbounded: the selection-aware
    interval of balanced accuracy's peak, emoprobe.scores.locate) covers the best layer's true mean gain in at least
    0.93 of 300 samples of 400 texts, the layers' gains correlated through a heavy-tailed text effect."""
    rng = np.random.default_rng(4)
    covered = []
    for _ in range(300):
        text = rng.standard_t(4, size=400)  # how surprising a text is, the same at every layer
        gains = means[:, None] + 0.6 * text[None] + 0.4 * rng.standard_t(4, size=(len(means), 400))
        row = conditional.information_localisation(gains, np.arange(1, len(means) + 1), n_layers=len(means),
                                                   replicates=1000, seed=int(rng.integers(1 << 30)))
        covered.append(row["peak_information_low"] <= means.max() <= row["peak_information_high"])
    assert 0.93 <= np.mean(covered) <= 0.995, np.mean(covered)


def test_word_embeddings_are_the_mean_of_each_texts_token_rows(smollm2, tmp_path):
    """On SmolLM2: a text's row is the mean of its tokens' rows of the input embedding (no special tokens), whatever
    the other texts; written and read back by row id, rows are paired with their texts, in any order."""
    from emoprobe.h5io import ResultFileError, read_word_embeddings, write_word_embeddings
    from emoprobe.words import mean_word_embeddings

    model, tokenizer = smollm2
    texts = ["I felt so proud when my daughter graduated.", "My dog died.", "A stranger shouted at me on the bus."]
    found = mean_word_embeddings(model, tokenizer, texts)
    weight = model.get_input_embeddings().weight.detach().numpy()
    for text, row in zip(texts, found):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids[0] != tokenizer.bos_token_id
        assert np.allclose(row, weight[ids].mean(axis=0), atol=1e-6)
    assert np.array_equal(mean_word_embeddings(model, tokenizer, texts[::-1]), found[::-1])
    path = tmp_path / "words.h5"
    write_word_embeddings(path, np.array([7, 3, 11]), found, attrs={"model": "smollm2-135m"})
    assert np.array_equal(read_word_embeddings(path, np.array([11, 7]), provenance={"model": "smollm2-135m"}),
                          found[[2, 0]])
    with pytest.raises(ResultFileError, match="no word embeddings of texts \\[5\\]"):
        read_word_embeddings(path, np.array([3, 5]))
    with pytest.raises(ResultFileError, match="model"):
        read_word_embeddings(path, np.array([3]), provenance={"model": "gemma3-270m"})
