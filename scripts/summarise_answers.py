"""One line per model: how often its own answer is the true label."""

import pandas as pd

from emoprobe.errors import log_to
from emoprobe.io import write_tsv
from emoprobe.tables import answer_summary

log = log_to(snakemake.log[0])
answers = {model: pd.read_csv(path, sep="\t") for model, path in zip(snakemake.params.models, snakemake.input)}
summary = answer_summary(answers)
log.info("\n%s", summary.to_string(index=False))
write_tsv(summary, snakemake.output[0])
