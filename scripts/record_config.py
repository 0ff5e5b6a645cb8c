"""Write the complete config of the run, defaults filled in, beside its results."""

import yaml

from emoprobe.errors import log_to

log = log_to(snakemake.log[0])
with open(snakemake.output[0], "w") as out:
    yaml.safe_dump(dict(snakemake.params.config), out, sort_keys=False, allow_unicode=True)
log.info("config written to %s", snakemake.output[0])
