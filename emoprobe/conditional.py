"""Usable information beyond a baseline: conditional probes (Hewitt, Ethayarajh, Liang & Manning 2021), in bits.

What a layer carries about the label that a baseline (the label frequencies, the text's words) does not is measured
as ``I(X -> Y | B) = CE(B) - CE(B + X)``: the held-out cross-entropy of a probe of the baseline alone minus that of a
probe of the baseline and the layer together (Xu et al. 2020's conditional V-information of a stated family). Both
are fitted on the probes' outer folds; everything that chooses or fits anything sees a fold's training rows only:

- **the baseline** is fitted per outer fold ``f``; its penalty is chosen among ``Cs`` by the held-out cross-entropy of
  the first ``selection_folds`` of ``inner_folds`` inner folds of ``f``'s training rows. Its log-probabilities are
  kept for every row as *offsets*: on ``f``'s test rows those of its fit on all of ``f``'s training rows (its
  held-out log-probabilities), on ``f``'s training rows those of the inner fold that did not see the row
  (cross-fitted, at the chosen penalty), so that a training row's offset is no more sure of its label than a test
  row's (:func:`nested`);
- **the baseline and the layer** together are a probe of ``[o_B ; z]`` whose logits start from the baseline's
  log-probabilities ``o_B``, ``softmax(o_B(i) + V o_B(i) + W z_i + b)`` (:func:`emoprobe.logistic.fit_logistic`
  with ``offsets``): the layer adds to what the baseline says, whatever the scales of the two (one penalty over
  the concatenated features without the offsets would starve one block or the other), ``V`` gives the baseline less
  weight where the layer knows the same better, and as the penalty grows the probe gives the baseline back (``C = 0`` among the candidates is
  that limit: the layer left out), so that choosing the penalty by held-out cross-entropy (on the same first
  ``selection_folds`` inner folds of ``f``) keeps the joint probe from being systematically worse than the baseline
  alone (:func:`conditional_fits`).

What a layer adds is measured against the baseline recalibrated by the same probe without a layer
(:func:`recalibrated`), so that what reweighting a miscalibrated baseline gains is not counted as the layer's.

Choosing on fewer inner folds than are cross-fitted is what keeps this affordable at every layer: the layer's
probe costs ``(fitted penalties) * selection_folds + 1`` fits per outer fold and baseline (``C = 0`` is not fitted),
and the cross-fitting only the baseline's, once per problem. The penalties are chosen on inner folds whose rows'
offsets come from baseline fits that saw the other inner folds, and on the rows that chose the baseline's own
penalty: a slight advantage to the baseline and to leaving the layer out, never to the layer. The penalties chosen are returned, one per outer fold, so that a choice at the grid's edge shows.

The baseline "nothing but the label frequencies" (:func:`frequencies`) makes ``I(X -> Y | B)`` the layer's usable
information alone, with its penalty chosen the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch

from emoprobe.logistic import Probe, fit_logistic, logits
from emoprobe.scores import INFORMATION_REPLICATES, INFORMATION_SEED, bootstrap_counts, locate, mean_interval

# (training rows, their labels 0..K-1, penalty C, rows to predict) -> natural-log probabilities [len(rows), K]
FitPredict = Callable[[np.ndarray, np.ndarray, float | None, np.ndarray], np.ndarray]


class Nested(NamedTuple):
    """A baseline's log-probabilities on the outer folds (:func:`nested`)."""

    offsets: np.ndarray  # float32 [F, n, K], natural logs: fold f's test rows held out, its training rows cross-fitted
    log2_probability: np.ndarray  # float64 [n]: log2 of each tested text's label under its outer fold's fit
    chosen: np.ndarray  # float64 [F]: the penalty chosen in each outer fold (NaN where there is none to choose)


class Conditional(NamedTuple):
    """The layer's probe on top of a baseline (:func:`conditional_fits`)."""

    log2_probability: np.ndarray  # float64 [n]: log2 of each tested text's label under its outer fold's joint fit
    chosen: np.ndarray  # float64 [F]: the penalty chosen in each outer fold (0: the layer left out)
    selected_loss: np.ndarray  # float64 [F]: the chosen candidate's cross-entropy (nats, summed) on the inner folds


def inner_splits(y: np.ndarray, train: np.ndarray, inner_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(inner training, inner validation)`` rows (indices into ``y``, subsets of ``train``) of ``inner_folds``
    stratified folds of the outer fold's training rows ``train`` (:func:`emoprobe.problems.fold_indices`)."""
    from emoprobe.problems import fold_indices

    return [(train[a], train[b]) for a, b in fold_indices(y[train], folds=inner_folds, test_size=0.0, seed=seed,
                                                          stratify=True)]


def frequencies(n_classes: int) -> FitPredict:
    """The baseline of nothing but the label frequencies of the training rows, one text of each label added (as
    :func:`emoprobe.problems.prior_log2`); it has no penalty."""

    def fit_predict(train: np.ndarray, labels: np.ndarray, C: float | None, rows: np.ndarray) -> np.ndarray:
        counts = np.bincount(labels, minlength=n_classes) + 1.0
        return np.broadcast_to(np.log(counts / counts.sum()), (len(rows), n_classes))

    return fit_predict


def log_softmax(scores: np.ndarray) -> np.ndarray:
    """Natural-log softmax over the last axis, float64."""
    scores = np.asarray(scores, dtype=np.float64)
    top = scores.max(axis=-1, keepdims=True)
    return scores - (np.log(np.exp(scores - top).sum(axis=-1, keepdims=True)) + top)


def logistic_baseline(features: np.ndarray, n_classes: int, *, max_iter: int, tol: float,
                      device: str | torch.device = "cpu") -> FitPredict:
    """A baseline of dense features ``[n, d]`` (e.g. the mean input embedding of a text's words): the probes'
    logistic regression on them, standardised with the training rows (:func:`emoprobe.logistic.fit_logistic`)."""

    def fit_predict(train: np.ndarray, labels: np.ndarray, C: float | None, rows: np.ndarray) -> np.ndarray:
        [fit] = fit_logistic(features, [Probe(train, labels, n_classes)], C=C, max_iter=max_iter, tol=tol,
                             device=device)
        return log_softmax(logits(features[rows], [fit])[0])

    return fit_predict


def text_baseline(texts: np.ndarray, n_classes: int, *, max_iter: int, tol: float) -> FitPredict:
    """The bag-of-words baseline (:func:`emoprobe.baselines.text_out_of_fold`'s features and model, its penalty
    given): TF-IDF fitted on the training texts, scikit-learn's ``LogisticRegression(C)``. A label the training
    texts lack gets the add-one frequency of a label seen 0 times, the others what remains."""
    from sklearn.linear_model import LogisticRegression

    from emoprobe.baselines import tfidf_vectoriser

    def fit_predict(train: np.ndarray, labels: np.ndarray, C: float | None, rows: np.ndarray) -> np.ndarray:
        vectoriser = tfidf_vectoriser()
        model = LogisticRegression(C=C, max_iter=max_iter, tol=tol).fit(vectoriser.fit_transform(texts[train]),
                                                                        labels)
        scores = model.decision_function(vectoriser.transform(texts[rows]))
        if scores.ndim == 1:  # two labels: the score of the second against the first
            scores = np.stack([np.zeros_like(scores), scores], axis=1)
        # from the scores, not predict_log_proba, whose log of an underflowed probability is -inf
        out = np.full((len(rows), n_classes), np.log(1.0 / (len(train) + n_classes)))
        out[:, model.classes_] = log_softmax(scores) + np.log(1.0 - len(np.setdiff1d(np.arange(n_classes),
                                                                                     model.classes_))
                                                              / (len(train) + n_classes))
        return out

    return fit_predict


def nested(fit_predict: FitPredict, y: np.ndarray, n_classes: int, splits: Sequence[tuple[np.ndarray, np.ndarray]],
           Cs: Sequence[float | None], *, inner_folds: int, selection_folds: int, seed: int) -> Nested:
    """A baseline's held-out and nested log-probabilities on the outer folds ``splits``, its penalty chosen among
    ``Cs`` in each outer fold by the cross-entropy of the first ``selection_folds`` of ``inner_folds`` inner folds of
    that fold's training rows (:func:`inner_splits`), the other inner folds cross-fitted at that penalty.

    ``fit_predict(train, labels, C, rows)`` fits the baseline on rows ``train`` (labels ``0..n_classes-1``) and
    returns natural-log probabilities ``[len(rows), n_classes]`` of rows ``rows``.
    """
    offsets = np.zeros((len(splits), len(y), n_classes), dtype=np.float32)
    log2_probability, chosen = np.full(len(y), np.nan), np.full(len(splits), np.nan)
    for f, (train, test) in enumerate(splits):
        inner = inner_splits(y, train, inner_folds, seed)
        best = None
        for C in Cs:
            cross = {j: fit_predict(fitted, y[fitted], C, validated)
                     for j, (fitted, validated) in enumerate(inner[:selection_folds])}
            loss = -sum(cross[j][np.arange(len(inner[j][1])), y[inner[j][1]]].sum() for j in cross)
            if best is None or loss < best[0]:
                best = (loss, C, cross)
        _, C, cross = best
        for j, (fitted, validated) in enumerate(inner):
            offsets[f, validated] = cross[j] if j in cross else fit_predict(fitted, y[fitted], C, validated)
        offsets[f, test] = fit_predict(train, y[train], C, test)
        log2_probability[test] = offsets[f, test, y[test]].astype(np.float64) / np.log(2)
        chosen[f] = np.nan if C is None else C
    return Nested(offsets, log2_probability, chosen)


def _log_softmax_of_true(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Natural-log softmax probability of each row's label, ``scores`` ``[n, K]``."""
    return log_softmax(scores)[np.arange(len(y)), y]


def conditional_fits(x: np.ndarray, y: np.ndarray, n_classes: int, splits: Sequence[tuple[np.ndarray, np.ndarray]],
                     baselines: Mapping[str, Nested], *, Cs: Sequence[float], inner_folds: int, selection_folds: int,
                     seed: int, max_iter: int, tol: float, device: str | torch.device = "cpu",
                     references: Mapping[str, Conditional] | None = None) -> dict[str, Conditional]:
    """The layer's probe on top of each baseline (:func:`nested`), per outer fold: a logistic regression on the
    fold's ``[baseline log-probabilities ; layer states]`` whose logits start from the baseline's log-probabilities
    (offsets), ``softmax(o + V o + W z + b)``, so that every weight is penalised towards the baseline alone: the
    layer adds what it knows beyond it, and ``V`` reweights the baseline where the layer repeats some of it (with
    offsets alone a layer that knows what the baseline knows and more would count the shared part twice). Its
    penalty is chosen among ``Cs`` by the cross-entropy of the first ``selection_folds`` inner folds of the fold's
    training rows (the baselines' inner folds, whose rows' baseline log-probabilities are cross-fitted); ``C = 0``
    is the layer left out: the baseline's own log-probabilities, or with ``references`` (:func:`recalibrated`)
    the reference chosen for that fold, so that a layer left out adds exactly 0 bits to it. One solve of the
    batched trainer per outer fold and baseline for the inner fits, one for the fit at the chosen penalty.

    Parameters
    ----------
    x : float32 [n, d], the layer's states of the problem's texts (d may be 0: the baselines recalibrated)
    y : int64 [n], labels ``0..n_classes-1``
    splits : the outer folds, as the probes' (:func:`emoprobe.problems.fold_indices`)
    baselines : ``{name: Nested}`` on the same texts and folds
    """
    out = {}
    for name, baseline in baselines.items():
        log2_probability, chosen, selected = np.full(len(y), np.nan), [], []
        for f, (train, test) in enumerate(splits):
            offsets = baseline.offsets[f]  # [n, K]: test rows held out, training rows cross-fitted
            features = np.concatenate([x, offsets], axis=1)
            inner = inner_splits(y, train, inner_folds, seed)[:selection_folds]
            loss = {C: 0.0 for C in Cs}
            fitted_Cs = [C for C in Cs if C != 0]
            probes = [Probe(fitted, y[fitted], n_classes, C=C, offset=0) for fitted, _ in inner for C in fitted_Cs]
            fits = fit_logistic(features, probes, C=1.0, max_iter=max_iter, tol=tol, device=device,
                                offsets=offsets[None]) if probes else []
            for j, (_, validated) in enumerate(inner):
                if 0 in loss and references is None:  # the layer left out: the baseline's own cross-entropy
                    loss[0] -= _log_softmax_of_true(offsets[validated], y[validated]).sum()
                for i, C in enumerate(fitted_Cs):
                    scores = logits(features[validated], [fits[j * len(fitted_Cs) + i]])[0] + offsets[validated]
                    loss[C] -= _log_softmax_of_true(scores, y[validated]).sum()
            if 0 in loss and references is not None:
                loss[0] = float(references[name].selected_loss[f])
            C = min(Cs, key=loss.__getitem__)
            chosen.append(C)
            selected.append(loss[C])
            if C == 0:  # left out: the reference's or the baseline's own held-out probabilities, to the bit
                log2_probability[test] = (references[name].log2_probability[test] if references is not None else
                                          offsets[test, y[test]].astype(np.float64) / np.log(2))
                continue
            [fit] = fit_logistic(features, [Probe(train, y[train], n_classes, C=C, offset=0)], C=1.0,
                                 max_iter=max_iter, tol=tol, device=device, offsets=offsets[None])
            scores = logits(features[test], [fit])[0] + offsets[test]
            log2_probability[test] = _log_softmax_of_true(scores, y[test]) / np.log(2)
        out[name] = Conditional(log2_probability, np.array(chosen, dtype=np.float64), np.array(selected))
    return out


# What a conditional probes' file holds per problem (emoprobe.h5io.write_problems): the positions, the texts and their
# label ids (dataset.labels' order), each recalibrated baseline's held-out log2-probability of each text's
# label [n_baselines, m] (recalibrated()) and the layer's probe's [n_layers, n_positions, n_baselines, m], the
# baselines in the order of the file's ``baselines`` attribute (emoprobe.provenance.conditional).
PROBABILITY_DTYPES = {"positions": np.int64, "row_id": np.int64, "label_id": np.int64, "baseline_log2": np.float64,
                      "log2_probability": np.float64}

CONDITIONAL_COLUMNS = ["model", "location", "subset", "target", "position", "layer", "baseline", "n_texts",
                       "label_entropy", "baseline_information", "baseline_cross_entropy", "cross_entropy",
                       "information", "information_low", "information_high", "C", "reference_C", "baseline_C"]


def recalibrated(baselines: Mapping[str, Nested], y: np.ndarray, n_classes: int,
                 splits: Sequence[tuple[np.ndarray, np.ndarray]], **fit) -> dict[str, Conditional]:
    """Each baseline recalibrated as the layer's probe would recalibrate it, without a layer:
    :func:`conditional_fits` on no features of the texts (``softmax(o + V o + b)``, its penalty chosen the same way,
    0 = the baseline as it is). What a layer adds is measured against this, so that the bits a probe gains by
    reweighting a miscalibrated baseline (an overconfident text probe) are the baseline's, not the layer's: a layer
    that carries nothing, as layer 0 at the last token (one template token, the same for every text), adds 0.
    ``fit``: :func:`conditional_fits`' keywords."""
    return conditional_fits(np.zeros((len(y), 0), dtype=np.float32), y, n_classes, splits, baselines, **fit)


def information_row(found: Conditional, reference: Conditional, baseline: Nested, frequencies: Nested) -> dict:
    """One layer's usable information beyond one baseline, in bits, on the texts its outer folds test:
    ``information = CE(B) - CE(B + X)``, ``B`` the baseline recalibrated (:func:`recalibrated`), with the
    studentised bootstrap 95 % interval of the mean of the paired per-text differences
    (:func:`emoprobe.scores.mean_interval`), beside the recalibrated baseline's own usable information ``H(Y) -
    CE(B)`` (``label_entropy`` ``H(Y)``: the training priors', the frequencies baseline's) and the penalties chosen
    in each outer fold, comma-separated: the layer's probe's (``C``), the recalibration's (``reference_C``) and the
    baseline's own (``baseline_C``; empty for the frequencies)."""
    tested = ~np.isnan(found.log2_probability)
    joint, base = found.log2_probability[tested], reference.log2_probability[tested]
    prior = frequencies.log2_probability[tested]
    gain = joint - base
    low, high = mean_interval(gain, INFORMATION_REPLICATES, INFORMATION_SEED)
    return {"n_texts": int(tested.sum()), "label_entropy": -float(prior.mean()),
            "baseline_information": float((base - prior).mean()), "baseline_cross_entropy": -float(base.mean()),
            "cross_entropy": -float(joint.mean()), "information": float(gain.mean()), "information_low": low,
            "information_high": high, "C": ",".join(f"{C:g}" for C in found.chosen),
            "reference_C": ",".join(f"{C:g}" for C in reference.chosen),
            "baseline_C": ",".join(f"{C:g}" for C in baseline.chosen if not np.isnan(C))}


LOCALISATION_COLUMNS = ["model", "location", "subset", "target", "position", "baseline", "n_texts", "n_layers",
                        "peak_layer", "peak_low", "peak_high", "onset_layer", "onset_low", "onset_high",
                        "plateau_layer", "plateau_low", "plateau_high", "peak_depth", "onset_depth", "plateau_depth",
                        "peak_information", "peak_information_low", "peak_information_high",
                        "first_layer_information", "peak_minus_first", "peak_minus_first_low",
                        "peak_minus_first_high", "replicates"]


def information_localisation(gains: np.ndarray, layers: Sequence[int], *, n_layers: int, replicates: int, seed: int
                             ) -> dict:
    """Where along the layers usable information (beyond a baseline) forms: :func:`emoprobe.scores.locate` of the
    mean per-text gains in bits, ``gains`` float64 ``[n_layers_given, n]`` (``log2 p(B + X) - log2 p(B)`` of each
    tested text at each of ``layers``), bootstrap replicates over texts (:func:`emoprobe.scores.bootstrap_counts`),
    unbounded. Depths are layer / ``n_layers``; the peak's information is named ``peak_information``."""
    gains = np.asarray(gains, dtype=np.float64)
    counts = bootstrap_counts(gains.shape[1], replicates, seed).astype(np.float64)
    row = locate(gains.mean(axis=1), counts @ gains.T / gains.shape[1], layers, support=(-np.inf, np.inf))
    row = {key.replace("_score", "_information"): value for key, value in row.items()}
    for landmark in ("peak", "onset", "plateau"):
        row[f"{landmark}_depth"] = row[f"{landmark}_layer"] / n_layers
    return {**row, "n_texts": gains.shape[1], "n_layers": n_layers, "replicates": replicates}
