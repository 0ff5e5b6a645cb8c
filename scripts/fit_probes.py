"""Fit one probe per token position on one layer's hidden states."""

import os

import torch

from emoprobe.errors import log_to, reported_as_message
from emoprobe.h5io import read_layer
from emoprobe.probes import probe_layer

log = log_to(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
layer = int(snakemake.wildcards.layer)
settings = snakemake.params.probe
with reported_as_message():
    states, meta = read_layer(snakemake.input[0], layer)
log.info("layer %d: states %s from %s", layer, states.shape, snakemake.input[0])
table = probe_layer(states, meta["label_id"], meta["positions"], C=settings["C"], max_iter=settings["max_iter"],
                    tol=settings["tol"], test_size=settings["test_size"], seed=settings["seed"],
                    stratify=settings["stratify"], n_classes=snakemake.params.n_classes)
log.info("\n%s", table.to_string(index=False))
not_converged = table.loc[~table["converged"], "position"].tolist()
if not_converged:
    log.warning("L-BFGS stopped after %d iterations without reaching tol=%g at positions %s",
                table["n_iter"].iloc[0], settings["tol"], not_converged)
partial = snakemake.output[0] + ".partial"
table.to_csv(partial, sep="\t", index=False, float_format="%.6f")
os.replace(partial, snakemake.output[0])
