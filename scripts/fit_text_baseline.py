"""The bag-of-words baseline: a probe on the texts alone, for every subset and target of one model's probes."""

import pandas as pd

from emoprobe.baselines import text_probe
from emoprobe.corpus import read_prompts
from emoprobe.errors import log_to, reported_as_message
from emoprobe.io import write_tsv
from emoprobe.probes import probe_targets

log = log_to(snakemake.log[0])
settings, labels = snakemake.params.probe, snakemake.params.labels
fit = {key: settings[key] for key in ("C", "max_iter", "tol", "folds", "test_size", "seed", "stratify", "control")}
with reported_as_message():
    prompts = read_prompts(snakemake.input.prompts)
    answers = pd.read_csv(snakemake.input.answers, sep="\t") if "answers" in snakemake.input.keys() else None
tables = []
for subset, target, rows, label_id in probe_targets(settings["subsets"], settings["answer_probe"],
                                                    prompts["row_id"].to_numpy(), prompts["label_id"].to_numpy(),
                                                    answers, labels):
    table, _ = text_probe(prompts["text"].to_numpy()[rows], label_id, label_names=labels, **fit)
    tables.append(table.assign(model=snakemake.wildcards.model, location="text", subset=subset, target=target,
                               layer=pd.NA))
    log.info("%s / %s (%d texts): balanced accuracy %.3f, accuracy %.3f; %s", subset, target, len(rows),
             table["balanced_accuracy"].iloc[0], table["accuracy"].iloc[0], table["note"].iloc[0] or "")
write_tsv(pd.concat(tables, ignore_index=True), snakemake.output[0])
