"""The model's own answer to every prompt, among the labels and unrestricted, from the stored last-layer states."""

import numpy as np
import torch

from emoprobe.answers import answer_logits, answer_table, answer_token_ids, free_answers
from emoprobe.errors import log_to, reported_as_message
from emoprobe.h5io import read_layer
from emoprobe.io import write_tsv
from emoprobe.device import pick_device
from emoprobe.models import load_configured_model

log = log_to(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
name, model_cfg = snakemake.wildcards.model, snakemake.params.model
labels = snakemake.params.labels
device = pick_device(snakemake.params.forward.device)
with reported_as_message():
    states, meta = read_layer(snakemake.input.states, snakemake.params.layer, "residual", positions=[-1],
                              provenance=snakemake.params.provenance)
    model, tokenizer = load_configured_model(name, model_cfg, snakemake.input.model_dir,
                                             dtype=snakemake.params.forward.dtype, device=device, head=True)
    token_ids = answer_token_ids(tokenizer, labels, snakemake.params.words)
log.info("model %s on %s; answer tokens %s", name, device,
         dict(zip(labels, tokenizer.convert_ids_to_tokens(token_ids))))
logits = answer_logits(model, states[:, 0], token_ids)
free, probability = free_answers(model, states[:, 0])
words = tokenizer.convert_ids_to_tokens(free.tolist())
words = [tokenizer.convert_tokens_to_string([word]) for word in words]
table = answer_table(meta["row_id"], meta["label_id"], logits, labels, (words, probability, np.isin(free, token_ids)))
log.info("accuracy %.4f on %d texts; answers %s; free answers a label's in %.3f, most common %s", table["correct"].mean(),
         len(table), table["answer"].value_counts().to_dict(), table["free_is_label"].mean(),
         table["free_answer"].value_counts().head(5).to_dict())
write_tsv(table, snakemake.output[0], float_format="%.6g")
