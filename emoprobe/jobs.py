"""How the workflow cuts a run into jobs, and what each job asks the scheduler for.

Pure arithmetic over the (validated, described) config: the layer chunks of the extraction, the layer
groups of the probe jobs, and each job's memory and runtime requests. Only the standard library is
imported here: this runs every time Snakemake parses the workflow. None of it decides a number the
workflow writes; it decides how the work is split and scheduled.
"""

from __future__ import annotations

from emoprobe.experiments import EXPERIMENTS
from emoprobe.grid import cells as grid_cells, conditional_cells, fits_per_layer, nonlinear_cells
from emoprobe.windows import centre_layers

# Tokens per prompt for the runtime requests: the two-shot prompts average 58 with SmolLM2's tokenizer
# (benchmarks/scaling.py), the zero-shot ones fewer.
TOKENS_PER_TEXT = 64
# FLOP/s well below what an extraction reaches in float32 on CPUs and in 16-bit on a GPU
# (docs/performance.md), so that a request is rarely too short.
FLOP_RATE = {"float32": 5e10, "bfloat16": 2e13, "float16": 2e13}
# Seconds per probe fit per million (text x feature) values of one position, on one CPU thread: about three times
# what the trainer takes on the bundled models on a fast CPU (docs/performance.md), for slower CPUs and layers that
# need more iterations; a retry doubles it. Wider layers also pay the whitening's d x d products (probe_seconds).
PROBE_SECONDS = 0.08
# Seconds of one CPU thread per iteration of one non-linear probe per million values of its features times hidden
# units (n_texts x d x hidden), measured on the bundled SmolLM2 (docs/performance.md).
NONLINEAR_SECONDS = 1.3e-4


def chunk_size(config: dict, name: str) -> int:
    """Layers per extraction job for a model: its own setting, else the global one, else all."""
    model = config["models"][name]
    size = model.get("layer_chunk_size", config["extraction"].get("layer_chunk_size", model["n_layers"]))
    return size


def layer_chunks(n_layers: int, size: int) -> list[tuple[int, int]]:
    """Consecutive 1-based ``(first, last)`` layer ranges of ``size`` layers covering ``1..n_layers``."""
    return [(first, min(first + size - 1, n_layers)) for first in range(1, n_layers + 1, size)]


def extraction_chunks(config: dict, model: str) -> list[tuple[int, int]]:
    """``(first, last)`` 1-based layers of each extraction job (one HDF5 file each) of ``model``."""
    return layer_chunks(config["models"][model]["n_layers"], chunk_size(config, model))


def probe_groups(config: dict, model: str, location: str) -> list[tuple[int, int]]:
    """``(first, last)`` layers of each probe job of ``model`` and ``location`` (none where the grid fits nothing
    there).

    Each job holds about ``probe.fits_per_job`` fits and never spans two extraction chunks (it reads one
    file). The residual stream's first group starts at layer 0, the token embeddings, which extraction
    stores in the first chunk.
    """
    per_layer = fits_per_layer(config, location)
    if not per_layer:
        return []
    per_job = max(config["probe"]["fits_per_job"] // per_layer, 1)
    groups = [(first + a - 1, first + b - 1)
              for first, last in extraction_chunks(config, model)
              for a, b in layer_chunks(last - first + 1, per_job)]
    if location == "residual":
        groups[0] = (0, groups[0][1])
    return groups


def model_bytes_per_param(config: dict) -> int:
    return 2 if config["extraction"]["dtype"] in ("float16", "bfloat16") else 4


def extraction_runtime(config: dict, model: str, last: int, n_texts: int, attempt: int) -> int:
    """Minutes for an extraction through layer ``last``: 2 x parameters x tokens at FLOP_RATE, plus loading."""
    entry = config["models"][model]
    params = entry.get("compute_params_m", entry["params_m"]) * 1e6 * last / entry["n_layers"]
    seconds = 2 * params * n_texts * TOKENS_PER_TEXT / FLOP_RATE[config["extraction"]["dtype"]]
    return int(15 + seconds / 60) * attempt


def forward_runtime(config: dict, model: str, n_texts: int, attempt: int) -> int:
    """Minutes for a job that runs ``n_texts`` prompts once through the whole model (the answers, the attention
    weights): :func:`extraction_runtime` through the last layer."""
    return extraction_runtime(config, model, config["models"][model]["n_layers"], n_texts, attempt)


# Minutes of the jobs whose work is small beside loading their libraries, model or inputs at any corpus size: the
# baselines' and appraisal probes' fits on the CPU, the localisations' bootstraps, the logit lens over stored states,
# the words' input embeddings.
FIXED_MINUTES = {"fit_text_baseline": 30, "fit_appraisal_probes": 30, "fit_ratings_baseline": 15, "logit_lens": 15,
                 "localise": 15, "localise_conditional": 15, "embed_words": 10}


def fixed_runtime(rule: str, attempt: int) -> int:
    """Minutes for a job of ``rule`` (:data:`FIXED_MINUTES`), growing with the attempt."""
    return FIXED_MINUTES[rule] * attempt


def extraction_mem_mb(config: dict, model: str, attempt: int) -> int:
    """MiB for a job holding the model: weights plus a batch of activations (batch_tokens x width x a few
    buffers), growing with the attempt."""
    entry = config["models"][model]
    weights = entry["params_m"] * 1e6 * model_bytes_per_param(config)
    activations = config["extraction"]["batch_tokens"] * entry["hidden_size"] * 4 * 64
    return int((weights * 1.5 + activations) / 2**20 + 1024) * attempt


def gguf_mem_mb(config: dict, model: str, attempt: int) -> int:
    """MiB for dequantising a GGUF model: the weights in float32, the GGUF blocks and transformers' copies."""
    return int(config["models"][model]["params_m"] * 4 * 4 + 2048) * attempt


def layer_mb(config: dict, model: str, n_texts: int) -> float:
    """MiB of one location of one layer in float32: texts x positions x width."""
    return n_texts * len(config["positions"]) * config["models"][model]["hidden_size"] * 4 / 2**20


def probe_mem_mb(config: dict, model: str, n_texts: int, attempt: int) -> int:
    """MiB for a probe job: one layer in float32, the trainer's ordered copy of a position and its float64
    predictions, and the libraries."""
    return int(layer_mb(config, model, n_texts) * 5 + 1024) * attempt


def probe_seconds(config: dict, model: str, location: str, n_layers: int, n_texts: int,
                  seconds_per_fit: float = PROBE_SECONDS) -> float:
    """Seconds of one CPU thread for ``n_layers`` layers of ``location``'s probes: ``seconds_per_fit`` per fit (the
    grid's fits of a layer, :func:`emoprobe.grid.fits_per_layer`) per million values of one position, times
    ``1 + d / n_train``: each step's products with the whitening ``[d, d]`` next to those with the training rows."""
    width = config["models"][model]["hidden_size"]
    n_train = max(n_texts * (1 - 1 / max(config["probe"]["folds"], 2)), 1)
    scale = (1 + width / n_train) / (1 + 576 / 5280)  # 1 on the bundled SmolLM2's 6,600 texts, where it was measured
    return seconds_per_fit * fits_per_layer(config, location) * n_texts * width / 1e6 * scale * n_layers


def probe_runtime(config: dict, model: str, location: str, n_layers: int, n_texts: int, attempt: int) -> int:
    """Minutes for a probe job of ``n_layers`` layers of ``location`` (:func:`probe_seconds`), plus ten for loading."""
    return int(10 + probe_seconds(config, model, location, n_layers, n_texts) / 60) * attempt


def nonlinear_runtime(config: dict, model: str, location: str, n_texts: int, attempt: int) -> int:
    """Minutes for the non-linear probes of ``location`` (every layer), each running its ``max_iter`` iterations at
    :data:`NONLINEAR_SECONDS`: an upper bound, as a converged probe stops earlier; plus ten for loading."""
    settings = config["probe"]["nonlinear"]
    folds = max(config["probe"]["folds"], 1)
    fits = sum(folds * (2 if cells[-1].control else 1) for cells in nonlinear_cells(grid_cells(config)[location]).values())
    layers = sum(last - first + 1 for first, last in probe_groups(config, model, location))
    values = n_texts * config["models"][model]["hidden_size"] * settings["hidden"] / 1e6
    return int(10 + NONLINEAR_SECONDS * settings["max_iter"] * fits * values * layers / 60) * attempt


def conditional_runtime(config: dict, model: str, location: str, n_texts: int, attempt: int) -> int:
    """Minutes for the conditional probes of ``location`` (every layer): per layer, cell (problem and position) and
    baseline, each fold's fits (the penalties fitted, on ``selection_folds`` inner folds, and the chosen one) at
    :data:`PROBE_SECONDS` per million values of the layer, as :func:`probe_seconds` scales them; plus ten minutes for
    loading and five per problem for the baselines' own fits (the text probe's on the CPU)."""
    settings = config["probe"]["conditional"]
    cells = conditional_cells(config).get(location, {})
    fitted = sum(C != 0 for C in settings["C"])
    folds = max(config["probe"]["folds"], 1)
    fits = sum(map(len, cells.values())) * (1 + len(settings["baselines"])) * folds * (
        fitted * settings["selection_folds"] + 1)
    width = config["models"][model]["hidden_size"]
    n_train = max(n_texts * (1 - 1 / max(folds, 2)), 1)
    scale = (1 + width / n_train) / (1 + 576 / 5280)
    layers = sum(last - first + 1 for first, last in probe_groups(config, model, location))
    seconds = PROBE_SECONDS * fits * n_texts * width / 1e6 * scale * layers
    return int(10 + 5 * len(cells) + seconds / 60) * attempt


def appraisal_mem_mb(config: dict, model: str, n_texts: int, attempt: int) -> int:
    """MiB for the appraisal job: as a probe job, plus the ridge's float64 Gram matrices."""
    width = config["models"][model]["hidden_size"]
    return int(layer_mb(config, model, n_texts) * 5 + width * width * 8 * 3 / 2**20 + 1024) * attempt


def intervention_conditions(config: dict, model: str, experiment: str) -> int:
    """Conditions (edited runs of every text) of one experiment: windows x what each window is run with (its
    registry entry's ``conditions``)."""
    settings = config["interventions"]
    windows = len(centre_layers(config["models"][model]["n_layers"], settings[experiment]["every"]))
    return windows * EXPERIMENTS[experiment].conditions(settings, config["dataset"]["labels"])


def intervention_texts(config: dict, n_texts: int) -> int:
    """Texts an experiment runs on: the sample, at most the corpus (model_correct's are fewer)."""
    return min(config["interventions"]["texts"] or n_texts, n_texts)


def intervention_runtime(config: dict, model: str, experiment: str, n_texts: int, attempt: int) -> int:
    """Minutes for an experiment: two runs of the whole prompts (the clean outputs first, then the edited
    runs' context) and, per condition and text, one token through the model, at a quarter of FLOP_RATE
    (one token per row is a thin matrix product)."""
    entry = config["models"][model]
    params = entry.get("compute_params_m", entry["params_m"]) * 1e6
    texts = intervention_texts(config, n_texts)
    tokens = texts * (2 * TOKENS_PER_TEXT + 4 * intervention_conditions(config, model, experiment))
    seconds = 2 * params * tokens / FLOP_RATE[config["extraction"]["dtype"]]
    return int(15 + seconds / 60) * attempt


def intervention_mem_mb(config: dict, model: str, n_texts: int, attempt: int) -> int:
    """MiB for an experiment: the model and a batch as in extraction (with the interventions' batch size), and
    patching's clean outputs of every text at every location and layer in float32."""
    entry = config["models"][model]
    settings = config["interventions"]
    weights = entry["params_m"] * 1e6 * model_bytes_per_param(config)
    activations = settings["batch_tokens"] * entry["hidden_size"] * 4 * 16
    states = (intervention_texts(config, n_texts) * len(settings["locations"]) * entry["n_layers"]
              * entry["hidden_size"] * 4)
    return int((weights * 1.5 + activations + states) / 2**20 + 1024) * attempt
