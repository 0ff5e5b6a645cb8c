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

from emoprobe.problems import prior_log2, probe_problem
from emoprobe.probes import OutOfFold, score_table, scored_rows, unscored_table
from emoprobe.scores import log2_probability_of
from emoprobe.settings import Logistic, Split


def tfidf_vectoriser():
    """The bag-of-words features: TF-IDF of word uni- and bigrams in at least two of the texts it is fitted on,
    sublinear term frequencies."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)


def text_out_of_fold(texts: np.ndarray, y: np.ndarray, n_classes: int, *, trainer: Logistic, split: Split,
                     control: bool) -> OutOfFold:
    """The bag-of-words probe's out-of-fold predictions over the probes' folds (``split``), as one position's
    :class:`emoprobe.probes.OutOfFold`; with ``control``, also fitted on the control's shuffled labels. The TF-IDF
    vocabulary and weights are fitted on each fold's training texts, the latter by scikit-learn's
    ``LogisticRegression`` with the trainer's ``C``, ``max_iter`` and ``tol``."""
    from sklearn.linear_model import LogisticRegression

    record = OutOfFold(y, n_classes, 1, split)
    n_iters = []
    for f, (train, test) in enumerate(record.splits):
        vectoriser = tfidf_vectoriser()
        x_train, x_test = vectoriser.fit_transform(texts[train]), vectoriser.transform(texts[test])
        fitted = []
        for labels in [y] + ([record.shuffled] if control else []):
            fitted.append(LogisticRegression(C=trainer.C, max_iter=trainer.max_iter, tol=trainer.tol)
                          .fit(x_train, labels[train]))
            n_iters.append(int(np.max(fitted[-1].n_iter_)))
        model = fitted[0]
        # a class its training texts lack has no column: probability 0
        logits = np.full((len(test), n_classes), -np.inf)
        logits[:, model.classes_] = model.predict_log_proba(x_test)
        record.record_fold(0, f, model.predict(x_test), log2_probability_of(logits, y[test]),
                           np.mean(model.predict(x_train) == y[train]),
                           fitted[1].predict(x_test) if control else None)
    record.record_fits(0, max(n_iters), max(n_iters) < trainer.max_iter)
    return record


def text_probe(texts: Sequence[str], label_id: np.ndarray, *, label_names: Sequence[str], trainer: Logistic,
               split: Split, control: bool) -> tuple[pd.DataFrame, dict | None]:
    """The bag-of-words probe of one problem: one row of :data:`emoprobe.scores.SCORE_COLUMNS` (``position`` NaN)
    and its predictions, as :meth:`emoprobe.probes.OutOfFold.scored` gives them (``rows`` indexing ``texts``)."""
    problem = probe_problem(label_id, label_names, split.folds)
    if not problem.scorable:
        return unscored_table(problem, [np.nan]), None
    y = np.searchsorted(problem.labels, problem.label_id)
    record = text_out_of_fold(np.asarray(texts, dtype=object)[problem.rows], y, len(problem.labels), trainer=trainer,
                              split=split, control=control)
    return record.scored(problem, [np.nan], problem.rows)


def logit_lens_table(label_id: np.ndarray, readout: np.ndarray, layers: Sequence[int], *, label_names: Sequence[str],
                     folds: int) -> tuple[pd.DataFrame, dict | None]:
    """Score the model's own readout of every layer on one problem.

    Parameters
    ----------
    label_id : int64 [n], the labels to predict (true labels, or the model's final answers)
    readout : float [n_layers, n, n_labels], each layer's logit lens over the label tokens (in label-id order)
    folds : the probes' folds: the same labels are set aside as for them (:func:`emoprobe.problems.probe_problem`)

    Returns
    -------
    A table of ``layer`` and :data:`emoprobe.scores.SCORE_COLUMNS` (``position`` -1) and the predictions
    (``rows``, ``label_id``, ``predicted`` (the argmax) and ``log2_probability`` (of the label under the softmax
    over the label tokens) [n_layers, 1, m], ``prior_log2``; the control's -1), or None when nothing is scored.
    The readout is fitted on nothing, so its reference for usable information is the label frequencies of all the
    problem's texts (one text of each label added, as :func:`emoprobe.problems.prior_log2` adds).
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
