"""The mean input embedding of each text's words, for one model: the words' baseline of the conditional probes."""

import torch

from emoprobe.corpus import read_prompts
from emoprobe.device import pick_device
from emoprobe.errors import log_to, reported_as_message
from emoprobe.h5io import write_word_embeddings
from emoprobe.models import load_configured_model
from emoprobe.provenance import word_embeddings as word_embeddings_provenance
from emoprobe.words import mean_word_embeddings

log = log_to(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
name, model_cfg = snakemake.wildcards.model, snakemake.params.model
device = pick_device(snakemake.params.forward.device)
with reported_as_message():
    prompts = read_prompts(snakemake.input.prompts)
    model, tokenizer = load_configured_model(name, model_cfg, snakemake.input.model_dir,
                                             dtype=snakemake.params.forward.dtype, device=device)
log.info("embed_words: %d texts through model %s's input embeddings, on %s", len(prompts), name, device)
embeddings = mean_word_embeddings(model, tokenizer, prompts["text"].tolist())
write_word_embeddings(snakemake.output[0], prompts["row_id"].to_numpy(), embeddings,
                      attrs=word_embeddings_provenance(model_cfg, snakemake.params.sample))
log.info("done: %d x %d", *embeddings.shape)
