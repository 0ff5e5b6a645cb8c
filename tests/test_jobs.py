"""How a run is cut into jobs and what each asks for (emoprobe.jobs): pure arithmetic, checked by hand."""

import copy

import pytest

from emoprobe import jobs

FULL_GRID = [{"locations": "all", "positions": "all", "problems": "all", "control": True, "directions": False}]
CONFIG = {
    "positions": [-1, -2, -3, -4, -5],
    "locations": ["residual", "attention", "mlp"],
    "extraction": {"dtype": "float32", "batch_tokens": 4096},
    "probe": {"subsets": ["all", "model_correct"], "answer_probe": True, "folds": 5, "grid": FULL_GRID,
              "fits_per_job": 750},
    "models": {"m": {"n_layers": 30, "hidden_size": 576, "params_m": 135, "compute_params_m": 106.5,
                     "layer_chunk_size": 15}},
}


def with_probe(**settings):
    config = copy.deepcopy(CONFIG)
    config["probe"].update(settings)
    return config


def test_fits_per_layer_count_the_grids_cells_folds_controls_and_directions():
    from emoprobe.grid import fits_per_layer

    assert fits_per_layer(CONFIG, "mlp") == 5 * 3 * 5 * 2  # positions x problems x folds x (probe + control)
    one_split = with_probe(folds=0, answer_probe=False, grid=[{**FULL_GRID[0], "control": False}])
    assert fits_per_layer(one_split, "mlp") == 5 * 2
    default = with_probe(grid=[
        {"locations": "all", "positions": [-1], "problems": "all", "control": True, "directions": False},
        {"locations": ["residual"], "positions": "all", "problems": ["all/label"], "control": False,
         "directions": False},
        {"locations": ["residual"], "positions": [-1], "problems": ["all/label"], "control": False,
         "directions": True}])
    assert fits_per_layer(default, "attention") == 3 * 5 * 2
    assert fits_per_layer(default, "residual") == 3 * 5 * 2 + 4 * 5 + 1  # the other positions, the directions
    nothing = with_probe(grid=[{**FULL_GRID[0], "locations": ["residual"]}])
    assert fits_per_layer(nothing, "mlp") == 0 and jobs.probe_groups(nothing, "m", "mlp") == []


def test_probe_groups_hold_about_fits_per_job_fits_and_never_span_two_chunk_files():
    # 750 fits / 150 per layer = 5 layers per job, within each 15-layer chunk
    assert jobs.probe_groups(CONFIG, "m", "mlp") == [(1, 5), (6, 10), (11, 15), (16, 20), (21, 25), (26, 30)]
    # the residual stream's first job also reads the embeddings, stored as layer 0 of the first chunk
    assert jobs.probe_groups(CONFIG, "m", "residual")[0] == (0, 5)
    assert jobs.probe_groups(with_probe(fits_per_job=899), "m", "mlp") == jobs.probe_groups(CONFIG, "m", "mlp")
    assert jobs.probe_groups(with_probe(fits_per_job=2000), "m", "mlp") == [(1, 13), (14, 15), (16, 28), (29, 30)]
    assert jobs.probe_groups(with_probe(fits_per_job=1), "m", "mlp")[:2] == [(1, 1), (2, 2)]  # at least a layer


def test_layer_chunks_cover_every_layer():
    assert jobs.layer_chunks(30, 15) == [(1, 15), (16, 30)]
    assert jobs.layer_chunks(18, 4) == [(1, 4), (5, 8), (9, 12), (13, 16), (17, 18)]
    assert jobs.layer_chunks(5, 5) == [(1, 5)]


def test_extraction_chunks_follow_the_chunk_size():
    assert jobs.extraction_chunks(CONFIG, "m") == [(1, 15), (16, 30)]
    config = copy.deepcopy(CONFIG)
    del config["models"]["m"]["layer_chunk_size"]
    assert jobs.extraction_chunks(config, "m") == [(1, 30)]


def test_requests_grow_with_the_work_and_the_attempt():
    # 2 x 106.5e6 x 15/30 parameters x 6600 texts x 64 tokens at 5e10 FLOP/s = 899.7 s, after 15 minutes
    assert jobs.extraction_runtime(CONFIG, "m", last=15, n_texts=6600, attempt=1) == 29
    assert jobs.extraction_runtime(CONFIG, "m", last=15, n_texts=6600, attempt=2) == 58
    # weights 135e6 x 4 bytes x 1.5, activations 4096 x 576 x 4 x 64 bytes, 1 GiB of libraries
    assert jobs.extraction_mem_mb(CONFIG, "m", attempt=1) == int((135e6 * 4 * 1.5 + 4096 * 576 * 256) / 2**20 + 1024)
    assert jobs.layer_mb(CONFIG, "m", 6600) == pytest.approx(6600 * 5 * 576 * 4 / 2**20)
    one, five = (jobs.probe_runtime(CONFIG, "m", "mlp", n, 6600, attempt=1) for n in (1, 5))
    assert 10 <= one < five
    assert jobs.probe_mem_mb(CONFIG, "m", 6600, attempt=2) == 2 * jobs.probe_mem_mb(CONFIG, "m", 6600, attempt=1)
    assert jobs.appraisal_mem_mb(CONFIG, "m", 6600, 1) > jobs.probe_mem_mb(CONFIG, "m", 6600, 1)


def test_sixteen_bit_extraction_asks_for_half_the_weight_memory():
    config = copy.deepcopy(CONFIG)
    config["extraction"]["dtype"] = "bfloat16"
    assert jobs.model_bytes_per_param(config) == 2 and jobs.model_bytes_per_param(CONFIG) == 4
    assert jobs.extraction_mem_mb(config, "m", 1) < jobs.extraction_mem_mb(CONFIG, "m", 1)
    assert jobs.extraction_runtime(config, "m", 30, 6600, 1) == 15  # a GPU's rate: loading dominates


def test_intervention_conditions_and_requests_follow_the_windows_and_the_sample():
    config = copy.deepcopy(CONFIG)
    config["dataset"] = {"labels": [f"l{k}" for k in range(13)]}
    config["interventions"] = {
        "texts": 100, "locations": ["residual", "attention", "mlp"], "batch_tokens": 32768,
        "zero": {"every": 1}, "patching": {"every": 2},
        "promotion": {"every": 3, "emotions": [], "betas": [0.5, 1.0]},
        "surgery": {"every": 3, "recipes": {f"r{k}": {"push": {}} for k in range(8)}, "random_controls": 2, "betas": [1.0]},
    }
    assert jobs.intervention_conditions(config, "m", "zero") == 30 * 3
    assert jobs.intervention_conditions(config, "m", "patching") == 15 * 3  # layers 30, 28, .., 2
    assert jobs.intervention_conditions(config, "m", "promotion") == 10 * 13 * 2
    assert jobs.intervention_conditions(config, "m", "surgery") == 10 * 10 * 1
    assert jobs.intervention_texts(config, 6600) == 100 and jobs.intervention_texts(config, 50) == 50
    small = jobs.intervention_runtime(config, "m", "promotion", 6600, 1)
    config["interventions"]["texts"] = 0  # all 6,600
    assert jobs.intervention_runtime(config, "m", "promotion", 6600, 1) > small >= 15
    assert jobs.intervention_runtime(config, "m", "promotion", 6600, 2) == 2 * jobs.intervention_runtime(
        config, "m", "promotion", 6600, 1)
    assert jobs.intervention_mem_mb(config, "m", 6600, 1) > jobs.intervention_mem_mb(config, "m", 100, 1)
