"""Benchmark: what parsing the workflow costs, against the plain method, side by side in one run.

Snakemake parses the workflow again in every job it starts and in every dry run, and each rule's params hash the
emoprobe code its script reaches (:func:`emoprobe.config.code_sha256`, 38 hashes for the default config). Plain is
that hashing as it was: each rule's modules parsed and dumped anew (the per-module cache cleared before each hash).
Cached is the workflow's: each module parsed once per process. Each way runs in a fresh Python process (as a job or a
dry run starts), alternately, ``--repeats`` times (the fastest kept), and times Snakemake's parse of the workflow and
its dry run (the DAG planned, nothing run) of ``--config``:

    .venv/bin/python benchmarks/parse.py --config config.yaml
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_parse(config: str, plain: bool) -> dict:
    """Parse the workflow with ``config`` and plan its dry run in this process: seconds of each, and how many code
    hashes the parse made."""
    import emoprobe.config

    hashed = emoprobe.config.code_sha256
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[0])
        if plain:
            emoprobe.config._module_code.cache_clear()
        return hashed(*args, **kwargs)

    emoprobe.config.code_sha256 = counted  # rules/common.smk imports it when the workflow is parsed
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (ConfigSettings, DAGSettings, OutputSettings, Quietness, ResourceSettings,
                                          StorageSettings)

    with tempfile.TemporaryDirectory() as workdir, SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        started = time.perf_counter()
        workflow = api.workflow(resource_settings=ResourceSettings(cores=1), storage_settings=StorageSettings(),
                                config_settings=ConfigSettings(configfiles=[Path(config).resolve()],
                                                               replace_workflow_config=True),
                                snakefile=ROOT / "Snakefile", workdir=Path(workdir))
        dag = workflow.dag(DAGSettings())  # parses the Snakefile and every rules/*.smk
        parsed = time.perf_counter()
        dag.execute_workflow(executor="dryrun")
        planned = time.perf_counter()
    return {"parse_s": parsed - started, "dry_run_s": planned - parsed, "hashes": len(calls)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "config.yaml"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", choices=["plain", "cached"], help=argparse.SUPPRESS)  # a child process's way
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_parse(args.config, args.one == "plain")))
        return

    best = {}
    for _ in range(args.repeats):
        for way in ("plain", "cached"):
            child = subprocess.run([sys.executable, __file__, "--config", args.config, "--one", way],
                                   capture_output=True, text=True, cwd=ROOT)
            if child.returncode != 0:
                sys.exit(f"{way}: {child.stderr[-3000:]}")
            found = json.loads(child.stdout.strip().splitlines()[-1])
            if way not in best or found["parse_s"] < best[way]["parse_s"]:
                best[way] = found
    print(f"{platform.processor() or platform.machine()}, {args.config}, best of {args.repeats} fresh processes each")
    print(f"{'way':<8} {'parse (s)':>10} {'dry run (s)':>12} {'code hashes':>12}")
    for way, found in best.items():
        print(f"{way:<8} {found['parse_s']:>10.2f} {found['dry_run_s']:>12.2f} {found['hashes']:>12}")
    print(f"parse: plain / cached = {best['plain']['parse_s'] / best['cached']['parse_s']:.2f}x")


if __name__ == "__main__":
    main()
