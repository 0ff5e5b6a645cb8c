"""What the last prompt token attends to, per layer and head, on the texts the interventions run on: the share of
its attention on the start, the template's opening, the event text and the template's closing words, and the weights
over every token of a few of the texts."""

import numpy as np
import torch

from emoprobe.attention import segment_shares, share_table, token_segments
from emoprobe.corpus import read_prompts, sample_of
from emoprobe.device import pick_device
from emoprobe.errors import log_to, reported_as_message
from emoprobe.forward import tokenize
from emoprobe.h5io import write_attention
from emoprobe.io import read_optional_tsv, write_tsv
from emoprobe.last_token import iter_last_token_batches
from emoprobe.models import decoder_layers, load_configured_model
from emoprobe.progress import Progress

log = log_to(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
name, model_cfg, settings = snakemake.wildcards.model, snakemake.params.model, snakemake.params.settings
device = pick_device(snakemake.params.forward.device)
with reported_as_message():
    answers = read_optional_tsv(snakemake.input, "answers")
    prompts = sample_of(read_prompts(snakemake.input.prompts), answers, subset=settings["subset"],
                        texts=settings["texts"], seed=settings["seed"])
# the first line of the log: what this job does (its progress follows, in texts, emoprobe.progress)
n_layers = snakemake.config.get("models", {}).get(name, {}).get("n_layers")
log.info("attend: the last token's attention weights of model %s (%s), every head of %s, on %d texts of subset %s "
         "(every token's weights kept for %d of them); on %s, %d threads", name, model_cfg["source"],
         f"its {n_layers} layers" if n_layers else "every layer", len(prompts), settings["subset"],
         min(settings["attention"]["kept"], len(prompts)), device, torch.get_num_threads())
with reported_as_message():
    model, tokenizer = load_configured_model(name, model_cfg, snakemake.input.model_dir,
                                             dtype=snakemake.params.forward.dtype, device=device)
token_ids = tokenize(tokenizer, prompts["prompt"])
segments = token_segments(tokenizer, prompts["prompt"], snakemake.params.template)
blocks = decoder_layers(model)
shares, kept = [None] * len(token_ids), {}
with Progress(log, len(token_ids), "texts", what="attention weights") as progress:
    for indices, batch in iter_last_token_batches(model, blocks, token_ids, pad_id=tokenizer.pad_token_id,
                                                  **snakemake.params.batching):
        for i, weights in zip(indices, batch.attention()):
            shares[i] = segment_shares(weights.numpy(), segments[i])
            if i < settings["attention"]["kept"]:
                kept[int(i)] = weights.numpy()
        progress.update(len(indices))
shares = np.stack(shares)
table = share_table(shares)
table.insert(0, "model", name)
text = table[table["segment"] == "text"].groupby("layer")["share"].max()
log.info("%d texts; the most any head of a layer attends to the event text: %s", len(token_ids),
         text.round(2).to_dict())
write_tsv(table, snakemake.output.table, float_format="%.6g")
write_attention(snakemake.output.weights, prompts["row_id"].to_numpy(), shares,
                {prompts["row_id"].iloc[i]: (tokenizer.convert_ids_to_tokens(token_ids[i]), kept[i]) for i in kept},
                attrs={"model": name, "template": snakemake.params.template})
