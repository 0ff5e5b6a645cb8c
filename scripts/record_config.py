"""Write the config behind the results, defaults filled in, beside them."""

import yaml

from emoprobe.errors import log_to
from emoprobe.io import atomic_path

log = log_to(snakemake.log[0])
with atomic_path(snakemake.output[0]) as partial, open(partial, "w") as out:
    yaml.safe_dump(dict(snakemake.params.config), out, sort_keys=False, allow_unicode=True)
log.info("config written to %s", snakemake.output[0])
