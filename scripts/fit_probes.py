"""Fit one probe per token position on one location of each layer of a group, for every subset of texts and
target, and keep each probe's pooled out-of-fold predictions."""

import numpy as np
import pandas as pd
import torch

from emoprobe.errors import log_to, reported_as_message
from emoprobe.h5io import read_layer, write_predictions
from emoprobe.io import write_tsv
from emoprobe.batched import probe_layer_batched
from emoprobe.probes import probe_device, probe_targets

log = log_to(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
location, layers, labels = snakemake.params.location, snakemake.params.layers, snakemake.params.labels
settings = snakemake.params.probe
fit = {key: settings[key] for key in ("C", "max_iter", "tol", "folds", "test_size", "seed", "stratify", "control")}
fit["device"] = probe_device(settings["device"])
log.info("fitting on %s, %d threads", fit["device"], torch.get_num_threads())
with reported_as_message():
    answers = pd.read_csv(snakemake.input.answers, sep="\t") if "answers" in snakemake.input.keys() else None
tables, predictions = [], {}
for layer in layers:
    with reported_as_message():
        states, meta = read_layer(snakemake.input.states, layer, location)
    problems = probe_targets(settings["subsets"], settings["answer_probe"], meta["row_id"], meta["label_id"], answers,
                             labels)
    fitted = probe_layer_batched(states, [(rows, label_id) for _, _, rows, label_id in problems], meta["positions"],
                                 label_names=labels, **fit)
    for (subset, target, rows, _), (table, predicted) in zip(problems, fitted):
        tables.append(table.assign(model=snakemake.wildcards.model, location=location, subset=subset, target=target,
                                   layer=layer))
        if predicted is not None:
            kept = predictions.setdefault(f"{subset}/{target}", {
                "row_id": meta["row_id"][predicted["rows"]], "label_id": predicted["label_id"],
                "control_label_id": predicted["control_label_id"], "predicted": [], "control_predicted": []})
            kept["predicted"].append(predicted["predicted"])
            kept["control_predicted"].append(predicted["control_predicted"])
        scored = table.dropna(subset=["balanced_accuracy"])
        if scored.empty:
            log.info("%s layer %d, %s / %s: nothing scored: %s", location, layer, subset, target, table["note"].iloc[0])
            continue
        best = scored.loc[scored["balanced_accuracy"].idxmax()]
        log.info("%s layer %d, %s / %s (%d texts): best balanced accuracy %.3f at token %d, %d iterations at most%s%s",
                 location, layer, subset, target, best.n_texts, best.balanced_accuracy, best.position,
                 table["n_iter"].max(), "" if table["converged"].all() else f", NOT converged to tol={settings['tol']:g}",
                 f"; {best.note}" if best.note else "")
write_tsv(pd.concat(tables, ignore_index=True), snakemake.output.table)
write_predictions(snakemake.output.predictions,
                  {name: {**arrays, "predicted": np.stack(arrays["predicted"]),
                          "control_predicted": np.stack(arrays["control_predicted"])}
                   for name, arrays in predictions.items()},
                  layers=layers, positions=meta["positions"], attrs={"model": snakemake.wildcards.model,
                                                                     "location": location, "labels": labels})
