"""The logit lens: each layer's residual stream at the last token through the final norm and the LM head's
label rows, argmax, scored for every subset and target of the probes; and its predictions."""

import numpy as np
import pandas as pd
import torch

from emoprobe.answers import answer_logits, answer_token_ids
from emoprobe.baselines import logit_lens_table
from emoprobe.errors import log_to, reported_as_message
from emoprobe.h5io import read_stored_layer, write_predictions
from emoprobe.io import write_tsv
from emoprobe.device import pick_device
from emoprobe.models import load_configured_model
from emoprobe.problems import probe_targets
from emoprobe.provenance import predictions as predictions_provenance

log = log_to(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
name, model_cfg, labels = snakemake.wildcards.model, snakemake.params.model, snakemake.params.labels
settings, layers = snakemake.params.probe, snakemake.params.layers
device = pick_device(snakemake.params.forward.device)
with reported_as_message():
    model, tokenizer = load_configured_model(name, model_cfg, snakemake.input.model_dir,
                                             dtype=snakemake.params.forward.dtype, device=device, head=True)
    token_ids = answer_token_ids(tokenizer, labels, snakemake.params.words)
    answers = pd.read_csv(snakemake.input.answers, sep="\t")
    readout = []
    for layer in layers:
        states, meta = read_stored_layer(snakemake.input.states, layer, "residual", positions=[-1],
                                         provenance=snakemake.params.provenance)
        readout.append(answer_logits(model, states[:, 0], token_ids))
readout = np.stack(readout)
tables, predictions = [], {}
for subset, target, rows, label_id in probe_targets(settings["subsets"], True, meta["row_id"], meta["label_id"],
                                                    answers, labels):
    if target == "answer" and not settings["answer_probe"]:
        continue
    table, predicted = logit_lens_table(label_id, readout[:, rows], layers, label_names=labels,
                                        folds=settings["folds"])
    tables.append(table.assign(model=name, location="logit_lens", subset=subset, target=target))
    if predicted is not None:
        predictions[f"{subset}/{target}"] = {**predicted, "positions": [-1],
                                             "row_id": meta["row_id"][rows][predicted["rows"]]}
    log.info("%s / %s: balanced accuracy by layer %s", subset, target, np.round(table["balanced_accuracy"], 3).tolist())
write_tsv(pd.concat(tables, ignore_index=True), snakemake.output.table)
write_predictions(snakemake.output.predictions, predictions, layers=layers,
                  attrs=predictions_provenance(name, "logit_lens", labels))
