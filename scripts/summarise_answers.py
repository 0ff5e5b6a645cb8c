"""One line per model: how often its own answer is the true label."""

import os
import re

import pandas as pd

from emoprobe.errors import log_to
from emoprobe.report import answer_summary

log = log_to(snakemake.log[0])
answers = {re.search(r"answers/(.+)\.tsv$", path).group(1): pd.read_csv(path, sep="\t") for path in snakemake.input}
summary = answer_summary(answers)
log.info("\n%s", summary.to_string(index=False))
partial = snakemake.output[0] + ".partial"
summary.to_csv(partial, sep="\t", index=False, float_format="%.6f")
os.replace(partial, snakemake.output[0])
