"""The texts of every probing problem of every model: how many of each label, and what is set aside and why."""

import pandas as pd

from emoprobe.corpus import read_prompts
from emoprobe.errors import log_to, reported_as_message
from emoprobe.io import write_tsv
from emoprobe.problems import subset_table

log = log_to(snakemake.log[0])
settings, labels = snakemake.params.probe, snakemake.params.labels
with reported_as_message():
    prompts = read_prompts(snakemake.input.prompts)
    answers = {model: pd.read_csv(path, sep="\t") for model, path in zip(snakemake.params.models, snakemake.input.answers)}
table = subset_table(prompts, answers, subsets=settings["subsets"], answer_probe=settings["answer_probe"],
                     labels=labels, folds=settings["folds"])
write_tsv(table, snakemake.output[0])
log.info("%d problems", len(table))
