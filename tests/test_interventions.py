"""Interventions at the last token on the real SmolLM2: the cached last-token path is the plain full-prompt
run, edits that change nothing change nothing, and the last layer's residual stream is the answer."""

import numpy as np
import pytest
import torch

from emoprobe import ablation, edits, last_token, scores, steering, windows
from emoprobe.answers import answer_token_ids, label_readout
from emoprobe.forward import tokenize
from emoprobe.models import decoder_layers
from emoprobe.scores import wilson

from test_extract import SMALL_PROMPTS, small_gemma3

LABELS = ["anger", "boredom", "disgust", "fear", "guilt", "joy", "neutral", "pride", "relief", "sadness", "shame",
          "surprise", "trust"]
TEXTS = ["I passed my driving test.", "My dog died last week and I cannot stop crying about it.", "rain.",
         "Someone stole my bike from outside the library while I was studying for the exam.",
         "My brother lied to our parents and blamed me for the broken window.", "I won the lottery!"]
PROMPTS = [f"What are the inferred emotions in the following contexts? Context: {text} Answer:" for text in TEXTS]
LOCATIONS = ["residual", "attention", "mlp"]


@pytest.fixture(scope="module")
def smollm2_parts(smollm2_lm):
    """``(base decoder, its blocks, label readout, token ids of PROMPTS, pad id)``."""
    model, tokenizer = smollm2_lm
    base = model.get_decoder()
    return base, decoder_layers(base), label_readout(model, answer_token_ids(tokenizer, LABELS, {})), \
        tokenize(tokenizer, PROMPTS), tokenizer.pad_token_id


def batches(base, blocks, token_ids, pad_id, share_prefix):
    """Every prompt in padded batches of at most four (two batches for six prompts)."""
    return list(last_token.iter_last_token_batches(base, blocks, token_ids, pad_id=pad_id, batch_tokens=4096,
                                                      max_batch_size=4, max_padding=0.9, share_prefix=share_prefix,
                                                      locations=LOCATIONS))


def relative(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | None = None) -> float:
    """Largest difference over the largest magnitude of ``scale`` (default ``b``): pass the clean logits,
    since a zeroed last residual stream makes every logit 0."""
    return float((a - b).abs().max() / (b if scale is None else scale).abs().max())


def edits_of(kind: str, location: str, layers: list[int], batch, indices: np.ndarray) -> dict:
    hidden = batch.clean[("residual", 0)].shape[1]
    if kind == "zero":
        return {(location, layer): last_token.zero for layer in layers}
    if kind == "random":
        return {(location, layer): last_token.scaled_noise(last_token.gaussian_noise(7, indices, (location, layer),
                                                                                           hidden)) for layer in layers}
    if kind == "patch":  # each row gets the next row's clean output
        return {(location, layer): last_token.replace_with(batch.clean[(location, layer)].roll(1, 0))
                for layer in layers}
    direction = torch.randn(hidden, generator=torch.Generator().manual_seed(3))
    return {(location, layer): last_token.add(8.0 * direction) for layer in layers}


@pytest.mark.parametrize("share_prefix", [True, False])
def test_the_cached_last_token_path_is_the_full_prompt_run_with_the_same_hook(smollm2_parts, share_prefix):
    base, blocks, readout, token_ids, pad_id = smollm2_parts
    found = batches(base, blocks, token_ids, pad_id, share_prefix)
    assert [len(i) for i, _ in found] == [4, 2]
    assert len({len(token_ids[i]) for i in found[0][0]}) > 1  # padded
    for indices, batch in found:
        prompts = [token_ids[i] for i in indices]
        clean = readout(last_token.full_prompt_outputs(base, blocks, prompts, pad_id, {}))
        assert relative(readout(batch.clean[("residual", 30)]), clean) <= 1e-4
        for location in LOCATIONS:
            for centre, span in ((1, 3), (15, 5), (30, 3)):
                window = windows.layer_window(centre, span, 30)
                for kind in ("zero", "random", "patch", "steer"):
                    edits = edits_of(kind, location, window, batch, indices)
                    cached, plain = readout(batch.run(edits)), readout(
                        last_token.full_prompt_outputs(base, blocks, prompts, pad_id, edits))
                    assert relative(cached, plain, clean) <= 1e-4, (location, centre, kind)


def test_edits_that_change_nothing_give_the_clean_logits(smollm2_parts):
    base, blocks, readout, token_ids, pad_id = smollm2_parts
    for indices, batch in batches(base, blocks, token_ids, pad_id, True):
        clean = readout(batch.clean[("residual", 30)])
        assert relative(readout(batch.run({})), clean) <= 1e-5  # zero ablation of nothing, from block 1
        for location in LOCATIONS:
            window = windows.layer_window(12, 3, 30)
            write_back = {(location, layer): last_token.replace_with(batch.clean[(location, layer)]) for layer in window}
            assert relative(readout(batch.run(write_back)), clean) <= 1e-5
            no_step = {(location, layer): last_token.add(torch.zeros(576)) for layer in window}
            assert relative(readout(batch.run(no_step)), clean) <= 1e-5


def test_the_last_residual_stream_is_the_answer(smollm2_parts):
    """Patched there, every target answers as its source; zeroed there, every text gives one answer."""
    base, blocks, readout, token_ids, pad_id = smollm2_parts
    for indices, batch in batches(base, blocks, token_ids, pad_id, True):
        source = batch.clean[("residual", 30)].flip(0)
        patched = readout(batch.run({("residual", 30): last_token.replace_with(source)}))
        assert torch.equal(patched.argmax(1), readout(source).argmax(1))
        zeroed = readout(batch.run({("residual", 30): last_token.zero})).argmax(1)
        assert len(set(zeroed.tolist())) == 1


def test_the_window_is_clipped_to_the_model():
    assert windows.layer_window(1, 3, 30) == [1, 2]
    assert windows.layer_window(15, 5, 30) == [13, 14, 15, 16, 17]
    assert windows.layer_window(30, 5, 30) == [28, 29, 30]
    with pytest.raises(ValueError, match="layer 31 is not between 1 and 30"):
        windows.layer_window(31, 3, 30)


@pytest.mark.parametrize("share_prefix", [True, False])
def test_sliding_window_layers_see_the_same_context_in_the_cached_path(share_prefix):
    """A small Gemma-3 (window 8, shorter than the prompts) in padded batches: cached equals plain."""
    model = small_gemma3(window=8)
    blocks = decoder_layers(model)
    readout = torch.nn.Linear(32, 13).requires_grad_(False)
    found = list(last_token.iter_last_token_batches(model, blocks, SMALL_PROMPTS, pad_id=0, batch_tokens=1000,
                                                       max_batch_size=8, max_padding=0.9, share_prefix=share_prefix,
                                                       locations=LOCATIONS))
    for indices, batch in found:
        prompts = [SMALL_PROMPTS[i] for i in indices]
        clean = readout(batch.clean[("residual", 2)])
        for location in LOCATIONS:
            for layers in ([1], [2], [1, 2]):
                for kind in ("zero", "random", "patch", "steer"):
                    edits = edits_of(kind, location, layers, batch, indices)
                    plain = readout(last_token.full_prompt_outputs(model, blocks, prompts, 0, edits))
                    assert relative(readout(batch.run(edits)), plain, clean) <= 1e-4, (location, layers, kind)


@pytest.fixture(scope="module")
def answered_prompts(smollm2_parts, smollm2_lm):
    """40 real prompts of the corpus, about half of them with SmolLM2's minority answers (read on the cached path's
    clean run, as the workflow reads them): ``(token_ids, row_ids)``."""
    from conftest import default_config
    from emoprobe.corpus import build_prompts, checked_corpus

    base, blocks, readout, _, pad_id = smollm2_parts
    config = default_config()
    corpus = checked_corpus(config["dataset"]["path"], config["dataset"]).head(160)
    prompts = build_prompts(corpus, config["prompt"]["templates"][config["prompt"]["template"]])
    token_ids = tokenize(smollm2_lm[1], prompts["prompt"].tolist())
    answers = np.empty(len(token_ids), dtype=np.int64)
    for indices, batch in last_token.iter_last_token_batches(base, blocks, token_ids, pad_id=pad_id,
                                                               batch_tokens=1 << 16, max_batch_size=64,
                                                               max_padding=0.5, locations=["residual"]):
        answers[indices] = readout(batch.clean[("residual", len(blocks))]).argmax(dim=1).numpy()
    majority = np.bincount(answers).argmax()
    chosen = np.r_[np.flatnonzero(answers != majority)[:20], np.flatnonzero(answers == majority)[:20]]
    return [token_ids[i] for i in chosen], prompts["row_id"].to_numpy()[chosen]


def run_plan(parts, token_ids, plan, max_batch_size):
    base, blocks, readout, _, pad_id = parts
    found = last_token.iter_last_token_batches(base, blocks, token_ids, pad_id=pad_id, batch_tokens=1 << 16,
                                                  max_batch_size=max_batch_size, max_padding=0.5, locations=LOCATIONS)
    return edits.condition_logits(found, plan, readout, len(token_ids), max_rows=64)


def test_ablation_tables_do_not_depend_on_the_batching(smollm2_parts, answered_prompts):
    token_ids, row_ids = answered_prompts
    plan, described = ablation.ablation_plan("random", LOCATIONS, [5, 30], 3, 30, seed=1, row_ids=row_ids)
    small, clean_small = run_plan(smollm2_parts, token_ids, plan, max_batch_size=7)
    large, clean_large = run_plan(smollm2_parts, token_ids, plan, max_batch_size=64)
    scale = np.abs(clean_large).max()
    assert np.abs(small - large).max() <= 1e-4 * scale and np.abs(clean_small - clean_large).max() <= 1e-4 * scale
    table = ablation.unchanged_rows(large, clean_large, described)
    # the residual stream one layer at a time; attention and MLP in a window of 3, none at 30 (it would leave the model)
    assert table[["location", "layer", "span"]].values.tolist() == [["residual", 5, 1], ["attention", 5, 3], ["mlp", 5, 3],
                                                                    ["residual", 30, 1]]
    assert (table["n_texts"] == 40).all()
    assert ((table["unchanged_low"] <= table["unchanged"]) & (table["unchanged"] <= table["unchanged_high"])).all()


def test_patching_the_last_residual_stream_transfers_every_pair(smollm2_parts, answered_prompts, smollm2_lm):
    token_ids, row_ids = answered_prompts
    keys = [(location, layer) for location in LOCATIONS for layer in range(1, 31)]
    none, clean = run_plan(smollm2_parts, token_ids, lambda indices, batch: [[{}]], max_batch_size=64)
    targets, sources = ablation.patching_pairs(clean.argmax(1), n_pairs=12, seed=0)
    assert len(targets) == 12 and len(set(targets)) == 12
    assert (clean.argmax(1)[targets] != clean.argmax(1)[sources]).all()
    assert np.array_equal(ablation.patching_pairs(clean.argmax(1), n_pairs=12, seed=0)[1], sources)
    states = {}  # every text's clean outputs, then the sources' in target order
    base, blocks, readout, _, pad_id = smollm2_parts
    for indices, batch in last_token.iter_last_token_batches(base, blocks, token_ids, pad_id=pad_id,
                                                                batch_tokens=1 << 16, max_batch_size=64,
                                                                max_padding=0.5, locations=LOCATIONS):
        for key in keys:
            states.setdefault(key, torch.empty(len(token_ids), 576))[torch.as_tensor(indices)] = batch.clean[key]
    source_states = {key: value[torch.as_tensor(sources)] for key, value in states.items()}
    plan, described = ablation.patching_plan(LOCATIONS, [16, 30], 5, 30, source_states)
    logits, target_clean = run_plan(smollm2_parts, [token_ids[t] for t in targets], plan, max_batch_size=64)
    table = ablation.patching_rows(logits, target_clean, clean.argmax(1)[sources], sources, described)
    last = table[(table["location"] == "residual") & (table["layer"] == 30)].iloc[0]
    assert last["transfer"] == 1.0 and last["kept"] == 0.0 and last["n_pairs"] == 12
    assert (last["first_layer"], last["last_layer"], last["span"]) == (30, 30, 1)  # the residual stream: one layer
    assert np.allclose(table[["transfer", "kept", "neither"]].sum(axis=1), 1.0)
    # attention and MLP at 30: a window of 5 would leave the model, so there is none
    assert set(table.loc[table["layer"] == 30, "location"]) == {"residual"}
    assert (table.loc[table["location"] != "residual", ["first_layer", "last_layer", "span"]].values == [14, 18, 5]).all()


def test_a_residual_window_acts_as_its_top_layer_alone(smollm2_parts, answered_prompts):
    """Zeroing or patching the residual stream in layers 14-16 gives the logits of editing layer 16 alone: each
    edit replaces the whole stream at the last token, so the top one overwrites the others (noise too, only scaled
    to the norm the lower edits leave). Attention and MLP outputs add to the stream: there a window is not its top
    layer. Why the workflow edits the residual stream one layer at a time."""
    token_ids, row_ids = answered_prompts
    base, blocks, readout, _, pad_id = smollm2_parts
    for indices, batch in last_token.iter_last_token_batches(base, blocks, token_ids[:8], pad_id=pad_id,
                                                                batch_tokens=1 << 16, max_batch_size=8,
                                                                max_padding=0.5, locations=LOCATIONS):
        clean = readout(batch.clean[("residual", 30)])
        for location in LOCATIONS:
            for kind in ("zero", "random", "patch"):
                window = readout(batch.run(edits_of(kind, location, [14, 15, 16], batch, indices)))
                top = readout(batch.run(edits_of(kind, location, [16], batch, indices)))
                if location == "residual" and kind != "random":
                    assert relative(window, top, clean) <= 1e-5, kind
                elif location != "residual":
                    assert relative(window, top, clean) > 1e-3, (location, kind)


def test_windows_that_would_leave_the_model_are_dropped_or_clipped_and_named():
    assert windows.windows("attention", [1, 2, 15, 30], 3, 30, replaces=True, clip=False) == {2: [1, 2, 3],
                                                                                          15: [14, 15, 16]}
    assert windows.windows("attention", [1, 30], 3, 30, replaces=True, clip=True) == {1: [1, 2], 30: [29, 30]}
    assert windows.windows("residual", [1, 30], 5, 30, replaces=True, clip=False) == {1: [1], 30: [30]}
    assert windows.windows("residual", [1, 30], 3, 30, replaces=False, clip=False) == {}  # steering adds: windows stay
    assert windows.windows("mlp", [10], 4, 30, replaces=True, clip=False) == {10: [8, 9, 10, 11, 12]}
    plan, described = ablation.ablation_plan("zero", LOCATIONS, [1, 2, 30], 3, 30, seed=0, row_ids=np.arange(3),
                                           clip=True)
    rows = {(d["location"], d["layer"]): (d["first_layer"], d["last_layer"], d["span"]) for d in described}
    assert rows[("attention", 1)] == (1, 2, 2) and rows[("mlp", 30)] == (29, 30, 2) and rows[("mlp", 2)] == (1, 3, 3)
    assert rows[("residual", 30)] == (30, 30, 1)


def test_steps_along_a_window_add_up_and_the_rows_say_how_far():
    """Promotion adds beta x the mean norm x a unit direction at each layer of its window; the skip connection
    carries each step on, so the top layer is moved by their sum: three equal steps along one direction, three
    times beta; along orthogonal ones, sqrt(3) times. ``beta_absolute`` stays one step at the centre."""
    hidden = 8
    same = {layer: np.eye(hidden, dtype=np.float32)[:1].repeat(2, axis=0) for layer in range(1, 11)}
    orthogonal = {layer: np.eye(hidden, dtype=np.float32)[[layer % hidden, (layer + 1) % hidden]] for layer in range(1, 11)}
    norms = {layer: 10.0 for layer in range(1, 11)}
    for directions, factor in ((same, 3.0), (orthogonal, np.sqrt(3.0))):
        _, described = steering.promotion_plan([0], [0.5], [5], 3, 10, directions, norms)
        [row] = described
        assert (row["first_layer"], row["last_layer"], row["span"]) == (4, 6, 3)
        assert row["beta_absolute"] == 5.0 and np.isclose(row["displacement"], 0.5 * factor)


def test_patching_sources_are_drawn_without_replacement_while_they_last():
    """70 texts of one answer, 30 of another: every target of the 70 needs a source among the 30, so sources repeat,
    but only once all 30 serve; with answers split evenly every source is a text of its own."""
    skewed = np.r_[np.zeros(70, dtype=np.int64), np.ones(30, dtype=np.int64)]
    targets, sources = ablation.patching_pairs(skewed, 100, seed=0)
    assert (skewed[targets] != skewed[sources]).all() and len(set(targets)) == len(targets) == 100
    assert len(set(sources[skewed[targets] == 0])) == 30  # every text of the other answer serves before any twice
    even = np.r_[np.zeros(50, dtype=np.int64), np.ones(50, dtype=np.int64)]
    targets, sources = ablation.patching_pairs(even, 100, seed=0)
    assert len(set(sources)) == 100


@pytest.mark.parametrize("shape, sources_of", [
    ("30 sources serve 70 targets", lambda rng: np.r_[np.arange(30), rng.integers(0, 30, size=40)]),
    ("one source serves every target", lambda rng: np.zeros(100, dtype=np.int64)),
    ("two sources, 95 and 5 targets", lambda rng: np.r_[np.zeros(95, dtype=np.int64), np.ones(5, dtype=np.int64)]),
    ("five sources, 60/10/10/10/10", lambda rng: np.repeat(np.arange(5), [60, 10, 10, 10, 10])),
    ("ten sources, 55 and 9 x 5", lambda rng: np.repeat(np.arange(10), [55] + [5] * 9)),
    ("a source per target", lambda rng: np.arange(100)),
])
def test_patching_intervals_cover_when_pairs_share_a_source(shape, sources_of):
    """Sources that transfer their answer more or less easily (a Beta-distributed propensity per source, mean 0.3),
    pairs sharing sources in the shapes patching takes (a 70/30 split of answers; one label's texts the only
    sources, as on a model_correct subset of one answer; two or five very unequal sources; a source per pair): the
    interval of the transferred share covers the population's share in at least 93 % of 1,000 replicates, and in at
    most 97 % where there are clusters enough to estimate the design effect. Wilson's, which takes the pairs for
    independent, covers in far fewer wherever sources repeat (with one source: 0.16 of replicates). Before the
    degrees of freedom followed Kish's effective number of clusters, five and ten unequal sources covered in 0.87 and
    0.83; before the one-cluster case fell back to Kish's size, one source gave Wilson's interval at 100 pairs."""
    rng = np.random.default_rng(0)
    truth, covered, naive = 0.3, [], []
    for _ in range(1000):
        sources = sources_of(rng)
        propensity = rng.beta(truth * 2, (1 - truth) * 2, size=sources.max() + 1)
        hits = rng.random(len(sources)) < propensity[sources]
        _, low, high = scores.clustered_share(hits, sources)
        covered.append(low <= truth <= high)
        low, high = wilson(int(hits.sum()), len(hits))
        naive.append(low <= truth <= high)
    assert np.mean(covered) >= 0.93, np.mean(covered)
    if shape.startswith(("30 sources", "a source per")):
        assert np.mean(covered) <= 0.97, np.mean(covered)
    if not shape.startswith("a source per"):
        assert np.mean(naive) < 0.9, np.mean(naive)


def test_random_ablation_keeps_the_norm_of_what_it_replaces():
    """Noise rescaled to each row's norm: a random ablation removes the direction, not the size, of a state."""
    h = torch.randn(5, 16) * torch.arange(1, 6)[:, None]
    noise = last_token.gaussian_noise(3, [10, 11, 12, 13, 14], ("attention", 4), 16)
    edited = last_token.scaled_noise(noise)(h)
    assert torch.allclose(edited.norm(dim=1), h.norm(dim=1), rtol=1e-5)
    assert torch.allclose(edited / edited.norm(dim=1, keepdim=True), noise / noise.norm(dim=1, keepdim=True), atol=1e-6)
    again = last_token.gaussian_noise(3, [12], ("attention", 4), 16)  # a text's noise, whatever its batch
    assert torch.equal(again[0], noise[2])


def test_promotion_pushes_along_the_promoted_emotions_own_direction(smollm2_parts, answered_prompts):
    """Each emotion's condition adds beta x the layer's mean norm x that emotion's row of the probe, at every layer
    of the window, and nothing else."""
    token_ids, row_ids = answered_prompts
    base, blocks, readout, _, pad_id = smollm2_parts
    rng = np.random.default_rng(0)
    rows = {layer: rng.standard_normal((13, 576)).astype(np.float32) for layer in range(1, 31)}
    units = {layer: r / np.linalg.norm(r, axis=1, keepdims=True) for layer, r in rows.items()}
    norms = {layer: float(layer) for layer in range(1, 31)}
    plan, described = steering.promotion_plan([3, 7], [0.5], [10], 3, 30, units, norms)
    indices, batch = next(iter(last_token.iter_last_token_batches(base, blocks, token_ids[:4], pad_id=pad_id,
                                                                     batch_tokens=1 << 16, max_batch_size=4,
                                                                     max_padding=0.5)))
    [group] = plan(indices, batch)
    assert [d["emotion"] for d in described] == [3, 7] and len(group) == 2
    for emotion, condition in zip([3, 7], group):
        assert sorted(condition) == [("residual", 9), ("residual", 10), ("residual", 11)]
        for (_, layer), edit in condition.items():
            step = edit(torch.zeros(4, 576))[0].numpy()
            assert np.allclose(step, 0.5 * layer * units[layer][emotion], atol=1e-6)



def test_zero_ablation_of_the_last_residual_stream_gives_every_text_one_answer(smollm2_parts, answered_prompts):
    token_ids, row_ids = answered_prompts
    plan, described = ablation.ablation_plan("zero", ["residual"], [30], 1, 30, seed=0, row_ids=row_ids)
    logits, clean = run_plan(smollm2_parts, token_ids, plan, max_batch_size=64)
    assert len(set(logits[0].argmax(1).tolist())) == 1
    table = ablation.unchanged_rows(logits, clean, described)
    assert table["unchanged"].iloc[0] == (clean.argmax(1) == logits[0, 0].argmax()).mean()


def test_the_promotion_metric_is_the_papers():
    p_clean = np.array([0.2, 0.2, 0.5, 0.0, 1.0])
    p_after = np.array([0.6, 0.1, 0.5, 0.3, 0.4])
    assert np.allclose(steering.normalised_change(p_clean, p_after), [0.4 / 0.8, -0.1 / 0.2, 0.0, 0.3, -0.6])
    assert np.allclose(steering.softmax(np.array([[0.0, np.log(3.0)]])), [[0.25, 0.75]])
    assert np.allclose(np.linalg.norm(steering.raw_direction(np.array([3.0, 4.0]))), 1.0)
    with pytest.raises(ValueError, match="no direction"):
        steering.raw_direction(np.zeros(4))


@pytest.mark.parametrize("shape, draw", [
    ("small changes everywhere", lambda rng, n: np.clip(rng.normal(0.02, 0.05, n), -0.99, 0.99)),
    ("two kinds of text, 40 % moved far", lambda rng, n: np.where(rng.random(n) < 0.4, rng.beta(8, 1, n) * 0.99,
                                                                     np.abs(rng.normal(0, 0.02, n)))),
    ("a few texts moved far, the rest not", lambda rng, n: np.where(rng.random(n) < 0.05, rng.beta(9, 1, n) * 0.99,
                                                                       np.abs(rng.normal(0, 0.005, n)))),
    ("every text pushed away", lambda rng, n: -rng.beta(0.5, 3, n) * 0.99),
])
def test_the_promotion_change_interval_covers_the_mean_change(shape, draw):
    """Through the rows the promotion runner writes: 1,000 replicate conditions of 100 texts whose normalised changes
    follow a known distribution (emotion 0 of two labels at clean probability 0.2; the edited logits set so that
    the paper's metric is the drawn value): the change's 95 % interval covers the population mean in 93-98.5 % of
    them (0.95 reads anywhere in 0.936-0.964 at 1,000 replicates; the studentised interval is conservative where a
    few texts move far). The percentile interval it replaced covered 0.92 there; an interquartile one, 0.4."""
    rng = np.random.default_rng(0)
    truth = draw(np.random.default_rng(1), 2_000_000).mean()
    change = np.stack([draw(rng, 100) for _ in range(1000)])  # [conditions, texts]
    p_after = np.where(change > 0, 0.2 + change * 0.8, 0.2 + change * 0.2)
    logits = np.log(np.stack([p_after, 1 - p_after], axis=-1))
    clean = np.log(np.tile([0.2, 0.8], (100, 1)))
    table = steering.promotion_rows(logits, clean, [{"emotion": 0}] * 1000, replicates=1000, seed=0)
    assert np.allclose(table["change"], change.mean(axis=1))
    covered = np.mean((table["change_low"] <= truth) & (truth <= table["change_high"]))
    assert 0.93 <= covered <= 0.985, covered


@pytest.mark.parametrize("share_prefix", [True, False])
def test_the_cached_path_is_the_full_prompt_run_on_gemma3(gemma3_lm, share_prefix):
    """Real Gemma-3-270M: five sliding-window layers to each global one (6, 12, 18), one key/value head."""
    model, tokenizer = gemma3_lm
    base = model.get_decoder()
    blocks = decoder_layers(base)
    readout = label_readout(model, answer_token_ids(tokenizer, LABELS, {}))
    token_ids = tokenize(tokenizer, PROMPTS)
    found = batches(base, blocks, token_ids, tokenizer.pad_token_id, share_prefix)
    assert len({len(token_ids[i]) for i in found[0][0]}) > 1  # padded
    for indices, batch in found:
        prompts = [token_ids[i] for i in indices]
        clean = readout(batch.clean[("residual", 18)])
        for location in LOCATIONS:
            for centre in (3, 6, 12, 18):
                window = windows.layer_window(centre, 3, 18)
                for kind in ("zero", "random", "patch", "steer"):
                    edits = edits_of(kind, location, window, batch, indices)
                    plain = readout(last_token.full_prompt_outputs(base, blocks, prompts, tokenizer.pad_token_id,
                                                                      edits))
                    assert relative(readout(batch.run(edits)), plain, clean) <= 1e-4, (location, centre, kind)


def test_promotion_along_the_readout_of_an_emotion_makes_it_the_answer(smollm2_parts, answered_prompts, smollm2_lm):
    """A step along what the last layer's readout of an emotion responds to (its LM-head row, through the final
    norm's gains) makes that emotion the answer; a step of 0 changes nothing."""
    token_ids, _ = answered_prompts
    model, tokenizer = smollm2_lm
    rows = model.get_output_embeddings().weight[answer_token_ids(tokenizer, LABELS, {})]
    readout_directions = (rows * model.get_decoder().norm.weight).detach().numpy()
    directions = {30: np.stack([steering.raw_direction(row) for row in readout_directions])}
    _, clean = run_plan(smollm2_parts, token_ids, lambda indices, batch: [[{}]], max_batch_size=64)
    base, blocks, _, _, pad_id = smollm2_parts
    norms = {30: float(np.mean([batch.clean[("residual", 30)].norm(dim=-1).mean().item() for _, batch in
                                last_token.iter_last_token_batches(base, blocks, token_ids, pad_id=pad_id,
                                                                      batch_tokens=1 << 16, max_batch_size=64,
                                                                      max_padding=0.5)]))}
    emotions = [LABELS.index("joy"), LABELS.index("fear")]
    plan, described = steering.promotion_plan(emotions, [0.0, 4.0], [30], 1, 30, directions, norms)
    logits, clean_again = run_plan(smollm2_parts, token_ids, plan, max_batch_size=64)
    table = steering.promotion_rows(logits, clean_again, described, replicates=200)
    assert table[["emotion", "beta"]].values.tolist() == [[emotions[0], 0.0], [emotions[0], 4.0],
                                                           [emotions[1], 0.0], [emotions[1], 4.0]]
    still = table[table["beta"] == 0.0]
    assert np.allclose(still["change"], 0.0, atol=1e-5) and (still["promoted"] == still["clean_promoted"]).all()
    pushed = table[table["beta"] == 4.0]
    assert (pushed["promoted"] >= 0.9).all() and (pushed["change"] > 0.5).all()
    assert (pushed["change_low"] <= pushed["change"]).all() and (pushed["change"] <= pushed["change_high"]).all()
    assert np.allclose(pushed["beta_absolute"], 4.0 * norms[30])
    # the same step as a surgery recipe: the same answers, counted per label
    recipe = {"joy readout": {30: directions[30][emotions[0]]}}
    plan, described = steering.surgery_plan(recipe, [4.0], [30], 1, 30, norms)
    surgery, _ = run_plan(smollm2_parts, token_ids, plan, max_batch_size=64)
    assert np.array_equal(surgery[0].argmax(1), logits[1].argmax(1))
    counts = steering.answer_distribution_rows(surgery, clean_again, described, LABELS).set_index("label")
    assert counts["count"].sum() == 40 and counts.loc["joy", "count"] == round(pushed["promoted"].iloc[0] * 40)


def test_the_promotion_runner_pushes_each_emotion_along_its_own_row_of_the_probe(smollm2_parts, answered_prompts,
                                                                               smollm2_lm):
    """Through the runner the workflow calls, with the probe's rows in another order than the labels (as a probe's
    classes may be): each emotion pushed along the readout direction stored in the row whose class is that emotion
    becomes the answer of (nearly) every text, and the table names it. Were the rows paired with the classes in any
    other order, the emotion named would be pushed along another emotion's readout and stay rare."""
    token_ids, row_ids = answered_prompts
    model, tokenizer = smollm2_lm
    base, blocks, readout, _, pad_id = smollm2_parts
    rows = model.get_output_embeddings().weight[answer_token_ids(tokenizer, LABELS, {})]
    readout_directions = (rows * model.get_decoder().norm.weight).detach().numpy()
    classes = np.roll(np.arange(len(LABELS)), 5)
    directions = {30: (classes, readout_directions[classes])}
    settings = {"span": 1, "every": 30, "seed": 0, "betas": [4.0], "emotions": ["joy", "fear", "trust"],
                "bootstrap": 200, "clip_windows": False}
    table = edits.run_experiment(
        "promotion", settings, batches=lambda ids: batches(base, blocks, ids, pad_id, True), readout=readout,
        token_ids=token_ids, row_ids=row_ids, n_layers=30, labels=LABELS, directions=directions)
    assert table["emotion"].tolist() == ["joy", "fear", "trust"] and (table["layer"] == 30).all()
    assert (table["clean_promoted"] < 0.5).all() and (table["promoted"] >= 0.9).all(), table
    assert (table["change"] > 0.5).all()


def test_the_surgery_runner_pushes_each_recipe_along_its_own_appraisals(smollm2_parts, answered_prompts,
                                                                        smollm2_lm):
    """Through the runner the workflow calls: appraisal "probes" whose rows are the readout directions of labels (in
    another order than the labels), and recipes that push one appraisal each: every recipe makes the label of its
    appraisal's row the answer of (nearly) every text, counted under that label's name, with the share of texts
    changed beside it. Were appraisals paired with other rows, the counts would land on other labels."""
    token_ids, row_ids = answered_prompts
    model, tokenizer = smollm2_lm
    base, blocks, readout, _, pad_id = smollm2_parts
    rows = model.get_output_embeddings().weight[answer_token_ids(tokenizer, LABELS, {})]
    readout_directions = (rows * model.get_decoder().norm.weight).detach().numpy()
    carries = {"pleasantness": "joy", "urgency": "fear", "effort": "trust"}
    directions = {30: {appraisal: readout_directions[LABELS.index(label)] for appraisal, label in carries.items()}}
    recipes = {f"{appraisal} up": {"push": {appraisal: 1}, "hold": []} for appraisal in carries}
    settings = {"span": 1, "every": 30, "seed": 0, "betas": [4.0], "recipes": recipes, "orthogonalise": False,
                "random_controls": 0, "clip_windows": False}
    table = edits.run_experiment(
        "surgery", settings, batches=lambda ids: batches(base, blocks, ids, pad_id, True), readout=readout,
        token_ids=token_ids, row_ids=row_ids, n_layers=30, labels=LABELS, directions=directions)
    for appraisal, label in carries.items():
        rows_of = table[table["recipe"] == f"{appraisal} up"].set_index("label")
        assert rows_of["count"].sum() == len(token_ids)
        assert rows_of.loc[label, "count"] >= 0.9 * len(token_ids), (appraisal, rows_of["count"].to_dict())
        assert rows_of["changed"].iloc[0] >= 1 - rows_of.loc[label, "clean_count"] / len(token_ids) - 0.1


def test_a_surgery_direction_leaves_the_appraisals_held_fixed_alone():
    rng = np.random.default_rng(0)
    weights = {name: rng.standard_normal(16) for name in ("pleasantness", "self_control", "urgency", "effort")}
    plain = steering.surgery_direction(weights, {"pleasantness": 1, "self_control": -1})
    expected = weights["pleasantness"] / np.linalg.norm(weights["pleasantness"]) - weights["self_control"] / \
        np.linalg.norm(weights["self_control"])
    assert np.allclose(plain, expected / np.linalg.norm(expected), atol=1e-6)
    held = steering.surgery_direction(weights, {"pleasantness": 1}, held_fixed=["urgency", "effort"])
    assert np.isclose(np.linalg.norm(held), 1.0) and abs(held @ weights["urgency"]) < 1e-5 and \
        abs(held @ weights["effort"]) < 1e-5 and held @ weights["pleasantness"] > 0
    # a recipe holds its own list, as the paper's set does; without orthogonalise, the plain signed sum (its code)
    recipes = {"p+held": {"push": {"pleasantness": 1}, "hold": ["urgency", "effort"]},
               "p+s-": {"push": {"pleasantness": 1, "self_control": -1}, "hold": []}}
    found = steering.recipe_directions({7: weights}, recipes, orthogonalise=True)
    assert np.allclose(found["p+held"][7], held, atol=1e-6) and np.allclose(found["p+s-"][7], plain, atol=1e-6)
    unheld = steering.recipe_directions({7: weights}, recipes, orthogonalise=False)["p+held"][7]
    assert np.allclose(unheld, weights["pleasantness"] / np.linalg.norm(weights["pleasantness"]), atol=1e-6)


def test_answer_distributions_count_every_text_once():
    clean = np.eye(3, dtype=np.float32)[[0, 0, 1, 2, 0]]
    after = np.eye(3, dtype=np.float32)[[[1, 1, 1, 2, 0]]]
    table = steering.answer_distribution_rows(after, clean, [{"recipe": "pleasantness+", "beta": 1.0}], ["a", "b", "c"])
    assert table["clean_count"].tolist() == [3, 1, 1] and table["count"].tolist() == [1, 3, 1]
    assert table["shift"].tolist() == [-2, 2, 0]
    # texts 0 and 1 moved from a to b, text 2 stayed: a share of 2/5 changed, which the shifts alone (2) bound below
    assert (table["changed"] == 0.4).all() and (table["n_texts"] == 5).all()
    assert (table["changed_low"] < 0.4).all() and (table["changed_high"] > 0.4).all()
    swapped = steering.answer_distribution_rows(np.eye(3, dtype=np.float32)[[[1, 0, 0, 2, 0]]], clean,
                                                     [{"recipe": "x", "beta": 1.0}], ["a", "b", "c"])
    assert (swapped["shift"] == 0).all() and (swapped["changed"] == 0.4).all()  # a and b traded one text each


def test_promotion_pushes_only_the_emotions_its_probe_has_a_row_of(smollm2_parts):
    """A probe of a subset sees only some labels (model_correct: those the model gets right): promotion runs
    those, and says so when none of those asked for is there."""
    base, blocks, readout, token_ids, pad_id = smollm2_parts
    rng = np.random.default_rng(0)
    seen = np.array([5, 9])  # joy, sadness
    directions = {layer: (seen, rng.standard_normal((2, 576)).astype(np.float32)) for layer in range(1, 31)}
    settings = {"span": 3, "every": 15, "seed": 0, "betas": [0.25], "emotions": [], "bootstrap": 200,
                "clip_windows": False}
    kwargs = dict(batches=lambda ids: batches(base, blocks, ids, pad_id, True), readout=readout, token_ids=token_ids,
                  row_ids=np.arange(len(token_ids)), n_layers=30, labels=LABELS, directions=directions)
    table = edits.run_experiment("promotion", settings, **kwargs)
    # centres 15 and 30; the window at 30 would leave the model
    assert table["emotion"].tolist() == ["joy", "sadness"] and table["layer"].tolist() == [15, 15]
    assert (table["n_texts"] == len(TEXTS)).all() and (table["beta_absolute"] > 0).all()
    with pytest.raises(edits.NothingToRun, match=r"no row of any of the emotions \['fear'\]: nothing to push along"):
        edits.run_experiment("promotion", {**settings, "emotions": ["fear"]}, **kwargs)


def run_toy(run: edits.ExperimentInputs):
    """A toy experiment's runner: each location's output scaled by ``factor`` in each window, the share of answers
    it leaves unchanged (with ``factor`` 0, zero ablation by another route)."""
    settings = run.settings
    plan, described = ablation.each_location_plan(settings["locations"], run.centres, settings["span"], run.n_layers,
                                                  settings["clip_windows"],
                                                  lambda indices, batch, key: lambda h: h * settings["factor"])
    return ablation.unchanged_rows(*run.conditions(plan, len(described), "toy scaling"), described)


def test_a_toy_experiment_is_one_entry_planned_run_and_tabled(monkeypatch, smollm2_parts, answered_prompts):
    """An experiment added as one registry entry (and its settings, which a real one declares in the schema) is
    checked, planned (its table, job estimates, settings, the heatmap), run by the engine the generic script calls,
    and drawn as a heatmap panel, with no other file touched."""
    import pandas as pd

    from conftest import small_config
    from emoprobe import experiments, figures, jobs, plan
    from emoprobe.config import check_interventions
    from emoprobe.errors import ConfigError
    from test_plan import prepared

    toy = experiments.Experiment(runner="test_interventions:run_toy", per_location=True,
                                 heatmap=("unchanged", "answers changed by scaling"),
                                 conditions=lambda section, labels: len(section["locations"]),
                                 summary=lambda settings, labels: f"outputs x {settings['factor']}")
    monkeypatch.setitem(experiments.EXPERIMENTS, "toy", toy)
    config = prepared(small_config())
    config["interventions"].update(experiments=["zero", "toy"], toy={"span": 3, "every": 10, "factor": 0.0})
    check_interventions(config)
    with pytest.raises(ConfigError, match="interventions.toy.span: 31 is more than the 30 layers of smollm2-135m"):
        check_interventions({**config, "interventions": {**config["interventions"], "toy": {"span": 31, "every": 10}}})
    model = "smollm2-135m"
    assert plan.intervention_files(config, model) == [f"results/interventions/{model}/zero.tsv",
                                                      f"results/interventions/{model}/toy.tsv"]
    assert f"results/figures/interventions/{model}.png" in plan.all_targets(config)
    settings = plan.intervention_settings(config, "toy")
    assert settings["factor"] == 0.0 and settings["locations"] == LOCATIONS == config["locations"]
    assert jobs.intervention_conditions(config, model, "toy") == 3 * 3  # centres 10, 20, 30 x 3 locations
    assert jobs.intervention_runtime(config, model, "toy", 144, 1) >= 15
    assert toy.summary(settings, LABELS) == "outputs x 0.0" and experiments.modules("toy") == ()

    token_ids, row_ids = answered_prompts
    base, blocks, readout, _, pad_id = smollm2_parts
    common = dict(batches=lambda ids: batches(base, blocks, ids, pad_id, True), readout=readout, token_ids=token_ids,
                  row_ids=row_ids, n_layers=30, labels=LABELS)
    table = edits.run_experiment("toy", settings, **common)
    zero = edits.run_experiment("zero", {**plan.intervention_settings(config, "zero"), "span": 3, "every": 10}, **common)
    assert table[["location", "layer", "span"]].equals(zero[["location", "layer", "span"]])
    assert np.allclose(table["unchanged"], zero["unchanged"], atol=1.5 / len(token_ids))
    assert table["unchanged"].min() < 1  # the edits do change answers

    both = pd.concat([t.assign(model=model, experiment=e, subset="all") for e, t in (("zero", zero), ("toy", table))])
    accuracy = pd.DataFrame([{"model": model, "location": location, "subset": "all", "target": "label",
                              "position": -1, "layer": layer, "balanced_accuracy": 0.5, "balanced_low": 0.4,
                              "balanced_high": 0.6} for location in LOCATIONS for layer in range(1, 31)])
    panels = figures.intervention_panels(accuracy, both, model, LOCATIONS)
    assert [panel.title.split(" (")[0] for panel in panels] == [
        "probe balanced accuracy", "answers changed by zero ablation", "answers changed by scaling"]
    toy_panel = panels[-1].value
    assert toy_panel.loc["mlp", 20] == pytest.approx(1 - table.set_index(["location", "layer"]).loc[("mlp", 20),
                                                                                                  "unchanged"])


def test_what_the_experiments_cannot_do_they_refuse(smollm2_parts):
    """Each guard of the cached path and the plans, proved by its refusal: batches that miss a text, a run that
    would start after a layer it edits, prompts without a last token to run, a probe row of zeros, unknown kinds."""
    base, blocks, readout, token_ids, pad_id = smollm2_parts
    found = list(last_token.iter_last_token_batches(base, blocks, token_ids[:3], pad_id=pad_id, batch_tokens=4096,
                                                       max_batch_size=4, max_padding=0.9))
    with pytest.raises(ValueError, match="the batches do not cover all 4 texts"):
        edits.condition_logits(found, lambda indices, batch: [[{}]], readout, n_texts=4)
    with pytest.raises(ValueError, match="the batches do not cover all 4 texts"):
        edits.clean_outputs(found, [("residual", 3)], readout, n_texts=4)
    _, batch = found[0]
    with pytest.raises(ValueError, match="start 5 is not between 1 and the first edited layer, 3"):
        batch.run_many([{("residual", 3): last_token.zero}], start=5)
    with pytest.raises(ValueError, match="a prompt of one token has no context to cache"):
        last_token.LastTokenBatch(base, blocks, [[1]], pad_id)
    with pytest.raises(ValueError, match="every prompt needs its last token outside the shared prefix"):
        last_token.LastTokenBatch(base, blocks, [[]], pad_id)
    with pytest.raises(ValueError, match="a probe weight row of zeros has no direction"):
        steering.raw_direction(np.zeros(8))
    with pytest.raises(ValueError, match="ablation kind 'mean' is neither 'zero' nor 'random'"):
        ablation.ablation_plan("mean", LOCATIONS, [5], 3, 30, seed=0, row_ids=np.arange(3))
    with pytest.raises(ValueError, match="experiment 'steering' is not one of"):
        edits.run_experiment("steering", {"every": 5, "span": 3, "seed": 0, "clip_windows": False}, batches=None,
                              readout=readout, token_ids=token_ids, row_ids=np.arange(len(token_ids)), n_layers=30,
                              labels=LABELS)


def eager_last_token_attention(model, prompt: list[int]) -> torch.Tensor:
    """The last token's attention ``[n_layers, n_heads, n_tokens]`` of a plain full-prompt run with eager attention."""
    implementation = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            found = model(torch.tensor([prompt]), output_attentions=True).attentions
    finally:
        model.set_attn_implementation(implementation)
    return torch.stack([a[0, :, -1].float() for a in found])


def assert_attention_is_eager(model, blocks, token_ids, pad_id, share_prefix):
    found = list(last_token.iter_last_token_batches(model, blocks, token_ids, pad_id=pad_id, batch_tokens=4096,
                                                       max_batch_size=4, max_padding=0.9, share_prefix=share_prefix))
    for indices, batch in found:
        for i, weights in zip(indices, batch.attention()):
            assert weights.shape[2] == len(token_ids[i])
            assert torch.allclose(weights.sum(dim=2), torch.ones(()), atol=1e-5)
            assert float((weights - eager_last_token_attention(model, token_ids[i])).abs().max()) < 1e-5, i


@pytest.mark.parametrize("share_prefix", [True, False])
def test_last_token_attention_is_eager_attention_on_a_sliding_window_model(share_prefix):
    model = small_gemma3(window=8)  # a window shorter than the prompts: the cache drops keys the query cannot see
    assert_attention_is_eager(model, decoder_layers(model), SMALL_PROMPTS, 0, share_prefix)


def test_last_token_attention_is_eager_attention_on_both_bundled_models(smollm2_lm, gemma3_lm):
    for model, tokenizer in (smollm2_lm, gemma3_lm):
        base = model.get_decoder()
        token_ids = tokenize(tokenizer, PROMPTS)  # of several lengths: padded batches
        assert len({len(ids) for ids in token_ids}) > 1
        assert_attention_is_eager(base, decoder_layers(base), token_ids, tokenizer.pad_token_id, share_prefix=True)


def test_attention_shares_split_each_prompt_into_its_parts(smollm2_lm, gemma3_lm):
    from emoprobe.attention import SEGMENTS, segment_shares, token_segments

    template = "What are the inferred emotions in the following contexts? Context: {text} Answer:"
    for _, tokenizer in (smollm2_lm, gemma3_lm):
        token_ids = tokenize(tokenizer, PROMPTS)
        segments = token_segments(tokenizer, PROMPTS, template)
        for text, ids, found in zip(TEXTS, token_ids, segments):
            assert len(found) == len(ids)
            # the text's tokens spell the text; the segments come in order: start, opening, text, closing
            assert tokenizer.decode([t for t, s in zip(ids, found) if s == 2]).strip() == text
            assert found[0] == 0 and (np.diff(found[1:]) >= 0).all() and set(found[1:]) == {1, 2, 3}
        weights = np.random.default_rng(0).dirichlet(np.ones(len(segments[0])), size=(2, 3))
        shares = segment_shares(weights, segments[0])
        assert shares.shape == (2, 3, len(SEGMENTS)) and np.allclose(shares.sum(axis=2), 1, atol=1e-6)
        assert np.allclose(shares[..., 2], weights[..., segments[0] == 2].sum(axis=2), atol=1e-6)
        # a template's escaped braces are one character of the prompt each: the text is still found where it is
        braced = "Emotions {{joy, fear, ...}} in: {text} Answer:"
        prompts = [braced.format(text=text) for text in TEXTS]
        for text, ids, found in zip(TEXTS, tokenize(tokenizer, prompts), token_segments(tokenizer, prompts, braced)):
            assert tokenizer.decode([t for t, s in zip(ids, found) if s == 2]).strip() == text
