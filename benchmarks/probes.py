"""Benchmark: the workflow's probe trainer against the trainer of an earlier commit and against scikit-learn.

Run after `make run` (it reads a model's HDF5 states and answers). In one run, one thread each (as probe jobs fit):

1. **The probe stage, per location and layer.** The workflow (``emoprobe.probes.probe_layer``, the grid of
   ``--config``, by default the config.yaml's: what a probe job of the default run fits) against the baseline
   commit's trainer fitting its own default protocol (every problem at every position, with the shuffled-label
   control: what its probe jobs fitted), the baseline in a subprocess on ``git archive --baseline`` of this
   repository. Prints both times and their ratio, and the largest difference of accuracy, balanced accuracy and the
   control's accuracy on the cells both fit.
2. **The trainer alone**: the workflow's trainer on exactly the baseline's cells (every problem, position and
   control), so that the ratio is the trainer's, not the grid's.
3. **How close the products run to the machine's rate**: the trainer's products (each step's logits and gradient
   over each probe's training rows, counted from its iterations) in GFLOP/s against the machine's measured rate for
   a product of the same shape.
4. **Converged scikit-learn** (``--converged-layers``): on those layers' residual stream at token -1, the pooled
   out-of-fold accuracy of ``LogisticRegression(C, tol=1e-8)`` on each fold's standardised training rows (all
   texts, true label), against both trainers' accuracy of that cell.
5. **The reference notebook's method**: ``LogisticRegression(C=1.0, max_iter=1000)`` on raw states, one 80/20 split,
   timed on ``--reference-probes`` probes and extrapolated per probe.

    .venv/bin/python benchmarks/probes.py --hidden results/hidden/smollm2-135m/layers01-30.h5 \\
        --answers results/answers/smollm2-135m.tsv --layers 1,10,20,30
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emoprobe import grid  # noqa: E402
from emoprobe.device import pick_device  # noqa: E402
from emoprobe.h5io import read_layer  # noqa: E402
from emoprobe.logistic import Probe, fit_logistic  # noqa: E402
from emoprobe.problems import fold_indices, probe_targets, split_indices  # noqa: E402
from emoprobe.probes import probe_layer  # noqa: E402
from emoprobe.settings import Logistic, Split  # noqa: E402

# The commit before this trainer (issue #25): the batched trainer of emoprobe/batched.py.
BASELINE = "1ebbe1d"
PROTOCOL = dict(C=1.0, max_iter=1000, tol=1e-4, folds=5, test_size=0.2, seed=42, stratify=False)
# Runs in the baseline's checkout: its trainer on its default protocol (every problem at every position, with the
# control), one thread, timed per location and layer; the tables go back through a pickle.
BASELINE_RUN = """
import pickle, sys, time
# the checkout's emoprobe, not the one installed (editable) in this environment
sys.meta_path = [finder for finder in sys.meta_path if "__editable__" not in getattr(finder, "__module__", "")]
sys.path.insert(0, sys.argv[2])
import numpy as np, pandas as pd, torch
from emoprobe.batched import probe_layer_batched
from emoprobe.h5io import read_layer
from emoprobe.problems import probe_targets
torch.set_num_threads(1)
hidden, answers, labels, layers, locations, protocol, device, out = pickle.load(open(sys.argv[1], "rb"))
answers = pd.read_csv(answers, sep="\\t")
results = {}
for location in locations:
    for layer in layers:
        states, meta = read_layer(hidden, layer, location)
        problems = probe_targets(["all", "model_correct"], True, meta["row_id"], meta["label_id"], answers, labels)
        start = time.perf_counter()
        fitted = probe_layer_batched(states, [(rows, y) for _, _, rows, y in problems], meta["positions"],
                                     label_names=labels, control=True, device=device, **protocol)
        seconds = time.perf_counter() - start
        tables = {f"{s}/{t}": table for (s, t, _, _), (table, _) in zip(problems, fitted)}
        results[(location, layer)] = (seconds, tables)
        print(f"  baseline {location} layer {layer}: {seconds:.1f} s", flush=True)
pickle.dump(results, open(out, "wb"))
"""


def run_baseline(revision: str, hidden: str, answers: str, labels: list, layers: list, locations: list,
                 device: str) -> dict:
    """``{(location, layer): (seconds, {problem: table})}`` of the baseline commit's trainer, in a subprocess."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "emoprobe"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        arguments, out = Path(tmp) / "arguments.pkl", Path(tmp) / "results.pkl"
        arguments.write_bytes(pickle.dumps((hidden, answers, labels, layers, locations, PROTOCOL, device, str(out))))
        subprocess.run([sys.executable, "-c", BASELINE_RUN, str(arguments), tmp], check=True)
        return pickle.loads(out.read_bytes())


def fit_cells(states, meta, answers, labels, location_cells, device):
    """The workflow's probes of one layer at the given cells: ``(seconds, {problem: table}, fits)`` with, per solve,
    ``(n_classes, d, [(n_iter, n_train)])`` for the FLOP count."""
    positions = grid.positions_of(location_cells)
    problems = [(f"{s}/{t}", rows, y) for s, t, rows, y in probe_targets(["all", "model_correct"], True, meta["row_id"],
                                                                         meta["label_id"], answers, labels)
                if f"{s}/{t}" in location_cells]
    index = [meta["positions"].index(p) for p in positions]
    solves = []

    def counting(x, probes, **settings):
        fits = fit_logistic(x, probes, **settings)
        solves.append((max(p.n_classes for p in probes), x.shape[1], [(f.n_iter, len(p.train))
                                                                     for f, p in zip(fits, probes)]))
        return fits

    import emoprobe.probes as module

    module.fit_logistic, original = counting, module.fit_logistic
    try:
        start = time.perf_counter()
        results = probe_layer(states[:, index], positions, [(rows, y) for _, rows, y in problems],
                              [location_cells[name] for name, _, _ in problems], label_names=labels, device=device,
                              split=Split(*(PROTOCOL[key] for key in Split._fields)),
                              trainer=Logistic(*(PROTOCOL[key] for key in Logistic._fields)))
        seconds = time.perf_counter() - start
    finally:
        module.fit_logistic = original
    return seconds, {name: result.table for (name, _, _), result in zip(problems, results)}, solves


def mean_passes(solves) -> float:
    """Passes over its training rows per fit, on average: the fit's iterations and its first evaluation."""
    passes = [n_iter + 1 for _, _, fits in solves for n_iter, _ in fits]
    return float(np.mean(passes))


def product_flops(solves) -> float:
    """FLOPs of the trainer's products: per iteration (and the first evaluation) the logits and the gradient over each
    probe's training rows, 2 x 2 x classes x width x rows."""
    return sum(4.0 * k * d * (n_iter + 1) * n_train for k, d, fits in solves for n_iter, n_train in fits)


def matmul_rate(d: int, rows: int, probes: int = 9, classes: int = 13) -> float:
    """The machine's measured GFLOP/s for the trainer's product shape: ``[probes x classes, d] @ [d, rows]``."""
    w, x = torch.randn(probes * classes, d), torch.randn(rows, d)
    for _ in range(3):
        w @ x.T
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < 1.0:
        w @ x.T
        n += 1
    return 2 * probes * classes * d * rows * n / (time.perf_counter() - start) / 1e9


def worst_difference(ours: dict, theirs: dict) -> dict:
    """The largest |difference| of accuracy, balanced accuracy and the control's accuracy over the cells both fit."""
    worst = {"accuracy": 0.0, "balanced_accuracy": 0.0, "control_accuracy": 0.0}
    for name, table in ours.items():
        other = theirs[name].set_index("position")
        for _, row in table.iterrows():
            for column in worst:
                if pd.notna(row[column]) and pd.notna(other.loc[row["position"], column]):
                    worst[column] = max(worst[column], abs(float(row[column]) - float(other.loc[row["position"], column])))
    return worst


def converged_accuracy(x: np.ndarray, y: np.ndarray, C: float) -> float:
    """Pooled out-of-fold accuracy of converged scikit-learn fits on the protocol's folds, each fold standardised with
    its training rows."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    predicted = np.empty(len(y), dtype=np.int64)
    for train, test in fold_indices(y, folds=PROTOCOL["folds"], test_size=0.2, seed=PROTOCOL["seed"], stratify=False):
        mean, std = x[train].mean(axis=0, dtype=np.float64), x[train].std(axis=0, dtype=np.float64)
        std[std == 0] = 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LogisticRegression(C=C, tol=1e-8, max_iter=20_000).fit((x[train] - mean) / std, y[train])
        predicted[test] = model.predict((x[test] - mean) / std)
    return float(np.mean(predicted == y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", required=True, help="an HDF5 chunk file of one model")
    parser.add_argument("--answers", required=True, help="the model's answers (results/answers/{model}.tsv)")
    parser.add_argument("--layers", default="1,10,20,30", help="comma-separated layers, or 'all'")
    parser.add_argument("--locations", default="residual,attention,mlp")
    parser.add_argument("--config", default=str(ROOT / "config.yaml"), help="whose probe.grid the workflow fits")
    parser.add_argument("--baseline", default=BASELINE, help="the commit whose trainer is compared ('' : none)")
    parser.add_argument("--converged-layers", default="", help="comma-separated layers to check against scikit-learn")
    parser.add_argument("--reference-probes", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="where both trainers fit (probe.device; auto: CUDA if any)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = str(pick_device(args.device, needs_float64=True))

    answers = pd.read_csv(args.answers, sep="\t")
    labels = [c.removeprefix("logit_") for c in answers if c.startswith("logit_")]
    from emoprobe.h5io import open_file

    with open_file(args.hidden) as f:
        held = sorted(int(k.split("_")[1]) for k in f if k.startswith("residual_") and k != "residual_00")
    layers = held if args.layers == "all" else [int(v) for v in args.layers.split(",")]
    locations = args.locations.split(",")
    from snakemake.utils import validate

    config = yaml.safe_load(Path(args.config).read_text())
    validate(config, str(ROOT / "schemas/config.schema.yaml"))
    config["locations"] = locations
    default_cells = grid.cells(config)
    full = dict(config, probe={**config["probe"], "grid": [{"locations": "all", "positions": "all", "problems": "all",
                                                             "control": True, "directions": False}]})
    full_cells = grid.cells(full)
    print(f"{args.hidden}: layers {layers}, locations {locations}, one thread, {device}; {torch.__version__}; the workflow's "
          f"grid ({args.config}):\n{grid.describe(default_cells)}", flush=True)

    baseline = (run_baseline(args.baseline, args.hidden, args.answers, labels, layers, locations, device)
                if args.baseline else {})
    totals = {"grid": 0.0, "same cells": 0.0, "baseline": 0.0}
    flops = {"grid": 0.0, "same cells": 0.0}
    every_solve = []
    worst = {"accuracy": 0.0, "balanced_accuracy": 0.0, "control_accuracy": 0.0}
    ours_at = {}
    for location in locations:
        for layer in layers:
            states, meta = read_layer(args.hidden, layer, location)
            seconds, tables, solves = fit_cells(states, meta, answers, labels, default_cells[location], device)
            same_seconds, same_tables, same_solves = fit_cells(states, meta, answers, labels, full_cells[location],
                                                               device)
            totals["grid"] += seconds
            totals["same cells"] += same_seconds
            flops["grid"] += product_flops(solves)
            flops["same cells"] += product_flops(same_solves)
            every_solve += solves
            ours_at[(location, layer)] = tables
            line = f"  {location} layer {layer:>2}: workflow grid {seconds:6.1f} s, trainer on the baseline's cells " \
                   f"{same_seconds:6.1f} s"
            if (location, layer) in baseline:
                base_seconds, base_tables = baseline[(location, layer)]
                totals["baseline"] += base_seconds
                difference = worst_difference(tables, base_tables)
                worst = {k: max(worst[k], v) for k, v in difference.items()}
                line += f", baseline {base_seconds:6.1f} s; largest |difference| on the grid's cells " + ", ".join(
                    f"{k} {v:.4f}" for k, v in difference.items())
            print(line, flush=True)
    d = read_layer(args.hidden, layers[0], locations[0])[0].shape[2]
    rate = matmul_rate(d, int(len(answers) * 0.8 / 5))
    print(f"products: workflow grid {flops['grid'] / totals['grid'] / 1e9:.0f} GFLOP/s, trainer on the baseline's "
          f"cells {flops['same cells'] / totals['same cells'] / 1e9:.0f} GFLOP/s; this machine's rate for the shape "
          f"[{9 * 13}, {d}] @ [{d}, {int(len(answers) * 0.8 / 5)}]: {rate:.0f} GFLOP/s (one thread); "
          f"{mean_passes(every_solve):.1f} passes per fit on the grid")
    if baseline:
        print(f"probe stage: baseline {totals['baseline']:.1f} s, workflow grid {totals['grid']:.1f} s: "
              f"{totals['baseline'] / totals['grid']:.2f}x; the trainer alone on the baseline's cells "
              f"{totals['same cells']:.1f} s: {totals['baseline'] / totals['same cells']:.2f}x; largest |difference| "
              f"on the cells both fit: " + ", ".join(f"{k} {v:.4f}" for k, v in worst.items()))

    for layer in [int(v) for v in args.converged_layers.split(",") if v]:
        states, meta = read_layer(args.hidden, layer, "residual", positions=[-1])
        reference = converged_accuracy(states[:, 0], meta["label_id"], PROTOCOL["C"])
        ours = float(ours_at[("residual", layer)]["all/label"].set_index("position").loc[-1, "accuracy"]) \
            if ("residual", layer) in ours_at else float("nan")
        theirs = float(baseline[("residual", layer)][1]["all/label"].set_index("position").loc[-1, "accuracy"]) \
            if ("residual", layer) in baseline else float("nan")
        print(f"  residual layer {layer} token -1, all/label: converged scikit-learn {reference:.4f}, workflow "
              f"{ours:.4f} ({ours - reference:+.4f}), baseline {theirs:.4f} ({theirs - reference:+.4f})", flush=True)

    from sklearn.linear_model import LogisticRegression

    sample = [layers[i] for i in np.linspace(0, len(layers) - 1, args.reference_probes).round().astype(int)]
    seconds, ours = [], []
    for layer in sample:
        states, meta = read_layer(args.hidden, layer, "residual", positions=[-1])
        x, y = states[:, 0], meta["label_id"]
        train, test = split_indices(y, 0.2, 42, stratify=False)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            LogisticRegression(C=1.0, max_iter=1000).fit(x[train], y[train])
        seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        fit_logistic(x, [Probe(train, np.searchsorted(np.unique(y), y[train]), len(np.unique(y)))], C=1.0,
                     max_iter=1000, tol=1e-4, device=device)
        ours.append(time.perf_counter() - start)
    print(f"reference notebook (LogisticRegression(C=1, max_iter=1000) on raw states, one probe): "
          f"{np.mean(seconds):.1f} s/probe on layers {sample}; the workflow's trainer on the same probe alone "
          f"{np.mean(ours):.2f} s ({np.mean(seconds) / np.mean(ours):.0f}x)")
    print(json.dumps({"seconds": totals, "gflops": {k: flops[k] / totals[k] / 1e9 for k in flops},
                      "passes_per_fit": mean_passes(every_solve),
                      "machine_gflops": rate, "worst": worst}))


if __name__ == "__main__":
    main()
