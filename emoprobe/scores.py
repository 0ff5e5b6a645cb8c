"""Scores of predicted labels, their intervals, and where along the layers a score forms.

Every probe is scored on its pooled out-of-fold predictions: under k-fold cross-validation each
text is predicted once, by the probe that did not see it, so the n predictions of a subset are
scored together. The interval then describes the held-out accuracy of the probes that were fitted
(conditional on their training data), for which the n outcomes are independent given the probes;
a t-interval over folds instead treats the folds' overlapping training sets as independent
(Nadeau & Bengio 2003) and has only k - 1 degrees of freedom.

- accuracy: the Wilson score interval of the pooled outcomes (:func:`wilson`);
- balanced accuracy (the mean recall over the labels of the subset): Price and Bonett's adjusted Wald interval
  (:func:`balanced_interval`);
- usable information (bits of the label a probe's held-out probabilities give beyond the label frequencies,
  :func:`information_scores`): a studentised bootstrap over texts (:func:`mean_interval`);
- where along the layers a score forms (:func:`localise`): peak, onset and plateau layers with percentile
  intervals from a bootstrap over texts, the same replicates for every layer, position and location of a subset
  (:func:`bootstrap_counts`), so that layers are compared on paired resamples; the peak's score with an interval
  that allows for the peak having been chosen among the layers on the same texts (:func:`selected_peak_interval`),
  from which the plateau's margin is taken; paired differences (the peak against layer 1, against another probe
  of the same texts) from the same replicates.

``tests/test_scores.py`` checks by simulation that the nominal 95 % intervals cover the true held-out score in
93-97 % of replicates (the accuracy's, the balanced accuracy's, and the selected peak's with layers of equal and of
unequal true scores, one far ahead, and a single layer, correlated as real layers are; that one is conservative where
several layers may be the best: 95-99 %).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import cohen_kappa_score, f1_score

Z95 = float(stats.norm.ppf(0.975))
INTERVAL = ("pooled out-of-fold; accuracy: Wilson; balanced accuracy: Price-Bonett; usable information: studentised "
            "bootstrap")
# The columns of a score table after its keys (the tables of :mod:`emoprobe.probes` and :mod:`emoprobe.baselines`).
INTEGER_COLUMNS = ["n_texts", "n_labels", "folds", "n_train", "n_test", "n_iter"]
SCORE_COLUMNS = ["n_texts", "n_labels", "balanced_accuracy", "balanced_low", "balanced_high", "accuracy",
                 "accuracy_low", "accuracy_high", "kappa", "macro_f1", "cross_entropy", "label_entropy",
                 "usable_information", "usable_low", "usable_high", "control_balanced_accuracy", "control_accuracy",
                 "selectivity", "balanced_chance", "majority_accuracy", "train_accuracy", "folds", "n_train", "n_test",
                 "n_iter", "converged", "interval", "note"]


def wilson(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / n`` (NaNs when ``n`` is 0); ``n`` may be an
    effective sample size (not an integer)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # exact at the ends, where centre - half (centre + half) is 0 (1) up to rounding
    low = 0.0 if successes == 0 else max(float(centre - half), 0.0)
    high = 1.0 if successes == n else min(float(centre + half), 1.0)
    return low, high


def clustered_share(hits: np.ndarray, clusters: np.ndarray) -> tuple[float, float, float]:
    """The share of ``hits`` (bool ``[n]``) and its 95 % interval when outcomes of the same cluster (``clusters``
    ``[n]``: each pair's source) may be alike: Wilson's interval at an effective sample size.

    With every cluster of one pair this is Wilson's interval. Otherwise the effective size is ``n / deff``, the
    design effect ``deff`` (at least 1) the ratio of the cluster-robust variance of the share, ``C / (C - 1) *
    sum_c (sum_{i in c} (hit_i - share))^2 / n^2`` over ``C`` clusters, to the binomial ``share (1 - share) / n``;
    never below Kish's effective number of clusters ``K = n^2 / sum_c n_c^2``, the least the pairs can be worth
    (every cluster's outcomes alike). That variance rests on the clusters, and on few of them when one is large, so
    the critical value is Student's t with ``K - 1`` degrees of freedom. Where the design effect cannot be estimated
    the effective size is ``K``: at that t where every outcome is alike, at the normal critical value where ``K <
    2`` (one cluster, or one holding nearly every pair): one source serving every pair gives the interval of a
    single outcome.
    ``tests/test_interventions.py`` checks its coverage by simulation with source effects, from one source to one per
    pair."""
    n = len(hits)
    share = float(np.mean(hits))
    ids, members = np.unique(clusters, return_inverse=True)
    if len(ids) == n:
        low, high = wilson(share * n, n)
        return share, low, high
    kish = n ** 2 / float(np.sum(np.bincount(members).astype(np.float64) ** 2))
    effective, z = kish, Z95
    if kish >= 2:
        z = float(stats.t.ppf(0.975, kish - 1))
        if 0 < share < 1:
            residual = np.bincount(members, weights=hits - share)
            robust = len(ids) / (len(ids) - 1) * np.sum(residual ** 2) / n ** 2
            effective = max(n / max(robust / (share * (1 - share) / n), 1.0), kish)
    low, high = wilson(share * effective, effective, z)
    return share, low, high


@functools.lru_cache(maxsize=8)
def bootstrap_counts(n: int, replicates: int, seed: int) -> np.ndarray:
    """How often each of ``n`` texts is drawn in each bootstrap replicate: float32 ``[replicates, n]``,
    each row summing to ``n``; the same for the same ``(n, replicates, seed)`` (cached: read only)."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=replicates).astype(np.float32)
    counts.flags.writeable = False
    return counts


@functools.lru_cache(maxsize=4)
def _float64_counts(n: int, replicates: int, seed: int) -> np.ndarray:
    """:func:`bootstrap_counts` in float64, for sums of float64 values (cached: read only)."""
    counts = bootstrap_counts(n, replicates, seed).astype(np.float64)
    counts.flags.writeable = False
    return counts


def balanced_accuracy_replicates(y: np.ndarray, correct: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Balanced accuracy of each bootstrap replicate.

    Parameters
    ----------
    y : int array [n], label ids
    correct : bool array [..., n], whether each text is predicted right (any leading shape: layers, positions)
    counts : float32 ``[replicates, n]`` from :func:`bootstrap_counts`

    Returns
    -------
    float64 array ``[replicates, ...]``: the mean recall over the labels drawn in the replicate.
    """
    lead, n_labels = correct.shape[:-1], int(y.max()) + 1
    onehot = np.eye(n_labels, dtype=np.float32)[y]  # [n, K]
    drawn = counts @ onehot  # [B, K]
    hits = (correct.reshape(-1, len(y)).astype(np.float32)[:, :, None] * onehot).transpose(1, 0, 2)  # [n, M, K]
    right = (counts @ hits.reshape(len(y), -1)).reshape(len(counts), -1, n_labels)  # [B, M, K]
    present = drawn > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present[:, None, :], right / np.where(drawn > 0, drawn, 1)[:, None, :], 0.0)
    score = recall.sum(axis=2, dtype=np.float64) / present.sum(axis=1, keepdims=True)
    return score.reshape(len(counts), *lead)


def balanced_accuracy(y: np.ndarray, predicted: np.ndarray, labels: Sequence[int] | None = None) -> float:
    """Mean recall over ``labels`` (default: the labels that occur in ``y``), each present in ``y``."""
    labels = np.unique(y) if labels is None else labels
    return float(np.mean([np.mean(predicted[y == k] == k) for k in labels]))


def balanced_interval(y: np.ndarray, predicted: np.ndarray, labels: Sequence[int], z: float = Z95
                      ) -> tuple[float, float]:
    """Price & Bonett's (2004) adjusted Wald interval of the balanced accuracy over ``labels`` (each in ``y``):
    every label's recall with z^2 / (2k) successes and failures added, k = ``len(labels)``."""
    add = z * z / (2 * len(labels))
    recalls, variances = [], []
    for k in labels:
        n_k = np.count_nonzero(y == k) + 2 * add
        recall = (np.count_nonzero(predicted[y == k] == k) + add) / n_k
        recalls.append(recall)
        variances.append(recall * (1 - recall) / n_k)
    centre, half = np.mean(recalls), z * np.sqrt(np.sum(variances)) / len(labels)
    return max(float(centre - half), 0.0), min(float(centre + half), 1.0)


def score_predictions(y: np.ndarray, predicted: np.ndarray, labels: Sequence[int]) -> dict[str, float]:
    """Scores of one set of pooled predictions with their 95 % intervals.

    Parameters
    ----------
    y, predicted : int arrays [n], label ids
    labels : the label ids of the problem, each present in ``y``

    Returns
    -------
    dict with ``accuracy, accuracy_low, accuracy_high`` (Wilson), ``balanced_accuracy, balanced_low,
    balanced_high`` (:func:`balanced_interval`), ``kappa`` (Cohen's) and ``macro_f1`` over ``labels`` (a label
    never predicted counts 0).
    """
    correct = predicted == y
    low, high = wilson(int(correct.sum()), len(y))
    balanced_low, balanced_high = balanced_interval(y, predicted, labels)
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = cohen_kappa_score(y, predicted, labels=labels)
    return {
        "accuracy": float(correct.mean()), "accuracy_low": low, "accuracy_high": high,
        "balanced_accuracy": balanced_accuracy(y, predicted, labels),
        "balanced_low": balanced_low, "balanced_high": balanced_high,
        "kappa": float(kappa),
        "macro_f1": float(f1_score(y, predicted, labels=labels, average="macro", zero_division=0)),
    }


def log2_probability_of(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``log2 softmax(logits)[y]``: float64 ``[..., n]`` from logits ``[..., n, k]`` and labels ``0..k-1`` ``[n]``;
    -inf where a class's logit is -inf (a probe that cannot give it)."""
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max(axis=-1, keepdims=True)
    normaliser = np.log(np.exp(logits - top).sum(axis=-1)) + top[..., 0]
    true = np.take_along_axis(logits, np.broadcast_to(y[:, None], (*logits.shape[:-1], 1)), axis=-1)[..., 0]
    return (true - normaliser) / np.log(2)


# The bootstrap of the usable information's interval: a fixed number of seeded replicates over texts.
INFORMATION_REPLICATES, INFORMATION_SEED = 1000, 0


def information_scores(log2_probability: np.ndarray, prior_log2: np.ndarray) -> dict[str, float]:
    """Held-out cross-entropy and usable information of one probe's pooled out-of-fold predictions, in bits.

    Parameters
    ----------
    log2_probability : float [n], ``log2`` of the probability each text's own fold's probe gave its label
    prior_log2 : float [n], ``log2`` of that label's frequency among the fold's training texts (with one text of
        each label added, so that a label absent from a fold's training texts does not get 0)

    Returns
    -------
    dict with ``cross_entropy`` (``-mean log2_probability``), ``label_entropy`` (the same of the training priors:
    what knowing nothing but the label frequencies costs) and ``usable_information`` = ``label_entropy -
    cross_entropy`` (Xu et al. 2020's predictive V-information of this fitted probe: the bits of the label its
    probabilities give beyond the frequencies; negative where the probe is confidently wrong more than it is
    right), with the studentised bootstrap 95 % interval of the latter (``usable_low``, ``usable_high``) over texts,
    the two cross-entropies paired on the same resampled texts (:func:`mean_interval`).
    """
    gain = np.asarray(log2_probability, dtype=np.float64) - np.asarray(prior_log2, dtype=np.float64)
    cross_entropy, label_entropy = -float(np.mean(log2_probability)), -float(np.mean(prior_log2))
    if np.isnan(gain).any():  # no probability (a fit that failed): nothing to say
        low = high = np.nan
    elif np.isinf(gain).any():  # a text whose label its probe gave probability 0: an unbounded cross-entropy
        low = high = -np.inf
    else:
        low, high = mean_interval(gain, INFORMATION_REPLICATES, INFORMATION_SEED)
    return {"cross_entropy": cross_entropy, "label_entropy": label_entropy,
            "usable_information": label_entropy - cross_entropy, "usable_low": low, "usable_high": high}


def landmarks(scores: np.ndarray, peak_margin: float | np.ndarray) -> np.ndarray:
    """Peak, onset and plateau-start indices along the last axis of ``scores`` (layers in order).

    - peak: the highest score (the first such);
    - onset: the first layer whose score reaches half-way from the first layer's score to the peak's;
    - plateau start: the first layer whose score is within ``peak_margin`` of the peak's.

    Parameters
    ----------
    scores : float array [..., n_layers]
    peak_margin : how far below the peak the plateau reaches (scalar or shaped like ``scores[..., 0]``)

    Returns
    -------
    int array [..., 3]: indices into the last axis of peak, onset and plateau start.
    """
    peak = scores.argmax(axis=-1)
    best = np.take_along_axis(scores, peak[..., None], axis=-1)
    halfway = scores[..., :1] + (best - scores[..., :1]) / 2
    onset = (scores >= halfway).argmax(axis=-1)
    plateau = (scores >= best - np.asarray(peak_margin)[..., None]).argmax(axis=-1)
    return np.stack([peak, onset, plateau], axis=-1)


def selected_peak_interval(observed: np.ndarray, replicates: np.ndarray, alpha: float = 0.05, beta: float = 0.005,
                           support: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
    """A ``1 - alpha`` interval of the best layer's true score, allowing for the best having been chosen among the
    layers on the same texts (the highest of many noisy scores overstates its layer: with 30 layers of one true score
    the pointwise interval of the highest covers that score in under half of the replicates).

    From the bootstrap replicates (``[B, n_layers]``, the same resampled texts for every layer) and their
    studentised deviations ``t = (replicate - observed) / se``: first the layers that may be the best, ``S = {l :
    observed_l + c_beta se_l >= max_j (observed_j - c_beta se_j)}`` with ``c_beta`` the ``1 - beta`` quantile of
    ``max_l |t_l|``, which holds the best layer but in ``beta`` of samples; then the lower bound ``max over S of
    observed_l - c se_l``, ``c`` the ``1 - alpha / 2`` quantile of ``max over S of t_l`` (every layer of ``S`` at
    once: the best layer's score is at least any layer's), and the upper bound ``max over S of observed_l + z se_l``,
    ``z`` the normal ``1 - (alpha / 2 - beta)`` quantile (the best layer's own bound, when ``S`` holds it). So each
    side misses at most ``alpha / 2`` of the time, the upper side's share split between the screening and the bound.
    By the union of the layers' bounds the interval is conservative where several layers may be the best: in the
    simulations of ``tests/test_scores.py`` it covers in 95-99 % of replicates, from a single layer to 30 tied ones.
    The interval is clipped to ``support`` (a balanced accuracy's [0, 1]; bits are unbounded).
    """
    if not 0 < beta < alpha / 2:
        raise ValueError(f"the screening's beta = {beta} must lie in (0, alpha / 2 = {alpha / 2})")
    se = replicates.std(axis=0, ddof=1)
    se = np.where(se > 0, se, np.finfo(np.float64).eps)
    t = (replicates - observed) / se
    c_beta = np.quantile(np.abs(t).max(axis=1), 1 - beta)
    maybe = observed + c_beta * se >= np.max(observed - c_beta * se)
    c = np.quantile(t[:, maybe].max(axis=1), 1 - alpha / 2)
    z = float(stats.norm.ppf(1 - (alpha / 2 - beta)))
    low, high = np.max((observed - c * se)[maybe]), np.max((observed + z * se)[maybe])
    return max(float(low), support[0]), min(float(high), support[1])


def mean_interval(values: np.ndarray, replicates: int, seed: int,
                  support: tuple[float, float] = (-np.inf, np.inf)) -> tuple[float, float]:
    """Studentised (bootstrap-t) 95 % interval of the mean of ``values`` (``[n]``, within ``support``) over texts.

    Each replicate of :func:`bootstrap_counts` gives ``t = (mean* - mean) / se*`` with its own standard error;
    the interval is ``[mean - t_0.975 se, mean - t_0.025 se]``, clipped to ``support``. Unlike the percentile
    interval it allows for a skewed mean, as when an edit moves a few texts far and the rest not at all (there the
    percentile interval covered in 0.92 of the simulations of ``tests/test_interventions.py``). A replicate whose
    texts are all alike (no standard error of its own) is studentised by the sample's; where the sample's texts are
    all alike the interval is that value.
    """
    n = len(values)
    values = values.astype(np.float64)
    mean = float(values.mean())
    se = float(values.std(ddof=1)) / np.sqrt(n) if n > 1 else 0.0
    if se == 0:
        return mean, mean
    counts = _float64_counts(n, replicates, seed)
    centred = values - mean  # so that a replicate of alike texts leaves no rounding residue in its spread
    shift = counts @ centred / n  # each replicate's mean minus the sample's
    spread = np.sqrt(np.maximum(counts @ (centred * centred) / n - shift * shift, 0.0) / (n - 1))  # se of each
    t = shift / np.where(spread > 1e-9 * se, spread, se)
    upper_t, lower_t = np.quantile(t, [0.975, 0.025])
    return max(mean - float(upper_t) * se, support[0]), min(mean - float(lower_t) * se, support[1])


def paired_difference(first: np.ndarray, second: np.ndarray) -> tuple[float, float]:
    """Percentile 95 % interval of ``first - second`` over paired bootstrap replicates (``[B]`` each, the same
    resampled texts)."""
    low, high = np.quantile(first - second, [0.025, 0.975])
    return float(low), float(high)


def locate(observed: np.ndarray, replicates: np.ndarray, layers: Sequence[int],
           support: tuple[float, float] = (0.0, 1.0)) -> dict[str, float]:
    """Where along the layers a score forms, with bootstrap intervals over texts.

    The peak's score comes with :func:`selected_peak_interval` (clipped to ``support``); the plateau's margin is the
    peak's score minus that interval's lower end, fixed from the full sample and reused in every replicate; each
    replicate recomputes the peak, onset and plateau start on the same resampled texts for every layer.

    Parameters
    ----------
    observed : float [n_layers], each layer's score on all texts
    replicates : float [B, n_layers], the scores of bootstrap replicates of the texts (the same for every layer)
    layers : the layer number of each entry of ``observed``

    Returns
    -------
    dict with ``{peak, onset, plateau}_layer`` and their ``_low``/``_high`` (2.5 and 97.5 % quantiles of the
    replicates' layers), ``peak_score, peak_score_low, peak_score_high, first_layer_score`` and ``peak_minus_first``
    (the peak layer's score minus the first layer's, paired percentile bootstrap at the peak chosen on all texts)
    with ``_low``/``_high``.
    """
    layers = np.asarray(layers)
    peak = int(observed.argmax())
    peak_low, peak_high = selected_peak_interval(observed, replicates, support=support)
    margin = observed[peak] - peak_low
    point = landmarks(observed, margin)
    resampled = landmarks(replicates, margin)  # [B, 3]
    row = {}
    for i, name in enumerate(("peak", "onset", "plateau")):
        low, high = np.quantile(layers[resampled[:, i]], [0.025, 0.975], method="inverted_cdf")
        row.update({f"{name}_layer": int(layers[point[i]]), f"{name}_low": int(low), f"{name}_high": int(high)})
    row.update({"peak_score": float(observed[peak]), "peak_score_low": peak_low, "peak_score_high": peak_high,
                "first_layer_score": float(observed[0])})
    low, high = paired_difference(replicates[:, peak], replicates[:, 0])
    row.update({"peak_minus_first": float(observed[peak] - observed[0]), "peak_minus_first_low": low,
                "peak_minus_first_high": high})
    return row


def localise(y: np.ndarray, predicted: np.ndarray, layers: Sequence[int], counts: np.ndarray,
             baseline: np.ndarray | None = None) -> dict[str, float]:
    """Where along the layers a probe's balanced accuracy forms (:func:`locate`).

    Parameters
    ----------
    y : int array [n]
    predicted : int array [n_layers, n], each layer's pooled out-of-fold predictions
    layers : the layer number of each row of ``predicted``
    counts : float32 [B, n], the bootstrap replicates (:func:`bootstrap_counts`)
    baseline : int array [n], another probe's predictions of the same texts (the text probe), or None

    Returns
    -------
    :func:`locate`'s dict and, with ``baseline``, ``peak_minus_baseline`` with ``_low``/``_high`` (paired percentile
    bootstrap, at the peak layer chosen on all texts).
    """
    correct = predicted == y
    observed = np.array([balanced_accuracy(y, p) for p in predicted])
    replicates = balanced_accuracy_replicates(y, correct, counts)  # [B, n_layers]
    row = locate(observed, replicates, layers)
    if baseline is not None:
        peak = int(observed.argmax())
        other = balanced_accuracy_replicates(y, (baseline == y)[None], counts)[:, 0]
        low, high = paired_difference(replicates[:, peak], other)
        row.update({"peak_minus_baseline": float(observed[peak] - balanced_accuracy(y, baseline)),
                    "peak_minus_baseline_low": low, "peak_minus_baseline_high": high})
    return row


LOCALISATION_COLUMNS = ["model", "location", "subset", "target", "position", "n_texts", "n_layers", "peak_layer",
                        "peak_low", "peak_high", "onset_layer", "onset_low", "onset_high", "plateau_layer",
                        "plateau_low", "plateau_high", "peak_depth", "peak_depth_low", "peak_depth_high", "onset_depth",
                        "onset_depth_low", "onset_depth_high", "plateau_depth", "plateau_depth_low",
                        "plateau_depth_high", "peak_score", "peak_score_low", "peak_score_high", "first_layer_score",
                        "peak_minus_first", "peak_minus_first_low", "peak_minus_first_high", "peak_minus_text",
                        "peak_minus_text_low", "peak_minus_text_high", "replicates"]


def localisation_rows(problems: dict[str, dict], *, n_layers: int, replicates: int, seed: int,
                      text: dict[str, dict] | None = None) -> list[dict]:
    """:func:`localise` every problem and position of one location's predictions (as
    :func:`emoprobe.h5io.read_predictions` returns them), over layers 1..``n_layers`` (layer 0, the
    embeddings, is a baseline, not a candidate). Depths are layer / ``n_layers``. ``text``: the text probe's
    predictions of the same problems (``peak_minus_text``), where it scored the same texts."""
    rows = []
    for name, problem in problems.items():
        subset, target = name.split("/")
        layers = problem["layers"]
        keep = layers >= 1
        counts = bootstrap_counts(len(problem["label_id"]), replicates, seed)
        baseline = None
        if text and name in text and np.array_equal(text[name]["row_id"], problem["row_id"]):
            baseline = text[name]["predicted"][0, 0]
        for p, position in enumerate(problem["positions"]):
            row = {"subset": subset, "target": target, "position": position, "n_texts": len(problem["label_id"]),
                   "n_layers": n_layers, "replicates": replicates}
            found = localise(problem["label_id"], problem["predicted"][keep, p], layers[keep], counts, baseline)
            found = {key.replace("baseline", "text"): value for key, value in found.items()}
            row.update(found)
            for landmark in ("peak", "onset", "plateau"):
                for suffix, key in (("", "_layer"), ("_low", "_low"), ("_high", "_high")):
                    row[f"{landmark}_depth{suffix}"] = row[f"{landmark}{key}"] / n_layers
            rows.append(row)
    return rows
