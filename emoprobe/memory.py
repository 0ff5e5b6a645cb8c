"""Keep an extraction job's resident memory at what its largest batch needs."""

from __future__ import annotations

import os
import sys


def allocate_in_huge_pages() -> None:
    """Have PyTorch place its large CPU tensors in transparent huge pages (``THP_MEM_ALLOC_ENABLE``).

    With glibc's default allocator a forward pass over batches of ever-changing shapes leaves the
    heap fragmented: the resident set of an extraction job grew with the longest prompts it met, to
    several times the model's size. Huge-page allocations are 2 MiB-aligned and returned whole, which
    keeps it near the model plus one batch for a few per cent of extraction time (measured in
    docs/performance.md, "Peak memory"). PyTorch reads the variable
    once, at its first allocation, so this must run before ``torch`` is imported; a value the user
    has set is kept.

    Raises
    ------
    RuntimeError
        When ``torch`` is already imported.
    """
    if "torch" in sys.modules:
        raise RuntimeError("allocate_in_huge_pages() must run before torch is imported")
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
