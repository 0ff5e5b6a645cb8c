"""Fit the probes of the grid's cells at one location of each layer of a group, and keep each probe's pooled
out-of-fold predictions and the weights of its fit on all texts where the grid asks for them."""

import numpy as np
import pandas as pd
import torch

from emoprobe.device import pick_device
from emoprobe.errors import log_to, reported_as_message
from emoprobe.grid import Cell, positions_of
from emoprobe.h5io import STACKED, read_layer, write_directions, write_predictions
from emoprobe.io import read_optional_tsv, write_tsv
from emoprobe.probes import probe_layer, probe_targets
from emoprobe.progress import Progress, layer_range
from emoprobe.provenance import predictions as predictions_provenance

log = log_to(snakemake.log[0])
# One thread whatever the job is given: the order of torch's parallel sums, so the last bits of a fit, would
# change with the thread count, and jobs, not threads, are what keep the cores busy.
torch.set_num_threads(1)
location, layers, labels = snakemake.params.location, snakemake.params.layers, snakemake.params.labels
settings = snakemake.params.probe
cells = {problem: {int(p): Cell(**cell) for p, cell in by_position.items()}
         for problem, by_position in snakemake.params.cells.items()}
positions = positions_of(cells)
fit = {key: settings[key] for key in ("C", "max_iter", "tol", "folds", "test_size", "seed", "stratify")}
fit["device"] = pick_device(settings["device"], needs_float64=True)
per_layer = sum(len(by_position) for by_position in cells.values())
# the first line of the log: what this job does (its progress follows, in cells: a problem at a token position)
log.info("fit_probes: model %s, location %s, layers %s x %d cell(s) each (%s) = %d cells, %s, on %s, %d thread(s)",
         snakemake.wildcards.model, location, layer_range(layers), per_layer,
         ", ".join(f"{problem} at token(s) {', '.join(map(str, by_position))}"
                   for problem, by_position in cells.items()),
         len(layers) * per_layer, f"{settings['folds']} folds" if settings["folds"] else "one train/test split",
         fit["device"], torch.get_num_threads())
progress = Progress(log, len(layers) * per_layer, "cells", what=f"fit_probes {location}")
with reported_as_message():
    answers = read_optional_tsv(snakemake.input, "answers")
tables, predictions, directions = [], {}, {}
for layer in layers:
    with reported_as_message():
        states, meta = read_layer(snakemake.input.states, layer, location, positions=positions,
                                  provenance=snakemake.params.provenance)
    problems = [(f"{subset}/{target}", rows, label_id) for subset, target, rows, label_id in
                probe_targets(settings["subsets"], settings["answer_probe"], meta["row_id"], meta["label_id"], answers,
                              labels) if f"{subset}/{target}" in cells]
    fitted = probe_layer(states, positions, [(rows, label_id) for _, rows, label_id in problems],
                         [cells[name] for name, _, _ in problems], label_names=labels, progress=progress, **fit)
    for (name, _, _), result in zip(problems, fitted):
        subset, target = name.split("/")
        table = result.table
        tables.append(table.assign(model=snakemake.wildcards.model, location=location, subset=subset, target=target,
                                   layer=layer))
        if result.predictions is not None:
            predicted = result.predictions
            kept = predictions.setdefault(name, {
                "positions": list(cells[name]), "row_id": meta["row_id"][predicted["rows"]],
                **{key: predicted[key] for key in ("label_id", "control_label_id", "prior_log2")},
                **{key: [] for key in STACKED}})
            for key in STACKED:
                kept[key].append(predicted[key])
        if result.directions is not None:
            fitted_on_all = directions.setdefault(name, {key: result.directions[key] for key in ("classes", "positions")}
                                                  | {"weights": [], "intercepts": []})
            for key in ("weights", "intercepts"):
                fitted_on_all[key].append(result.directions[key])
        scored = table.dropna(subset=["balanced_accuracy"])
        if scored.empty:
            log.info("%s layer %d, %s: nothing scored: %s", location, layer, name, table["note"].iloc[0])
            continue
        best = scored.loc[scored["balanced_accuracy"].idxmax()]
        log.info("%s layer %d, %s (%d texts): best balanced accuracy %.3f at token %d, %d iterations at most%s%s",
                 location, layer, name, best.n_texts, best.balanced_accuracy, best.position, table["n_iter"].max(),
                 "" if table["converged"].all() else f", NOT converged to tol={settings['tol']:g}",
                 f"; {best.note}" if best.note else "")
progress.close()
write_tsv(pd.concat(tables, ignore_index=True), snakemake.output.table)
attrs = predictions_provenance(snakemake.wildcards.model, location, labels)
write_predictions(snakemake.output.predictions,
                  {name: {**arrays, **{key: np.stack(arrays[key]) for key in STACKED}}
                   for name, arrays in predictions.items()}, layers=layers, attrs=attrs)
write_directions(snakemake.output.directions,
                 {name: {**arrays, **{key: np.stack(arrays[key]) for key in ("weights", "intercepts")}}
                  for name, arrays in directions.items()}, layers=layers, attrs=attrs)
