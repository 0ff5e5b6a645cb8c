"""The words' non-contextual embeddings: what a text's tokens are before any layer has mixed them, the baseline that
says what a layer knows beyond the words (:mod:`emoprobe.conditional`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


@torch.inference_mode()
def mean_word_embeddings(model: torch.nn.Module, tokenizer, texts: Sequence[str]) -> np.ndarray:
    """The mean input embedding of each text's tokens, float32 ``[n, hidden]``: the text alone tokenised without
    special tokens (not the prompt around it, whose tokens every text shares), each token's row of the model's input
    embedding module (as the model applies it, e.g. Gemma's scaled by sqrt(hidden)), averaged in float32.
    Raises ``ValueError`` naming the text's index when a text has no tokens."""
    embed = model.get_input_embeddings()
    device = next(embed.parameters()).device
    out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    for i, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"text {i} ({text!r}) has no tokens to embed")
        out[i] = embed(torch.as_tensor(ids, device=device)).float().mean(dim=0).cpu().numpy()
    return out
