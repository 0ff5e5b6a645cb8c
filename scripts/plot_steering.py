"""Emotion promotion (emotion x layer) or appraisal surgery (answers per recipe) of one model."""

import pandas as pd

from emoprobe.errors import log_to
from emoprobe.report import plot_promotion, plot_surgery

log = log_to(snakemake.log[0])
table = pd.read_csv(snakemake.input[0], sep="\t")
plot = {"promotion": plot_promotion, "surgery": plot_surgery}[snakemake.wildcards.experiment]
plot(table, snakemake.wildcards.model, snakemake.output.png, snakemake.output.pdf)
log.info("plotted %d rows", len(table))
