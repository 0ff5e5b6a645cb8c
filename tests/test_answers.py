"""The model's own answers: read from stored states, equal to running the whole causal LM."""

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import default_config
from emoprobe.answers import answer_logits, answer_table, answer_token_ids
from emoprobe.errors import ConfigError
from emoprobe.h5io import read_layer

LABELS = sorted(default_config()["dataset"]["labels"])


def test_answers_equal_the_full_causal_lm(e2e_run, smollm2_lm):
    """Logits from the stored last-layer state equal model(prompt).logits at the last token, prompt run alone."""
    model, tokenizer = smollm2_lm
    answers = pd.read_csv(e2e_run / "results/answers/smollm2-135m.tsv", sep="\t")
    prompts = pd.read_csv(e2e_run / "results/corpus/prompts.tsv", sep="\t", keep_default_na=False)
    token_ids = answer_token_ids(tokenizer, LABELS, {})
    for row in (0, 57, 143):
        ids = tokenizer(prompts["prompt"][row], return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            full = model(input_ids=ids).logits[0, -1, token_ids].numpy()
        stored = answers.loc[row, [f"logit_{label}" for label in LABELS]].to_numpy(dtype=np.float32)
        assert answers["row_id"][row] == prompts["row_id"][row]
        assert np.abs(stored - full).max() <= 1e-3 * np.abs(full).max()
        assert answers["answer"][row] == LABELS[int(full.argmax())]
    assert (answers["correct"] == (answers["answer"] == answers["label"])).all()


def test_answer_logits_of_the_stored_states(e2e_run, smollm2_lm):
    model, tokenizer = smollm2_lm
    states, meta = read_layer(e2e_run / "results/hidden/smollm2-135m/layers16-30.h5", 30, positions=[-1])
    logits = answer_logits(model, states[:, 0], answer_token_ids(tokenizer, LABELS, {}), batch_size=50)
    table = answer_table(meta["row_id"], meta["label_id"], logits, LABELS)
    written = pd.read_csv(e2e_run / "results/answers/smollm2-135m.tsv", sep="\t")
    assert table["answer"].tolist() == written["answer"].tolist()


def test_answer_tokens_are_distinct_first_tokens(smollm2_lm):
    _, tokenizer = smollm2_lm
    ids = answer_token_ids(tokenizer, LABELS, {})
    assert len(set(ids)) == len(LABELS)
    assert tokenizer.convert_ids_to_tokens(ids[LABELS.index("joy")]) == "\u0120joy"  # with the leading space
    # every label paired with its own word's first token: a permutation of the ids would fail here
    for label, token in zip(LABELS, ids):
        assert (" " + label).startswith(tokenizer.decode([token])), (label, tokenizer.decode([token]))
    renamed = answer_token_ids(tokenizer, LABELS, {"neutral": "none"})
    assert [i for i, (a, b) in enumerate(zip(ids, renamed)) if a != b] == [LABELS.index("neutral")]
    assert tokenizer.decode([renamed[LABELS.index("neutral")]]) == " none"
    with pytest.raises(ConfigError, match="labels 'anger' and 'guilt' both start with token"):
        answer_token_ids(tokenizer, LABELS, {"guilt": "anger"})


def test_the_free_answer_is_the_whole_vocabularys_argmax(smollm2_lm):
    """The unrestricted next token read from the last block's output (what extraction stores) is the full causal
    LM's argmax over its whole vocabulary, with its softmax probability."""
    from emoprobe.answers import free_answers
    from emoprobe.corpus import build_prompts, checked_corpus
    from emoprobe.forward import tokenize

    model, tokenizer = smollm2_lm
    config = default_config()
    corpus = checked_corpus(config["dataset"]["path"], config["dataset"]).head(6)
    prompts = build_prompts(corpus, config["prompt"]["templates"]["zero_shot"])["prompt"].tolist()
    states, expected, probability, captured = [], [], [], {}
    last_block = model.get_decoder().layers[-1]
    handle = last_block.register_forward_hook(
        lambda module, args, output: captured.update(h=output[0] if isinstance(output, tuple) else output))
    try:
        with torch.inference_mode():
            for ids in tokenize(tokenizer, prompts):
                p = torch.softmax(model(torch.tensor([ids])).logits[0, -1].double(), dim=-1)
                expected.append(int(p.argmax()))
                probability.append(float(p.max()))
                states.append(captured["h"][0, -1].numpy())
    finally:
        handle.remove()
    tokens, found = free_answers(model, np.stack(states))
    assert tokens.tolist() == expected and np.allclose(found, probability, atol=1e-5)
