"""The one place where a configured device name becomes a torch device."""

from __future__ import annotations

import torch


def pick_device(name: str, *, needs_float64: bool = False) -> torch.device:
    """The device a job computes on.

    Parameters
    ----------
    name : ``auto``, or a torch device name (``cpu``, ``cuda``, ``cuda:1``, ``mps``) used as given
    needs_float64 : whether the job computes in float64; ``auto`` then never picks MPS, which lacks it

    ``auto`` gives CUDA when available, then MPS (unless ``needs_float64``), then the CPU.
    """
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if not needs_float64 and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
