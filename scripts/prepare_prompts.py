"""Read and validate the corpus, subsample it, and write the prompts table."""

import os

from emoprobe import corpus
from emoprobe.errors import log_to, reported_as_message

log = log_to(snakemake.log[0])
dataset = snakemake.params.dataset
with reported_as_message():
    table = corpus.read_corpus_table(snakemake.input.csv, dataset["encoding"])
    tidy = corpus.validate_corpus(
        table,
        snakemake.input.csv,
        id_column=dataset["id_column"],
        text_column=dataset["text_column"],
        label_column=dataset["label_column"],
        labels=dataset["labels"],
        rename=dataset["rename"],
        appraisal_columns=dataset["appraisal_columns"],
    )
    sample = corpus.stratified_subsample(tidy, dataset["limit"], dataset["seed"])
    prompts = corpus.build_prompts(sample, snakemake.params.template)
log.info("%d texts read, %d kept; labels: %s", len(tidy), len(prompts), prompts["label"].value_counts().to_dict())
partial = snakemake.output[0] + ".partial"
corpus.write_prompts(prompts, partial)
os.replace(partial, snakemake.output[0])
