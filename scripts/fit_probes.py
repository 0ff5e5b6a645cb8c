"""Fit the probes of the grid's cells at one location of each layer of a group, and keep each probe's pooled
out-of-fold predictions and the weights of its fit on all texts where the grid asks for them."""

import torch

from emoprobe.device import pick_device
from emoprobe.errors import log_to, reported_as_message
from emoprobe.grid import positions_of
from emoprobe.h5io import read_layer, write_directions, write_predictions
from emoprobe.io import read_optional_tsv, write_tsv
from emoprobe.probes import count_cells, describe_job, probe_location
from emoprobe.progress import Progress
from emoprobe.provenance import predictions as predictions_provenance

log = log_to(snakemake.log[0])
# One thread whatever the job is given: the order of torch's parallel sums, so the last bits of a fit, would
# change with the thread count, and jobs, not threads, are what keep the cores busy.
torch.set_num_threads(1)
model, location, layers, labels = (snakemake.wildcards.model, snakemake.params.location, snakemake.params.layers,
                                   snakemake.params.labels)
settings, cells = snakemake.params.probe, snakemake.params.cells
device = pick_device(settings.device, needs_float64=True)
# the first line of the log: what this job does (its progress follows, in cells: a problem at a token position)
log.info("%s, %d thread(s)", describe_job("fit_probes", model, location, layers, cells, settings, device),
         torch.get_num_threads())
with reported_as_message():
    answers = read_optional_tsv(snakemake.input, "answers")


def states_of(layer):
    with reported_as_message():
        return read_layer(snakemake.input.states, layer, location, positions=positions_of(cells),
                          provenance=snakemake.params.provenance)


with Progress(log, count_cells(layers, cells), "cells", what=f"fit_probes {location}") as progress:
    probed = probe_location(states_of, layers, cells, settings, device=device, answers=answers, labels=labels,
                            model=model, location=location, progress=progress, log=log)
write_tsv(probed.table, snakemake.output.table)
attrs = predictions_provenance(model, location, labels)
write_predictions(snakemake.output.predictions, probed.predictions, layers=layers, attrs=attrs)
write_directions(snakemake.output.directions, probed.directions, layers=layers, attrs=attrs)
