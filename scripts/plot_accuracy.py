"""Balanced accuracy by layer with intervals, baselines and where it forms (a panel per model and problem), and
all models on normalised depth."""

import pandas as pd

from emoprobe.errors import log_to
from emoprobe.figures import plot_accuracy_by_depth, plot_accuracy_by_layer
from emoprobe.tables import read_score_table

log = log_to(snakemake.log[0])
table = read_score_table(snakemake.input.table)
localisation = pd.read_csv(snakemake.input.localisation, sep="\t")
plot_accuracy_by_layer(table, localisation, snakemake.output.layer_png, snakemake.output.layer_pdf,
                       snakemake.params.grid)
plot_accuracy_by_depth(table, localisation, snakemake.params.n_layers, snakemake.output.depth_png,
                       snakemake.output.depth_pdf)
log.info("plotted %d scores", len(table))
