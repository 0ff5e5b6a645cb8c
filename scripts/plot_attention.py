"""Where the last token reads the event text, layer x head, beside where patching the attention output moves the
answer."""

import pandas as pd

from emoprobe.errors import log_to
from emoprobe.figures import plot_attention

log = log_to(snakemake.log[0])
attention = pd.read_csv(snakemake.input.attention, sep="\t")
patching = pd.read_csv(snakemake.input.interventions[0], sep="\t") if snakemake.input.interventions else None
plot_attention(attention, patching, snakemake.wildcards.model, snakemake.output.png, snakemake.output.pdf)
log.info("plotted %s", snakemake.wildcards.model)
