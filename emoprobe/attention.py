"""What the last prompt token attends to: its attention weights per layer and head, summarised over the parts of
the prompt (the paper's ``attention_weights``).

The weights come from the cached last-token path (:meth:`emoprobe.last_token.LastTokenBatch.attention`): one
query per layer, exact against the model's eager attention over the whole prompt (tested, Gemma's sliding-window
layers included). Each prompt is cut into :data:`SEGMENTS` by the characters its tokens cover, so that the shares
say whether a layer's heads read the event the text describes or the template around it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

# the first token (BOS, or the prompt's first word where there is none) and other special tokens; the template's
# words before the text; the event text; the template's words after it ("Answer:")
SEGMENTS = ("start", "opening", "text", "closing")


def token_segments(tokenizer, prompts: Sequence[str], template: str) -> list[np.ndarray]:
    """The segment (an index into :data:`SEGMENTS`) of each token of each prompt, tokenised as the workflow tokenises
    it (:func:`emoprobe.forward.tokenize`). A token belongs to the text when its characters overlap the text's; the
    prompt is ``template.format(text=...)``, as :mod:`emoprobe.corpus` makes the prompts, so the template's own words
    are what ``format`` makes of them (``{{`` a single brace)."""
    opening, closing = template.format(text="\0").split("\0")
    encoded = tokenizer(list(prompts), add_special_tokens=True, truncation=False, return_offsets_mapping=True)
    found = []
    for prompt, offsets in zip(prompts, encoded["offset_mapping"]):
        text_start, text_end = len(opening), len(prompt) - len(closing)
        segments = np.empty(len(offsets), dtype=np.int64)
        for i, (start, end) in enumerate(offsets):
            if end <= start:  # a special token covers no characters
                segments[i] = 0
            elif end > text_start and start < text_end:
                segments[i] = 2
            else:
                segments[i] = 1 if start < text_start else 3
        if not (segments == 0).any():
            segments[0] = 0
        found.append(segments)
    return found


def segment_shares(weights: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """The share of attention on each segment: ``weights`` ``[n_layers, n_heads, n_tokens]`` (each row summing to 1)
    and ``segments`` ``[n_tokens]`` -> float32 ``[n_layers, n_heads, len(SEGMENTS)]``."""
    onehot = np.eye(len(SEGMENTS), dtype=np.float64)[segments]
    return (np.asarray(weights, dtype=np.float64) @ onehot).astype(np.float32)


def share_table(shares: np.ndarray) -> pd.DataFrame:
    """One row per (layer, head, segment) of ``shares`` ``[n_texts, n_layers, n_heads, n_segments]``: the mean share
    over the texts and its standard deviation, ``n_texts``; layers are 1-based."""
    n_texts, n_layers, n_heads, _ = shares.shape
    mean, spread = shares.mean(axis=0, dtype=np.float64), shares.std(axis=0, dtype=np.float64)
    return pd.DataFrame([{"layer": layer + 1, "head": head, "segment": segment, "share": mean[layer, head, s],
                          "share_sd": spread[layer, head, s], "n_texts": n_texts}
                         for layer in range(n_layers) for head in range(n_heads)
                         for s, segment in enumerate(SEGMENTS)])
