"""The model's own answer to each prompt: which emotion word it would write next.

The answer is read from the next-token logits restricted to the first token of
each label word, written with a leading space as the model would continue
``... Answer:``. The logits are computed from the residual stream after the last
block at the prompt's last token, which the extraction already stored: the
final norm and the label rows of the LM head are all that is left to apply, so
no second forward pass is needed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from emoprobe.errors import ConfigError


def answer_token_ids(tokenizer, labels: Sequence[str], words: Mapping[str, str]) -> list[int]:
    """First token id of ``" " + word`` for each label, where ``word`` is ``words.get(label, label)``.

    Raises :class:`ConfigError` when two labels share a first token, since the
    model's answer could then not tell them apart.
    """
    ids = [tokenizer(" " + words.get(label, label), add_special_tokens=False)["input_ids"][0] for label in labels]
    seen: dict[int, str] = {}
    for label, token in zip(labels, ids):
        if token in seen:
            raise ConfigError(
                f"answer.words: labels {seen[token]!r} and {label!r} both start with token "
                f"{tokenizer.convert_ids_to_tokens(token)!r}; give one of them another word"
            )
        seen[token] = label
    return ids


def label_readout(model: torch.nn.Module, token_ids: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's next-token logits of ``token_ids``, as a function of the last block's output.

    Parameters
    ----------
    model : a causal LM (``...ForCausalLM``).
    token_ids : the rows of its LM head to keep (the labels' first tokens).

    Returns
    -------
    callable
        Maps ``[..., hidden_size]`` states (the last block's output, the model's device and dtype) to
        ``[..., len(token_ids)]`` float32 logits: the final norm, those rows of the LM head, and Gemma's
        final soft-capping, which is what ``model(prompt).logits[-1, token_ids]`` gives.
    """
    norm = model.get_decoder().norm
    head = model.get_output_embeddings()
    rows = torch.as_tensor(list(token_ids), device=head.weight.device)
    weight = head.weight.index_select(0, rows)
    bias = head.bias.index_select(0, rows) if getattr(head, "bias", None) is not None else None
    cap = getattr(model.config, "final_logit_softcapping", None)

    @torch.inference_mode()
    def readout(hidden: torch.Tensor) -> torch.Tensor:
        logits = torch.nn.functional.linear(norm(hidden), weight, bias).float()
        return torch.tanh(logits / cap) * cap if cap else logits

    return readout


def answer_logits(model: torch.nn.Module, last_state: np.ndarray, token_ids: Sequence[int],
                  batch_size: int = 1024) -> np.ndarray:
    """Next-token logits of ``token_ids`` from the residual stream after the last block (:func:`label_readout`).

    Parameters
    ----------
    model : a causal LM (``...ForCausalLM``).
    last_state : numpy.ndarray of float32, shape [n_texts, hidden_size]
        The last block's output at each prompt's last token.

    Returns
    -------
    numpy.ndarray of float32, shape [n_texts, len(token_ids)]
    """
    readout = label_readout(model, token_ids)
    parameter = next(model.parameters())
    out = []
    with torch.inference_mode():
        for start in range(0, len(last_state), batch_size):
            hidden = torch.from_numpy(last_state[start:start + batch_size]).to(parameter.device, parameter.dtype)
            out.append(readout(hidden).cpu().numpy())
    return np.concatenate(out)


def free_answers(model: torch.nn.Module, last_state: np.ndarray, batch_size: int = 128
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The model's unrestricted next token: the argmax over its whole vocabulary of the next-token logits (the final
    norm, the whole LM head, Gemma's soft-capping), and that token's probability (softmax over the vocabulary).

    Parameters
    ----------
    last_state : numpy.ndarray of float32, shape [n_texts, hidden_size], the last block's output at the last token

    Returns
    -------
    token ids (int64 [n_texts]) and probabilities (float64 [n_texts])
    """
    head = model.get_output_embeddings()
    readout = label_readout(model, range(head.weight.shape[0]))
    parameter = next(model.parameters())
    tokens, probabilities = [], []
    with torch.inference_mode():
        for start in range(0, len(last_state), batch_size):
            hidden = torch.from_numpy(last_state[start:start + batch_size]).to(parameter.device, parameter.dtype)
            p = torch.softmax(readout(hidden).double(), dim=-1)
            best = p.max(dim=-1)
            tokens.append(best.indices.cpu().numpy())
            probabilities.append(best.values.cpu().numpy())
    return np.concatenate(tokens).astype(np.int64), np.concatenate(probabilities)


def answer_table(row_id: np.ndarray, label_id: np.ndarray, logits: np.ndarray, labels: Sequence[str],
                 free: tuple[Sequence[str], np.ndarray, np.ndarray] | None = None) -> pd.DataFrame:
    """One row per text: ``row_id, label, answer, correct``; with ``free`` (each text's unrestricted next token,
    written as a JSON string so that spaces and newlines stay visible, its probability, and whether it is a label's
    answer token) ``free_answer, free_probability, free_is_label``; and a ``logit_<label>`` column per label.

    ``labels`` are in label-id order; ``logits`` is ``[n_texts, len(labels)]``.
    """
    answer = logits.argmax(axis=1)
    table = pd.DataFrame({
        "row_id": row_id,
        "label": np.asarray(labels)[label_id],
        "answer": np.asarray(labels)[answer],
        "correct": answer == label_id,
    })
    if free is not None:
        words, probability, is_label = free
        table = table.assign(free_answer=[json.dumps(word) for word in words], free_probability=probability,
                             free_is_label=is_label)
    return pd.concat([table, pd.DataFrame(logits, columns=[f"logit_{label}" for label in labels])], axis=1)
