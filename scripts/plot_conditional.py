"""One model's usable information by layer, alone and beyond each baseline."""

import pandas as pd

from emoprobe.errors import log_to
from emoprobe.figures import plot_conditional

log = log_to(snakemake.log[0])
table = pd.concat([pd.read_csv(path, sep="\t") for path in snakemake.input.tables], ignore_index=True)
localisation = pd.read_csv(snakemake.input.localisation, sep="\t")
plot_conditional(table, localisation, snakemake.wildcards.model, snakemake.output.png, snakemake.output.pdf)
log.info("plotted %s", snakemake.wildcards.model)
