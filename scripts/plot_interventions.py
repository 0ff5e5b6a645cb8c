"""The combined heatmap of one model: probing accuracy next to what ablation and patching do, location x layer."""

import pandas as pd

from emoprobe.errors import log_to
from emoprobe.figures import plot_intervention_heatmap
from emoprobe.tables import read_score_table

log = log_to(snakemake.log[0])
accuracy = read_score_table(snakemake.input.accuracy)
interventions = pd.concat([pd.read_csv(path, sep="\t") for path in snakemake.input.tables], ignore_index=True)
plot_intervention_heatmap(accuracy, interventions, snakemake.wildcards.model, snakemake.params.locations,
                          snakemake.params.subset, snakemake.output.png, snakemake.output.pdf)
log.info("plotted %d conditions", len(interventions))
