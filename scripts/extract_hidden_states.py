"""Hidden states of one chunk of layers of one model, for every prompt, into HDF5."""

from emoprobe.memory import allocate_in_huge_pages

allocate_in_huge_pages()  # before torch is imported

import json
import platform

import h5py
import torch
import transformers

import emoprobe
from emoprobe.corpus import read_prompts
from emoprobe.errors import log_to, reported_as_message
from emoprobe.extract import extract_to_hdf5
from emoprobe.device import pick_device
from emoprobe.models import ModelError, load_configured_model
from emoprobe.progress import layer_range
from emoprobe.provenance import hidden_states

log = log_to(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
name, model_cfg = snakemake.wildcards.model, snakemake.params.model
settings = snakemake.params.extraction
layers = list(range(snakemake.params.first_layer, int(snakemake.wildcards.last) + 1))
device = pick_device(settings["device"])
with reported_as_message():
    prompts = read_prompts(snakemake.input.prompts)
# the first line of the log: what this job does (its progress follows, emoprobe.progress)
log.info("extract_hidden_states: %d texts through model %s (%s), layers %s, locations %s, token positions %s, "
         "on %s in %s, %d threads", len(prompts), name, snakemake.input.model_dir, layer_range(layers),
         ", ".join(snakemake.params.locations), list(snakemake.params.positions), device, settings["dtype"],
         torch.get_num_threads())

with reported_as_message():
    model, tokenizer = load_configured_model(name, model_cfg, snakemake.input.model_dir, dtype=settings["dtype"],
                                             device=device)
    for key, actual in (("n_layers", model.config.num_hidden_layers), ("hidden_size", model.config.hidden_size)):
        if snakemake.params.shape[key] != actual:
            raise ModelError(f"models.{name}.{key}: the workflow planned {snakemake.params.shape[key]}, the model "
                             f"loaded has {actual}")
    provenance = hidden_states(model_cfg, snakemake.params.template, snakemake.params.sample,
                               settings["storage_dtype"])
    attrs = {
        "model": provenance["model"],
        "source": json.dumps(provenance["source"]),
        "prompt_template": provenance["prompt_template"],
        "locations": list(snakemake.params.locations),
        "dataset_limit": provenance["dataset_limit"],
        "dataset_seed": provenance["dataset_seed"],
        "dtype": settings["dtype"],
        "storage_dtype": provenance["storage_dtype"],
        "device": str(device),
        "emoprobe_version": emoprobe.__version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "h5py_version": h5py.__version__,
        "python_version": platform.python_version(),
    }
    stats = extract_to_hdf5(model, tokenizer, prompts, snakemake.output[0], layers=layers,
                            locations=snakemake.params.locations,
                            positions=snakemake.params.positions, batch_tokens=settings["batch_tokens"],
                            max_batch_size=settings["max_batch_size"], max_padding=settings["max_padding"],
                            storage_dtype=settings["storage_dtype"],
                            attrs=attrs, share_prefix=settings["share_prefix"], log=log)
log.info("done: %s, %.0f tokens/s", stats, stats["tokens"] / stats["seconds"])
