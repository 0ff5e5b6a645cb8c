"""Collect every probe table into results/accuracy.tsv and a text table per model."""

import os
import re

from emoprobe.errors import log_to
from emoprobe.report import accuracy_table, by_layer_text, read_probe_table

log = log_to(snakemake.log[0])
order = snakemake.params.order
table = accuracy_table([read_probe_table(path) for path in snakemake.input], order["models"], order["locations"],
                       order["subsets"])
partial = snakemake.output.table + ".partial"
table.to_csv(partial, sep="\t", index=False, float_format="%.6f")
os.replace(partial, snakemake.output.table)
for path in snakemake.output.text:
    model = re.search(r"tables/(.+)_accuracy_by_layer\.txt$", path).group(1)
    with open(path, "w") as out:
        out.write(by_layer_text(table, model))
log.info("%d probes from %d models", len(table), table["model"].nunique())
