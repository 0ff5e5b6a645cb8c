"""Fit one probe per token position on one location of each layer of a chunk, for every subset of texts."""

import os

import pandas as pd
import torch

from emoprobe.errors import log_to, reported_as_message
from emoprobe.h5io import read_layer
from emoprobe.probes import probe_device, probe_layer, subset_rows

log = log_to(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
location, first, last = snakemake.wildcards.location, int(snakemake.wildcards.first), int(snakemake.wildcards.last)
settings = snakemake.params.probe
fit = {key: settings[key] for key in ("C", "max_iter", "tol", "folds", "test_size", "seed", "stratify", "control")}
fit["device"] = probe_device(settings["device"])
log.info("fitting on %s, %d threads", fit["device"], torch.get_num_threads())
with reported_as_message():
    answers = pd.read_csv(snakemake.input.answers, sep="\t") if "answers" in snakemake.input.keys() else None
tables = []
for layer in range(first, last + 1):
    with reported_as_message():
        states, meta = read_layer(snakemake.input.states, layer, location)
    for subset in settings["subsets"]:
        rows = subset_rows(subset, meta["row_id"], answers)
        table = probe_layer(states[rows], meta["label_id"][rows], meta["positions"],
                            n_classes=snakemake.params.n_classes, **fit)
        tables.append(table.assign(layer=layer, subset=subset))
        best = table.loc[table["accuracy"].idxmax()]
        log.info("%s layer %d, %s (%d texts): best %.3f at token %d, %d iterations%s", location, layer, subset,
                 len(rows), best.accuracy, best.position, table["n_iter"].max(),
                 "" if table["converged"].all() else f", NOT converged to tol={settings['tol']:g}")
table = pd.concat(tables, ignore_index=True)
partial = snakemake.output[0] + ".partial"
table.to_csv(partial, sep="\t", index=False, float_format="%.6f")
os.replace(partial, snakemake.output[0])
