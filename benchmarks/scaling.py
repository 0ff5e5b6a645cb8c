"""Cost of a config on paper: the jobs its dry-run plans, disk, extraction FLOPs and GPU-hours, and the probes'
CPU-hours and GPU-hours.

Nothing is run but a Snakemake dry-run of the config (which plans every job and its resources)
and the workflow's own tokenisation and batching of the real prompts. The probes are planned from the
grid's fits (``emoprobe.grid``) and a rate measured by ``benchmarks/probes.py`` (``--probe-seconds``: seconds
of one CPU thread per fit per million values; ``--probe-passes``: the trainer's passes over a probe's
training rows per fit), with the whitening's d x d products on top for wide layers (``emoprobe.jobs``). Hub tokenizers cannot be
loaded offline, so the prompts are tokenised with a local tokenizer (by default the bundled
SmolLM2's, a 49k-token BPE); the paper's models use 32k-256k vocabularies, whose token counts on
English text differ from it by some ten per cent.

    .venv/bin/python benchmarks/scaling.py --config configs/paper.yaml \\
        --tokenizer resources/models/smollm2-135m > docs/scaling_table.md
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emoprobe.config import prompt_template  # noqa: E402
from emoprobe.jobs import chunk_size, layer_chunks  # noqa: E402
from emoprobe import grid, jobs as job_layout  # noqa: E402
from emoprobe.architecture import describe_models  # noqa: E402
from emoprobe.corpus import build_prompts, checked_corpus  # noqa: E402
from emoprobe.forward import length_batches, padded_tokens, shared_prefix_length, tokenize  # noqa: E402

H100_BF16_DENSE_TFLOPS = 989  # NVIDIA H100 SXM datasheet, dense bf16 tensor-core peak
H100_FP32_TFLOPS = 67  # the same datasheet, float32 without tensor cores (the probes' products: TF32 stays off)
CLASSES = 13


def probe_flops(config: dict, model: str, location: str, n_texts: int, passes: float) -> float:
    """FLOPs of one layer's probes at ``location``: per fit, ``passes`` passes each of the logits and the gradient
    over the training rows (2 x 2 x classes x width x rows) and of the whitening's two ``[classes, width] @ [width,
    width]`` products."""
    width = config["models"][model]["hidden_size"]
    n_train = n_texts * (1 - 1 / max(config["probe"]["folds"], 2))
    per_pass = 4 * CLASSES * width * (n_train + width)
    return grid.fits_per_layer(config, location) * passes * per_pass


def dry_run_jobs(config: dict) -> list[dict]:
    """Every job a dry-run of ``config`` plans: ``rule``, ``wildcards`` (dict) and ``resources`` (dict)."""
    with tempfile.TemporaryDirectory() as workdir:
        configfile = Path(workdir) / "config.yaml"
        configfile.write_text(yaml.safe_dump(config, sort_keys=False))
        result = subprocess.run(
            [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", workdir,
             "--configfile", str(configfile), "--replace-workflow-config",
             "--dry-run", "--cores", "1", "--nocolor"],
            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"dry-run failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", result.stdout + result.stderr):
        header = re.match(r"(?:local)?rule (\w+):", block)
        if not header:
            continue
        wildcards = re.search(r"wildcards: (.*)", block)
        resources = re.search(r"resources: (.*)", block)
        jobs.append({
            "rule": header.group(1),
            "wildcards": dict(kv.split("=", 1) for kv in wildcards.group(1).split(", ")) if wildcards else {},
            "resources": dict(kv.split("=", 1) for kv in resources.group(1).split(", ")) if resources else {},
        })
    return jobs


def prompt_tokens(config: dict, tokenizer_dir: str) -> tuple[list[int], int]:
    """Token count of every prompt of the config's corpus and template, and the shared prefix length."""
    from transformers import AutoTokenizer

    dataset = config["dataset"]
    corpus = checked_corpus(dataset["path"], dataset)
    prompts = build_prompts(corpus, prompt_template(config["prompt"]))["prompt"]
    ids = tokenize(AutoTokenizer.from_pretrained(tokenizer_dir), prompts)
    return [len(i) for i in ids], shared_prefix_length(ids, config["positions"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/paper.yaml"))
    parser.add_argument("--corpus", help="the corpus CSV, if not the config's dataset.path")
    parser.add_argument("--tokenizer", default=str(ROOT / "resources/models/smollm2-135m"))
    parser.add_argument("--compare-chunk", type=int, default=8,
                        help="also show the extraction FLOPs with layer chunks of this size")
    parser.add_argument("--utilisation", type=float, default=0.35,
                        help="fraction of the GPU's peak that extraction reaches (short sequences, bf16)")
    parser.add_argument("--probe-seconds", type=float, default=0.024,
                        help="seconds of one CPU thread per probe fit per million values (benchmarks/probes.py)")
    parser.add_argument("--probe-passes", type=float, default=45,
                        help="the trainer's passes over a probe's training rows per fit (benchmarks/probes.py)")
    parser.add_argument("--probe-utilisation", type=float, default=0.25,
                        help="fraction of an H100's float32 peak the probes' products reach (assumed)")
    args = parser.parse_args()

    from snakemake.utils import validate

    config = yaml.safe_load(Path(args.config).read_text())
    if args.corpus:
        config["dataset"]["path"] = args.corpus
    # The dry-run runs in a temporary directory: the corpus as seen from here, where prompt_tokens reads it (so the
    # jobs are those of a run whose corpus is on disk, as tests/test_workflow.py plans them, without download_corpus).
    config["dataset"]["path"] = str(Path(config["dataset"]["path"]).resolve())
    jobs = dry_run_jobs(config)
    validate(config, str(ROOT / "schemas/config.schema.yaml"))  # fills in the defaults, as the workflow does
    describe_models(config, ROOT)  # n_layers, hidden_size, params_m, as the workflow reads them
    extraction = config["extraction"]
    per_rule = Counter(job["rule"] for job in jobs)

    lengths, prefix = prompt_tokens(config, args.tokenizer)
    rest = [n - prefix for n in lengths]
    batches = length_batches(rest, extraction["batch_tokens"], extraction["max_batch_size"],
                             extraction["max_padding"])
    computed = prefix + padded_tokens(rest, batches)
    n_texts, n_positions = len(lengths), len(config["positions"])
    locations = config["locations"]
    rate = H100_BF16_DENSE_TFLOPS * 1e12 * args.utilisation

    print(f"Config `{Path(args.config).name}`: {n_texts} texts, template `{config['prompt']['template']}`, "
          f"{n_positions} positions, locations {', '.join(locations)}.  ")
    print(f"Prompts ({Path(args.tokenizer).name} tokenizer): {sum(lengths):,} tokens, shared prefix {prefix} tokens; "
          f"the workflow computes {computed:,} tokens ({computed / sum(lengths):.2f} of them) in {len(batches)} "
          f"batches of at most {extraction['batch_tokens']} tokens.  ")
    print(f"GPU time at {args.utilisation:.0%} of an H100's {H100_BF16_DENSE_TFLOPS} dense bf16 TFLOP/s, "
          f"extraction arithmetic only (loading the weights comes on top).\n")
    print("Jobs the dry-run plans: " + ", ".join(f"{rule} {n}" for rule, n in per_rule.items())
          + f"; {sum(per_rule.values())} in all.\n")

    print("| model | layers | width | chunk | extraction jobs | HDF5 per location fp16 / fp32 (GB) | "
          f"all locations as stored (GB) | extraction PFLOP (as configured / chunks of {args.compare_chunk}) | H100 GPU-hours | "
          "extraction mem_mb | probe jobs | probe fits | probe PFLOP | probe CPU-hours (measured rate) | "
          "probe H100 GPU-hours | probe runtime requested (CPU-hours) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    totals = Counter()
    for name, model in config["models"].items():
        n_layers, width = model["n_layers"], model["hidden_size"]
        size = chunk_size(config, name)
        chunks = layer_chunks(n_layers, size)
        flops_per_layer = 2 * model.get("compute_params_m", model["params_m"]) * 1e6 / n_layers * computed
        chunked = sum(last * flops_per_layer for _, last in chunks)
        compared = sum(last * flops_per_layer for _, last in layer_chunks(n_layers, args.compare_chunk))
        location_gb = n_texts * n_positions * width * n_layers / 1e9
        mine = [job for job in jobs if job["wildcards"].get("model") == name]
        extract_mem = max(int(job["resources"]["mem_mb"]) for job in mine if job["rule"] == "extract_hidden_states")
        probe_jobs = [job for job in mine if job["rule"] == "fit_probes"]
        requested = sum(int(job["resources"]["runtime"]) for job in probe_jobs) / 60
        layers_of = {location: n_layers + (location == "residual") for location in locations}  # + embeddings
        fits = sum(grid.fits_per_layer(config, location) * layers_of[location] for location in locations)
        probe_pflop = sum(probe_flops(config, name, location, n_texts, args.probe_passes) * layers_of[location]
                          for location in locations) / 1e15
        probe_hours = sum(job_layout.probe_seconds(config, name, location, layers_of[location], n_texts,
                                                   args.probe_seconds) for location in locations) / 3600
        probe_gpu = probe_pflop * 1e15 / (H100_FP32_TFLOPS * 1e12 * args.probe_utilisation) / 3600
        gpu_hours = chunked / rate / 3600
        stored_gb = location_gb * len(locations) * (2 if model.get("storage_dtype", extraction["storage_dtype"])
                                                     == "float16" else 4)
        totals.update({"gb": stored_gb, "pflop": chunked / 1e15, "gpu": gpu_hours, "fits": fits,
                       "probe_pflop": probe_pflop, "cpu": probe_hours, "probe_gpu": probe_gpu, "requested": requested})
        print(f"| {name} | {n_layers} | {width:,} | {size} | {len(chunks)} | {location_gb * 2:.1f} / "
              f"{location_gb * 4:.1f} | {stored_gb:.1f} | {chunked / 1e15:.2f} / "
              f"{compared / 1e15:.2f} | {gpu_hours:.3f} | {extract_mem:,} | {len(probe_jobs)} | {fits:,} | "
              f"{probe_pflop:.2f} | {probe_hours:.1f} | {probe_gpu:.3f} | {requested:.1f} |")
    print(f"| **all** | | | | {per_rule['extract_hidden_states']} | | {totals['gb']:.0f} | {totals['pflop']:.1f} | "
          f"{totals['gpu']:.2f} | | {per_rule['fit_probes']} | {totals['fits']:,.0f} | {totals['probe_pflop']:.1f} | "
          f"{totals['cpu']:.0f} | {totals['probe_gpu']:.2f} | {totals['requested']:.0f} |")
    print(f"\nProbes: {args.probe_seconds} s of one CPU thread per fit per million values (measured, "
          f"benchmarks/probes.py) and {args.probe_passes:g} passes per fit; GPU at {args.probe_utilisation:.0%} of an "
          f"H100's {H100_FP32_TFLOPS} float32 TFLOP/s (assumed, not measured).")


if __name__ == "__main__":
    main()
