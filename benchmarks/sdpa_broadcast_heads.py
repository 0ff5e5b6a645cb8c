"""Does this PyTorch's memory-efficient attention misread broadcast key/value heads (pytorch#191937)?

transformers' ``repeat_kv`` turns a model's single key/value head into a stride-0 view of it
for every query head (Gemma-3-270M: 4 query heads, 1 key/value head, head size 256). This
script runs ``scaled_dot_product_attention`` on such heads, and on the same heads copied, with
a left-padding causal mask at key lengths around multiples of 32, in every CUDA kernel that
takes the inputs, and prints each one's largest difference from the exact math kernel relative
to the largest output. ``emoprobe.models.exact_attention_for_broadcast_heads`` turns the
memory-efficient kernel off for such models because of what this showed (docs/performance.md, "On a GPU").

    python benchmarks/sdpa_broadcast_heads.py    (on a CUDA machine; on a CPU it checks the CPU's kernels)

Exits 1 when a kernel is wrong by more than 1e-2 (a rounding error in bfloat16 is about 3e-3).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BATCH, QUERY_HEADS, HEAD_SIZE = 4, 4, 256
LEFT_PADDING = [0, 3, 7, 1]
KEY_LENGTHS = [31, 32, 33, 34, 63, 64, 65, 97, 129]
KERNELS = {"efficient": SDPBackend.EFFICIENT_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
           "cudnn": SDPBackend.CUDNN_ATTENTION}
TOLERANCE = 1e-2


def padded_causal_mask(length: int, device: torch.device) -> torch.Tensor:
    """bool ``[BATCH, 1, length, length]``: causal, blind to each row's left padding; a padded query
    attends to itself only, so that no row of the softmax is empty."""
    keys = torch.arange(length, device=device)
    real = keys[None, :] >= torch.tensor(LEFT_PADDING, device=device)[:, None]
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    return (real[:, None, None, :] & causal) | torch.eye(length, dtype=torch.bool, device=device)


def relative_error(kernel: SDPBackend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   mask: torch.Tensor) -> float | None:
    """Largest |kernel - math kernel in float32| / largest |output|; None when the kernel refuses the
    inputs. Flash attention takes no mask, so it is compared on the plain causal mask."""
    causal = kernel == SDPBackend.FLASH_ATTENTION
    try:
        with sdpa_kernel(kernel), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # each refusal warns with its reasons first
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else mask, is_causal=causal)
    except RuntimeError:
        return None
    with sdpa_kernel(SDPBackend.MATH):
        exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=None if causal else mask,
                                               is_causal=causal)
    return float((out.float() - exact).abs().max() / exact.abs().max())


def main() -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (the bug is in a CUDA kernel)"
    print(f"torch {torch.__version__}, {name}; relative error against the math kernel")
    generator = torch.Generator(device).manual_seed(0)
    wrong = []
    for dtype in (torch.float32, torch.bfloat16):
        for length in KEY_LENGTHS:
            def draw(heads: int) -> torch.Tensor:
                return torch.randn(BATCH, heads, length, HEAD_SIZE, device=device, dtype=dtype, generator=generator)

            q, k, v = draw(QUERY_HEADS), draw(1), draw(1)
            mask = padded_causal_mask(length, device)
            for layout in ("broadcast", "copied"):
                shape = (BATCH, QUERY_HEADS, length, HEAD_SIZE)
                kv = [t.expand(shape) for t in (k, v)]  # stride 0 over heads, as repeat_kv makes it
                if layout == "copied":
                    kv = [t.contiguous() for t in kv]
                errors = {name: relative_error(kernel, q, *kv, mask) for name, kernel in KERNELS.items()}
                wrong += [f"{name}, {dtype}, {length} keys, {layout} heads" for name, error in errors.items()
                          if error is not None and error > TOLERANCE]
                print(f"{str(dtype):>15} {length:>4} keys {layout:>9} heads: " + ", ".join(
                    f"{name} {'refused' if error is None else f'{error:.1e}'}" for name, error in errors.items()))
    if wrong:
        raise SystemExit("wrong outputs: " + "; ".join(wrong))
    print("every kernel agrees with the math kernel")


if __name__ == "__main__":
    main()
