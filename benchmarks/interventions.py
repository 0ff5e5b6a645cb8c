"""Benchmark: interventions on the cached last-token path against the plain method, side by side.

Plain method (what the paper's code does): for every condition, the whole prompts re-run with a forward
hook that edits the chosen location at their last token, then the label logits read at that token.
Cached method (emoprobe.last_token): each batch's tokens before the last are run once (the shared
prefix once for all batches) and their keys and values kept; each condition then runs the last token
only, from the first edited block on, starting from the clean residual stream entering it; the conditions
of one window run in one pass, the batch's rows once per condition.

Both run the same conditions on the same prompts, in this process, one after the other, each batched as
suits it: the plain method as the extraction batches (config.yaml's ``extraction``: little padding, since
every padded token is computed per condition), the cached path in larger batches that may hold more
padding (computed once, in the run up to the last token; each condition computes one token per row, and
weights are read once per batch, so fewer batches is less time). The conditions: zero ablation, random ablation (seeded) and patching (each row gets another row's clean output)
of each location, in a window of ``--span`` layers around every ``--every``-th layer. The cached time
includes running the prompts up to their last token. Prints the seconds of each, the ratio, and the
largest difference of the answer logits relative to the largest clean logit (must be below 1e-4).

    .venv/bin/python benchmarks/interventions.py --model resources/models/smollm2-135m --n-prompts 64
    .venv/bin/python benchmarks/interventions.py --model resources/models/gemma3-270m --n-prompts 64 --every 2
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extraction import ROOT, TEMPLATES, add_prompt_arguments, load_prompts  # noqa: E402

LOCATIONS = ["residual", "attention", "mlp"]


def conditions(indices, clean: dict, sources, n_layers: int, span: int, every: int, seed: int
               ) -> list[list[tuple[str, dict]]]:
    """``(name, edits)`` of every condition for the rows ``indices`` of one batch, grouped by window (a group
    starts at one layer): zero and random ablation, and patching from each row's source (``clean``: every
    prompt's clean outputs, ``[n_prompts, hidden]``)."""
    from emoprobe import last_token
    from emoprobe.windows import layer_window

    hidden = clean[("residual", 0)].shape[1]
    groups = []
    for centre in range(1, n_layers + 1, every):
        window = layer_window(centre, span, n_layers)
        group = []
        for location in LOCATIONS:
            group.append((f"zero {location} {centre}", {(location, layer): last_token.zero for layer in window}))
            group.append((f"random {location} {centre}", {
                (location, layer): last_token.scaled_noise(
                    last_token.gaussian_noise(seed, indices, (location, layer), hidden)) for layer in window}))
            group.append((f"patch {location} {centre}", {
                (location, layer): last_token.replace_with(clean[(location, layer)][sources[indices]])
                for layer in window}))
        groups.append(group)
    return groups


def main() -> None:
    settings = yaml.safe_load((ROOT / "config.yaml").read_text())["extraction"]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prompt_arguments(parser, n_prompts=64)
    parser.add_argument("--span", type=int, default=3)
    parser.add_argument("--every", type=int, default=1, help="centre a window on every k-th layer")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-tokens", type=int, default=32768, help="the cached path's padded tokens per batch")
    parser.add_argument("--max-batch-size", type=int, default=256, help="the cached path's prompts per batch")
    parser.add_argument("--max-padding", type=float, default=0.2, help="the cached path's padding fraction")
    args = parser.parse_args()

    import torch

    from emoprobe import last_token
    from emoprobe.answers import answer_token_ids, label_readout
    from emoprobe.forward import length_batches, tokenize
    from emoprobe.models import decoder_layers, load_decoder

    torch.set_num_threads(args.threads)
    model, tokenizer = load_decoder(args.model, dtype="float32", device=torch.device("cpu"),
                                    trust_remote_code=False, head=True)
    base = model.get_decoder()
    blocks = decoder_layers(base)
    labels = yaml.safe_load((ROOT / "config.yaml").read_text())["dataset"]["labels"]
    readout = label_readout(model, answer_token_ids(tokenizer, labels, {}))
    table = load_prompts(args.prompts, args.n_prompts, args.seed, TEMPLATES[args.template])
    token_ids = tokenize(tokenizer, table["prompt"])
    pad_id = tokenizer.pad_token_id
    n_layers, hidden = len(blocks), model.config.hidden_size
    print(f"machine: {platform.processor() or platform.machine()}, cpu, {args.threads} threads; model {args.model} "
          f"({n_layers} layers), {len(token_ids)} prompts of {sum(map(len, token_ids)) / len(token_ids):.1f} tokens "
          f"on average, windows of {args.span} layers around every {args.every}. layer")

    cached_batching = dict(batch_tokens=args.batch_tokens, max_batch_size=args.max_batch_size,
                           max_padding=args.max_padding)
    plain_batching = {key: settings[key] for key in ("batch_tokens", "max_batch_size", "max_padding")}
    # Every prompt's clean outputs, the patching sources (prompt i's is prompt i + 1's), untimed: either method
    # needs them, from one clean run.
    clean = {}
    for indices, batch in last_token.iter_last_token_batches(base, blocks, token_ids, pad_id=pad_id,
                                                                locations=LOCATIONS, **cached_batching):
        for key, value in batch.clean.items():
            clean.setdefault(key, torch.empty(len(token_ids), hidden))[torch.as_tensor(indices)] = value
    sources = (np.arange(len(token_ids)) + 1) % len(token_ids)
    names = [name for group in conditions(np.arange(1), clean, sources, n_layers, args.span, args.every, 0)
             for name, _ in group]

    start = last = time.perf_counter()
    cached = torch.empty(len(names), len(token_ids), len(labels))
    n_cached, prepare_seconds = 0, 0.0
    for indices, batch in last_token.iter_last_token_batches(base, blocks, token_ids, pad_id=pad_id,
                                                                locations=LOCATIONS, **cached_batching):
        prepare_seconds += time.perf_counter() - last  # the run up to the last token (and the clean one)
        groups = conditions(indices, clean, sources, n_layers, args.span, args.every, args.seed)
        cached[:, torch.as_tensor(indices)] = torch.cat(
            [readout(batch.run_many([edits for _, edits in group])) for group in groups])
        n_cached += 1
        last = time.perf_counter()
    cached_seconds = time.perf_counter() - start

    start = time.perf_counter()
    plain = torch.empty_like(cached)
    plain_batches = length_batches(list(map(len, token_ids)), **plain_batching)
    for indices in plain_batches:
        prompts = [token_ids[i] for i in indices]
        groups = conditions(indices, clean, sources, n_layers, args.span, args.every, args.seed)
        plain[:, torch.as_tensor(indices)] = torch.stack([
            readout(last_token.full_prompt_outputs(base, blocks, prompts, pad_id, edits))
            for group in groups for _, edits in group])
    plain_seconds = time.perf_counter() - start

    # relative to the clean logits: a zeroed last residual stream makes every logit 0
    difference = float((cached - plain).abs().max() / readout(clean[("residual", n_layers)]).abs().max())
    print(f"{len(names)} conditions (zero and random ablation, patching; {len(LOCATIONS)} locations)")
    print(f"  plain (full prompts, a hook per condition; {len(plain_batches)} batches): {plain_seconds:8.2f} s")
    print(f"  cached last-token path (the prompts' run included; {n_cached} batches): {cached_seconds:8.2f} s")
    print(f"    of which the run up to the last token: {prepare_seconds:.2f} s; per condition plain / cached = "
          f"{plain_seconds / (cached_seconds - prepare_seconds):.1f}x")
    print(f"  plain / cached = {plain_seconds / cached_seconds:.1f}x; max |difference| of the answer logits / the "
          f"largest clean logit: {difference:.2e}")
    if difference > 1e-4:
        raise SystemExit("the cached path's answer logits differ from the plain method's by more than 1e-4")


if __name__ == "__main__":
    main()
