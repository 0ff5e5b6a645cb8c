"""Hidden states of chosen decoder layers at the last tokens of each prompt.

Three locations can be read in each block: ``residual``, the residual stream
after the block (what the block returns); ``attention``, the output of its
self-attention module; ``mlp``, the output of its MLP. The latter two are taken
as their modules return them, before they are added to the residual stream (and,
in Gemma's and OLMo-2's blocks, before the norm applied to them there).

The prompts run in the batches, and with the shared prefix, of :mod:`emoprobe.forward`. Forward hooks retain
each wanted block's output at the chosen positions and stop the pass after the last wanted block, so neither
later layers nor the LM head are computed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from emoprobe.errors import ConfigError
from emoprobe.forward import (SharedPrefix, encode_prefix, left_pad, length_batches, max_padded_width,
                              shared_prefix_length, state_module, tokenize)
from emoprobe.nethook import RetainOutputs
from emoprobe.progress import Progress


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


def extract_to_hdf5(model, tokenizer, prompts, path, *, layers: Sequence[int], locations: Sequence[str],
                    positions: Sequence[int],
                    batch_tokens: int, max_batch_size: int, max_padding: float, storage_dtype: str,
                    attrs: dict, share_prefix: bool = True, log=None) -> dict:
    """Run the prompts through ``model`` and stream the chosen layers' states into ``path``; with ``log``, how far
    it is (:class:`emoprobe.progress.Progress`, in texts).

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
    ) as writer, Progress(log, len(lengths), "texts", what="extraction") as progress:
        for indices, states in iter_hidden_states(model, blocks, token_ids, keys, positions, pad_id=tokenizer.pad_token_id,
                                                  batch_tokens=batch_tokens, max_batch_size=max_batch_size,
                                                  max_padding=max_padding, share_prefix=share_prefix):
            writer.write(indices, states)
            stats["computed_tokens"] += len(indices) * int(rest[indices].max())
            progress.update(len(indices))
    stats["seconds"] = time.perf_counter() - start
    return stats
