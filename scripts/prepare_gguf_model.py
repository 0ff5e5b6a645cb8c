"""Dequantise a GGUF model shipped in Python packages into a safetensors directory.

The parts come resolved as the rule's inputs, so this job's environment needs no weight package.
"""

from pathlib import Path

from emoprobe.errors import log_to, reported_as_message
from emoprobe.models import prepare_gguf

log = log_to(snakemake.log[0])
parts = [Path(part) for part in snakemake.input.parts]
log.info("dequantising %s", [str(part) for part in parts])
with reported_as_message():
    prepare_gguf(parts, snakemake.params.gguf.get("sha256"), Path(snakemake.output[0]), snakemake.params.dtype)
log.info("wrote %s", snakemake.output[0])
