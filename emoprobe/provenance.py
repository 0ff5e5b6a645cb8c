"""What a result file says of where it comes from: the attributes its writer stores and its readers expect.

One function per kind of file, called by the job that writes the file (through its params) and by the plan
(:mod:`emoprobe.plan`) for the jobs that read it, so that the two can never disagree on a name or a value
(:func:`emoprobe.h5io.check_provenance` compares them). Nothing third-party is imported here: the plan runs every
time Snakemake parses the workflow.
"""

from __future__ import annotations


def hidden_states(identity: dict, template: str, sample: dict, storage_dtype: str) -> dict:
    """The attributes of a hidden-state file that decide its states: the model (``identity``,
    :func:`emoprobe.plan.model_identity`: its name and source entry), the prompt template, the sample of texts
    (``sample``: ``dataset.limit`` and ``dataset.seed``) and the dtype the states are stored in."""
    source = identity["source"]
    return {
        "model": identity["name"],
        "source": {source: identity[source]},
        "prompt_template": template,
        "dataset_limit": int(sample["limit"]),
        "dataset_seed": int(sample["seed"]),
        "storage_dtype": storage_dtype,
    }


def predictions(model: str, location: str, labels: list[str]) -> dict:
    """The attributes of a predictions or directions file of probes (or of a baseline: ``location`` ``text``,
    ``logit_lens``): the model, where the probes read it, and the labels in the order their ids index them."""
    return {"model": model, "location": location, "labels": list(labels)}


def appraisal_directions(model: str, appraisals: list[str]) -> dict:
    """The attributes of an appraisal-directions file: the model and the rated appraisals, which the probes' stored
    classes index (:func:`emoprobe.h5io.read_appraisal_directions`)."""
    return {"model": model, "appraisals": list(appraisals)}


def word_embeddings(identity: dict, sample: dict) -> dict:
    """The attributes of a word-embeddings file (:func:`emoprobe.h5io.write_word_embeddings`): the model
    (``identity``, as :func:`hidden_states` takes it) and the sample of texts."""
    source = identity["source"]
    return {"model": identity["name"], "source": {source: identity[source]}, "dataset_limit": int(sample["limit"]),
            "dataset_seed": int(sample["seed"])}


def conditional(model: str, location: str, labels: list[str], baselines: list[str]) -> dict:
    """The attributes of a conditional probes' file (:data:`emoprobe.conditional.PROBABILITY_DTYPES`): as
    :func:`predictions`', and the baselines in the order their axis indexes them."""
    return {**predictions(model, location, labels), "baselines": list(baselines)}
