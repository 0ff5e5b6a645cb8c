"""Collect every model's conditional probe tables into results/conditional.tsv and their localisations into
results/conditional_localisation.tsv."""

import pandas as pd

from emoprobe.errors import log_to
from emoprobe.io import write_tsv

log = log_to(snakemake.log[0])
table = pd.concat([pd.read_csv(path, sep="\t") for path in snakemake.input.tables], ignore_index=True)
localisation = pd.concat([pd.read_csv(path, sep="\t") for path in snakemake.input.localisations], ignore_index=True)
write_tsv(table, snakemake.output.table)
write_tsv(localisation, snakemake.output.localisation)
log.info("%d rows of %d models", len(table), table["model"].nunique())
