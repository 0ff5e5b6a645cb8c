"""Heatmap of one model's appraisal R² over appraisal and layer."""

import pandas as pd

from emoprobe.errors import log_to
from emoprobe.figures import plot_appraisal_r2

log = log_to(snakemake.log[0])
table = pd.read_csv(snakemake.input[0], sep="\t")
plot_appraisal_r2(table, snakemake.wildcards.model,
                  snakemake.output.png, snakemake.output.pdf, position=snakemake.params.position)
log.info("plotted %s", snakemake.wildcards.model)
