"""Baselines that say what a probe on the hidden states adds.

- ``text``: a bag-of-words probe on the texts alone: TF-IDF of word uni- and bigrams (fitted on the
  training folds only; terms in at least two training texts) and scikit-learn's
  ``LogisticRegression(C)``, the same objective as the hidden-state probes (on the unscaled, sparse
  TF-IDF features), with the same folds, control and intervals;
- ``logit_lens``: each layer's residual stream at the last token through the model's final norm and
  LM head, restricted to the label tokens, argmax: the model's own readout of each layer, no fitting.
  Scored on the same texts as the probes of the same problem.

(The token embeddings, the third baseline, are layer 0 of the residual stream, probed like any layer.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from emoprobe.probes import (cross_validated_table, fold_indices, prior_log2, probe_problem, score_table, scored_rows,
                             unscored_table)
from emoprobe.scores import log2_probability_of


def tfidf_vectoriser():
    """The bag-of-words features: TF-IDF of word uni- and bigrams in at least two of the texts it is fitted on,
    sublinear term frequencies."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)


def text_out_of_fold(texts: np.ndarray, y: np.ndarray, n_classes: int, *, C: float, max_iter: int, tol: float,
                     folds: int, test_size: float, seed: int, stratify: bool, control: bool) -> dict:
    """The bag-of-words probe's out-of-fold predictions over the probes' folds (:func:`emoprobe.probes.fold_indices`),
    as :func:`emoprobe.probes.cross_validated_table` takes them (one position); with ``control``, also fitted on
    ``y`` shuffled once with ``seed``. The TF-IDF vocabulary and weights are fitted on each fold's training texts."""
    from sklearn.linear_model import LogisticRegression

    splits = fold_indices(y, folds=folds, test_size=test_size, seed=seed, stratify=stratify)
    shuffled = np.random.default_rng(seed).permutation(y)
    predicted, control_predicted = (np.full((1, len(y)), -1, dtype=np.int64) for _ in range(2))
    log2_probability = np.full((1, len(y)), np.nan)
    majority = np.full(len(y), -1, dtype=np.int64)
    train_accuracy, n_iters = [], []
    for train, test in splits:
        vectoriser = tfidf_vectoriser()
        x_train, x_test = vectoriser.fit_transform(texts[train]), vectoriser.transform(texts[test])
        for labels, into in [(y, predicted)] + ([(shuffled, control_predicted)] if control else []):
            model = LogisticRegression(C=C, max_iter=max_iter, tol=tol).fit(x_train, labels[train])
            into[0, test] = model.predict(x_test)
            n_iters.append(int(np.max(model.n_iter_)))
            if into is predicted:
                train_accuracy.append(np.mean(model.predict(x_train) == y[train]))
                # a class its training texts lack has no column: probability 0
                logits = np.full((len(test), n_classes), -np.inf)
                logits[:, model.classes_] = model.predict_log_proba(x_test)
                log2_probability[0, test] = log2_probability_of(logits, y[test])
        majority[test] = np.bincount(y[train], minlength=n_classes).argmax()
    tested = np.sort(np.concatenate([test for _, test in splits]))
    return {"tested": tested, "predicted": predicted[:, tested], "control_predicted": control_predicted[:, tested],
            "shuffled": shuffled, "majority": majority[tested], "train_accuracy": np.array([np.mean(train_accuracy)]),
            "log2_probability": log2_probability[:, tested], "prior_log2": prior_log2(y, splits, n_classes)[tested],
            "n_train": len(splits[0][0]), "n_test": len(splits[0][1]), "folds": len(splits),
            "n_iter": max(n_iters), "converged": max(n_iters) < max_iter}


def text_probe(texts: Sequence[str], label_id: np.ndarray, *, label_names: Sequence[str], C: float, max_iter: int,
               tol: float, folds: int, test_size: float, seed: int, stratify: bool, control: bool
               ) -> tuple[pd.DataFrame, dict | None]:
    """The bag-of-words probe of one problem: one row of :data:`emoprobe.scores.SCORE_COLUMNS` (``position`` NaN)
    and its predictions, as :func:`emoprobe.probes.cross_validated_table` gives them."""
    problem = probe_problem(label_id, label_names, folds)
    if not problem.scorable:
        return unscored_table(problem, [np.nan]), None
    y = np.searchsorted(problem.labels, problem.label_id)
    cv = text_out_of_fold(np.asarray(texts, dtype=object)[problem.rows], y, len(problem.labels), C=C,
                          max_iter=max_iter, tol=tol, folds=folds, test_size=test_size, seed=seed, stratify=stratify,
                          control=control)
    return cross_validated_table(problem, y, cv, [np.nan])


def logit_lens_table(label_id: np.ndarray, readout: np.ndarray, layers: Sequence[int], *, label_names: Sequence[str],
                     folds: int) -> tuple[pd.DataFrame, dict | None]:
    """Score the model's own readout of every layer on one problem.

    Parameters
    ----------
    label_id : int64 [n], the labels to predict (true labels, or the model's final answers)
    readout : float [n_layers, n, n_labels], each layer's logit lens over the label tokens (in label-id order)
    folds : the probes' folds: the same labels are set aside as for them (:func:`emoprobe.probes.probe_problem`)

    Returns
    -------
    A table of ``layer`` and :data:`emoprobe.scores.SCORE_COLUMNS` (``position`` -1) and the predictions
    (``rows``, ``label_id``, ``predicted`` (the argmax) and ``log2_probability`` (of the label under the softmax
    over the label tokens) [n_layers, 1, m], ``prior_log2``; the control's -1), or None when nothing is scored.
    The readout is fitted on nothing, so its reference for usable information is the label frequencies of all the
    problem's texts (one text of each label added, as :func:`emoprobe.probes.prior_log2` adds).
    """
    problem = probe_problem(label_id, label_names, folds)
    if not problem.scorable:
        return unscored_table(problem, [-1] * len(layers)).assign(layer=list(layers)), None
    logits = readout[:, problem.rows]
    predicted = logits.argmax(axis=2)
    log2_probability = log2_probability_of(logits, problem.label_id)
    everything = np.arange(len(problem.rows))
    prior = prior_log2(np.searchsorted(problem.labels, problem.label_id), [(everything, everything)],
                       len(problem.labels))
    rows = scored_rows(problem.label_id, predicted, problem.labels, log2_probability=log2_probability,
                       prior_log2=prior)
    table = score_table(pd.DataFrame(rows).assign(note=problem.note), [-1] * len(layers))
    table.insert(0, "layer", list(layers))
    predictions = {"rows": problem.rows, "label_id": problem.label_id, "predicted": predicted[:, None],
                   "control_label_id": np.full(len(problem.rows), -1), "control_predicted": np.full_like(predicted[:, None], -1),
                   "log2_probability": log2_probability[:, None], "prior_log2": prior}
    return table, predictions
