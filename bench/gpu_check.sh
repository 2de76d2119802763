#!/usr/bin/env bash
# Everything GPU-side in one call (≤ ~8 min), run on the GPU machine from the repository root:
#   device run, carry [".whl", ".gpu"]:  bash bench/gpu_check.sh "$OUT"
# after bench/gpu_wheels.sh has prepared .whl/ and .gpu/ here. Writes into the folder given:
# gpu-throughput.json and gpu-search.json (bench/gpu.py), stack-cuda.json (bench/stack.py: stacked
# trials against one at a time), scale-cuda.json (bench/scale.py: one epoch of the ML-25M shape per
# configuration), and the CUDA tests' log. Keep the JSON in bench/results/.
set -uo pipefail
out="${1:?usage: bench/gpu_check.sh OUTPUT_FOLDER}"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1 MLFLOW_TRACKING_URI=sqlite:////tmp/mlflow.db
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia-smi.txt"
timeout 110 python3 bench/stack.py --device cuda --epochs 5 --ratings .gpu/ml-100k.inter --out "$out" 2>&1 | tee "$out/stack.log"
timeout 190 python3 bench/gpu.py --out "$out" --device cuda --ratings .gpu/ml-100k.inter 2>&1 | tee "$out/gpu.log"
timeout 120 python3 bench/scale.py --device cuda --skip-study 2>&1 | tee "$out/scale.log"
cp bench/results/scale-cuda.json "$out/" 2>/dev/null
timeout 60 python3 -m pytest -q -p no:cacheprovider -k "cuda" tests/test_trainer.py tests/test_bayes.py tests/test_stack.py 2>&1 | tail -5 | tee "$out/tests.log"
