"""Collect every model's experiment tables into results/interventions.tsv (the union of their columns; a column
an experiment does not have is empty in its rows)."""

import pandas as pd

from emoprobe.errors import log_to
from emoprobe.io import write_tsv

log = log_to(snakemake.log[0])
tables = [pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[""]) for path in snakemake.input]
table = pd.concat(tables, ignore_index=True)
log.info("%d rows: %s", len(table), table.groupby(["model", "experiment"], sort=False).size().to_dict())
write_tsv(table, snakemake.output[0], float_format="%.6g")
