"""Hidden-state extraction on the real SmolLM2: batching, left padding, early stop, HDF5 files."""

import os
import re

import numpy as np
import pandas as pd
import pytest
import torch

from emoprobe import extract, forward
from emoprobe.errors import ConfigError
from emoprobe.h5io import HiddenStateWriter, ResultFileError, create_dataset, read_layer, read_stored_layer
from emoprobe.models import decoder_layers, exact_attention_for_broadcast_heads, shares_one_kv_head
from emoprobe.nethook import RetainOutputs

PROMPTS = [
    "What are the inferred emotions in the following contexts? Context: I passed my driving test. Answer:",
    "What are the inferred emotions in the following contexts? Context: My neighbour\u2019s dog barked all "
    "night again and nobody did anything about it, for the third week in a row. Answer:",
    "What are the inferred emotions in the following contexts? Context: rain. Answer:",
]
POSITIONS = [-1, -2, -3, -4, -5]


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """Max abs difference over the largest norm of a state vector."""
    return float(np.abs(a - b).max() / np.linalg.norm(b, axis=-1).max())


def test_length_batches_cover_every_prompt_once_within_the_budget():
    lengths = [5, 40, 12, 12, 33, 7, 90, 1, 20, 11, 10, 6]
    batches = forward.length_batches(lengths, batch_tokens=64, max_batch_size=3, max_padding=0.2)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert any(len(b) > 1 for b in batches)
    for batch in batches:
        width = max(lengths[i] for i in batch)
        assert len(batch) <= 3 and (len(batch) * width <= 64 or len(batch) == 1)
        assert sum(lengths[i] for i in batch) >= 0.8 * len(batch) * width
    assert [lengths[b[0]] for b in batches] == sorted((lengths[b[0]] for b in batches), reverse=True)
    assert forward.padded_tokens(lengths, batches) < len(lengths) * max(lengths)


def test_batches_wider_than_the_padding_limit_are_not_padded():
    lengths = [30, 30, 29, 28, 12, 11, 10, 10]
    batches = forward.length_batches(lengths, batch_tokens=1000, max_batch_size=8, max_padding=0.9,
                                     max_padded_width=20)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for batch in batches:
        widths = {lengths[i] for i in batch}
        assert max(widths) <= 20 or len(widths) == 1
    assert [sorted(b.tolist()) for b in batches[:3]] == [[0, 1], [2], [3]]
    assert sorted(batches[3].tolist()) == [4, 5, 6, 7]  # narrow enough: padded together


def small_gemma3(window: int = 8):
    """A small Gemma-3 (transformers' own code, random weights): two layers, one sliding, one global."""
    import transformers

    config = transformers.Gemma3TextConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                           sliding_window=window, layer_types=["sliding_attention", "full_attention"],
                                           pad_token_id=0)
    torch.manual_seed(0)
    return transformers.Gemma3TextModel(config).eval()


SMALL_PREFIX = [2, 17, 33, 51]
# prompts of 3 to 13 tokens after a shared 4-token prefix
SMALL_PROMPTS = [SMALL_PREFIX + [60 + (7 * i + j) % 60 for j in range(n)] for i, n in enumerate((3, 5, 6, 9, 12, 13))]


def states_by_prompt(model, token_ids, **batching) -> np.ndarray:
    """``[prompt, layer, position, hidden]`` float32 states of both layers at positions -1 and -2."""
    keys = [("residual", 1), ("residual", 2)]
    rows = {}
    for indices, batch in extract.iter_hidden_states(model, decoder_layers(model), token_ids, keys, [-1, -2],
                                                     pad_id=0, batch_tokens=1000, **batching):
        for j, i in enumerate(indices):
            rows[int(i)] = np.stack([batch[key][j] for key in keys])
    return np.stack([rows[i] for i in range(len(token_ids))])


def test_shared_prefix_and_padding_keep_sliding_windows_exact():
    """Padding between the shared prefix and a prompt must not push the prefix out of a sliding window.

    A small Gemma-3 with a window of 8 tokens rather than the bundled Gemma-3-270M, whose 512-token
    window only the longest prompts reach.
    """
    model = small_gemma3(window=8)
    assert forward.sliding_window(model.config) == 8
    alone = states_by_prompt(model, SMALL_PROMPTS, max_batch_size=1, max_padding=0.0, share_prefix=False)
    shared = states_by_prompt(model, SMALL_PROMPTS, max_batch_size=8, max_padding=0.9, share_prefix=True)
    assert relative_error(shared, alone) <= 1e-5


def test_only_models_sharing_one_kv_head_lose_the_memory_efficient_attention_kernel():
    import transformers

    assert shares_one_kv_head(small_gemma3().config)  # 2 query heads, 1 key/value head
    llama = dict(vocab_size=64, hidden_size=72, intermediate_size=64, num_hidden_layers=1, num_attention_heads=9)
    assert not shares_one_kv_head(transformers.LlamaConfig(**llama, num_key_value_heads=3))  # SmolLM2's heads
    assert not shares_one_kv_head(transformers.LlamaConfig(**llama, num_key_value_heads=9))
    assert not shares_one_kv_head(transformers.LlamaConfig(**{**llama, "num_attention_heads": 1}, num_key_value_heads=1))
    assert not exact_attention_for_broadcast_heads(small_gemma3(), torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_extraction_on_cuda_matches_the_cpu():
    """The batched, prefix-sharing extraction on CUDA gives the CPU's states: to 1e-5 in float32 (TF32 is
    off by default), to 2e-2 of the state norm in bfloat16; also for a batch whose key length (prefix and
    widest prompt) is 1 more than a multiple of 32, where SDPA's memory-efficient kernel misread the
    broadcast key/value head of such a model (pytorch#191937)."""
    model = small_gemma3(window=64)
    prompts = SMALL_PROMPTS + [SMALL_PREFIX + [60 + j % 60 for j in range(29)]]  # 4 + 29 = 33 keys
    batching = dict(max_batch_size=8, max_padding=0.9, share_prefix=True)
    cpu = states_by_prompt(model, prompts, **batching)
    try:
        assert exact_attention_for_broadcast_heads(model, torch.device("cuda"))
        assert relative_error(states_by_prompt(model.to("cuda"), prompts, **batching), cpu) <= 1e-5
        assert relative_error(states_by_prompt(model.to(torch.bfloat16), prompts, **batching), cpu) <= 2e-2
    finally:
        torch.backends.cuda.enable_mem_efficient_sdp(True)


def test_left_pad_puts_the_last_real_token_last():
    ids, mask, pos = forward.left_pad([[7, 8, 9], [5]], pad_id=0)
    assert ids.tolist() == [[7, 8, 9], [0, 0, 5]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos.tolist() == [[0, 1, 2], [0, 0, 0]]


def test_positions_deeper_than_the_shortest_prompt_are_refused():
    with pytest.raises(ConfigError, match="row_id 12 has 3 tokens"):
        extract.check_positions([10, 3], [-1, -4], row_ids=[11, 12])


def test_padded_batch_equals_each_prompt_alone(smollm2):
    model, tokenizer = smollm2
    blocks = decoder_layers(model)
    token_ids = forward.tokenize(tokenizer, PROMPTS)
    assert len({len(t) for t in token_ids}) == 3, "prompts of different lengths, so padding is exercised"
    keys = [(location, layer) for layer in (1, 15, 30) for location in ("residual", "attention", "mlp")]
    with torch.inference_mode():
        batched = extract.hidden_states_batch(model, blocks, keys, POSITIONS, token_ids, tokenizer.pad_token_id)
        for row, ids in enumerate(token_ids):
            alone = extract.hidden_states_batch(model, blocks, keys, POSITIONS, [ids], tokenizer.pad_token_id)
            for key in keys:
                assert relative_error(batched[key][row].numpy(), alone[key][0].numpy()) <= 1e-4, key


def test_states_are_the_block_outputs_at_the_last_tokens(smollm2):
    """Position -1 of layer L is hidden_states[L] of a plain forward pass at the prompt's last token."""
    model, tokenizer = smollm2
    ids = forward.tokenize(tokenizer, PROMPTS[:1])
    with torch.inference_mode():
        ours = extract.hidden_states_batch(model, decoder_layers(model), [("residual", 3), ("residual", 30)],
                                           POSITIONS, ids, tokenizer.pad_token_id)
        reference = model(torch.tensor(ids), output_hidden_states=True).hidden_states
    assert tokenizer.convert_ids_to_tokens(ids[0][-2:]) == ["\u0120Answer", ":"]
    # hidden_states[0] is the embedding; the last entry is after the final norm, so compare layer 3 only
    expected = reference[3][0, [-1, -2, -3, -4, -5]].numpy()
    assert relative_error(ours[("residual", 3)][0].numpy(), expected) <= 1e-5


def test_forward_pass_stops_after_the_last_wanted_layer(smollm2):
    model, tokenizer = smollm2
    blocks = decoder_layers(model)
    before = [len(b._forward_hooks) for b in blocks]  # transformers keeps hooks of its own on some models
    ran = []
    handles = [b.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, b in enumerate(blocks, 1)]
    try:
        with torch.inference_mode():
            extract.hidden_states_batch(model, blocks, [("mlp", 2), ("residual", 4)], POSITIONS,
                                        forward.tokenize(tokenizer, PROMPTS), tokenizer.pad_token_id)
    finally:
        for handle in handles:
            handle.remove()
    assert ran == [1, 2, 3, 4]
    assert [len(b._forward_hooks) for b in blocks] == before, "every hook is removed"


def test_retain_outputs_removes_hooks_even_on_error():
    layer = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError):
        with RetainOutputs({"a": layer}):
            raise RuntimeError("boom")
    assert not layer._forward_hooks


def test_batch_size_and_sorting_do_not_change_the_states(smollm2, tmp_path):
    model, tokenizer = smollm2
    prompts = pd.DataFrame({"row_id": [3, 1, 2], "label_id": [0, 1, 2], "prompt": PROMPTS})
    files = {}
    for name, size in (("one", 1), ("many", 16)):
        files[name] = tmp_path / f"{name}.h5"
        # max_padding=0.99: the three prompts, of different lengths, do share one batch
        stats = extract.extract_to_hdf5(model, tokenizer, prompts, files[name], layers=[5, 6],
                                        locations=["residual"], positions=POSITIONS,
                                        batch_tokens=10_000, max_batch_size=size, max_padding=0.99,
                                        storage_dtype="float32", attrs={"m": "x"})
        own_tokens = stats["tokens"] - 3 * stats["prefix_tokens"]
        padding = stats["computed_tokens"] - stats["prefix_tokens"] - own_tokens
        assert (padding > 0) == (size > 1), "one batch of mixed lengths, or three unpadded batches"
    for layer in (5, 6):
        one, meta = read_layer(files["one"], layer)
        many, _ = read_layer(files["many"], layer)
        assert one.shape == (3, 5, 576) and meta["row_id"].tolist() == [3, 1, 2]
        assert relative_error(many, one) <= 1e-4


# --- HDF5 files that are not whole are never read as valid ------------------------------------------


def write_chunk(path, n=4, layers=(1, 2)):
    keys = [("residual", layer) for layer in layers]
    with HiddenStateWriter(path, row_id=range(n), label_id=[0] * n, n_tokens=[9] * n, positions=[-1, -2],
                           keys=keys, hidden_size=3, storage_dtype="float32", attrs={"model": "m"}) as writer:
        writer.write(np.arange(n), {key: np.full((n, 2, 3), key[1], np.float32) for key in keys})


def test_writer_is_atomic(tmp_path):
    path = tmp_path / "chunk.h5"
    with pytest.raises(RuntimeError):
        with HiddenStateWriter(path, row_id=[1], label_id=[0], n_tokens=[3], positions=[-1],
                               keys=[("residual", 1)], hidden_size=3, storage_dtype="float32", attrs={}):
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    write_chunk(path)
    states, meta = read_layer(path, 2)
    assert states.shape == (4, 2, 3) and (states == 2).all() and meta["positions"] == [-1, -2]
    states, meta = read_layer(path, 2, positions=[-2])
    assert states.shape == (4, 1, 3) and meta["positions"] == [-2]
    with pytest.raises(ResultFileError, match=r"positions \[-3\] were not extracted"):
        read_layer(path, 2, positions=[-3])


def test_a_layer_is_read_from_whichever_chunk_stores_it(tmp_path):
    first, second = tmp_path / "layers01-02.h5", tmp_path / "layers03-04.h5"
    write_chunk(first, layers=(1, 2))
    write_chunk(second, layers=(3, 4))
    for layer in (1, 2, 3, 4):  # each chunk's states are its layer's number
        for paths in ([first, second], [second, first]):
            states, meta = read_stored_layer(paths, layer, positions=[-1], provenance={"model": "m"})
            assert states.shape == (4, 1, 3) and (states == layer).all() and meta["positions"] == [-1]
    with pytest.raises(ResultFileError, match="no dataset 'residual_05' in any of"):
        read_stored_layer([first, second], 5)
    with pytest.raises(ResultFileError, match="no dataset 'mlp_01'"):
        read_stored_layer([first, second], 1, "mlp")


def test_rows_written_in_batch_order_are_read_in_corpus_order(tmp_path):
    path = tmp_path / "chunk.h5"
    keys = [("residual", 1), ("mlp", 1)]
    with HiddenStateWriter(path, row_id=[10, 11, 12, 13], label_id=[0, 1, 0, 1], n_tokens=[3] * 4, positions=[-1],
                           keys=keys, hidden_size=2, storage_dtype="float32", attrs={}) as writer:
        for batch in ([3, 0], [2], [1]):
            writer.write(np.array(batch), {key: np.array(batch, np.float32)[:, None, None].repeat(2, -1) + sign
                                           for key, sign in zip(keys, (0, 100))})
    residual, meta = read_layer(path, 1)
    mlp, _ = read_layer(path, 1, "mlp")
    assert residual[:, 0, 0].tolist() == [0, 1, 2, 3] and mlp[:, 0, 1].tolist() == [100, 101, 102, 103]
    assert meta["row_id"].tolist() == [10, 11, 12, 13]


def test_a_writer_missing_rows_leaves_no_file(tmp_path):
    path = tmp_path / "chunk.h5"
    with pytest.raises(ResultFileError, match="1 state rows written for 2 texts"):
        with HiddenStateWriter(path, row_id=[1, 2], label_id=[0, 0], n_tokens=[3, 3], positions=[-1],
                               keys=[("residual", 1)], hidden_size=2, storage_dtype="float32", attrs={}) as writer:
            writer.write(np.array([1]), {("residual", 1): np.ones((1, 1, 2), np.float32)})
    assert list(tmp_path.iterdir()) == []


def test_float16_storage_refuses_states_beyond_its_range(tmp_path):
    """Gemma's residual stream exceeds 65504 in some layers: an error, never a file of infinities."""
    path = tmp_path / "chunk.h5"
    with pytest.raises(ResultFileError, match=r"residual states of layer 3 reach 1e\+05, beyond float16's range"):
        with HiddenStateWriter(path, row_id=[1], label_id=[0], n_tokens=[3], positions=[-1], keys=[("residual", 3)],
                               hidden_size=2, storage_dtype="float16", attrs={}) as writer:
            writer.write(np.array([0]), {("residual", 3): np.array([[[1.0, 1e5]]], np.float32)})
    assert list(tmp_path.iterdir()) == []


def test_states_that_overflowed_the_compute_dtype_are_refused(tmp_path):
    """A float16 forward pass overflows where the residual stream exceeds 65504 (Gemma's does)."""
    path = tmp_path / "chunk.h5"
    with pytest.raises(ResultFileError, match=r"mlp states of layer 2 are not finite"):
        with HiddenStateWriter(path, row_id=[1, 2], label_id=[0, 1], n_tokens=[3, 3], positions=[-1],
                               keys=[("mlp", 2)], hidden_size=2, storage_dtype="float32", attrs={}) as writer:
            writer.write(np.array([0, 1]), {("mlp", 2): np.array([[[1.0, 2.0]], [[np.inf, np.nan]]], np.float32)})
    assert list(tmp_path.iterdir()) == []


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "chunk.h5"
    write_chunk(path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ResultFileError, match="truncated or corrupt"):
        read_layer(path, 1)


def test_incomplete_or_misshapen_file_is_refused(tmp_path):
    import h5py

    path = tmp_path / "chunk.h5"
    write_chunk(path)
    with h5py.File(path, "a") as f:
        del f["residual_02"]
        create_dataset(f, "residual_02", np.zeros((3, 2, 3), np.float32))
    with pytest.raises(ResultFileError, match=r"shape \(3, 2, 3\), expected \(4, 2, hidden_size\)"):
        read_layer(path, 2)
    with pytest.raises(ResultFileError, match="no dataset 'residual_07'"):
        read_layer(path, 7)
    with h5py.File(path, "a") as f:
        f.attrs["complete"] = False
    with pytest.raises(ResultFileError, match="not marked complete"):
        read_layer(path, 1)


def test_a_file_of_another_model_template_or_sample_is_refused_by_name(tmp_path):
    path = tmp_path / "chunk.h5"
    attrs = {"model": "m", "source": {"gguf": {"files": ["p/m.gguf"], "sha256": None}}, "prompt_template": "T: {text}",
             "dataset_limit": 144, "dataset_seed": 42}
    with HiddenStateWriter(path, row_id=[1], label_id=[0], n_tokens=[3], positions=[-1], keys=[("residual", 1)],
                           hidden_size=2, storage_dtype="float32", attrs=attrs) as writer:
        writer.write(np.array([0]), {("residual", 1): np.ones((1, 1, 2), np.float32)})
    states, _ = read_layer(path, 1, provenance=attrs)  # what the writing job recorded: accepted
    assert states.shape == (1, 1, 2)
    for key, other in (("model", "n"), ("prompt_template", "U: {text}"), ("dataset_limit", 0),
                       ("source", {"gguf": {"files": ["p/other.gguf"], "sha256": None}})):
        with pytest.raises(ResultFileError, match=rf"{path}: attribute '{key}' is .* this job expects {re.escape(repr(other))}"):
            read_layer(path, 1, provenance={**attrs, key: other})
    with pytest.raises(ResultFileError, match="no attribute 'revision'"):
        read_layer(path, 1, provenance={"revision": "main"})


def test_layer_chunks_and_the_shared_prefix_do_not_change_the_states(smollm2, tmp_path):
    """Layers 1-6 in one job equal layers 1-3 and 4-6 in two; computing the shared prefix once changes nothing."""
    model, tokenizer = smollm2
    prompts = pd.DataFrame({"row_id": [1, 2, 3], "label_id": [0, 1, 2], "prompt": PROMPTS})
    token_ids = forward.tokenize(tokenizer, PROMPTS)
    assert forward.shared_prefix_length(token_ids, POSITIONS) == 11

    def run(name, layers, share_prefix):
        path = tmp_path / f"{name}.h5"
        extract.extract_to_hdf5(model, tokenizer, prompts, path, layers=layers, locations=["residual"],
                                positions=POSITIONS,
                                batch_tokens=4096, max_batch_size=64, max_padding=0.1, storage_dtype="float32",
                                attrs={},
                                share_prefix=share_prefix)
        return path

    whole = run("whole", range(1, 7), share_prefix=False)
    parts = {layer: run(f"part{layer}", layers, share_prefix=True)
             for layer, layers in ((1, range(1, 4)), (4, range(4, 7)))}
    for layer in range(1, 7):
        reference, _ = read_layer(whole, layer)
        chunked, _ = read_layer(parts[1 if layer <= 3 else 4], layer)
        assert relative_error(chunked, reference) <= 1e-4


def test_shared_prefix_leaves_the_read_positions_in_every_prompt():
    ids = [[1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 9], [1, 2, 3, 8, 8, 8, 8, 8]]
    assert forward.shared_prefix_length(ids, [-1]) == 3
    assert forward.shared_prefix_length(ids, [-1, -2, -3, -4]) == 2  # the 6-token prompt keeps its last 4
    assert forward.shared_prefix_length([[5, 6], [7, 8]], [-1]) == 0


def test_attention_and_mlp_outputs_add_up_to_the_residual_stream(smollm2, tmp_path):
    """In a Llama block the residual stream grows by exactly the attention output plus the MLP output."""
    model, tokenizer = smollm2
    prompts = pd.DataFrame({"row_id": [1, 2, 3], "label_id": [0, 1, 2], "prompt": PROMPTS})
    path = tmp_path / "locations.h5"
    extract.extract_to_hdf5(model, tokenizer, prompts, path, layers=[3, 4], locations=["residual", "attention", "mlp"],
                            positions=POSITIONS, batch_tokens=4096, max_batch_size=64, max_padding=0.1,
                            storage_dtype="float32", attrs={})
    before, _ = read_layer(path, 3, "residual")
    after, _ = read_layer(path, 4, "residual")
    attention, _ = read_layer(path, 4, "attention")
    mlp, _ = read_layer(path, 4, "mlp")
    assert relative_error(before + attention + mlp, after) <= 1e-5
    scale = np.linalg.norm(after, axis=-1).max()
    assert np.linalg.norm(attention, axis=-1).max() > 0.01 * scale and np.linalg.norm(mlp, axis=-1).max() > 0.01 * scale


def test_an_unknown_block_layout_is_named():
    with pytest.raises(ConfigError, match="Linear has no 'mlp' module to read 'mlp' from"):
        forward.location_module(torch.nn.Linear(2, 2), "mlp")


def test_huge_pages_are_asked_for_before_torch_and_only_then():
    import subprocess
    import sys

    code = ("import os; from emoprobe.memory import allocate_in_huge_pages; allocate_in_huge_pages(); "
            "import torch; print(os.environ['THP_MEM_ALLOC_ENABLE'])")
    env = {key: value for key, value in os.environ.items() if key != "THP_MEM_ALLOC_ENABLE"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "1"
    from emoprobe.memory import allocate_in_huge_pages  # this process has imported torch

    with pytest.raises(RuntimeError, match="before torch is imported"):
        allocate_in_huge_pages()
