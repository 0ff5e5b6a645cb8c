"""Hidden states of chosen decoder layers at the last tokens of each prompt.

Three locations can be read in each block: ``residual``, the residual stream
after the block (what the block returns); ``attention``, the output of its
self-attention module; ``mlp``, the output of its MLP. The latter two are taken
as their modules return them, before they are added to the residual stream (and,
in Gemma's and OLMo-2's blocks, before the norm applied to them there).

Prompts are tokenised whole (never truncated), sorted by length and cut into
batches of at most ``batch_tokens`` padded tokens, padded on the left so that
position -1 is every prompt's last real token. Forward hooks retain each wanted
block's output at the chosen positions and stop the pass after the last wanted
block, so neither later layers nor the LM head are computed.

Every prompt of a template starts with the same tokens. Their keys and values
are computed once (:func:`encode_prefix`) and lent to every batch, which then
runs only the rest of each prompt: padding goes between the shared prefix and
each prompt's own tokens, and position ids count real tokens only, so every
token sees exactly the context and positions it has when its prompt runs alone.
A batch's own keys and values are never cached (:class:`PrefixCache`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
from transformers import DynamicCache

from emoprobe.errors import ConfigError
from emoprobe.nethook import RetainOutputs


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


def check_positions(lengths: Sequence[int], positions: Sequence[int], row_ids: Sequence[int]) -> None:
    """Raise :class:`ConfigError` unless every prompt has a token at every position.

    ``positions`` are negative offsets from the end (-1 is the last token).
    """
    deepest = -min(positions)
    short = [(rid, n) for rid, n in zip(row_ids, lengths) if n < deepest]
    if short:
        raise ConfigError(
            f"positions: {list(positions)} reach {deepest} tokens back, but {len(short)} prompt(s) are shorter, "
            f"e.g. row_id {short[0][0]} has {short[0][1]} tokens"
        )


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
    :mod:`emoprobe.interventions`); they get the stored keys and values broadcast, exactly what a
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
    input_ids, position_ids : torch.Tensor of int64, shape [batch, max_len]
        ``position_ids`` count real tokens only (``offset`` at each sequence's first
        token), so a padded prompt sees the same positions as when run alone.
    attention_mask : torch.Tensor of int64, shape [batch, offset + max_len]
        Ones over the prefix and the real tokens, zeros over the padding.
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


def hidden_states_batch(
    model: torch.nn.Module,
    blocks: torch.nn.ModuleList,
    keys: Sequence[tuple[str, int]],
    positions: Sequence[int],
    token_ids: Sequence[Sequence[int]],
    pad_id: int,
    prefix: SharedPrefix | None = None,
) -> dict[tuple[str, int], torch.Tensor]:
    """States at each ``(location, layer)`` of ``keys`` and at ``positions``, for one batch.

    Parameters
    ----------
    model : the base decoder (no LM head).
    blocks : its decoder blocks; layers are 1-based indices into them.
    keys : ``(location, layer)`` pairs, location a key of :data:`LOCATION_MODULES` (see :func:`state_module`).
    positions : negative offsets from the end of each prompt.
    token_ids : the prompts' tokens, without the first ``prefix.length`` when a prefix is given.
    prefix : the shared prefix whose keys and values precede every prompt of the batch.

    Returns
    -------
    dict of (location, layer) -> torch.Tensor, shape [batch, len(positions), hidden], on the model's
    device and dtype.
    """
    device = next(model.parameters()).device
    offset = prefix.length if prefix is not None else 0
    input_ids, attention_mask, position_ids = (t.to(device) for t in left_pad(token_ids, pad_id, offset))
    if not bool(attention_mask[:, -1].all()):
        raise RuntimeError("left padding failed: position -1 is not a real token in every row")
    columns = torch.as_tensor([input_ids.shape[1] + p for p in positions], device=device)
    with RetainOutputs({(location, layer): state_module(model, blocks, location, layer) for location, layer in keys},
                       select=lambda h: h.index_select(1, columns), stop=True) as trace:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
              past_key_values=prefix.cache if prefix is not None else None, use_cache=prefix is not None)
    return trace.retained


def iter_hidden_states(
    model: torch.nn.Module,
    blocks: torch.nn.ModuleList,
    token_ids: Sequence[Sequence[int]],
    keys: Sequence[tuple[str, int]],
    positions: Sequence[int],
    *,
    pad_id: int,
    batch_tokens: int,
    max_batch_size: int,
    max_padding: float,
    share_prefix: bool = True,
) -> Iterator[tuple[np.ndarray, dict[int, np.ndarray]]]:
    """Yield ``(indices, states)`` batch by batch, in length-sorted order.

    ``indices`` (int64) index ``token_ids``; ``states[(location, layer)]``
    is a float32 array ``[len(indices), len(positions), hidden]`` in the same order.
    Memory stays bounded by one batch whatever the number of prompts.
    With ``share_prefix`` the tokens common to all prompts are computed once.
    """
    prefix_length = shared_prefix_length(token_ids, positions) if share_prefix else 0
    prefix = encode_prefix(model, token_ids[0][:prefix_length]) if prefix_length else None
    rest = [ids[prefix_length:] for ids in token_ids]
    batches = length_batches([len(ids) for ids in rest], batch_tokens, max_batch_size, max_padding,
                             max_padded_width(model.config, prefix_length))
    with torch.inference_mode():
        for batch in batches:
            states = hidden_states_batch(model, blocks, keys, positions, [rest[i] for i in batch], pad_id, prefix)
            yield batch, {key: s.float().cpu().numpy() for key, s in states.items()}


def padded_tokens(lengths: Sequence[int], batches: Sequence[np.ndarray]) -> int:
    """Number of tokens computed when ``batches`` are left-padded to their longest prompt."""
    lengths = np.asarray(lengths)
    return int(sum(len(b) * lengths[b].max() for b in batches))



def extract_to_hdf5(model, tokenizer, prompts, path, *, layers: Sequence[int], locations: Sequence[str],
                    positions: Sequence[int],
                    batch_tokens: int, max_batch_size: int, max_padding: float, storage_dtype: str,
                    attrs: dict, share_prefix: bool = True, log=None) -> dict:
    """Run the prompts through ``model`` and stream the chosen layers' states into ``path``.

    Parameters
    ----------
    prompts : pandas.DataFrame with ``row_id``, ``label_id`` and ``prompt`` columns.
    layers : 1-based decoder layers to keep; 0 keeps the token embeddings as layer 0 of the residual stream.
    locations : where in each of them to read, keys of :data:`LOCATION_MODULES`.
    attrs : recorded as file attributes (model source, template, versions ...).

    Returns
    -------
    dict with ``n_texts``, ``tokens`` (real tokens), ``computed_tokens`` (padded, the shared
    prefix counted once), ``prefix_tokens`` and ``seconds``.
    """
    import time

    from emoprobe.h5io import HiddenStateWriter
    from emoprobe.models import decoder_layers

    blocks = decoder_layers(model)
    keys = [(location, layer) for layer in layers for location in locations if layer > 0 or location == "residual"]
    token_ids = tokenize(tokenizer, prompts["prompt"])
    lengths = [len(ids) for ids in token_ids]
    check_positions(lengths, positions, prompts["row_id"].tolist())
    prefix = shared_prefix_length(token_ids, positions) if share_prefix else 0
    rest = np.asarray(lengths) - prefix
    stats = {"n_texts": len(lengths), "tokens": int(sum(lengths)), "prefix_tokens": prefix, "computed_tokens": prefix}
    start = time.perf_counter()
    with HiddenStateWriter(
        path, row_id=prompts["row_id"], label_id=prompts["label_id"], n_tokens=lengths, positions=positions,
        keys=keys, hidden_size=model.config.hidden_size, storage_dtype=storage_dtype, attrs=attrs,
    ) as writer:
        done = 0
        for indices, states in iter_hidden_states(model, blocks, token_ids, keys, positions, pad_id=tokenizer.pad_token_id,
                                                  batch_tokens=batch_tokens, max_batch_size=max_batch_size,
                                                  max_padding=max_padding, share_prefix=share_prefix):
            writer.write(indices, states)
            stats["computed_tokens"] += len(indices) * int(rest[indices].max())
            done += len(indices)
            if log is not None:
                log.info("%d/%d prompts, %.1f prompts/s", done, len(lengths), done / (time.perf_counter() - start))
    stats["seconds"] = time.perf_counter() - start
    return stats
