"""The forward pass every step shares: tokens, batches, the shared prefix's cache, and where each location is read.

Extraction (:mod:`emoprobe.extract`) and the experiments' cached last-token path (:mod:`emoprobe.last_token`) run the
model through these. Prompts are tokenised whole (never truncated), sorted by length and cut into batches
of at most ``batch_tokens`` padded tokens (:func:`length_batches`), padded on the left so that position -1 is every
prompt's last real token (:func:`left_pad`).

Every prompt of a template starts with the same tokens. Their keys and values are computed once
(:func:`encode_prefix`) and lent to every batch, which then runs only the rest of each prompt: padding goes between
the shared prefix and each prompt's own tokens, and position ids count real tokens only, so every token sees exactly
the context and positions it has when its prompt runs alone. A batch's own keys and values are never cached
(:class:`PrefixCache`). In models with sliding-window attention a batch is never padded so wide that a prompt's
prefix would leave the window (:func:`max_padded_width`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from transformers import DynamicCache

from emoprobe.errors import ConfigError


# Submodule of a decoder block holding each location's output; "" is the block itself.
# These are the attribute names of every decoder in transformers that the workflow targets
# (Llama, Mistral, Gemma 1-3, Phi-3, OLMo-2, Qwen).
LOCATION_MODULES = {"residual": "", "attention": "self_attn", "mlp": "mlp"}


def location_module(block: torch.nn.Module, location: str) -> torch.nn.Module:
    """The module of ``block`` whose output is ``location`` (a key of :data:`LOCATION_MODULES`)."""
    name = LOCATION_MODULES[location]
    try:
        return block.get_submodule(name) if name else block
    except AttributeError:
        raise ConfigError(f"locations: {type(block).__name__} has no {name!r} module to read {location!r} from") from None


def state_module(model: torch.nn.Module, blocks: torch.nn.ModuleList, location: str, layer: int) -> torch.nn.Module:
    """The module whose output is ``location`` of 1-based ``layer``; layer 0 of ``residual`` is the token
    embedding (what enters the first block: in Gemma, already scaled by the square root of the width)."""
    if layer == 0:
        if location != "residual":
            raise ValueError(f"layer 0 has only the residual stream (the token embeddings), not {location!r}")
        return model.get_input_embeddings()
    return location_module(blocks[layer - 1], location)


def tokenize(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, with the model's special tokens and no truncation."""
    return tokenizer(list(prompts), add_special_tokens=True, truncation=False)["input_ids"]


def length_batches(lengths: Sequence[int], batch_tokens: int, max_batch_size: int,
                   max_padding: float, max_padded_width: int | None = None) -> list[np.ndarray]:
    """Group prompt indices into batches of similar length, longest first.

    Each batch holds at most ``max_batch_size`` prompts and at most
    ``batch_tokens`` padded tokens (its size times its longest prompt), and at
    most a ``max_padding`` fraction of its padded tokens is padding; a single
    prompt longer than the budget gets a batch of its own. A batch wider than
    ``max_padded_width`` holds only prompts of its own length: no padding.

    Returns
    -------
    list of numpy.ndarray of int64
        Indices into ``lengths``; together they cover every index once.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches, current, real = [], [], 0
    for index in order:
        # Sorted longest first, so the first prompt of a batch sets its padded width.
        width = lengths[current[0]] if current else lengths[index]
        size = len(current) + 1
        if current and (size > max_batch_size or size * width > batch_tokens
                        or real + lengths[index] < (1 - max_padding) * size * width
                        or max_padded_width is not None and width > max_padded_width and lengths[index] < width):
            batches.append(np.array(current, dtype=np.int64))
            current, real = [], 0
        current.append(int(index))
        real += lengths[index]
    if current:
        batches.append(np.array(current, dtype=np.int64))
    return batches


def sliding_window(config) -> int | None:
    """Width of the attention window of a model's sliding-window layers; None when it has none."""
    config = config.get_text_config()
    window = getattr(config, "sliding_window", None)
    if window is None or "sliding_attention" not in (getattr(config, "layer_types", None) or ["sliding_attention"]):
        return None
    return int(window)


def max_padded_width(config, prefix_length: int) -> int | None:
    """Widest batch (in tokens after the shared prefix) that may be padded, or None for any.

    Padding goes between the shared prefix and a prompt's own tokens, and sliding-window masks
    measure distance in columns, not positions: a padded row would see its prefix as further
    away than it is, and lose it from the window too early. Rows with the prefix plus the batch's
    width within the window cannot tell; wider batches must not be padded.
    """
    window = sliding_window(config)
    return None if window is None or prefix_length == 0 else window - prefix_length


class PrefixCache(DynamicCache):
    """The keys and values of tokens that several passes continue from, lent to each pass.

    Until :meth:`freeze` it fills like a ``DynamicCache`` (that is how :func:`encode_prefix`
    computes the shared prefix). Frozen, each layer's :meth:`update` returns the stored keys and
    values followed by the pass's own, and stores nothing. A pass may hold several copies of the
    stored rows, one after another (its batch a multiple of theirs: the shared prefix's one row
    for every prompt of a batch, or a batch's rows once per condition, see
    :mod:`emoprobe.last_token`); they get the stored keys and values broadcast, exactly what a
    copy of the cache repeated that often would return. So they are never copied per pass, and
    each layer's keys and values are freed once its attention has used them instead of piling up
    across all layers until the pass ends (about 190 MB for a batch of 4,096 tokens through
    SmolLM2's 30 layers).
    """

    frozen = False

    def freeze(self) -> None:
        self.frozen = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[batch, kv_heads, stored + new tokens, head_dim]`` for layer ``layer_idx``."""
        if not self.frozen:
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)
        layer = self.layers[layer_idx]
        return _continued(layer.keys, key_states), _continued(layer.values, value_states)


def _continued(stored: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``stored`` ``[rows, heads, tokens, head_dim]`` followed by ``new`` ``[copies * rows, heads, n, head_dim]``
    along the tokens, the stored rows broadcast over the copies (copy-major: new row ``c * rows + r``
    continues stored row ``r``)."""
    rows, copies = stored.shape[0], new.shape[0] // stored.shape[0]
    if copies * rows != new.shape[0]:
        raise ValueError(f"a pass of {new.shape[0]} rows cannot continue {rows} stored rows")
    out = torch.cat([stored.expand(copies, *stored.shape), new.view(copies, rows, *new.shape[1:])], dim=-2)
    return out.view(new.shape[0], *out.shape[2:])


class SharedPrefix(NamedTuple):
    """The first ``length`` tokens common to all prompts and their keys/values (batch 1)."""

    length: int
    cache: PrefixCache


def shared_prefix_length(token_ids: Sequence[Sequence[int]], positions: Sequence[int]) -> int:
    """Length of the longest token prefix common to all prompts, capped so that
    every prompt keeps its last ``-min(positions)`` tokens outside it (states are
    read from those tokens, which must run in the batch)."""
    first = token_ids[0]
    length = min(len(ids) for ids in token_ids) + min(positions)
    for ids in token_ids[1:]:
        length = min(length, next((i for i, (a, b) in enumerate(zip(first, ids)) if a != b), length))
    return max(length, 0)


def encode_prefix(model: torch.nn.Module, prefix_ids: Sequence[int]) -> SharedPrefix:
    """Run the shared prefix once and keep its keys and values."""
    device = next(model.parameters()).device
    cache = PrefixCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=torch.tensor([list(prefix_ids)], device=device), past_key_values=cache, use_cache=True)
    cache.freeze()
    return SharedPrefix(len(prefix_ids), cache)


def left_pad(token_ids: Sequence[Sequence[int]], pad_id: int, offset: int = 0
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad sequences into one batch, after ``offset`` already-cached prefix tokens.

    Returns
    -------
    input_ids : torch.Tensor of int64, shape [batch, max_len]
    attention_mask : torch.Tensor of int64, shape [batch, offset + max_len]
        Ones over the prefix and the real tokens, zeros over the padding.
    position_ids : torch.Tensor of int64, shape [batch, max_len]
        They count real tokens only (``offset`` at each sequence's first token), so a padded prompt sees the
        same positions as when run alone.
    """
    width = max(len(ids) for ids in token_ids)
    input_ids = torch.full((len(token_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_ids), width), dtype=torch.long)
    for row, ids in enumerate(token_ids):
        input_ids[row, width - len(ids):] = torch.as_tensor(ids, dtype=torch.long)
        mask[row, width - len(ids):] = 1
    position_ids = offset + (mask.cumsum(-1) - 1).clamp(min=0)
    attention_mask = torch.cat([torch.ones((len(token_ids), offset), dtype=torch.long), mask], dim=1)
    return input_ids, attention_mask, position_ids


def padded_tokens(lengths: Sequence[int], batches: Sequence[np.ndarray]) -> int:
    """Number of tokens computed when ``batches`` are left-padded to their longest prompt."""
    lengths = np.asarray(lengths)
    return int(sum(len(b) * lengths[b].max() for b in batches))
