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

from emoprobe.probes import (cross_validated_table, out_of_fold, probe_problem, score_table, scored_rows,
                             unscored_table)


def text_fits(texts: Sequence[str], *, C: float, max_iter: int, tol: float):
    """The :data:`emoprobe.probes.FoldFit` of the bag-of-words probe on ``texts`` (one probe: ``P = 1``)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    texts = np.asarray(texts, dtype=object)

    def fit_fold(train, test, labellings):
        vectoriser = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        x_train = vectoriser.fit_transform(texts[train])
        x_test = vectoriser.transform(texts[test])
        fits = []
        for labels in labellings:
            model = LogisticRegression(C=C, max_iter=max_iter, tol=tol).fit(x_train, labels)
            n_iter = int(np.max(model.n_iter_))
            fits.append((model.predict(x_test)[None], model.predict(x_train)[None], n_iter, n_iter < max_iter))
        return fits

    return fit_fold


def text_probe(texts: Sequence[str], label_id: np.ndarray, *, label_names: Sequence[str], C: float, max_iter: int,
               tol: float, folds: int, test_size: float, seed: int, stratify: bool, control: bool
               ) -> tuple[pd.DataFrame, dict | None]:
    """The bag-of-words probe of one problem: one row of :data:`emoprobe.scores.SCORE_COLUMNS` (``position`` NaN)
    and its predictions, as :func:`emoprobe.probes.probe_layer` returns them."""
    problem = probe_problem(label_id, label_names, folds)
    if not problem.scorable:
        return unscored_table(problem, [np.nan]), None
    y = np.searchsorted(problem.labels, problem.label_id)
    fit_fold = text_fits(np.asarray(texts, dtype=object)[problem.rows], C=C, max_iter=max_iter, tol=tol)
    cv = out_of_fold(y, len(problem.labels), fit_fold, folds=folds, test_size=test_size, seed=seed, stratify=stratify,
                     control=control)
    return cross_validated_table(problem, y, cv, [np.nan], control=control)


def logit_lens_table(label_id: np.ndarray, readout: np.ndarray, layers: Sequence[int], *, label_names: Sequence[str],
                     folds: int) -> tuple[pd.DataFrame, dict | None]:
    """Score the model's own readout of every layer on one problem.

    Parameters
    ----------
    label_id : int64 [n], the labels to predict (true labels, or the model's final answers)
    readout : int64 [n_layers, n], the argmax over the label tokens of each layer's logit lens
    folds : the probes' folds: the same labels are set aside as for them (:func:`emoprobe.probes.probe_problem`)

    Returns
    -------
    A table of ``layer`` and :data:`emoprobe.scores.SCORE_COLUMNS` (``position`` -1) and the predictions
    (``rows``, ``label_id``, ``predicted`` [n_layers, 1, m]; the control's -1), or None when nothing is scored.
    """
    problem = probe_problem(label_id, label_names, folds)
    if not problem.scorable:
        return unscored_table(problem, [-1] * len(layers)).assign(layer=list(layers)), None
    predicted = readout[:, problem.rows]
    rows = scored_rows(problem.label_id, predicted, problem.labels)
    table = score_table(pd.DataFrame(rows).assign(note=problem.note), [-1] * len(layers))
    table.insert(0, "layer", list(layers))
    predictions = {"rows": problem.rows, "label_id": problem.label_id, "predicted": predicted[:, None],
                   "control_label_id": np.full(len(problem.rows), -1), "control_predicted": np.full_like(predicted[:, None], -1)}
    return table, predictions
