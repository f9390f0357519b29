#!/usr/bin/env bash
# The prepared GPU benchmark (issue 16, item 4), one command:
#   bash bench/device.sh [--json FILE]        ViT-B 1024, bf16 autocast, gradient checkpointing, on CUDA
#   bash bench/device.sh --cpu-tiny           the same code on the CPU with the tiny variant (seconds)
# Uses the environment it is started in (an activated venv or the system python with salt_seg importable).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" "$ROOT/bench/device_bench.py" "$@"
