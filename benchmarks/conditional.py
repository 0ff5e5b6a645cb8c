"""Benchmark: what the conditional probes cost, and against what.

Run after `make run`. In one run, one thread (as the jobs fit):

1. **What they add to the run**: job-seconds of the run's own Snakemake benchmarks (``logs/benchmarks``), the
   extraction, the probe stage (every probe and baseline job) and the conditional probes (the words' embeddings, the
   fits, the localisation), and their ratios to the extraction.
2. **Per layer, side by side** on ``--layers`` of one model's residual stream at token -1 (all texts, true label),
   each with the three baselines fitted once as the job fits them:
   - the workflow (``emoprobe.conditional.conditional_fits``, penalties chosen on ``selection_folds`` = 1 inner fold);
   - the same, penalties chosen on all 3 inner folds (what choosing on one saves, and whether it changes the bits);
   - the plain method: scikit-learn's ``LogisticRegression`` on the concatenation ``[baseline ; layer]`` standardised,
     its penalty chosen by 3-fold inner cross-validation over the same grid's penalties (one outer fold of the words
     baseline, timed and multiplied by folds x baselines).

    .venv/bin/python benchmarks/conditional.py --model smollm2-135m --layers 15
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from emoprobe import conditional
from emoprobe.corpus import read_prompts
from emoprobe.h5io import read_layer, read_word_embeddings
from emoprobe.problems import fold_indices

PROBE_STAGE = ("fit_probes", "fit_nonlinear_probes", "fit_appraisal_probes", "fit_text_baseline",
               "fit_ratings_baseline", "logit_lens")
CONDITIONAL_STAGE = ("embed_words", "fit_conditional_probes", "localise_conditional")


def job_seconds(rule: str) -> float:
    """The job-seconds of every job of ``rule`` in this run's Snakemake benchmarks."""
    return sum(float(pd.read_csv(path, sep="\t")["s"].iloc[-1])
               for path in glob.glob(f"logs/benchmarks/{rule}/**/*.tsv", recursive=True)
               + glob.glob(f"logs/benchmarks/{rule}.tsv"))


def stage_costs() -> None:
    extraction = job_seconds("extract_hidden_states")
    probes = sum(job_seconds(rule) for rule in PROBE_STAGE)
    added = {rule: job_seconds(rule) for rule in CONDITIONAL_STAGE}
    print(f"extraction {extraction:.0f} job-s; probe stage {probes:.0f} ({probes / extraction:.2f}x); conditional "
          f"probes {sum(added.values()):.0f} ({sum(added.values()) / extraction:.2f}x: "
          + ", ".join(f"{rule} {s:.0f}" for rule, s in added.items())
          + f"); all probes {(probes + sum(added.values())) / extraction:.2f}x the extraction")


def plain(x: np.ndarray, base: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, Cs, seed: int):
    """scikit-learn on ``[base ; x]`` standardised, C by 3-fold inner CV on held-out cross-entropy; the held-out
    log2-probabilities of ``test``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    features = np.concatenate([base, x], axis=1)
    best = None
    for C in Cs:
        loss = 0.0
        for a, b in conditional.inner_splits(y, train, 3, seed):
            scaler = StandardScaler().fit(features[a])
            model = LogisticRegression(C=C, max_iter=1000, tol=1e-4).fit(scaler.transform(features[a]), y[a])
            loss -= model.predict_log_proba(scaler.transform(features[b]))[np.arange(len(b)), y[b]].sum()
        best = min(best or (loss, C), (loss, C))
    scaler = StandardScaler().fit(features[train])
    model = LogisticRegression(C=best[1], max_iter=1000, tol=1e-4).fit(scaler.transform(features[train]), y[train])
    return model.predict_log_proba(scaler.transform(features[test]))[np.arange(len(test)), y[test]] / np.log(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", default="15")
    args = parser.parse_args()
    torch.set_num_threads(1)
    stage_costs()
    settings = yaml.safe_load(Path("results/config.yaml").read_text())["probe"]
    grid = settings["conditional"]
    [hidden] = glob.glob(f"results/hidden/{args.model}/layers*.h5")
    _, meta = read_layer(hidden, 1, "residual", positions=[-1])
    y = np.searchsorted(np.unique(meta["label_id"]), meta["label_id"])
    K = int(y.max()) + 1
    texts = read_prompts("results/corpus/prompts.tsv").set_index("row_id").loc[meta["row_id"], "text"].to_numpy(object)
    words = read_word_embeddings(f"results/baselines/{args.model}/words.h5", meta["row_id"])
    splits = fold_indices(y, folds=settings["folds"], test_size=settings["test_size"], seed=settings["seed"],
                          stratify=settings["stratify"])
    fit = {"max_iter": settings["max_iter"], "tol": settings["tol"]}
    baselines = {}
    for selection in (1, 3):
        inner = {"inner_folds": 3, "selection_folds": selection, "seed": settings["seed"]}
        start = time.perf_counter()
        baselines[selection] = {
            "frequencies": conditional.nested(conditional.frequencies(K), y, K, splits, [None], **inner),
            "text": conditional.nested(conditional.text_baseline(texts, K, **fit), y, K, splits, grid["text_C"],
                                       **inner),
            "words": conditional.nested(conditional.logistic_baseline(words, K, **fit), y, K, splits, grid["words_C"],
                                        **inner)}
        print(f"baselines, penalties chosen on {selection} inner fold(s): {time.perf_counter() - start:.1f} s")
    references = {selection: conditional.recalibrated(
        baselines[selection], y, K, splits, Cs=grid["C"], inner_folds=3, selection_folds=selection,
        seed=settings["seed"], **fit) for selection in (1, 3)}
    for layer in map(int, args.layers.split(",")):
        states, _ = read_layer(hidden, layer, "residual", positions=[-1])
        x = states[:, 0]
        line = [f"{args.model} layer {layer}:"]
        for selection in (1, 3):
            inner = {"inner_folds": 3, "selection_folds": selection, "seed": settings["seed"]}
            start = time.perf_counter()
            found = conditional.conditional_fits(x, y, K, splits, baselines[selection], Cs=grid["C"], **inner, **fit,
                                                 references=references[selection])
            seconds = time.perf_counter() - start
            bits = {name: conditional.information_row(found[name], references[selection][name],
                                                      baselines[selection][name],
                                                      baselines[selection]["frequencies"])["information"]
                    for name in found}
            line.append(f"workflow, chosen on {selection}: {seconds:.1f} s ("
                        + ", ".join(f"{name} {value:+.3f}" for name, value in bits.items()) + " bits)")
        train, test = splits[0]
        start = time.perf_counter()
        joint = plain(x, words, y, train, test, [C for C in grid["C"] if C > 0], settings["seed"])
        seconds = (time.perf_counter() - start) * len(splits) * 3
        gain = float(np.mean(joint - references[1]["words"].log2_probability[test]))
        line.append(f"scikit-learn on [words ; layer], all 3 inner folds: {seconds:.0f} s for the layer's three "
                    f"baselines (one fold timed, x {len(splits)} folds x 3; beyond words on that fold {gain:+.3f} bits)")
        print("\n  ".join(line), flush=True)


if __name__ == "__main__":
    main()
