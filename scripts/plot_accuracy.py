"""Accuracy by layer with intervals (a panel per model and subset), and all models on normalised depth."""

import pandas as pd

from emoprobe.errors import log_to
from emoprobe.report import plot_accuracy_by_depth, plot_accuracy_by_layer

log = log_to(snakemake.log[0])
table = pd.read_csv(snakemake.input[0], sep="\t")
plot_accuracy_by_layer(table, snakemake.output.layer_png, snakemake.output.layer_pdf)
plot_accuracy_by_depth(table, snakemake.params.n_layers, snakemake.output.depth_png, snakemake.output.depth_pdf)
log.info("plotted %d probes", len(table))
