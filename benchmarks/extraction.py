"""Benchmark: the workflow's extraction against the reference notebook's method, side by side.

Reference method (the course notebook): forward hooks on every decoder block, left
padding, batches of 4 in file order, the whole causal LM called (LM head included).
Workflow method: emoprobe.extract (length-sorted batches under a token budget, the
shared prompt prefix computed once, hooks that stop after the last layer, no LM head).

Both run on the same prompts, one after the other, each in its own child process so
that its peak memory is its own. Prints prompts/s, tokens/s, the speed-up, peak RSS
(and peak GPU memory on CUDA), the largest difference of the hidden states relative to
the state's norm, and the workflow's time over the FLOP floor (tokens computed x 2 x
non-embedding parameters / this machine's measured matmul rate in the compute dtype).
With ``--profile`` the workflow runs once more under ``torch.profiler``, which splits its
time into matrix products, attention and the rest (norms, rotary embeddings, activations,
copies), the first of them also over the floor: what a faster schedule could not remove.

The reference always computes in float32; the workflow runs once per ``--dtypes``
entry, and only its float32 states must agree with the reference's to 1e-4.

    .venv/bin/python benchmarks/extraction.py --model resources/models/smollm2-135m --n-prompts 400
    .venv/bin/python benchmarks/extraction.py --template two_shot --profile
    python benchmarks/extraction.py --device cuda --dtypes float32 bfloat16 --max-batch-size 512 --batch-tokens 32768
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from queue import Empty

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The workflow's named templates, from the defaults of its config schema.
TEMPLATES = yaml.safe_load((Path(__file__).resolve().parents[1] / "schemas/config.schema.yaml").read_text())[
    "properties"]["prompt"]["properties"]["templates"]["default"]
POSITIONS = [-1, -2, -3, -4, -5]
# Operators whose self time is a matrix product of the model's weights, or its attention.
MATRIX_PRODUCTS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
ATTENTION = "attention"  # every scaled-dot-product attention kernel has it in its name


def matmul_gflops(threads: int, device: str, dtype: str, seconds: float = 3.0) -> float:
    """The matrix-multiply rate of ``device`` in ``dtype`` (with ``threads`` CPU threads), in GFLOP/s.

    Square products of 1024 on the CPU, 8192 on a GPU (large enough to reach its peak).
    """
    import torch

    from emoprobe.models import DTYPES

    torch.set_num_threads(threads)
    size = 1024 if device == "cpu" else 8192
    a, b = (torch.randn(size, size, device=device, dtype=DTYPES[dtype]) for _ in range(2))
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    if device != "cpu":
        torch.cuda.synchronize()
    return 2 * size**3 * count / (time.perf_counter() - start) / 1e9


def peak_memory_mb(device: str) -> dict:
    """This process's peak RSS, and on CUDA the peak memory PyTorch allocated on the GPU, in MB."""
    import torch

    peaks = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device != "cpu":
        peaks["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peaks


def load_prompts(path: str, n: int, seed: int, template: str):
    """``n`` random rows of the prompts table, in file order, their prompts formatted with ``template``.

    Returns a pandas.DataFrame with the workflow's ``row_id``, ``label_id`` and ``prompt`` columns.
    """
    from emoprobe.corpus import build_prompts, read_prompts

    table = read_prompts(path)
    rows = np.sort(np.random.default_rng(seed).choice(len(table), size=min(n, len(table)), replace=False))
    return build_prompts(table.iloc[rows], template)[["row_id", "label_id", "prompt"]].reset_index(drop=True)


def add_prompt_arguments(parser: argparse.ArgumentParser, n_prompts: int) -> None:
    """The model and prompts a benchmark runs on (what :func:`load_prompts` reads): ``--model``, ``--prompts``,
    ``--template``, ``--n-prompts``, ``--seed``."""
    parser.add_argument("--model", default="resources/models/smollm2-135m", help="a prepared model directory")
    parser.add_argument("--prompts", default="results/corpus/prompts.tsv", help="the workflow's prompts table")
    parser.add_argument("--template", choices=sorted(TEMPLATES), default="zero_shot")
    parser.add_argument("--n-prompts", type=int, default=n_prompts)
    parser.add_argument("--seed", type=int, default=0, help="of the sample of prompts")


def reference_method(model_dir: str, prompts: list[str], threads: int, device: str, out: str, queue) -> None:
    """The notebook's extraction: full causal LM in float32, hooks on every block, batches of 4 in file order.

    On CUDA with the same exact attention kernels as the workflow's, so that a kernel bug does not
    pass for a difference between the methods.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emoprobe.models import exact_attention_for_broadcast_heads

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    exact_attention_for_broadcast_heads(model, torch.device(device))
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
            batch = tokenizer(prompts[first:first + 4], return_tensors="pt", padding=True).to(device)
            tokens += batch["input_ids"].numel()
            model(**batch)
            # [batch, layers, positions -1..-5, hidden]
            states.append(torch.stack([captured[i].flip(1) for i in range(len(blocks))], 1).cpu().numpy())
    seconds = time.perf_counter() - start
    for hook in hooks:
        hook.remove()
    np.save(out, np.concatenate(states))
    queue.put({"seconds": seconds, "computed_tokens": tokens, **peak_memory_mb(device)})


def time_by_kind(profiler) -> dict:
    """Seconds of CPU self time of a finished ``torch.profiler.profile`` by kind of operator.

    Returns a dict with ``matrix_products``, ``attention`` and ``other`` (all the rest), and
    ``top``: the ten operators with the most self time, as (name, seconds) pairs.
    """
    totals = {"matrix_products": 0.0, "attention": 0.0, "other": 0.0}
    by_operator = []
    for event in profiler.key_averages():
        seconds = event.self_cpu_time_total / 1e6
        kind = ("matrix_products" if event.key in MATRIX_PRODUCTS
                else "attention" if ATTENTION in event.key else "other")
        totals[kind] += seconds
        by_operator.append((event.key, seconds))
    return {**totals, "top": sorted(by_operator, key=lambda pair: -pair[1])[:10]}


def workflow_method(model_dir: str, table, threads: int, device: str, dtype: str, batching: dict,
                    hidden: str | None, profile: bool, out: str, queue) -> None:
    """emoprobe's extraction of every layer in ``dtype``, streamed into HDF5 exactly as the workflow does.

    The HDF5 file (residual stream, all layers, float32) is moved to ``hidden`` when given. With
    ``profile`` the extraction runs a second time under ``torch.profiler`` (:func:`time_by_kind`).
    """
    from emoprobe.memory import allocate_in_huge_pages

    allocate_in_huge_pages()  # as the workflow's job does, before torch is imported in this process
    import torch

    from emoprobe.extract import extract_to_hdf5
    from emoprobe.h5io import read_layer
    from emoprobe.models import load_decoder

    torch.set_num_threads(threads)
    model, tokenizer = load_decoder(model_dir, dtype=dtype, device=torch.device(device),
                                    trust_remote_code=False)
    n_layers = model.config.num_hidden_layers

    def extract(path: str) -> dict:
        return extract_to_hdf5(model, tokenizer, table, path, layers=range(1, n_layers + 1), locations=["residual"],
                               positions=POSITIONS, **batching, storage_dtype="float32", attrs={})

    h5 = out + ".h5"
    stats = extract(h5)
    np.save(out, np.stack([read_layer(h5, layer)[0] for layer in range(1, n_layers + 1)], 1))
    if hidden:
        shutil.move(h5, hidden)
    embedding = model.get_input_embeddings().weight.numel()
    report = {**stats, "non_embedding_params": sum(p.numel() for p in model.parameters()) - embedding,
              **peak_memory_mb(device)}
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler

        with profiler(activities=[ProfilerActivity.CPU]) as run:
            profiled = extract(out + ".profiled.h5")
        report["profile"] = {**time_by_kind(run), "seconds": profiled["seconds"]}
    queue.put(report)


def measure(target, *args):
    """Run ``target(*args, out, queue)`` in a fresh process; return its report and its saved states.

    Raises SystemExit, naming the method and the exit code, when the process ends without a report
    (killed, out of memory, a crash in native code), rather than waiting for that report forever.
    """
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "states.npy")
        process = context.Process(target=target, args=(*args, out, queue))
        process.start()
        while True:
            try:
                report = queue.get(timeout=5)
                break
            except Empty:
                if not process.is_alive():  # a report put before exiting is flushed before the exit
                    raise SystemExit(f"{target.__name__} ended with exit code {process.exitcode} and no report")
        process.join()
        return report, np.load(out)


def main() -> None:
    settings = yaml.safe_load((ROOT / "config.yaml").read_text())["extraction"]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prompt_arguments(parser, n_prompts=400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto (cuda, then cpu), cpu or cuda; both methods run there")
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16", "float16"], default=["float32"],
                        help="the workflow's compute dtypes, one run each (the reference: float32)")
    parser.add_argument("--batch-tokens", type=int, default=settings["batch_tokens"])
    parser.add_argument("--max-batch-size", type=int, default=settings["max_batch_size"])
    parser.add_argument("--save-hidden", help="keep the first workflow run's HDF5 file here (for benchmarks/probes.py)")
    parser.add_argument("--profile", action="store_true",
                        help="run the workflow once more under torch.profiler and split its time by kind of "
                             "operator (on the CPU only)")
    args = parser.parse_args()

    from emoprobe.device import pick_device

    device = pick_device(args.device).type
    if args.profile and device != "cpu":
        parser.error(f"--profile splits CPU time only; the device is {device}")
    batching = {"batch_tokens": args.batch_tokens, "max_batch_size": args.max_batch_size,
                "max_padding": settings["max_padding"]}
    table = load_prompts(args.prompts, args.n_prompts, args.seed, TEMPLATES[args.template])
    prompts = table["prompt"].tolist()
    rates = {dtype: matmul_gflops(args.threads, device, dtype) for dtype in args.dtypes}
    print(f"machine: {platform.processor() or platform.machine()}, {device}, {args.threads} threads, matmul "
          + ", ".join(f"{dtype} {rate:.0f} GFLOP/s" for dtype, rate in rates.items()))
    print(f"model {args.model}, {len(prompts)} prompts, template {args.template}, workflow batches of at most "
          f"{args.max_batch_size} prompts and {args.batch_tokens} tokens")
    reference, reference_states = measure(reference_method, args.model, prompts, args.threads, device)
    norm = np.linalg.norm(reference_states, axis=-1, keepdims=True).max(axis=(0, 2), keepdims=True)

    def report(name: str, result: dict) -> None:
        gpu = f", peak GPU {result['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in result else ""
        print(f"{name:>18}: {result['seconds']:7.2f} s  {len(prompts) / result['seconds']:7.1f} prompts/s  "
              f"{tokens / result['seconds']:8.0f} tokens/s  {result['computed_tokens']:>8} tokens computed  "
              f"peak RSS {result['peak_rss_mb']:.0f} MB{gpu}")

    float32_differs = False
    for k, dtype in enumerate(args.dtypes):
        ours, our_states = measure(workflow_method, args.model, table, args.threads, device, dtype, batching,
                                   args.save_hidden if k == 0 else None, args.profile)
        tokens = ours["tokens"]
        if k == 0:
            report("reference float32", reference)
        relative = float((np.abs(our_states - reference_states) / norm).max())
        # tokens that must be computed: every prompt's own tokens, the shared prefix once
        needed = ours["tokens"] - ours["prefix_tokens"] * (len(prompts) - 1)
        floor = needed * 2 * ours["non_embedding_params"] / (rates[dtype] * 1e9)
        report(f"workflow {dtype}", ours)
        print(f"    speed-up {reference['seconds'] / ours['seconds']:.2f}x; shared prefix of {ours['prefix_tokens']} "
              f"tokens computed once; FLOP floor for the {needed} tokens that must be computed {floor:.2f} s, "
              f"workflow / floor = {ours['seconds'] / floor:.2f} (padding {ours['computed_tokens'] / needed - 1:.1%}); "
              f"max |difference| / state norm, all layers and positions: {relative:.2e}")
        if args.profile:
            split = ours["profile"]
            print(f"    under torch.profiler {split['seconds']:.2f} s: matrix products {split['matrix_products']:.2f} s "
                  f"= {split['matrix_products'] / floor:.2f}x the floor, attention {split['attention']:.2f} s, "
                  f"everything else {split['other']:.2f} s; most self time: "
                  + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in split["top"]))
        float32_differs |= dtype == "float32" and relative > 1e-4
    if float32_differs:
        raise SystemExit("float32 hidden states differ from the reference's by more than 1e-4 of the state norm")


if __name__ == "__main__":
    main()
