"""One experiment that edits the model (emoprobe.experiments) on one model: its tidy table."""

import pandas as pd
import torch

from emoprobe.answers import answer_token_ids, label_readout
from emoprobe.corpus import read_prompts, sample_of
from emoprobe.device import pick_device
from emoprobe.edits import NothingToRun, read_directions, run_experiment
from emoprobe.errors import log_to, reported_as_message
from emoprobe.experiments import EXPERIMENTS
from emoprobe.forward import tokenize
from emoprobe.io import read_optional_tsv, write_tsv
from emoprobe.last_token import iter_last_token_batches
from emoprobe.models import decoder_layers, load_configured_model
from emoprobe.windows import centre_layers

log = log_to(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
name, model_cfg, kind = snakemake.wildcards.model, snakemake.params.model, snakemake.wildcards.experiment
settings, labels = snakemake.params.settings, snakemake.params.labels
device = pick_device(snakemake.params.forward.device)
with reported_as_message():
    prompts = sample_of(read_prompts(snakemake.input.prompts), read_optional_tsv(snakemake.input, "answers"),
                        subset=settings["subset"], texts=settings["texts"], seed=settings["seed"])
# the first line of the log: what this job does (the model's depth as the workflow read it when parsed; the edited
# runs' exact count follows once the model is loaded, then their progress, emoprobe.progress)
n_layers = snakemake.config.get("models", {}).get(name, {}).get("n_layers")
log.info("intervene: %s on model %s (%s), %d texts of subset %s; windows of %d layers centred on %s x %s; on %s, "
         "%d threads", kind, name, model_cfg["source"], len(prompts), settings["subset"], settings["span"],
         f"{len(centre_layers(n_layers, settings['every']))} of its {n_layers} layers (every {settings['every']})"
         if n_layers else f"every {settings['every']} layer(s) from the last",
         EXPERIMENTS[kind].summary(settings, labels), device, torch.get_num_threads())
with reported_as_message():
    model, tokenizer = load_configured_model(name, model_cfg, snakemake.input.model_dir,
                                             dtype=snakemake.params.forward.dtype, device=device, head=True)
    base = model.get_decoder()
    blocks = decoder_layers(base)
    readout = label_readout(model, answer_token_ids(tokenizer, labels, snakemake.params.words))
token_ids = tokenize(tokenizer, prompts["prompt"])


def batches(ids):
    return iter_last_token_batches(base, blocks, ids, pad_id=tokenizer.pad_token_id,
                                   locations=settings.get("locations", ["residual"]), **snakemake.params.batching)


try:
    with reported_as_message():
        directions = read_directions(kind, snakemake.input.get("directions", []), settings,
                                     list(range(1, len(blocks) + 1)), snakemake.params.directions_provenance)
    table = run_experiment(kind, settings, batches=batches, readout=readout, token_ids=token_ids,
                           row_ids=prompts["row_id"].to_numpy(), n_layers=len(blocks), labels=labels,
                           directions=directions, log=log)
except NothingToRun as reason:  # a row that says why, and the workflow carries on
    log.info("%s", reason)
    table = pd.DataFrame([{"note": str(reason)}])
table.insert(0, "model", name)
table.insert(1, "experiment", kind)
table.insert(2, "subset", settings["subset"])
log.info("%d conditions", len(table))
write_tsv(table, snakemake.output[0], float_format="%.6g")
