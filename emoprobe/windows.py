"""Which layers an experiment edits: the centres of its windows and the layers of each window.

Only the standard library is imported here: the job estimates (:mod:`emoprobe.jobs`) count windows when Snakemake
parses the workflow.

Attention and MLP outputs are added to the residual stream, so editing them in each layer of a window edits the
window; the residual stream is *replaced* at the last token after each edited block, so an edit at the top of a
window overwrites whatever the window's lower layers did, and a window of the residual stream that replaces acts
exactly as its top layer edited alone. Steering *adds* to the residual stream at each layer of its window, and the
skip connection carries every step on.
"""

from __future__ import annotations

from collections.abc import Sequence


def centre_layers(n_layers: int, every: int) -> list[int]:
    """Every ``every``-th layer counted down from the last (so the last, where the answer is read, is always
    one), ascending."""
    return sorted(range(n_layers, 0, -every))


def layer_window(centre: int, span: int, n_layers: int) -> list[int]:
    """The 1-based layers ``centre - span // 2 .. centre + span // 2``, clipped to ``1 .. n_layers``."""
    if not 1 <= centre <= n_layers:
        raise ValueError(f"layer {centre} is not between 1 and {n_layers}")
    return list(range(max(1, centre - span // 2), min(n_layers, centre + span // 2) + 1))


def windows(location: str, centres: Sequence[int], span: int, n_layers: int, *, replaces: bool, clip: bool
            ) -> dict[int, list[int]]:
    """``{centre: the layers edited}`` for each centre that keeps a window: ``centre - span // 2 .. centre + span //
    2``; a window that leaves ``1 .. n_layers`` is dropped, or clipped with ``clip``. Where the edit ``replaces``
    the residual stream, a window acts as its top layer alone: the centre is then the one layer edited."""
    if replaces and location == "residual":
        return {centre: [centre] for centre in centres}
    found = {}
    for centre in centres:
        layers = layer_window(centre, span, n_layers)
        if clip or len(layers) == 2 * (span // 2) + 1:
            found[centre] = layers
    return found


def edited_layers(centres: Sequence[int], span: int, n_layers: int) -> list[int]:
    """Every layer some window edits: the union of the windows around ``centres``, clipped to the model."""
    return sorted(set().union(*(layer_window(centre, span, n_layers) for centre in centres)))


def describe(location: str, centre: int, layers: Sequence[int]) -> dict:
    """A condition's row keys: ``location``, ``layer`` (the centre the tables and figures draw it at),
    ``first_layer``, ``last_layer`` and ``span`` (the layers it edited)."""
    return {"location": location, "layer": centre, "first_layer": min(layers), "last_layer": max(layers),
            "span": len(layers)}
