"""Scores of predicted labels, their intervals, and where along the layers a score forms.

Every probe is scored on its pooled out-of-fold predictions: under k-fold cross-validation each
text is predicted once, by the probe that did not see it, so the n predictions of a subset are
scored together. The interval then describes the held-out accuracy of the probes that were fitted
(conditional on their training data), for which the n outcomes are independent given the probes;
a t-interval over folds instead treats the folds' overlapping training sets as independent
(Nadeau & Bengio 2003) and has only k - 1 degrees of freedom.

- accuracy: the Wilson score interval of the pooled outcomes;
- balanced accuracy (the mean recall over the labels of the subset): a percentile bootstrap over texts, the same replicates for every layer, position and location of a subset
  (:func:`bootstrap_counts`), so scores of different layers are compared on paired resamples.

``tests/test_scores.py`` checks by simulation that both nominal 95 % intervals cover the true
held-out score in 93-97 % of replicates.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import cohen_kappa_score, f1_score

Z95 = float(stats.norm.ppf(0.975))
INTERVAL = "pooled out-of-fold; accuracy: Wilson; balanced accuracy: Price-Bonett"
# The columns of a score table after its keys (the tables of :mod:`emoprobe.probes` and :mod:`emoprobe.baselines`).
INTEGER_COLUMNS = ["n_texts", "n_labels", "folds", "n_train", "n_test", "n_iter"]
SCORE_COLUMNS = ["n_texts", "n_labels", "balanced_accuracy", "balanced_low", "balanced_high", "accuracy",
                 "accuracy_low", "accuracy_high", "kappa", "macro_f1", "control_balanced_accuracy", "control_accuracy",
                 "selectivity", "balanced_chance", "majority_accuracy", "train_accuracy", "folds", "n_train", "n_test",
                 "n_iter", "converged", "interval", "note"]


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / n`` (NaNs when ``n`` is 0)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # exact at the ends, where centre - half (centre + half) is 0 (1) up to rounding
    low = 0.0 if successes == 0 else max(float(centre - half), 0.0)
    high = 1.0 if successes == n else min(float(centre + half), 1.0)
    return low, high


@functools.lru_cache(maxsize=8)
def bootstrap_counts(n: int, replicates: int, seed: int) -> np.ndarray:
    """How often each of ``n`` texts is drawn in each bootstrap replicate: float32 ``[replicates, n]``,
    each row summing to ``n``; the same for the same ``(n, replicates, seed)`` (cached: read only)."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=replicates).astype(np.float32)
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


def localise(y: np.ndarray, predicted: np.ndarray, layers: Sequence[int], counts: np.ndarray) -> dict[str, float]:
    """Where along the layers a probe's balanced accuracy forms, with bootstrap intervals over texts.

    The plateau's margin is the peak's own 95 % half-width below it (peak score minus the lower end of
    its :func:`balanced_interval`), fixed from the full sample and reused in every replicate; each
    replicate recomputes the peak, onset and plateau start on the same resampled texts for every layer.

    Parameters
    ----------
    y : int array [n]
    predicted : int array [n_layers, n], each layer's pooled out-of-fold predictions
    layers : the layer number of each row of ``predicted``

    Returns
    -------
    dict with ``{peak, onset, plateau}_layer`` and their ``_low``/``_high`` (2.5 and 97.5 % quantiles of the
    replicates' layers), ``peak_score, peak_score_low, peak_score_high, first_layer_score``.
    """
    layers = np.asarray(layers)
    correct = predicted == y
    observed = np.array([balanced_accuracy(y, p) for p in predicted])
    replicates = balanced_accuracy_replicates(y, correct, counts)  # [B, n_layers]
    peak = int(observed.argmax())
    peak_low, peak_high = np.quantile(replicates[:, peak], [0.025, 0.975])
    margin = observed[peak] - peak_low
    point = landmarks(observed, margin)
    resampled = landmarks(replicates, margin)  # [B, 3]
    row = {}
    for i, name in enumerate(("peak", "onset", "plateau")):
        low, high = np.quantile(layers[resampled[:, i]], [0.025, 0.975], method="inverted_cdf")
        row.update({f"{name}_layer": int(layers[point[i]]), f"{name}_low": int(low), f"{name}_high": int(high)})
    row.update({"peak_score": float(observed[peak]), "peak_score_low": float(peak_low),
                "peak_score_high": float(peak_high), "first_layer_score": float(observed[0])})
    return row


LOCALISATION_COLUMNS = ["model", "location", "subset", "target", "position", "n_texts", "n_layers", "peak_layer",
                        "peak_low", "peak_high", "onset_layer", "onset_low", "onset_high", "plateau_layer",
                        "plateau_low", "plateau_high", "peak_depth", "peak_depth_low", "peak_depth_high", "onset_depth",
                        "onset_depth_low", "onset_depth_high", "plateau_depth", "plateau_depth_low",
                        "plateau_depth_high", "peak_score", "peak_score_low", "peak_score_high", "first_layer_score",
                        "replicates"]


def localisation_rows(problems: dict[str, dict], *, n_layers: int, replicates: int, seed: int) -> list[dict]:
    """:func:`localise` every problem and position of one location's predictions (as
    :func:`emoprobe.h5io.read_predictions` returns them), over layers 1..``n_layers`` (layer 0, the
    embeddings, is a baseline, not a candidate). Depths are layer / ``n_layers``."""
    rows = []
    for name, problem in problems.items():
        subset, target = name.split("/")
        layers = problem["layers"]
        keep = layers >= 1
        counts = bootstrap_counts(len(problem["label_id"]), replicates, seed)
        for p, position in enumerate(problem["positions"]):
            row = {"subset": subset, "target": target, "position": position, "n_texts": len(problem["label_id"]),
                   "n_layers": n_layers, "replicates": replicates}
            row.update(localise(problem["label_id"], problem["predicted"][keep, p], layers[keep], counts))
            for landmark in ("peak", "onset", "plateau"):
                for suffix, key in (("", "_layer"), ("_low", "_low"), ("_high", "_high")):
                    row[f"{landmark}_depth{suffix}"] = row[f"{landmark}{key}"] / n_layers
            rows.append(row)
    return rows
