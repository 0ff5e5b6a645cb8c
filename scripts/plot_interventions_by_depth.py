"""All models' probing accuracy, ablation and patching on normalised depth."""

import pandas as pd

from emoprobe.errors import log_to
from emoprobe.figures import plot_interventions_by_depth
from emoprobe.tables import read_score_table

log = log_to(snakemake.log[0])
accuracy = read_score_table(snakemake.input.accuracy)
interventions = pd.read_csv(snakemake.input.interventions, sep="\t")
plot_interventions_by_depth(accuracy, interventions, snakemake.params.n_layers, snakemake.params.locations,
                            snakemake.params.subset, snakemake.output.png, snakemake.output.pdf)
log.info("plotted %d models", len(snakemake.params.n_layers))
