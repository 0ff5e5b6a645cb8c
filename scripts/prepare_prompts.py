"""Read and validate the corpus, subsample it, and write the prompts table."""

from emoprobe import corpus
from emoprobe.errors import log_to, reported_as_message
from emoprobe.io import atomic_path

log = log_to(snakemake.log[0])
dataset = snakemake.params.dataset
with reported_as_message():
    tidy = corpus.checked_corpus(snakemake.input.csv, dataset)
    sample = corpus.stratified_subsample(tidy, dataset["limit"], dataset["seed"])
    prompts = corpus.build_prompts(sample, snakemake.params.template)
log.info("%d texts read, %d kept; labels: %s", len(tidy), len(prompts), prompts["label"].value_counts().to_dict())
with atomic_path(snakemake.output[0]) as partial:
    corpus.write_prompts(prompts, partial)
