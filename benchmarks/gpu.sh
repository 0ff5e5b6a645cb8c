#!/usr/bin/env bash
# The GPU checks in one go, on a machine with a CUDA device: whether this PyTorch's attention kernels
# read broadcast key/value heads right, the CUDA tests, then the extraction benchmark (float32 and
# bfloat16, both bundled models, both templates, on all 6,600 prompts) and the probe benchmark with
# probes fitted on the GPU. Each step runs even if one before it failed.
#
#   bash benchmarks/gpu.sh [MODELS_DIR] [OUT_DIR]
#
# MODELS_DIR holds smollm2-135m/ and gemma3-270m/ (default: resources/models, as `make run` prepares
# them); OUT_DIR receives the SmolLM2 states the probe benchmark reads. PYTHON names the interpreter,
# STEP_TIMEOUT (seconds) bounds each step. The benchmarks write each method's states (up to 2.3 GB)
# to TMPDIR, /dev/shm when it is writable and TMPDIR is unset.
set -uo pipefail
models=${1:-resources/models}
out=${2:-results/benchmarks/gpu}
python=${PYTHON:-.venv/bin/python}
threads=$(nproc)
# a GPU takes far larger batches than the CPU defaults in config.yaml (64 prompts, 4,096 tokens)
gpu_batching=(--max-batch-size 512 --batch-tokens 32768)
mkdir -p "$out"
[ -z "${TMPDIR:-}" ] && [ -w /dev/shm ] && export TMPDIR=/dev/shm

step() {
  echo "== $*"
  timeout "${STEP_TIMEOUT:-3600}" "$@" || echo "!! exit status $?: $*"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
step "$python" benchmarks/sdpa_broadcast_heads.py
step "$python" -m pytest -q -p no:cacheprovider tests/test_probes.py \
  tests/test_extract.py::test_extraction_on_cuda_matches_the_cpu
step "$python" benchmarks/extraction.py --device cuda --threads "$threads" --model "$models/smollm2-135m" \
  --n-prompts 6600 --dtypes float32 bfloat16 "${gpu_batching[@]}" --save-hidden "$out/smollm2-135m.h5"
step "$python" benchmarks/probes.py --device cuda --hidden "$out/smollm2-135m.h5" \
  --answers results/answers/smollm2-135m.tsv --layers 1,10,20,30 --reference-probes 2 --converged-layers 30
step "$python" benchmarks/extraction.py --device cuda --threads "$threads" --model "$models/gemma3-270m" \
  --n-prompts 6600 --dtypes float32 bfloat16 "${gpu_batching[@]}"
step "$python" benchmarks/extraction.py --device cuda --threads "$threads" --model "$models/smollm2-135m" \
  --n-prompts 6600 --dtypes float32 bfloat16 "${gpu_batching[@]}" --template two_shot
# the CPU defaults of config.yaml, for comparison
step "$python" benchmarks/extraction.py --device cuda --threads "$threads" --model "$models/smollm2-135m" \
  --n-prompts 6600 --dtypes float32
