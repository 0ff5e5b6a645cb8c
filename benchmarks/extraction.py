"""Benchmark: the workflow's extraction against the reference notebook's method, side by side.

Reference method (the course notebook): forward hooks on every decoder block, left
padding, batches of 4 in file order, the whole causal LM called (LM head included).
Workflow method: emoprobe.extract (length-sorted batches under a token budget, the
shared prompt prefix computed once, hooks that stop after the last layer, no LM head).

Both run on the same prompts in this one process, one after the other, each in its
own child process so that its peak memory is its own. Prints prompts/s, tokens/s,
the speed-up, peak RSS, the largest difference of the hidden states relative to the
state's norm, and the workflow's time over the FLOP floor (tokens computed x 2 x
non-embedding parameters / this machine's measured matmul rate).

    .venv/bin/python benchmarks/extraction.py --model resources/models/smollm2-135m --n-prompts 400
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The workflow's named templates, from the defaults of its config schema.
TEMPLATES = yaml.safe_load((Path(__file__).resolve().parents[1] / "schemas/config.schema.yaml").read_text())[
    "properties"]["prompt"]["properties"]["templates"]["default"]
POSITIONS = [-1, -2, -3, -4, -5]


def matmul_gflops(threads: int, size: int = 1024, seconds: float = 3.0) -> float:
    """This machine's fp32 matrix-multiply rate with ``threads`` threads, in GFLOP/s."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start) / 1e9


def load_prompts(path: str, n: int, seed: int, template: str) -> list[str]:
    """``n`` random texts of the prompts table, in file order, formatted with ``template``."""
    from emoprobe.corpus import build_prompts, read_prompts

    table = read_prompts(path)
    rows = np.sort(np.random.default_rng(seed).choice(len(table), size=min(n, len(table)), replace=False))
    return build_prompts(table.iloc[rows], template)["prompt"].tolist()


def reference_method(model_dir: str, prompts: list[str], threads: int, out: str, queue) -> None:
    """The notebook's extraction: full causal LM, hooks on every block, batches of 4 in file order."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    blocks = model.model.layers
    captured: dict[int, torch.Tensor] = {}
    hooks = [block.register_forward_hook(
        lambda m, a, o, i=i: captured.__setitem__(i, (o[0] if isinstance(o, tuple) else o)[:, -5:].detach()))
        for i, block in enumerate(blocks)]
    states, tokens = [], 0
    start = time.perf_counter()
    with torch.no_grad():
        for first in range(0, len(prompts), 4):
            # no truncation here, unlike the notebook, so that both methods see the same tokens
            batch = tokenizer(prompts[first:first + 4], return_tensors="pt", padding=True)
            tokens += batch["input_ids"].numel()
            model(**batch)
            # [batch, layers, positions -1..-5, hidden]
            states.append(torch.stack([captured[i].flip(1) for i in range(len(blocks))], 1).numpy())
    seconds = time.perf_counter() - start
    for hook in hooks:
        hook.remove()
    np.save(out, np.concatenate(states))
    queue.put({"seconds": seconds, "computed_tokens": tokens,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def workflow_method(model_dir: str, prompts: list[str], threads: int, out: str, queue) -> None:
    """emoprobe's extraction of every layer, streamed into HDF5 exactly as the workflow does."""
    from emoprobe.memory import allocate_in_huge_pages

    allocate_in_huge_pages()  # as the workflow's job does, before torch is imported in this process
    import pandas as pd
    import torch

    from emoprobe.extract import extract_to_hdf5
    from emoprobe.h5io import read_layer
    from emoprobe.models import load_decoder

    torch.set_num_threads(threads)
    model, tokenizer = load_decoder(model_dir, revision=None, dtype="float32", device=torch.device("cpu"),
                                    trust_remote_code=False, local_only=True)
    n_layers = model.config.num_hidden_layers
    table = pd.DataFrame({"row_id": range(len(prompts)), "label_id": 0, "prompt": prompts})
    h5 = out + ".h5"
    settings = yaml.safe_load((ROOT / "config.yaml").read_text())["extraction"]
    stats = extract_to_hdf5(model, tokenizer, table, h5, layers=range(1, n_layers + 1), locations=["residual"],
                            positions=POSITIONS,
                            batch_tokens=settings["batch_tokens"], max_batch_size=settings["max_batch_size"],
                            max_padding=settings["max_padding"], storage_dtype="float32", attrs={})
    np.save(out, np.stack([read_layer(h5, layer)[0] for layer in range(1, n_layers + 1)], 1))
    embedding = model.get_input_embeddings().weight.numel()
    queue.put({**stats, "non_embedding_params": sum(p.numel() for p in model.parameters()) - embedding,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def measure(target, *args):
    """Run ``target(*args, out, queue)`` in a fresh process; return its report and its saved states."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "states.npy")
        process = context.Process(target=target, args=(*args, out, queue))
        process.start()
        report = queue.get()
        process.join()
        return report, np.load(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resources/models/smollm2-135m", help="a prepared model directory")
    parser.add_argument("--prompts", default="results/corpus/prompts.tsv", help="the workflow's prompts table")
    parser.add_argument("--template", choices=sorted(TEMPLATES), default="zero_shot")
    parser.add_argument("--n-prompts", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    prompts = load_prompts(args.prompts, args.n_prompts, args.seed, TEMPLATES[args.template])
    rate = matmul_gflops(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"fp32 matmul {rate:.0f} GFLOP/s")
    print(f"model {args.model}, {len(prompts)} prompts, template {args.template}")
    reference, reference_states = measure(reference_method, args.model, prompts, args.threads)
    ours, our_states = measure(workflow_method, args.model, prompts, args.threads)

    norm = np.linalg.norm(reference_states, axis=-1, keepdims=True).max(axis=(0, 2), keepdims=True)
    relative = float((np.abs(our_states - reference_states) / norm).max())
    # tokens that must be computed: every prompt's own tokens, the shared prefix once
    needed = ours["tokens"] - ours["prefix_tokens"] * (len(prompts) - 1)
    floor = needed * 2 * ours["non_embedding_params"] / (rate * 1e9)
    for name, report in (("reference", reference), ("workflow", ours)):
        print(f"{name:>9}: {report['seconds']:7.1f} s  {len(prompts) / report['seconds']:6.1f} prompts/s  "
              f"{ours['tokens'] / report['seconds']:7.0f} tokens/s  {report['computed_tokens']:>8} tokens computed  "
              f"peak RSS {report['peak_rss_mb']:.0f} MB")
    print(f"speed-up: {reference['seconds'] / ours['seconds']:.2f}x")
    print(f"shared prefix: {ours['prefix_tokens']} tokens, computed once")
    print(f"FLOP floor for the {needed} tokens that must be computed: {floor:.1f} s; "
          f"workflow / floor = {ours['seconds'] / floor:.2f} (padding: {ours['computed_tokens'] / needed - 1:.1%})")
    print(f"max |difference| / state norm, all layers and positions: {relative:.2e}")
    if relative > 1e-4:
        raise SystemExit("hidden states differ by more than 1e-4 of the state norm")


if __name__ == "__main__":
    main()
