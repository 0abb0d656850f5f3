#!/usr/bin/env bash
# One pass over every GPU path, for the few minutes a GPU is lent (issue 17, item 6):
#   1. the attention backends equal to the reference on the GPU (tests/test_attention.py,
#      Pallas Triton kernels compiled for real, not interpreted);
#   2. benchmarks/attention.py: every backend, bf16, GLM-Large's head shape at T = 512;
#   3. benchmarks/train_step.py --measure-peak: GLM-Large and GLM-2B at T = 512, bf16,
#      scanned layers (rows appended to benchmarks/RESULTS.md with the device's name).
# About 6-8 minutes on one H100/H200. Usage:
#   benchmarks/gpu_check.sh              # on the GPU machine
#   benchmarks/gpu_check.sh --dry-run    # on a CPU: the same commands at toy sizes, nothing appended
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

if [ "${1:-}" = "--dry-run" ]; then
  export JAX_PLATFORMS=cpu
  tests=(tests/test_attention.py -q -x -k "blockwise and sep and fp32")
  attention=(--shapes 1x128x2x16 --patterns sep --repeats 1 --backends xla blockwise --no-append)
  large=(--preset glm_tiny --batch 8 --seq 64 --steps 1 --no-append)
  big=(--preset glm_tiny --batch 8 --seq 64 --steps 1 --scan --remat full --no-append)
else
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}
  tests=(tests/test_attention.py -q -x)
  attention=(--shapes 4x512x16x64 --dtype bfloat16 --backends xla dot_product_attention blockwise pallas)
  large=(--preset glm_large --batch 8 --seq 512 --dtype bfloat16 --scan --remat minimal --steps 10 --measure-peak)
  big=(--preset glm_2b --batch 4 --seq 512 --dtype bfloat16 --scan --remat full --steps 5 --measure-peak)
fi

echo "== 1/4 attention backends against the reference ($JAX_PLATFORMS)"
"$PY" -m pytest -p no:cacheprovider "${tests[@]}"
echo "== 2/4 attention speed and memory"
"$PY" benchmarks/attention.py "${attention[@]}"
echo "== 3/4 train step, GLM-Large"
"$PY" benchmarks/train_step.py "${large[@]}"
echo "== 4/4 train step, GLM-2B"
"$PY" benchmarks/train_step.py "${big[@]}"
echo "gpu_check: done"
