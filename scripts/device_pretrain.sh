#!/usr/bin/env bash
# Pretraining stage on a lent GPU (issue 13): continue the built-in base on the synthetic anatomy stream for a
# wall-clock budget, with the stream made ahead by CPU workers, then score the held-out sets and export.
#   bash scripts/device_pretrain.sh OUT_DIR [SECONDS] [extra salt-seg pretrain flags...]
# Uses the environment it is started in (salt_seg importable, CUDA visible). Writes OUT_DIR/stage.safetensors,
# OUT_DIR/pretrain.log, OUT_DIR/metrics.jsonl, OUT_DIR/objectness.json and OUT_DIR/summary.json.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT_DIR="$1"; SECONDS_BUDGET="${2:-300}"; shift $(( $# >= 2 ? 2 : 1 ))
WORKERS="${WORKERS:-$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))}"
RUN="${RUN_DIR:-/tmp/salt_seg_device_pretrain}"
mkdir -p "$OUT_DIR"
rm -rf "$RUN"
status=0
"${PYTHON:-python3}" -m salt_seg pretrain --task anatomy --hires --init builtin --seed "${SEED:-3}" \
  --image-size 256 --steps "${STEPS:-40000}" --batch-size "${BATCH:-32}" --lr "${LR:-4e-4}" --heldout 100 \
  --out "$RUN" --export "$OUT_DIR/stage.safetensors" --device "${DEVICE:-cuda}" --threads "${THREADS:-4}" --no-progress \
  --set train.val_every="${VAL_EVERY:-500}" --set train.box_jitter=0.05 --set train.warmup_steps=200 \
  --set train.num_workers="$WORKERS" --set train.time_limit="$SECONDS_BUDGET" "$@" \
  2>&1 | tee "$OUT_DIR/pretrain.log" || status=$?
for f in metrics.jsonl objectness.json summary.json; do
  [ -f "$RUN/$f" ] && cp "$RUN/$f" "$OUT_DIR/$f"
done
exit "$status"
