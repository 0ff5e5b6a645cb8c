"""Dequantise a GGUF model shipped in Python packages into a safetensors directory."""

from pathlib import Path

from emoprobe.errors import log_to, reported_as_message
from emoprobe.models import prepare_gguf

log = log_to(snakemake.log[0])
gguf = snakemake.params.gguf
log.info("dequantising %s", gguf["files"])
with reported_as_message():
    prepare_gguf(gguf["files"], gguf.get("sha256"), Path(snakemake.output[0]), snakemake.params.dtype)
log.info("wrote %s", snakemake.output[0])
