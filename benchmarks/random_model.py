"""A model directory with a prepared model's architecture and tokenizer, and seeded random weights.

For timing on a machine the real weights cannot reach (the GPU machine this project is
sometimes lent takes 64 MiB of upload): the cost of a forward pass depends on the shapes,
not on the values of the weights. Hidden states and probe accuracies of such a model mean
nothing; use it for speed only.

    python benchmarks/random_model.py resources/models/smollm2-135m /tmp/models/smollm2-135m
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a model directory; only its config and tokenizer files are read")
    parser.add_argument("out", help="the directory to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    source, out = Path(args.source), Path(args.out)
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source), dtype=torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    for path in source.iterdir():
        if path.is_file() and path.suffix != ".safetensors" and not (out / path.name).exists():
            shutil.copy(path, out / path.name)
    print(f"{out}: {type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M random parameters")


if __name__ == "__main__":
    main()
