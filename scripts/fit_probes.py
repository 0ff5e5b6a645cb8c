"""Fit one probe per token position on one location of each layer of a group, for every subset of texts and
target, and keep each probe's pooled out-of-fold predictions and the weights of its fit on all texts."""

import numpy as np
import pandas as pd
import torch

from emoprobe.errors import log_to, reported_as_message
from emoprobe.h5io import read_layer, write_directions, write_predictions
from emoprobe.io import write_tsv
from emoprobe.batched import probe_layer_batched
from emoprobe.device import pick_device
from emoprobe.probes import probe_targets

log = log_to(snakemake.log[0])
# One thread whatever the job is given: the order of torch's parallel sums, so the last bits of a fit, would
# change with the thread count, and jobs, not threads, are what keep the cores busy.
torch.set_num_threads(1)
location, layers, labels = snakemake.params.location, snakemake.params.layers, snakemake.params.labels
settings = snakemake.params.probe
fit = {key: settings[key] for key in ("C", "max_iter", "tol", "folds", "test_size", "seed", "stratify", "control")}
fit["device"] = pick_device(settings["device"], needs_float64=True)
log.info("fitting on %s, %d threads", fit["device"], torch.get_num_threads())
with reported_as_message():
    answers = pd.read_csv(snakemake.input.answers, sep="\t") if "answers" in snakemake.input.keys() else None
tables, predictions, directions = [], {}, {}
for layer in layers:
    with reported_as_message():
        states, meta = read_layer(snakemake.input.states, layer, location, provenance=snakemake.params.provenance)
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
            for key in ("predicted", "control_predicted"):
                kept[key].append(predicted[key])
            fitted_on_all = directions.setdefault(f"{subset}/{target}", {"classes": predicted["classes"],
                                                                         "weights": [], "intercepts": []})
            for key in ("weights", "intercepts"):
                fitted_on_all[key].append(predicted[key])
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
stacked = ("predicted", "control_predicted")
attrs = {"model": snakemake.wildcards.model, "location": location, "labels": labels}
write_predictions(snakemake.output.predictions,
                  {name: {**arrays, **{key: np.stack(arrays[key]) for key in stacked}}
                   for name, arrays in predictions.items()},
                  layers=layers, positions=meta["positions"], attrs=attrs)
write_directions(snakemake.output.directions,
                 {name: {**arrays, **{key: np.stack(arrays[key]) for key in ("weights", "intercepts")}}
                  for name, arrays in directions.items()},
                 layers=layers, positions=meta["positions"], attrs=attrs)
