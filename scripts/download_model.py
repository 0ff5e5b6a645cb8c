"""Download a hub model at the commit its revision resolved to, into the folder every job loads it from."""

from pathlib import Path

from emoprobe.errors import log_to, reported_as_message
from emoprobe.hub import HubError, download_snapshot

log = log_to(snakemake.log[0])
hub, out = snakemake.params.model["hub"], Path(snakemake.output[0])
# the revision as configured: recorded beside the commit for an offline parse's look-up, deciding no byte fetched
revision = snakemake.config["models"][snakemake.wildcards.model]["hub"]["revision"]
log.info("download_model: %s at commit %s (revision %s) into %s", hub["id"], hub["commit"], revision or "main", out)
with reported_as_message():
    if hub["commit"] is None:
        raise HubError(f"models.{snakemake.wildcards.model}.hub: {hub['id']!r} could not be looked up on the hub when "
                       "the workflow was parsed, so there is nothing to download; run it where the hub can be reached")
    record = download_snapshot(hub["id"], revision, hub["commit"], out, snakemake.params.model["patterns"])
log.info("wrote %d files: %s", len(record["files"]), ", ".join(record["files"]))
