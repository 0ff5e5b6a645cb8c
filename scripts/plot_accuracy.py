"""Figure of probe accuracy by layer: a line per token position, a panel per model."""

import pandas as pd

from emoprobe.errors import log_to
from emoprobe.report import plot_accuracy_by_layer

log = log_to(snakemake.log[0])
table = pd.read_csv(snakemake.input[0], sep="\t")
plot_accuracy_by_layer(table, snakemake.output.png, snakemake.output.pdf)
log.info("plotted %d probes", len(table))
