"""Download the corpus from dataset.url, checking its sha256."""

import urllib.request

from emoprobe.errors import log_to
from emoprobe.io import atomic_path, sha256_of

log = log_to(snakemake.log[0])
url, expected = snakemake.params.url, snakemake.params.sha256
log.info("downloading %s", url)
with atomic_path(snakemake.output[0]) as partial:
    with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
        out.write(response.read())
    actual = sha256_of([partial])
    if expected and actual != expected:
        raise SystemExit(f"error: {url}: sha256 {actual} differs from dataset.sha256 {expected}")
