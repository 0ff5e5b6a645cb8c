"""Collect every model's appraisal R² into results/appraisal_r2.tsv."""

import os
import re

import pandas as pd

from emoprobe.errors import log_to

log = log_to(snakemake.log[0])
table = pd.concat([pd.read_csv(path, sep="\t").assign(model=re.search(r"appraisal/(.+)\.tsv$", path).group(1))
                   for path in snakemake.input], ignore_index=True)
table = table[["model", "layer", "position", "appraisal", "r2"]]
best = table.loc[table.groupby("model", sort=False)["r2"].idxmax()]
log.info("best R² per model:\n%s", best.to_string(index=False))
partial = snakemake.output[0] + ".partial"
table.to_csv(partial, sep="\t", index=False, float_format="%.6f")
os.replace(partial, snakemake.output[0])
