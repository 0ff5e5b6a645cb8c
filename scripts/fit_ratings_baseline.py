"""The appraisal-ratings baseline: the emotion (or the model's answer) predicted from the 21 human appraisal ratings
of each text by the probes' own logistic objective, folds and scores: how much of the emotion the appraisals carry,
the ceiling of an appraisal account (the paper's bbox_emotion_regression)."""

import pandas as pd

from emoprobe.corpus import read_prompts
from emoprobe.errors import log_to, reported_as_message
from emoprobe.grid import Cell
from emoprobe.io import read_optional_tsv, write_tsv
from emoprobe.problems import probe_targets
from emoprobe.probes import probe_layer

log = log_to(snakemake.log[0])
settings, labels, columns = snakemake.params.probe, snakemake.params.labels, snakemake.params.columns
with reported_as_message():
    prompts = read_prompts(snakemake.input.prompts)
    answers = read_optional_tsv(snakemake.input, "answers")
ratings = prompts[columns].to_numpy(dtype="float32")[:, None, :]  # one "position": the ratings
tables = []
for subset, target, rows, label_id in probe_targets(settings.problems.subsets, settings.problems.answer_probe,
                                                    prompts["row_id"].to_numpy(), prompts["label_id"].to_numpy(),
                                                    answers, labels):
    [result] = probe_layer(ratings, [-1], [(rows, label_id)], [{-1: Cell(snakemake.params.control, False)}],
                           label_names=labels, split=settings.split, trainer=settings.trainer, device=settings.device)
    table = result.table.assign(position=pd.NA, model=snakemake.wildcards.model, location="appraisal_ratings",
                                subset=subset, target=target, layer=pd.NA)
    tables.append(table)
    log.info("%s / %s (%d texts): balanced accuracy %.3f [%.3f, %.3f]; %s", subset, target, len(rows),
             table["balanced_accuracy"].iloc[0], table["balanced_low"].iloc[0], table["balanced_high"].iloc[0],
             table["note"].iloc[0] or "")
write_tsv(pd.concat(tables, ignore_index=True), snakemake.output[0])
