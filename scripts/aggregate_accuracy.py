"""Collect every probe and baseline table into results/accuracy.tsv, every model's localisation into
results/localisation.tsv, and a text table per model."""

import pandas as pd

from emoprobe.errors import log_to
from emoprobe.io import atomic_path, write_tsv
from emoprobe.tables import accuracy_table, by_layer_text, read_score_table

log = log_to(snakemake.log[0])
order = snakemake.params.order
table = accuracy_table([read_score_table(path) for path in snakemake.input.scores], order["models"],
                       order["locations"], order["subsets"])
localisation = pd.concat([pd.read_csv(path, sep="\t") for path in snakemake.input.localisation], ignore_index=True)
write_tsv(table, snakemake.output.table)
write_tsv(localisation, snakemake.output.localisation)
for model, path in zip(order["models"], snakemake.output.text):
    with atomic_path(path) as partial, open(partial, "w") as out:
        out.write(by_layer_text(table, localisation, model, snakemake.params.grid))
log.info("%d scores from %d models", len(table), table["model"].nunique())
