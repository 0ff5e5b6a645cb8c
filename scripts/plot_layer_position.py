"""Heatmap of one model's probe balanced accuracy over layer and token position."""

import pandas as pd

from emoprobe.errors import log_to
from emoprobe.figures import plot_layer_position
from emoprobe.tables import read_score_table

log = log_to(snakemake.log[0])
table = pd.concat([read_score_table(path) for path in snakemake.input], ignore_index=True)
plot_layer_position(table, snakemake.params.model, snakemake.output.png, snakemake.output.pdf,
                    snakemake.params.positions, snakemake.params.grid)
log.info("plotted %s", snakemake.params.model)
