"""Collect every probe table into results/accuracy.tsv and a text table per model."""

import os
import re

import pandas as pd
import yaml

from emoprobe.errors import log_to
from emoprobe.report import accuracy_table, by_layer_text

log = log_to(snakemake.log[0])
tables = {}
for path in snakemake.input:
    model, layer = re.search(r"probes/(.+)/layer(\d+)\.tsv$", path).groups()
    tables[(model, int(layer))] = pd.read_csv(path, sep="\t")
table = accuracy_table(tables)
partial = snakemake.output.table + ".partial"
table.to_csv(partial, sep="\t", index=False, float_format="%.6f")
os.replace(partial, snakemake.output.table)
for path in snakemake.output.text:
    model = re.search(r"tables/(.+)_accuracy_by_layer\.txt$", path).group(1)
    with open(path, "w") as out:
        out.write(by_layer_text(table, model))
with open(snakemake.output.config, "w") as out:
    yaml.safe_dump(dict(snakemake.params.config), out, sort_keys=False, allow_unicode=True)
log.info("%d probes from %d models", len(table), table["model"].nunique())
