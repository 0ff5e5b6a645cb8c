"""One causal experiment (ablation, patching, promotion or surgery) on one model: its tidy table."""

import pandas as pd
import torch

from emoprobe.answers import answer_token_ids, label_readout
from emoprobe.corpus import read_prompts
from emoprobe.device import pick_device
from emoprobe.errors import log_to, reported_as_message
from emoprobe.forward import tokenize
from emoprobe.h5io import directions_problems, read_appraisal_directions, read_directions_of_layers
from emoprobe.interventions import centre_layers, run_experiment, sample_of
from emoprobe.io import write_tsv
from emoprobe.last_token import iter_last_token_batches
from emoprobe.models import decoder_layers, load_configured_model

log = log_to(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
name, model_cfg, kind = snakemake.wildcards.model, snakemake.params.model, snakemake.wildcards.experiment
settings, labels = snakemake.params.settings, snakemake.params.labels
device = pick_device(snakemake.params.device)
with reported_as_message():
    answers = pd.read_csv(snakemake.input.answers, sep="\t") if "answers" in snakemake.input.keys() else None
    prompts = sample_of(read_prompts(snakemake.input.prompts), answers, subset=settings["subset"],
                        texts=settings["texts"], seed=settings["seed"])
# the first line of the log: what this job does (the model's depth as the workflow read it when parsed; the edited
# runs' exact count follows once the model is loaded, then their progress, emoprobe.progress)
n_layers = snakemake.config.get("models", {}).get(name, {}).get("n_layers")
if "locations" in settings:
    edits = f"locations {', '.join(settings['locations'])}"
elif kind == "promotion":
    edits = f"{len(settings['emotions'] or labels)} emotions x {len(settings['betas'])} betas"
elif kind == "surgery":
    edits = (f"{len(settings['recipes'])} recipes and {settings['random_controls']} random controls x "
             f"{len(settings['betas'])} betas")
else:
    edits = kind
log.info("intervene: %s on model %s (%s), %d texts of subset %s; windows of %d layers centred on %s x %s; on %s, "
         "%d threads", kind, name, model_cfg["source"], len(prompts), settings["subset"], settings["span"],
         f"{len(centre_layers(n_layers, settings['every']))} of its {n_layers} layers (every {settings['every']})"
         if n_layers else f"every {settings['every']} layer(s) from the last", edits, device, torch.get_num_threads())
with reported_as_message():
    unfitted = kind == "promotion" and not all(settings["probe"] in directions_problems(path)
                                               for path in snakemake.input.directions)
if unfitted:
    # as the probe tables do for a subset too small to score: a row that says why, and the workflow carries on
    note = f"no {settings['probe']} probe was fitted (too few texts of a label for the folds): nothing to push along"
    log.info(note)
    write_tsv(pd.DataFrame([{"model": name, "experiment": kind, "subset": settings["subset"], "note": note}]),
              snakemake.output[0])
    raise SystemExit(0)
with reported_as_message():
    model, tokenizer = load_configured_model(name, model_cfg, snakemake.input.model_dir,
                                             dtype=snakemake.params.dtype, device=device, head=True)
    base = model.get_decoder()
    blocks = decoder_layers(base)
    readout = label_readout(model, answer_token_ids(tokenizer, labels, snakemake.params.words))
    directions = None
    if kind == "promotion":
        directions = read_directions_of_layers(snakemake.input.directions, settings["probe"],
                                               list(range(1, len(blocks) + 1)),
                                               provenance=snakemake.params.directions_provenance)
    elif kind == "surgery":
        directions = read_appraisal_directions(snakemake.input.directions, list(range(1, len(blocks) + 1)),
                                               provenance=snakemake.params.directions_provenance)
token_ids = tokenize(tokenizer, prompts["prompt"])


def batches(ids):
    return iter_last_token_batches(base, blocks, ids, pad_id=tokenizer.pad_token_id, locations=settings.get("locations", ["residual"]),
                                   **snakemake.params.batching)


table = run_experiment(kind, settings, batches=batches, readout=readout, token_ids=token_ids,
                       row_ids=prompts["row_id"].to_numpy(), n_layers=len(blocks), labels=labels,
                       directions=directions, log=log)
table.insert(0, "model", name)
table.insert(1, "experiment", kind)
table.insert(2, "subset", settings["subset"])
log.info("%d conditions", len(table))
write_tsv(table, snakemake.output[0], float_format="%.6g")
