"""Every long job says how far it is: emoprobe.progress's lines, their arithmetic and throttling (on a clock the test
turns), and the lines the package's own loops write (extraction, probes, the interventions' runs)."""

import logging
import re

import numpy as np
import pandas as pd
import pytest
import torch

from emoprobe.progress import Progress, duration, layer_range, rate

LOG = logging.getLogger("emoprobe.test_progress")
# done/total unit (percent), rate, ETA
PROGRESS_LINE = re.compile(r"^(?P<what>.+): (?P<done>\d+)/(?P<total>\d+) (?P<unit>\S+) \((?P<percent>\d+) %\), "
                           r"[\d.]+ (?P=unit)/(s|min|h), ETA .+$")
FINAL_LINE = re.compile(r"^(?P<what>.+): (?P<done>\d+)/(?P<total>\d+) (?P<unit>\S+) \(100 %\) in .+, [\d.]+ (?P=unit)/")


class Clock:
    """A clock the test sets by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def messages(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_rate_eta_and_percent_are_computed_from_the_start(caplog):
    caplog.set_level(logging.INFO)
    clock = Clock()
    progress = Progress(LOG, 6600, "texts", what="extraction", clock=clock)
    clock.now += 20
    progress.update(462)  # 23.1 texts/s; 6138 texts left: 265.7 s
    assert messages(caplog) == ["extraction: 462/6600 texts (7 %), 23.1 texts/s, ETA 4 min 26 s"]


def test_lines_come_at_most_once_per_interval_and_a_final_one(caplog):
    caplog.set_level(logging.INFO)
    clock = Clock()
    with Progress(LOG, 100, "cells", what="fit_probes residual", interval=30, clock=clock) as progress:
        for _ in range(99):  # one cell a second
            clock.now += 1
            progress.update()
        clock.now += 1
    lines = messages(caplog)
    # the first update logs at once; then one line per 30 s (at 31, 61, 91 s); then the final one at the exit
    assert [int(PROGRESS_LINE.match(line)["done"]) for line in lines[:-1]] == [1, 31, 61, 91]
    assert lines[-1] == "fit_probes residual: 99/100 cells (99 %) in 1 min 40 s, 59.4 cells/min"


def test_the_last_update_leaves_the_line_to_the_end_of_the_block(caplog):
    caplog.set_level(logging.INFO)
    clock = Clock()
    with Progress(LOG, 10, "runs", what="zero ablation", clock=clock) as progress:
        clock.now += 1
        progress.update(4)
        clock.now += 119
        progress.update(6)  # the total, past the interval: no "ETA 0 s" line, only the final one
        clock.now += 1
    progress.close()  # a second close logs nothing
    assert messages(caplog) == ["zero ablation: 4/10 runs (40 %), 4.0 runs/s, ETA 2 s",
                                "zero ablation: 10/10 runs (100 %) in 2 min 1 s, 5.0 runs/min"]


def test_a_failure_says_where_it_stopped(caplog):
    caplog.set_level(logging.INFO)
    clock = Clock()
    with pytest.raises(RuntimeError), Progress(LOG, 50, "texts", what="attention weights", clock=clock) as progress:
        clock.now += 2
        progress.update(10)
        clock.now += 3
        raise RuntimeError("out of memory")
    assert messages(caplog)[-1] == "attention weights: stopped at 10/50 texts (20 %) after 5 s"


def test_no_rate_before_any_work_and_no_logger_no_lines(caplog):
    caplog.set_level(logging.INFO)
    clock = Clock()
    progress = Progress(LOG, 8, "layers", clock=clock)
    assert progress.line() == "progress: 0/8 layers (0 %), - layers/s, ETA unknown"
    silent = Progress(None, 3, "texts", clock=clock)
    silent.update(3)
    silent.close()
    assert silent.done == 3 and messages(caplog) == []


def test_durations_rates_and_layer_ranges_read_as_a_person_writes_them():
    assert [duration(s) for s in (0.4, 35, 59.6, 275, 3599.4, 3600, 7500)] == [
        "0 s", "35 s", "1 min 0 s", "4 min 35 s", "59 min 59 s", "1 h 0 min", "2 h 5 min"]
    assert rate(23.14, "texts") == "23.1 texts/s"
    assert rate(1 / 24, "layers") == "2.5 layers/min"
    assert rate(1 / 7200, "layers") == "0.5 layers/h"
    assert layer_range(range(1, 16)) == "1-15 (15 layers)"
    assert layer_range([0]) == "0 (1 layer)"
    assert layer_range([2, 4, 6]) == "2, 4, 6 (3 layers)"


# the package's own loops, on tiny real inputs


class CharacterTokenizer:
    """A tokenizer of characters, enough for the extraction: ids 2.. for characters, 1 a start token, 0 padding."""

    pad_token_id = 0

    def __call__(self, prompts, add_special_tokens=True, truncation=False):
        return {"input_ids": [[1] + [2 + ord(c) % 60 for c in prompt] for prompt in prompts]}


TEXTS = ["a calm day", "the dog bit me", "I won", "lost my keys again", "rain", "a letter from home"]


def tiny_llama():
    """A Llama of two layers and random weights (transformers' own code), 64 token ids."""
    import transformers

    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, pad_token_id=0)
    torch.manual_seed(0)
    return transformers.LlamaModel(config).eval()


def test_extraction_logs_its_progress_in_texts(tmp_path, caplog):
    from emoprobe.extract import extract_to_hdf5

    model = tiny_llama()
    prompts = pd.DataFrame({"row_id": range(6), "label_id": [0, 1, 2, 0, 1, 2], "prompt": TEXTS})
    caplog.set_level(logging.INFO)
    stats = extract_to_hdf5(model, CharacterTokenizer(), prompts, tmp_path / "states.h5", layers=[1, 2],
                            locations=["residual"], positions=[-1], batch_tokens=4096, max_batch_size=2,
                            max_padding=1.0, storage_dtype="float32", attrs={}, share_prefix=False, log=LOG)
    lines = messages(caplog)
    assert stats["n_texts"] == 6 and len(lines) == 2, lines  # three batches in under 30 s: the first and the last
    first = PROGRESS_LINE.match(lines[0])
    assert first and first["what"] == "extraction" and first["unit"] == "texts" and first["total"] == "6", lines[0]
    assert FINAL_LINE.match(lines[1]) and lines[1].startswith("extraction: 6/6 texts (100 %) in "), lines[1]


def test_probes_count_their_cells(caplog):
    from emoprobe.grid import Cell
    from emoprobe.probes import probe_layer
    from emoprobe.settings import Logistic, Split

    rng = np.random.default_rng(0)
    label_id = np.repeat(np.arange(3), 20)
    states = (rng.standard_normal((60, 2, 8)) + label_id[:, None, None]).astype(np.float32)
    caplog.set_level(logging.INFO)
    clock = Clock()
    with Progress(LOG, 3, "cells", what="fit_probes residual", clock=clock) as progress:
        # two problems: all texts at two positions (with the control), the first 30 at one
        probe_layer(states, [-1, -2], [(np.arange(60), label_id), (np.arange(30), label_id[:30])],
                    [{-1: Cell(True, False), -2: Cell(False, False)}, {-1: Cell(False, False)}],
                    label_names=["anger", "joy", "fear"], split=Split(3, 0.2, 0, True),
                    trainer=Logistic(1.0, 1000, 1e-4), progress=progress)
        assert progress.done == 3
    assert messages(caplog)[-1].startswith("fit_probes residual: 3/3 cells (100 %)")


class FakeBatch:
    """What :func:`emoprobe.edits.condition_logits` asks of a batch: its clean output and edited runs."""

    blocks = [None]

    def __init__(self, n):
        self.n = n
        self.clean = {("residual", 1): torch.ones(n, 4)}

    def __len__(self):
        return self.n

    def run_many(self, group):
        return torch.zeros(len(group), self.n, 4)


def test_interventions_count_their_runs(caplog):
    from emoprobe.edits import condition_logits

    batches = [(np.array([0, 1, 2]), FakeBatch(3)), (np.array([3, 4]), FakeBatch(2))]
    caplog.set_level(logging.INFO)
    with Progress(LOG, 3 * 5, "runs", what="zero ablation, edited runs", clock=Clock()) as progress:
        logits, _ = condition_logits(batches, lambda indices, batch: [[{}, {}], [{}]], lambda h: h[..., :3], 5,
                                     max_rows=4, progress=progress)
        assert progress.done == 15 and logits.shape == (3, 5, 3)
    assert messages(caplog)[-1].startswith("zero ablation, edited runs: 15/15 runs (100 %)")


def test_an_experiment_logs_its_conditions_then_its_runs(caplog):
    """run_experiment as scripts/run_intervention.py calls it, on a tiny model: the count of its edited runs, then
    their progress; patching first runs the clean prompts, counted in texts."""
    from emoprobe.forward import tokenize
    from emoprobe.edits import run_experiment
    from emoprobe.last_token import iter_last_token_batches
    from emoprobe.models import decoder_layers

    model = tiny_llama()
    blocks = decoder_layers(model)
    token_ids = tokenize(CharacterTokenizer(), TEXTS)

    def batches(ids):
        return iter_last_token_batches(model, blocks, ids, pad_id=0, batch_tokens=4096, max_batch_size=2,
                                       max_padding=1.0, locations=["residual", "mlp"])

    common = dict(batches=batches, readout=lambda h: h[..., :3], token_ids=token_ids, row_ids=np.arange(6),
                  n_layers=2, labels=["anger", "joy", "fear"], log=LOG)
    settings = {"span": 1, "every": 1, "seed": 0, "clip_windows": False, "locations": ["residual", "mlp"]}
    caplog.set_level(logging.INFO)
    table = run_experiment("zero", settings, **common)
    lines = messages(caplog)
    assert len(table) == 4 and lines[0] == "zero ablation: 4 conditions x 6 texts = 24 edited runs", lines
    assert PROGRESS_LINE.match(lines[1])["what"] == "zero ablation, edited runs", lines
    assert lines[-1].startswith("zero ablation, edited runs: 24/24 runs (100 %) in "), lines

    caplog.clear()
    run_experiment("patching", {**settings, "n_pairs": 3}, **common)
    lines = messages(caplog)
    assert lines[0].startswith("patching, clean pass: ") and "/6 texts" in lines[0], lines
    assert any(line.startswith("patching, clean pass: 6/6 texts (100 %) in ") for line in lines), lines
    assert lines[-1].startswith("patching, edited runs: ") and "(100 %) in " in lines[-1], lines
