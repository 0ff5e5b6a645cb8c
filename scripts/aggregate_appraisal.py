"""Collect every model's appraisal R² into results/appraisal_r2.tsv."""

import pandas as pd

from emoprobe.errors import log_to
from emoprobe.io import write_tsv

log = log_to(snakemake.log[0])
table = pd.concat([pd.read_csv(path, sep="\t").assign(model=model)
                   for model, path in zip(snakemake.params.models, snakemake.input)], ignore_index=True)
table = table[["model", "layer", "position", "appraisal", "r2"]]
best = table.loc[table.groupby("model", sort=False)["r2"].idxmax()]
log.info("best R² per model:\n%s", best.to_string(index=False))
write_tsv(table, snakemake.output[0])
