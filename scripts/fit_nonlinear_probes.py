"""Fit the non-linear probes (one hidden layer of ReLU units, emoprobe/mlp.py) of one location at the last token of
every layer, on the linear probes' folds, scored as they are: the paper's emotion_probing_non_linear."""

import torch

from emoprobe.device import pick_device
from emoprobe.errors import log_to, reported_as_message
from emoprobe.h5io import read_stored_layer
from emoprobe.io import read_optional_tsv, write_tsv
from emoprobe.probes import count_cells, describe_job, probe_location
from emoprobe.progress import Progress

log = log_to(snakemake.log[0])
# one thread: the last bits of a fit would change with the thread count (as in fit_probes.py)
torch.set_num_threads(1)
model, location, layers, labels = (snakemake.wildcards.model, snakemake.params.location, snakemake.params.layers,
                                   snakemake.params.labels)
settings, cells = snakemake.params.probe, snakemake.params.cells
device = pick_device(settings.device, needs_float64=True)
# the first line of the log: what this job does (its progress follows, in cells: a problem at token -1 of a layer)
log.info(describe_job("fit_nonlinear_probes", model, location, layers, cells, settings, device))
with reported_as_message():
    answers = read_optional_tsv(snakemake.input, "answers")


def states_of(layer):
    with reported_as_message():
        return read_stored_layer(snakemake.input.states, layer, location, positions=[-1],
                                 provenance=snakemake.params.provenance)


with Progress(log, count_cells(layers, cells), "cells", what=f"fit_nonlinear_probes {location}") as progress:
    probed = probe_location(states_of, layers, cells, settings, device=device, answers=answers, labels=labels,
                            model=model, location=f"{location}-nonlinear", progress=progress, log=log)
write_tsv(probed.table, snakemake.output[0])
