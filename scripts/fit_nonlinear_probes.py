"""Fit the non-linear probes (one hidden layer of ReLU units, emoprobe/mlp.py) of one location at the last token of
every layer, on the linear probes' folds, scored as they are: the paper's emotion_probing_non_linear."""

import pandas as pd
import torch

from emoprobe.device import pick_device
from emoprobe.errors import log_to, reported_as_message
from emoprobe.grid import Cell
from emoprobe.h5io import read_layer
from emoprobe.io import read_optional_tsv, write_tsv
from emoprobe.probes import probe_layer, probe_targets
from emoprobe.progress import Progress, layer_range

log = log_to(snakemake.log[0])
# one thread: the last bits of a fit would change with the thread count (as in fit_probes.py)
torch.set_num_threads(1)
location, labels, settings = snakemake.params.location, snakemake.params.labels, snakemake.params.probe
cells = {problem: {int(p): Cell(**cell) for p, cell in by_position.items()}
         for problem, by_position in snakemake.params.cells.items()}
split = {key: settings[key] for key in ("folds", "test_size", "seed", "stratify")}
device = pick_device(settings["device"], needs_float64=True)
layers = snakemake.params.layers
# the first line of the log: what this job does (its progress follows, in cells: a problem at token -1 of a layer)
log.info("fit_nonlinear_probes: model %s, location %s, MLP probes at token -1 of layers %s x %d problem(s) (%s) = "
         "%d cells, %s, %s, on %s", snakemake.wildcards.model, location, layer_range(layers), len(cells),
         ", ".join(cells), len(layers) * len(cells), f"{split['folds']} folds" if split["folds"] else
         "one train/test split", snakemake.params.nonlinear, device)
progress = Progress(log, len(layers) * len(cells), "cells", what=f"fit_nonlinear_probes {location}")
with reported_as_message():
    answers = read_optional_tsv(snakemake.input, "answers")
tables = []
for layer in layers:
    path = snakemake.input.states[snakemake.params.chunk_index[layer]]
    with reported_as_message():
        states, meta = read_layer(path, layer, location, positions=[-1], provenance=snakemake.params.provenance)
    problems = [(f"{subset}/{target}", rows, label_id) for subset, target, rows, label_id in
                probe_targets(settings["subsets"], settings["answer_probe"], meta["row_id"], meta["label_id"], answers,
                              labels) if f"{subset}/{target}" in cells]
    fitted = probe_layer(states, [-1], [(rows, label_id) for _, rows, label_id in problems],
                         [cells[name] for name, _, _ in problems], label_names=labels, device=device,
                         mlp=snakemake.params.nonlinear, progress=progress, **split)
    for (name, _, _), result in zip(problems, fitted):
        subset, target = name.split("/")
        table = result.table.assign(model=snakemake.wildcards.model, location=f"{location}-nonlinear", subset=subset,
                                    target=target, layer=layer)
        tables.append(table)
        row = table.iloc[0]
        if pd.isna(row.balanced_accuracy):
            log.info("layer %d, %s: nothing scored: %s", layer, name, row.note)
            continue
        log.info("layer %d, %s: balanced accuracy %.3f, %d iterations at most%s", layer, name, row.balanced_accuracy,
                 row.n_iter, "" if row.converged else
                 f", NOT converged to tol={snakemake.params.nonlinear['tol']:g}")
progress.close()
write_tsv(pd.concat(tables, ignore_index=True), snakemake.output[0])
