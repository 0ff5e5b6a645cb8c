"""Confusion matrix of one model's own answers."""

import pandas as pd

from emoprobe.errors import log_to
from emoprobe.figures import plot_confusion

log = log_to(snakemake.log[0])
answers = pd.read_csv(snakemake.input[0], sep="\t")
plot_confusion(answers, snakemake.params.labels, snakemake.wildcards.model, snakemake.output.png,
               snakemake.output.pdf)
log.info("plotted %s", snakemake.wildcards.model)
