"""Benchmark: the workflow's non-linear probes (emoprobe/mlp.py, all folds of a layer in one batched L-BFGS) against
scikit-learn's ``MLPClassifier`` on the same folds, one thread each, side by side in one run.

Run after `make run` (it reads a model's HDF5 states). On the residual stream at token -1 of each of ``--layers``,
every fold of the probes' 5-fold split (true labels, all texts):

1. **the workflow**: ``fit_mlp`` on all folds at once, the workflow's settings (hidden 32, ``--alpha``, its
   stopping rule), pooled out-of-fold accuracy, time, iterations and whether each fold converged;
2. **scikit-learn, the same objective**: ``MLPClassifier(hidden_layer_sizes=(32,), solver="lbfgs", alpha)`` with
   the same ``max_iter``, fold by fold on each fold's standardised training rows;
3. **the paper's probe**: ``MLPClassifier(hidden_layer_sizes=(32,), max_iter=200)`` (Adam, alpha 1e-4), fold by fold;
4. **the linear probe** of the same cell (``fit_logistic``, C = 1), for the comparison the probe exists for.

    .venv/bin/python benchmarks/nonlinear.py --hidden results/hidden/smollm2-135m/layers01-30.h5 --layers 5,15,25
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emoprobe.h5io import read_layer  # noqa: E402
from emoprobe.logistic import Probe, fit_logistic, predict  # noqa: E402
from emoprobe.mlp import fit_mlp, predict_mlp  # noqa: E402
from emoprobe.problems import fold_indices  # noqa: E402


def pooled(splits, labels_of_fold, y) -> float:
    """Pooled out-of-fold accuracy: ``labels_of_fold(f)`` gives fold ``f``'s labels of its test rows."""
    return float(np.mean(np.concatenate([labels_of_fold(f) == y[test] for f, (_, test) in enumerate(splits)])))


def sklearn_folds(make, x, y, splits):
    """Fit ``make()`` on each fold's standardised training rows: (seconds, pooled accuracy, iterations)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.preprocessing import StandardScaler

    predicted, iterations, start = [], [], time.perf_counter()
    for train, test in splits:
        scaler = StandardScaler().fit(x[train])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = make().fit(scaler.transform(x[train]), y[train])
        predicted.append(model.predict(scaler.transform(x[test])))
        iterations.append(model.n_iter_)
    return time.perf_counter() - start, pooled(splits, lambda f: predicted[f], y), iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", required=True, help="an HDF5 file of hidden states (results/hidden/...)")
    parser.add_argument("--layers", default="15", help="comma-separated layers of that file")
    parser.add_argument("--alpha", type=float, default=100.0)
    parser.add_argument("--max-iter", type=int, default=2000)
    parser.add_argument("--tol", type=float, default=1e-4)
    args = parser.parse_args()
    from sklearn.neural_network import MLPClassifier

    torch.set_num_threads(1)
    print(f"{'layer':>5} {'method':<34} {'seconds':>8} {'accuracy':>8}  iterations per fold")
    for layer in [int(v) for v in args.layers.split(",")]:
        states, meta = read_layer(args.hidden, layer, "residual", positions=[-1])
        x, y = states[:, 0], meta["label_id"]
        splits = fold_indices(y, folds=5, test_size=0.2, seed=42, stratify=False)
        probes = [Probe(train, y[train], int(y.max()) + 1) for train, _ in splits]

        start = time.perf_counter()
        fits = fit_mlp(x, probes, hidden=32, alpha=args.alpha, max_iter=args.max_iter, tol=args.tol, seed=42)
        seconds = time.perf_counter() - start
        labels = predict_mlp(x, fits)
        accuracy = pooled(splits, lambda f: labels[f, splits[f][1]], y)
        ours = seconds
        print(f"{layer:>5} {'workflow MLP (batched L-BFGS)':<34} {seconds:8.1f} {accuracy:8.4f}  "
              f"{[fit.n_iter for fit in fits]} converged {all(fit.converged for fit in fits)}")

        seconds, accuracy, iterations = sklearn_folds(lambda: MLPClassifier(
            hidden_layer_sizes=(32,), solver="lbfgs", alpha=args.alpha, max_iter=args.max_iter, random_state=42),
            x, y, splits)
        print(f"{layer:>5} {'sklearn MLP lbfgs, same objective':<34} {seconds:8.1f} {accuracy:8.4f}  {iterations}"
              f"   ({seconds / ours:.1f}x the workflow's time)")
        seconds, accuracy, iterations = sklearn_folds(lambda: MLPClassifier(
            hidden_layer_sizes=(32,), max_iter=200, random_state=42), x, y, splits)
        print(f"{layer:>5} {'paper: sklearn MLP adam, 200 epochs':<34} {seconds:8.1f} {accuracy:8.4f}  {iterations}"
              f"   ({seconds / ours:.1f}x)")

        start = time.perf_counter()
        linear = fit_logistic(x, probes, C=1.0, max_iter=1000, tol=1e-4)
        seconds = time.perf_counter() - start
        labels = predict(x, linear)
        print(f"{layer:>5} {'linear probe (C = 1)':<34} {seconds:8.1f} "
              f"{pooled(splits, lambda f: labels[f, splits[f][1]], y):8.4f}  {[fit.n_iter for fit in linear]}")


if __name__ == "__main__":
    main()
