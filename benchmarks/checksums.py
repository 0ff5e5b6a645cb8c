"""Benchmark: what the checksums cost, against the plain method, side by side in one run.

Plain is how emoprobe stored and loaded before the checksums: contiguous datasets without a filter, and a prepared
model loaded without hashing its files. Checksummed is the workflow: every dataset chunked with Fletcher-32
(:mod:`emoprobe.h5io`) and the model's files verified against their sha256 before each load
(:func:`emoprobe.models.verify_folder`). On the default config's shapes:

1. **An extraction job**: :func:`emoprobe.extract.extract_to_hdf5` of ``--n-prompts`` prompts through ``--model`` at
   every layer, location and position of the config, in its storage dtype, each way three times, alternately (the
   fastest kept): seconds and file size.
2. **A probe job**: one layer of that file read at each location and the default grid's probes of that layer fitted
   (one thread, as probe jobs fit); the fit is the same both ways, the reads differ.
3. **A model load**: :func:`emoprobe.models.load_decoder` alone against hashing the folder's files first, as every
   job that loads the model (extraction, answers, logit lens, interventions, attention) now does once.

Run in a workflow directory after ``make run`` (it reads the prompts and answers there):

    .venv/bin/python benchmarks/checksums.py --model resources/models/smollm2-135m --n-prompts 600
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml
from snakemake.utils import validate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from extraction import TEMPLATES, add_prompt_arguments, load_prompts  # noqa: E402
from probes import fit_cells  # noqa: E402

from emoprobe import grid, h5io, plan  # noqa: E402
from emoprobe.extract import extract_to_hdf5  # noqa: E402
from emoprobe.io import folder_files, sha256_of  # noqa: E402
from emoprobe.models import decoder_layers, load_decoder  # noqa: E402


@contextlib.contextmanager
def plain():
    """Store and read as before the checksums: contiguous datasets, no filter, reads unchecked."""
    checked = h5io.create_dataset, h5io.read
    h5io.create_dataset = (lambda group, name, data=None, *, shape=None, dtype=None, chunks=True:
                           group.create_dataset(name, data=data, shape=shape, dtype=dtype))
    h5io.read = lambda dataset, selection=(): dataset[selection]
    try:
        yield
    finally:
        h5io.create_dataset, h5io.read = checked


def ways():
    """Plain, checksummed, plain, ...: each way three times, alternately, so that drift hits both."""
    for _ in range(3):
        yield "plain", plain()
        yield "checksummed", contextlib.nullcontext()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prompt_arguments(parser, n_prompts=600)
    parser.add_argument("--config", default=str(ROOT / "config.yaml"))
    parser.add_argument("--answers", default="results/answers/{model}.tsv", help="the model's answers (make run's)")
    parser.add_argument("--probe-layer", type=int, default=15, help="the layer a probe job is timed on")
    parser.add_argument("--threads", type=int, default=2, help="of the extraction (the default config's)")
    args = parser.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    validate(config, str(ROOT / "schemas/config.schema.yaml"))  # the schema's defaults filled in
    extraction, storage = config["extraction"], config["extraction"]["storage_dtype"]
    table = load_prompts(args.prompts, args.n_prompts, args.seed, TEMPLATES[args.template])
    torch.set_num_threads(args.threads)
    model, tokenizer = load_decoder(args.model, dtype="float32", device=torch.device("cpu"), trust_remote_code=False)
    n_layers = len(decoder_layers(model))
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; model {args.model} "
          f"({n_layers} layers), {len(table)} prompts, locations {config['locations']}, positions "
          f"{config['positions']}, storage {storage}", flush=True)

    # 1. extraction jobs
    seconds, sizes, files = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for way, context in ways():
            path = Path(tmp) / f"{way}.h5"
            with context:
                start = time.perf_counter()
                extract_to_hdf5(model, tokenizer, table, path, layers=list(range(0, n_layers + 1)),
                                locations=config["locations"], positions=config["positions"],
                                batch_tokens=extraction["batch_tokens"], max_batch_size=extraction["max_batch_size"],
                                max_padding=extraction["max_padding"], storage_dtype=storage, attrs={},
                                share_prefix=extraction["share_prefix"])
                elapsed = time.perf_counter() - start
            seconds[way] = min(seconds.get(way, elapsed), elapsed)
            sizes[way], files[way] = path.stat().st_size, path
            print(f"  extraction, {way}: {elapsed:.2f} s", flush=True)
        extraction_ratio = seconds["checksummed"] / seconds["plain"]
        print(f"1. extraction job: plain {seconds['plain']:.2f} s, checksummed {seconds['checksummed']:.2f} s, ratio "
              f"{extraction_ratio:.3f}; file {sizes['plain'] / 1e6:.1f} MB plain, {sizes['checksummed'] / 1e6:.1f} MB "
              f"checksummed (x{sizes['checksummed'] / sizes['plain']:.4f})", flush=True)

        # 2. a probe job of one layer: its reads each way, and the fit (the same both ways) once
        name = Path(args.model).name
        answers = pd.read_csv(args.answers.format(model=name), sep="\t")
        cells = grid.cells(config)
        reads, fit = {}, 0.0
        for way, context in ways():
            with context:
                start = time.perf_counter()
                states = {location: h5io.read_layer(files[way], args.probe_layer, location)
                          for location in config["locations"]}
                elapsed = time.perf_counter() - start
            reads[way] = min(reads.get(way, elapsed), elapsed)
        torch.set_num_threads(1)
        for location, (x, meta) in states.items():
            fit += fit_cells(x, meta, answers, plan.labels(config), cells[location], torch.device("cpu"))[0]
        probe_ratio = (fit + reads["checksummed"]) / (fit + reads["plain"])
        print(f"2. probe job, layer {args.probe_layer} at {len(states)} locations: reads plain {reads['plain']:.3f} s, "
              f"checksummed {reads['checksummed']:.3f} s; fit {fit:.2f} s; job ratio {probe_ratio:.4f}", flush=True)

    # 3. a model load, with and without hashing its folder first
    loads = {}
    for way in ("plain", "checksummed") * 3:
        start = time.perf_counter()
        if way == "checksummed":
            digests = {f: sha256_of([Path(args.model) / f]) for f in folder_files(args.model)}
        load_decoder(args.model, dtype="float32", device=torch.device("cpu"), trust_remote_code=False, head=True)
        elapsed = time.perf_counter() - start
        loads[way] = min(loads.get(way, elapsed), elapsed)
    size = sum((Path(args.model) / f).stat().st_size for f in digests)
    print(f"3. model load: plain {loads['plain']:.2f} s, with the sha256 of its {len(digests)} files "
          f"({size / 1e6:.0f} MB) {loads['checksummed']:.2f} s: +{loads['checksummed'] - loads['plain']:.2f} s a load",
          flush=True)


if __name__ == "__main__":
    main()
