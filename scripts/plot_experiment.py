"""The figure of one experiment's own (its registry entry's, emoprobe.experiments) for one model."""

import pandas as pd

from emoprobe import figures
from emoprobe.errors import log_to
from emoprobe.experiments import EXPERIMENTS

log = log_to(snakemake.log[0])
table = pd.read_csv(snakemake.input[0], sep="\t")
plot = getattr(figures, EXPERIMENTS[snakemake.wildcards.experiment].figure)
plot(table, snakemake.wildcards.model, snakemake.output.png, snakemake.output.pdf)
log.info("plotted %d rows", len(table))
