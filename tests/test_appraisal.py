"""Appraisal probes: held-out R² of ridge regressions from states to ratings."""

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score

from sklearn.preprocessing import StandardScaler

from emoprobe import problems
from emoprobe.appraisal import appraisal_directions, appraisal_r2, appraisal_table, standardise


def test_r2_finds_the_position_that_carries_the_ratings():
    rng = np.random.default_rng(0)
    n, width = 400, 16
    states = rng.normal(size=(n, 2, width)).astype(np.float32)
    ratings = np.stack([states[:, 0, :3].sum(axis=1) + 0.1 * rng.normal(size=n),  # linear in position -1
                        rng.normal(size=n)], axis=1)                               # noise
    splits = problems.fold_indices(np.arange(n) % 4, folds=5, test_size=0.2, seed=0,
                                 stratify=False)
    r2 = appraisal_r2(states, ratings, splits, alpha=5.0)
    assert r2.shape == (2, 2)
    assert r2[0, 0] > 0.95 and r2[1, 0] < 0.1 and abs(r2[0, 1]) < 0.1


def test_r2_is_sklearns_ridge_on_standardised_features():
    rng = np.random.default_rng(1)
    states = rng.normal(size=(100, 1, 8)).astype(np.float32) * np.logspace(-2, 2, 8).astype(np.float32)
    ratings = rng.normal(size=(100, 3)) + states[:, 0, :3]
    train, test = np.arange(80), np.arange(80, 100)
    scaler = StandardScaler().fit(states[train, 0].astype(np.float64))
    x_train, x_test = scaler.transform(states[train, 0]), scaler.transform(states[test, 0])
    expected = r2_score(ratings[test], Ridge(alpha=5.0).fit(x_train, ratings[train]).predict(x_test),
                        multioutput="raw_values")
    assert np.allclose(appraisal_r2(states, ratings, [(train, test)], alpha=5.0)[0], expected, atol=1e-6)


def test_standardise_uses_training_statistics_only():
    train = np.array([[[1.0, 5.0]], [[3.0, 5.0]]])
    test = np.array([[[5.0, 7.0]]])
    z_train, z_test = standardise(train, test)
    assert z_train.shape == (1, 2, 2) and z_test.shape == (1, 1, 2)  # positions first
    assert z_train[0, :, 0].tolist() == [-1.0, 1.0] and z_test[0, 0, 0] == 3.0
    assert z_train[0, :, 1].tolist() == [0.0, 0.0] and z_test[0, 0, 1] == 2.0  # constant feature: scale 1


def test_table_layout():
    table = appraisal_table(np.array([[0.1, 0.2]]), layer=3, positions=[-1], columns=["urgency", "effort"])
    assert table.to_dict("records") == [{"layer": 3, "position": -1, "appraisal": "urgency", "r2": 0.1},
                                        {"layer": 3, "position": -1, "appraisal": "effort", "r2": 0.2}]


def test_appraisal_directions_are_the_ridge_on_all_texts_in_the_raw_space():
    rng = np.random.default_rng(2)
    states = (rng.normal(size=(200, 2, 12)) * np.linspace(0.5, 30, 12) + 4).astype(np.float32)
    states[:, :, 3] = 7.0  # a constant feature: scale 1, no weight
    ratings = states[:, 0, :3] @ rng.normal(size=(3, 4)) + rng.normal(size=(200, 4))
    weights, intercepts = appraisal_directions(states, ratings, alpha=5.0)
    assert weights.shape == (2, 4, 12) and intercepts.shape == (2, 4) and weights.dtype == np.float32
    for p in range(2):
        x = states[:, p].astype(np.float64)
        std = x.std(axis=0)
        std[std == 0] = 1.0
        expected = Ridge(alpha=5.0).fit((x - x.mean(axis=0)) / std, ratings).predict((x - x.mean(axis=0)) / std)
        assert np.allclose(x @ weights[p].T.astype(np.float64) + intercepts[p], expected, rtol=1e-4, atol=1e-3)
    assert np.all(weights[:, :, 3] == 0)


def test_each_appraisal_is_read_back_with_its_own_ridge_row(tmp_path):
    """The directions file pairs each ridge row with an appraisal by its stored class (an index into the file's
    ``appraisals``), not by row order: rows written in another order than the names, over two jobs' files, come back
    under their own names, as surgery reads them (:func:`emoprobe.h5io.read_appraisal_directions`)."""
    from emoprobe import provenance
    from emoprobe.h5io import read_appraisal_directions, write_directions

    names = ["pleasantness", "urgency", "effort"]
    classes = np.array([2, 0, 1])  # row j holds appraisal classes[j]
    attrs = provenance.appraisal_directions("m", names)
    paths = []
    for layers in ([1, 2], [3]):
        # row j of layer l is 100 l + classes[j], everywhere along the hidden axis
        weights = np.array([[[np.full(4, 100 * layer + c) for c in classes]] for layer in layers], dtype=np.float32)
        paths.append(tmp_path / f"layers{layers[0]}.h5")
        write_directions(paths[-1], {"appraisal": {"positions": [-1], "classes": classes, "weights": weights,
                                                   "intercepts": np.zeros(weights.shape[:3])}}, layers=layers,
                         attrs=attrs)
    found = read_appraisal_directions(paths, [1, 2, 3], provenance=attrs)
    for layer in (1, 2, 3):
        assert list(found[layer]) == [names[c] for c in classes]
        for k, name in enumerate(names):
            assert (found[layer][name] == 100 * layer + k).all(), (layer, name)
