"""Benchmark: the workflow's batched probe trainer against the per-fit trainer it replaced, and against the
reference notebook's sklearn call.

Default protocol (``--answers``, the model's answers table, needed for it): every layer's probes as a probe
job fits them -- 5 folds x (probe + shuffled-label control) x (all texts, model_correct, the model's answer) --
once with the per-fit trainer (``emoprobe.probes.probe_layer``, one L-BFGS per fold and labelling) and once
with the batched one (``emoprobe.batched.probe_layer_batched``), in one process, one after the other; it prints
both times, the ratio and the largest difference of any probe's accuracy, balanced accuracy and control
accuracy (the two must agree within 0.002).

Reference (the course notebook): ``LogisticRegression(C=1.0, max_iter=1000)`` on raw
hidden states, one probe at a time. It is slow, so it is timed on a sample of probes
(``--reference-probes``, spread over the layers, all at position -1) and its time per
probe is extrapolated to all probes of the model; the printout says so.
Workflow: ``emoprobe.probes.probe_layer`` on every layer of the model, as the jobs run it.
Accuracy check: per probe, the workflow's held-out accuracy minus that of a fully
converged sklearn fit of the same objective (standardised features, ``tol=1e-6``,
``max_iter=20000``) on the same split, for the layers in ``--converged-layers``.
With ``--compare``, the workflow's probes are also fitted on a second file of the same
texts (states computed in bfloat16, say, or stored in float16) and their accuracies
compared probe by probe.

    .venv/bin/python benchmarks/probes.py --hidden results/hidden/smollm2-135m/layers01-30.h5
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from emoprobe.batched import probe_layer_batched  # noqa: E402
from emoprobe.h5io import read_layer  # noqa: E402
from emoprobe.device import pick_device  # noqa: E402
from emoprobe.probes import probe_layer, probe_targets, split_indices, standardise  # noqa: E402

DEFAULT_PROTOCOL = dict(C=1.0, max_iter=1000, tol=1e-4, folds=5, test_size=0.2, seed=42, stratify=False, control=True)


def default_protocol(states: dict, answers: pd.DataFrame, labels: list[str], device) -> float:
    """Time the per-fit and the batched trainer on every layer's probes of the default protocol; returns the
    largest difference of a probe's scores between the two."""
    seconds = {"per-fit": 0.0, "batched": 0.0}
    worst = {"accuracy": 0.0, "balanced_accuracy": 0.0, "control_accuracy": 0.0}
    n_fits = 0
    for layer, (x, meta) in states.items():
        problems = probe_targets(["all", "model_correct"], True, meta["row_id"], meta["label_id"], answers, labels)
        start = time.perf_counter()
        per_fit = [probe_layer(x[rows], y, meta["positions"], label_names=labels, device=device, **DEFAULT_PROTOCOL)[0]
                   for _, _, rows, y in problems]
        middle = time.perf_counter()
        batched = [table for table, _ in probe_layer_batched(x, [(rows, y) for _, _, rows, y in problems],
                                                              meta["positions"], label_names=labels, device=device,
                                                              **DEFAULT_PROTOCOL)]
        end = time.perf_counter()
        seconds["per-fit"] += middle - start
        seconds["batched"] += end - middle
        n_fits += len(problems) * 5 * 2
        for a, b in zip(per_fit, batched):
            for column in worst:
                worst[column] = max(worst[column], float(np.nanmax(np.abs(a[column] - b[column]))))
        print(f"  layer {layer:>2}: per-fit {middle - start:6.1f} s, batched {end - middle:6.1f} s, "
              f"iterations {[int(t['n_iter'].iloc[0]) for t in per_fit]} -> {[int(t['n_iter'].iloc[0]) for t in batched]}",
              flush=True)
    print(f"default protocol, {len(states)} layers, {n_fits} fits of {len(states[next(iter(states))][1]['positions'])} "
          f"positions each: per-fit trainer {seconds['per-fit']:.1f} s, batched {seconds['batched']:.1f} s, "
          f"speed-up {seconds['per-fit'] / seconds['batched']:.2f}x; largest |difference| "
          + ", ".join(f"{k} {v:.4f}" for k, v in worst.items()))
    return max(worst.values())


def sklearn_fit(x_train, y_train, x_test, y_test, **settings) -> tuple[float, int, float]:
    """Held-out accuracy, iterations and seconds of one sklearn LogisticRegression."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        model = LogisticRegression(**settings).fit(x_train, y_train)
        seconds = time.perf_counter() - start
    return float(model.score(x_test, y_test)), int(np.max(model.n_iter_)), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", required=True, help="an HDF5 chunk file holding all layers of one model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reference-probes", type=int, default=3)
    parser.add_argument("--converged-layers", default="all", help="'all' or comma-separated 1-based layers")
    parser.add_argument("--n-classes", type=int, default=13)
    parser.add_argument("--device", default="auto", help="where the workflow's probes are fitted (probe.device)")
    parser.add_argument("--compare", help="a second HDF5 file of the same layers and texts")
    parser.add_argument("--answers", help="the model's answers (results/answers/{model}.tsv): time the default "
                                          "protocol with the per-fit and the batched trainer")
    parser.add_argument("--layers", default="all", help="'all' or comma-separated layers to load")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device, needs_float64=True)

    with h5py.File(args.hidden) as f:
        layers = sorted(int(k.split("_")[1]) for k in f if k.startswith("residual_") and k != "residual_00")
    if args.layers != "all":
        layers = [int(v) for v in args.layers.split(",")]
    states = {layer: read_layer(args.hidden, layer) for layer in layers}
    label_id, positions = states[layers[0]][1]["label_id"], states[layers[0]][1]["positions"]
    labels = [f"label {i}" for i in range(args.n_classes)]
    train, test = split_indices(label_id, 0.2, 42, stratify=False)
    n_probes = len(layers) * len(positions)
    print(f"{args.hidden}: {len(layers)} layers x {len(positions)} positions = {n_probes} probes, "
          f"{len(train)} train / {len(test)} test rows, {args.threads} threads")
    if args.answers:
        answers = pd.read_csv(args.answers, sep="\t")
        trainers_differ = default_protocol(states, answers, [c.removeprefix("logit_") for c in answers
                                                             if c.startswith("logit_")], device)

    def workflow_probes(states: dict) -> dict:
        """Per layer, the probe table of the reference's single 80/20 split, no control: the reference's probes,
        fitted by the workflow's batched trainer."""
        settings = dict(DEFAULT_PROTOCOL, folds=0, control=False)
        return {layer: probe_layer_batched(x, [(np.arange(len(x)), meta["label_id"])], positions, label_names=labels,
                                           device=device, **settings)[0][0]
                for layer, (x, meta) in states.items()}

    start = time.perf_counter()
    ours = workflow_probes(states)
    our_seconds = time.perf_counter() - start
    iterations = [int(t["n_iter"].iloc[0]) for t in ours.values()]
    print(f"workflow on {device}: all {n_probes} probes in {our_seconds:.1f} s = {our_seconds / n_probes:.3f} s/probe; "
          f"L-BFGS iterations per layer {min(iterations)}-{max(iterations)}, "
          f"converged {sum(t['converged'].sum() for t in ours.values())}/{n_probes}")

    sample = [layers[i] for i in np.linspace(0, len(layers) - 1, args.reference_probes).round().astype(int)]
    reference = []
    for layer in sample:
        x = states[layer][0][:, 0]
        reference.append(sklearn_fit(x[train], label_id[train], x[test], label_id[test], C=1.0, max_iter=1000))
        print(f"  reference probe layer {layer} position -1: accuracy {reference[-1][0]:.3f}, "
              f"{reference[-1][1]} iterations, {reference[-1][2]:.1f} s")
    per_probe = float(np.mean([r[2] for r in reference]))
    print(f"reference: {per_probe:.1f} s/probe (timed on {len(sample)} probes, extrapolated: "
          f"{per_probe * n_probes / 60:.1f} min for all {n_probes})")
    print(f"speed-up per probe: {per_probe / (our_seconds / n_probes):.0f}x")

    checked = layers if args.converged_layers == "all" else [int(v) for v in args.converged_layers.split(",")]
    jobs = []
    for layer in checked:
        x_train, x_test = standardise(states[layer][0][train], states[layer][0][test])
        for k, position in enumerate(positions):
            jobs.append((layer, position, x_train[k], x_test[k]))
    converged = Parallel(n_jobs=args.threads)(
        delayed(sklearn_fit)(x_train, label_id[train], x_test, label_id[test], C=1.0, tol=1e-6, max_iter=20000)
        for _, _, x_train, x_test in jobs)
    differences = []
    for (layer, position, _, _), (accuracy, n_iter, _) in zip(jobs, converged):
        ours_accuracy = float(ours[layer].set_index("position").loc[position, "accuracy"])
        differences.append(ours_accuracy - accuracy)
        print(f"  layer {layer:>2} position {position}: workflow {ours_accuracy:.4f}, converged sklearn "
              f"{accuracy:.4f} ({n_iter} iterations), difference {differences[-1]:+.4f}")
    worst = float(np.abs(differences).max())
    print(f"accuracy vs converged sklearn on {len(jobs)} probes: max |difference| {worst:.4f} "
          f"({worst * len(test):.0f} test examples), mean {np.mean(differences):+.4f}")
    if args.compare:
        other = {layer: read_layer(args.compare, layer) for layer in layers}
        if any(not np.array_equal(other[layer][1]["row_id"], states[layer][1]["row_id"]) for layer in layers):
            raise SystemExit(f"{args.compare}: not the texts of {args.hidden}, in the same order")
        scale = max(float(np.abs(states[layer][0]).max()) for layer in layers)
        state_difference = max(float(np.abs(other[layer][0] - states[layer][0]).max()) for layer in layers)
        theirs = workflow_probes(other)
        changes = np.concatenate([
            theirs[layer].set_index("position")["accuracy"].to_numpy() - ours[layer].set_index("position")[
                "accuracy"].to_numpy() for layer in layers])
        print(f"{args.compare} against {args.hidden}: states differ by at most {state_difference:.3g} "
              f"(largest |state| {scale:.3g}); probe accuracy difference on all {len(changes)} probes: max "
              f"|difference| {np.abs(changes).max():.4f} ({np.abs(changes).max() * len(test):.0f} test examples), "
              f"mean {changes.mean():+.4f}; best probe {max(t['accuracy'].max() for t in theirs.values()):.4f} "
              f"against {max(t['accuracy'].max() for t in ours.values()):.4f}")
    if args.answers and trainers_differ > 0.002:
        raise SystemExit("a probe of the batched trainer differs from the per-fit trainer's by more than 0.002")
    if worst > 0.01:
        raise SystemExit("a probe differs from the converged sklearn fit by more than 0.01")


if __name__ == "__main__":
    main()
