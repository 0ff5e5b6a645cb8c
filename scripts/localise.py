"""Where each of one model's probes forms along the layers: peak, onset and plateau start with bootstrap
intervals over texts, the peak's score allowing for its choice, and its paired differences with layer 1 and with
the text probe of the same texts, from the probes' (and the logit lens') pooled out-of-fold predictions."""

import pandas as pd

from emoprobe.errors import log_to, reported_as_message
from emoprobe.h5io import read_predictions
from emoprobe.io import write_tsv
from emoprobe.scores import LOCALISATION_COLUMNS, localisation_rows

log = log_to(snakemake.log[0])
model, settings = snakemake.wildcards.model, snakemake.params.probe
tables = []
with reported_as_message():
    text = read_predictions(snakemake.input.text, provenance=snakemake.params.text_provenance)
for location in snakemake.params.locations:
    with reported_as_message():
        problems = read_predictions(snakemake.input[location], provenance=snakemake.params.provenance[location])
    rows = localisation_rows(problems, n_layers=snakemake.params.n_layers, replicates=settings["bootstrap"],
                             seed=settings["seed"], text=text)
    tables.append(pd.DataFrame(rows).assign(model=model, location=location))
    for row in rows:
        if row["position"] == -1:
            log.info("%s %s / %s: peak layer %d [%d, %d], onset %d [%d, %d], plateau from %d [%d, %d]", location,
                     row["subset"], row["target"], row["peak_layer"], row["peak_low"], row["peak_high"],
                     row["onset_layer"], row["onset_low"], row["onset_high"], row["plateau_layer"],
                     row["plateau_low"], row["plateau_high"])
write_tsv(pd.concat(tables, ignore_index=True).reindex(columns=LOCALISATION_COLUMNS), snakemake.output[0])
