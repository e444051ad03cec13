#!/usr/bin/env bash
# The device machine's one prepared run (issue 16, item 5), from the repository root there:
#   run(command="bash bench/gpu_run.sh", carry=[".whl", ".device-model"], timeout_s=480)
# `make gpu-prepare` fills .whl/ (Keras and the few pure packages that machine lacks) and
# .device-model/ (a materialised model directory) here first. Figures land in $OUT.
set -euo pipefail
out="${OUT:-.}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia-smi.csv" || true
KERAS_BACKEND=jax python3 -m bench.gpu_speed .device-model --output "$out/gpu_speed_jax.json"
KERAS_BACKEND=torch python3 -m bench.gpu_speed .device-model --policies float32 mixed_bfloat16 \
    --batches 32 256 1024 --decode-repeat 5 --output "$out/gpu_speed_torch.json"
