"""The bag-of-words baseline: a probe on the texts alone, for every subset and target of one model's probes, and its
pooled out-of-fold predictions (one "layer", 0, and one "position", -1: it reads no state)."""

import pandas as pd

from emoprobe.baselines import text_probe
from emoprobe.corpus import read_prompts
from emoprobe.errors import log_to, reported_as_message
from emoprobe.h5io import write_predictions
from emoprobe.io import read_optional_tsv, write_tsv
from emoprobe.problems import probe_targets
from emoprobe.probes import PER_POSITION
from emoprobe.provenance import predictions as predictions_provenance

log = log_to(snakemake.log[0])
settings, labels = snakemake.params.probe, snakemake.params.labels
with reported_as_message():
    prompts = read_prompts(snakemake.input.prompts)
    answers = read_optional_tsv(snakemake.input, "answers")
tables, predictions = [], {}
for subset, target, rows, label_id in probe_targets(settings.problems.subsets, settings.problems.answer_probe,
                                                    prompts["row_id"].to_numpy(), prompts["label_id"].to_numpy(),
                                                    answers, labels):
    table, predicted = text_probe(prompts["text"].to_numpy()[rows], label_id, label_names=labels,
                                  trainer=settings.trainer, split=settings.split, control=snakemake.params.control)
    tables.append(table.assign(model=snakemake.wildcards.model, location="text", subset=subset, target=target,
                               layer=pd.NA))
    if predicted is not None:  # kept for the paired comparisons with the probes of the same texts (localise)
        predictions[f"{subset}/{target}"] = {
            "positions": [-1], "row_id": prompts["row_id"].to_numpy()[rows][predicted["rows"]],
            **{key: predicted[key] for key in ("label_id", "control_label_id", "prior_log2")},
            **{key: predicted[key][None] for key in PER_POSITION}}
    log.info("%s / %s (%d texts): balanced accuracy %.3f, accuracy %.3f; %s", subset, target, len(rows),
             table["balanced_accuracy"].iloc[0], table["accuracy"].iloc[0], table["note"].iloc[0] or "")
write_tsv(pd.concat(tables, ignore_index=True), snakemake.output.table)
write_predictions(snakemake.output.predictions, predictions, layers=[0],
                  attrs=predictions_provenance(snakemake.wildcards.model, "text", labels))
