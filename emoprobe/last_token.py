"""Interventions at the last prompt token, run at the cost of that token alone.

Every experiment of Tak et al. (2025) edits one location (``residual``, ``attention``, ``mlp``;
see :data:`emoprobe.forward.LOCATION_MODULES`) in a window of layers at the prompt's last token and reads the
model's answer. Attention is causal, so no earlier token ever sees the edit: the keys and values
of every token but the last are the clean run's, whatever the edit. :class:`LastTokenBatch` runs
them once per batch (after the shared prefix, which is run once for all batches, as the extraction
does) and keeps them; each edited run then computes the last token only, and starts it at the
window's first block from the clean residual stream entering it, since nothing before that block
changes either. The plain method, :func:`full_prompt_outputs`, re-runs whole prompts with the same
hook; both give the same states (``benchmarks/interventions.py`` measures the time of both and
their largest difference; the tests hold them to 1e-4).

An edit is a function of the clean output at the last token, ``[batch, hidden] -> [batch, hidden]``
(:data:`Edit`), keyed by ``(location, layer)``; layers are 1-based, as in the stored hidden states.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from emoprobe.forward import (LOCATION_MODULES, PrefixCache, SharedPrefix, encode_prefix, left_pad, length_batches,
                              location_module, max_padded_width, shared_prefix_length, state_module)
from emoprobe.nethook import EditLastToken, RetainOutputs

Edit = Callable[[torch.Tensor], torch.Tensor]


class _Skipped(torch.nn.Module):
    """Stands in for a decoder block that a run does not need: returns the hidden states it is given."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states


@contextmanager
def blocks_from(blocks: torch.nn.ModuleList, first: int) -> Iterator[None]:
    """Within the context, a forward pass runs only blocks ``first ..`` (1-based): the ones before pass
    their input through unchanged, so the pass's input embeddings are what enters block ``first``.

    The blocks keep their places, so everything a model looks up by block index (Gemma's layer
    types, each attention's cache slot) stays right.
    """
    skipped = list(blocks[:first - 1])
    try:
        for index in range(first - 1):
            blocks[index] = _Skipped()
        yield
    finally:
        for index, block in enumerate(skipped):
            blocks[index] = block


class LastTokenBatch:
    """A batch of prompts run once up to their last token, whose last token can then be re-run under
    any edits from any block.

    Parameters
    ----------
    model : the base decoder (no LM head), in eval mode.
    blocks : its decoder blocks (:func:`emoprobe.models.decoder_layers`).
    token_ids : each prompt's tokens, without the first ``prefix.length`` when a prefix is given; at
        least one each (the last token is never part of the prefix).
    pad_id : the tokenizer's pad token.
    prefix : the tokens every prompt starts with and their keys and values (:func:`encode_prefix`).
    locations : where the clean outputs are kept, keys of :data:`emoprobe.forward.LOCATION_MODULES`
        (``residual`` is always kept: it is where edited runs start).

    Attributes
    ----------
    clean : dict of (location, layer) -> torch.Tensor, shape [batch, hidden]
        The clean outputs at the last token: of every block's ``locations``, layers ``1 ..``, and
        ``("residual", 0)``, the token embedding entering the first block; on the model's device and
        dtype. ``clean[("residual", n_layers)]`` is what the answer is read from.
    """

    def __init__(self, model: torch.nn.Module, blocks: torch.nn.ModuleList, token_ids: Sequence[Sequence[int]],
                 pad_id: int, prefix: SharedPrefix | None = None, locations: Sequence[str] = ("residual",)):
        if any(len(ids) == 0 for ids in token_ids):
            raise ValueError("every prompt needs its last token outside the shared prefix")
        self.model, self.blocks = model, blocks
        device = next(model.parameters()).device
        offset = prefix.length if prefix is not None else 0
        if prefix is None and any(len(ids) < 2 for ids in token_ids):
            raise ValueError("a prompt of one token has no context to cache")
        context_ids, context_mask, context_positions = left_pad([ids[:-1] for ids in token_ids], pad_id, offset)
        if prefix is None:
            self.cache = PrefixCache(config=model.config)
        else:  # the prefix's keys and values, one copy per prompt, that the context's then extend
            self.cache = copy.deepcopy(prefix.cache)
            self.cache.frozen = False
            self.cache.batch_repeat_interleave(len(token_ids))
        with torch.inference_mode():
            if context_ids.shape[1]:
                model(input_ids=context_ids.to(device), attention_mask=context_mask.to(device),
                      position_ids=context_positions.to(device), past_key_values=self.cache, use_cache=True)
        self.cache.freeze()
        self.attention_mask = torch.cat([context_mask, torch.ones(len(token_ids), 1, dtype=torch.long)], 1).to(device)
        self.position_ids = torch.as_tensor([[offset + len(ids) - 1] for ids in token_ids], device=device)
        # where each prompt's tokens sit among the cached keys: the prefix, the left-padded context, the last token
        self.key_index = [list(range(offset)) + list(range(offset + context_ids.shape[1] - len(ids) + 1,
                                                           offset + context_ids.shape[1] + 1)) for ids in token_ids]
        self.last_ids = last_ids = torch.as_tensor([[ids[-1]] for ids in token_ids], device=device)
        keys = [("residual", 0)] + [(location, layer) for layer in range(1, len(blocks) + 1)
                                    for location in dict.fromkeys(["residual", *locations])]
        with RetainOutputs({key: state_module(model, blocks, *key) for key in keys}, select=lambda h: h[:, -1]) as trace:
            self._forward(input_ids=last_ids)
        self.clean = trace.retained

    def __len__(self) -> int:
        return len(self.position_ids)

    def attention(self) -> list[torch.Tensor]:
        """The last token's attention weights in every block over each prompt's own tokens, prefix included, in
        prompt order: per prompt a float32 tensor ``[n_layers, n_heads, n_tokens]``, each row summing to 1.

        The last token is run once more against the cache with the model's eager attention, which returns its
        weights (the fused kernels do not); padding is masked as in any run, and tokens a sliding-window layer no
        longer sees get 0 there."""
        attention = {layer: location_module(block, "attention") for layer, block in enumerate(self.blocks, 1)}
        implementation = self.model.config._attn_implementation
        self.model.set_attn_implementation("eager")
        try:
            with RetainOutputs(attention, select=lambda w: w[:, :, -1].float(), element=1) as trace:
                self._forward(input_ids=self.last_ids)
        finally:
            self.model.set_attn_implementation(implementation)
        captured = trace.retained
        # a sliding-window layer caches only the last keys of the window: the earlier ones get no weight there
        n_keys = max(w.shape[-1] for w in captured.values())
        weights = torch.zeros(len(self), len(self.blocks), captured[1].shape[1], n_keys)
        for layer, w in captured.items():
            weights[:, layer - 1, :, n_keys - w.shape[-1]:] = w.cpu()
        return [weights[i][:, :, index] for i, index in enumerate(self.key_index)]

    def _forward(self, copies: int = 1, **inputs) -> None:
        """Run the last token(s) of ``inputs`` (``copies`` times the batch's rows) against the cache."""
        with torch.inference_mode():
            self.model(**inputs, attention_mask=self.attention_mask.repeat(copies, 1),
                       position_ids=self.position_ids.repeat(copies, 1), past_key_values=self.cache, use_cache=True)

    def run(self, edits: Mapping[tuple[str, int], Edit], start: int | None = None) -> torch.Tensor:
        """The last block's output at the last token, ``[batch, hidden]``, with ``edits`` applied
        (:meth:`run_many` of one condition)."""
        return self.run_many([edits], start)[0]

    def run_many(self, conditions: Sequence[Mapping[tuple[str, int], Edit]], start: int | None = None
                 ) -> torch.Tensor:
        """The last block's output at the last token under each condition's edits, ``[n_conditions, batch,
        hidden]``, computed in one pass whose batch holds the batch's rows once per condition.

        The last token runs from block ``start`` (default: the first layer any condition edits, or 1
        with no edits) on the clean residual stream entering it; the other tokens are the clean run's.
        Conditions that edit later layers than ``start`` lose nothing but the time of the blocks between.
        """
        first = min((layer for edits in conditions for _, layer in edits), default=None)
        start = (first or 1) if start is None else start
        if not 1 <= start <= (first or len(self.blocks)):
            raise ValueError(f"start {start} is not between 1 and the first edited layer, {first or len(self.blocks)}")
        copies, rows = len(conditions), len(self)
        keys = dict.fromkeys(key for edits in conditions for key in edits)
        modules = {key: state_module(self.model, self.blocks, *key) for key in keys}

        def edit(key, h: torch.Tensor) -> torch.Tensor:
            parts = h.view(copies, rows, -1)
            return torch.cat([edits[key](parts[c]) if key in edits else parts[c] for c, edits in enumerate(conditions)])

        entering = self.clean[("residual", start - 1)].repeat(copies, 1)[:, None]
        with (blocks_from(self.blocks, start), EditLastToken(modules, edit),
              RetainOutputs({"last": self.blocks[-1]}, select=lambda h: h[:, -1], stop=True) as trace):
            self._forward(copies, inputs_embeds=entering)
        return trace.retained["last"].view(copies, rows, -1)


def iter_last_token_batches(model: torch.nn.Module, blocks: torch.nn.ModuleList, token_ids: Sequence[Sequence[int]],
                            *, pad_id: int, batch_tokens: int, max_batch_size: int, max_padding: float,
                            share_prefix: bool = True, locations: Sequence[str] = ("residual",)
                            ) -> Iterator[tuple[np.ndarray, LastTokenBatch]]:
    """Yield ``(indices, batch)`` over the prompts ``token_ids`` (whole, with special tokens), batched by
    length as the extraction batches them (:func:`emoprobe.forward.length_batches`), longest first.

    ``indices`` (int64) index ``token_ids`` in the order of the batch's rows. With ``share_prefix`` the
    tokens common to all prompts are run once. One batch's keys and values are held at a time.
    """
    prefix_length = shared_prefix_length(token_ids, [-1]) if share_prefix else 0
    prefix = encode_prefix(model, token_ids[0][:prefix_length]) if prefix_length else None
    rest = [ids[prefix_length:] for ids in token_ids]
    for indices in length_batches([len(ids) for ids in rest], batch_tokens, max_batch_size, max_padding,
                                  max_padded_width(model.config, prefix_length)):
        yield indices, LastTokenBatch(model, blocks, [rest[i] for i in indices], pad_id, prefix, locations)


def full_prompt_outputs(model: torch.nn.Module, blocks: torch.nn.ModuleList, token_ids: Sequence[Sequence[int]],
                        pad_id: int, edits: Mapping[tuple[str, int], Edit]) -> torch.Tensor:
    """The plain method: whole prompts, left-padded into one batch, run with ``edits`` hooked at their last
    token; the last block's output there, ``[batch, hidden]``."""
    device = next(model.parameters()).device
    input_ids, attention_mask, position_ids = (t.to(device) for t in left_pad(token_ids, pad_id))
    modules = {key: state_module(model, blocks, *key) for key in edits}
    with (torch.inference_mode(), EditLastToken(modules, lambda key, h: edits[key](h)),
          RetainOutputs({"last": blocks[-1]}, select=lambda h: h[:, -1], stop=True) as trace):
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    return trace.retained["last"]


def zero(h: torch.Tensor) -> torch.Tensor:
    """Zero ablation."""
    return torch.zeros_like(h)


def scaled_noise(noise: torch.Tensor) -> Edit:
    """Random ablation: ``noise`` ``[batch, hidden]`` (Gaussian) rescaled to the norm of each row it replaces."""

    def edit(h: torch.Tensor) -> torch.Tensor:
        return noise * (h.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True))

    return edit


def replace_with(values: torch.Tensor) -> Edit:
    """Patching: the output replaced by ``values`` ``[batch, hidden]`` (another text's clean output)."""
    return lambda h: values.to(h.dtype)


def add(vector: torch.Tensor) -> Edit:
    """Steering: ``h + vector``, ``vector`` ``[hidden]`` or ``[batch, hidden]``."""
    return lambda h: h + vector.to(h.dtype)


def gaussian_noise(seed: int, row_ids: Sequence[int], key: tuple[str, int], hidden_size: int) -> torch.Tensor:
    """Standard normal ``[len(row_ids), hidden_size]`` float32, each row drawn from its own stream of
    ``(seed, row_id, location, layer)``: the same noise for a text whatever batch it falls in."""
    location, layer = key
    code = list(LOCATION_MODULES).index(location)
    return torch.from_numpy(np.stack([np.random.default_rng([seed, int(row), code, layer]).standard_normal(hidden_size)
                                      for row in row_ids]).astype(np.float32))
