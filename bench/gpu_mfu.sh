#!/usr/bin/env bash
# bench/train_mfu.py on one lent H100 or H200, in about 6 minutes of wall: one process per GPU (NCCL),
# bf16 autocast (+ FSDP2 MixedPrecisionPolicy), widths 1024..6144 at 8 layers, head dim 128,
# 8192 tokens per sample (latents 16 x 8 x 64 x 64, patch 1x2x2), batch 1, 256 text tokens of
# dim 4096; DDP and FSDP, activation checkpointing off and full; 3 warm-up + 10 timed steps per
# config; widths stop growing past a config of over 60 s or a 300 s budget; then a torch.profiler
# pass (kernel time by category) on the largest width's fastest config.
#
# Shapes (width: heads, ffn, params, model TFLOP per step): 1024: 8, 2816, 0.15B, 12.7; 2048: 16, 5504,
# 0.59B, 36.9; 3072: 24, 8192, 1.31B, 72.6; 4096: 32, 11008, 2.33B, 120; 5120: 40, 13696, 3.62B, 179;
# 6144: 48, 16384, 5.20B, 250. Weights, gradients and AdamW state in fp32 take 16 bytes a parameter
# (5120: 54 GiB, 6144: 77 GiB), so on one 80 GB H100 5120 should fit only with AC full and 6144 not at
# all (rows read OOM); an H200 (139 GB) should hold both.
# On one GPU "ddp" is the bare module (parallelize wraps nothing for one worker) and "fsdp" is
# fully_shard over a 1-rank mesh: the FSDP rows measure FSDP's own cost, not communication.
#
# The GPU image has torch but not pydantic (training/schedule.py needs it): carry its wheels.
# Once, here on the CPU machine, in the repo root:
#
#   echo /.whl/ >> .git/info/exclude
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 \
#       typing-extensions==4.16.0
#
# Then one device call (about 3 MB travel with the tree):
#
#   run(command="bash bench/gpu_mfu.sh", carry=[".whl"], timeout_s=480)
#
# It writes $OUT/train_mfu.json, $OUT/train_mfu.log and $OUT/nvidia_smi.txt. Extra arguments go to
# train_mfu.py, e.g. `bash bench/gpu_mfu.sh --compile --widths 4096 --strategies ddp --ac off`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c "import pydantic" 2>/dev/null; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "pydantic missing and no .whl/ carried (see the header)" >&2; exit 2; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

OUT=${OUT:-/tmp/gpu_mfu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv 2>&1 | tee "$OUT/nvidia_smi.txt" || true
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/nvidia_smi.txt"

export PYTHONUNBUFFERED=1
set -o pipefail
python3 bench/train_mfu.py --device cuda --widths 1024,2048,3072,4096,5120,6144 --layers 8 --head-dim 128 \
    --latent 16,8,64,64 --batch 1 --text-len 256 --text-dim 4096 --warmup 3 --steps 10 \
    --max-seconds 60 --budget-s 300 --profile --profile-steps 3 --json "$OUT/train_mfu.json" "$@" \
    2>&1 | tee "$OUT/train_mfu.log"
