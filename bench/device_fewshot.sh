#!/usr/bin/env bash
# Issue 12's few-shot grid on a lent GPU machine, one command (the missing cells of the acceptance table):
#   bash bench/device_fewshot.sh OUT_DIR DATA_ROOT [SECONDS]
# DATA_ROOT holds the prepared mni152-tissue and colin27-aal folders (salt-seg data prepare ...). Runs every
# (dataset, protocol, shots) cell for three seeds: the SAM methods on the GPU, several at a time (JOBS, default
# the CPU count minus 2), nnU-Net v2 on the GPU (nnunetv2 must be importable there, else its runs are reported
# FAILED and the rest go on), the floor on the CPU; the mni152-tissue cells first. Starts no new run after
# SECONDS (default 480; runs under way finish). RESULTS (default OUT_DIR/fewshot.jsonl) may be a copy of
# bench/results/fewshot_v2.jsonl: rows already in it are skipped.
# Writes the result rows and, for the paired bootstrap of bench/fewshot_report.py, every run's
# evaluation/per_slice.csv, summary.json and metrics.jsonl under OUT_DIR/runs (not the checkpoints).
# Environment: PYTHON (default python3), DEVICE (cuda), JOBS, METHODS (default every method of the grid
# but the U-Net).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
if (( $# < 2 )) || [[ ! -d "$2" ]]; then
  echo "usage: bash bench/device_fewshot.sh OUT_DIR DATA_ROOT [SECONDS] (DATA_ROOT: a folder of prepared datasets)" >&2
  exit 2
fi
OUT_DIR="$1"; DATA_ROOT="$2"; BUDGET="${3:-480}"
PY="${PYTHON:-python3}"; DEVICE="${DEVICE:-cuda}"
JOBS="${JOBS:-$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))}"
# not the U-Net: it trains on the CPU for up to 15 minutes a run (bench/unet_baseline.py), longer than the budget
METHODS="${METHODS:-salt lora ssam svfit effort full none full_random floor nnunet}"
RUNS="${RUNS_DIR:-/tmp/salt_seg_device_fewshot}"
RESULTS="${RESULTS:-$OUT_DIR/fewshot.jsonl}"
mkdir -p "$OUT_DIR" "$RUNS"
deadline=$(( $(date +%s) + BUDGET ))
# dataset protocol shots guard_mm: the guards of BENCHMARKS.md (20 sparse slices of mni152 leave 4 mm gaps,
# colin27-aal's labelled coronal range 5 mm at 5 shots and 2 mm at 20)
CELLS=(
  "mni152-tissue sparse 5 10" "mni152-tissue sparse 20 4" "mni152-tissue block 5 10" "mni152-tissue block 20 10"
  "colin27-aal sparse 5 5" "colin27-aal sparse 20 2" "colin27-aal block 5 5" "colin27-aal block 20 5"
)
status=0
for cell in "${CELLS[@]}"; do
  read -r dataset protocol shots guard <<<"$cell"
  left=$(( deadline - $(date +%s) ))
  if (( left <= 0 )); then echo "budget spent before $cell"; break; fi
  # shellcheck disable=SC2086 # METHODS is a word list
  "$PY" "$ROOT/bench/fewshot.py" --datasets "$dataset" --shots "$shots" --seeds 0 1 2 --methods $METHODS \
    --protocol "$protocol" --guard-mm "$guard" --base builtin --data-root "$DATA_ROOT" --runs "$RUNS" \
    --results "$RESULTS" --device "$DEVICE" --jobs "$JOBS" --stop-after "$left" 2>&1 | tee -a "$OUT_DIR/fewshot.log"
  rc=${PIPESTATUS[0]}
  (( rc != 0 )) && status=$rc
done
# what the report needs from each run, not its checkpoints
mkdir -p "$OUT_DIR/runs"
(cd "$RUNS" && find . \( -path '*/evaluation/per_slice.csv' -o -name summary.json -o -name metrics.jsonl \
  -o -name split.json \) -not -path '*nnUNet*' -print0 | xargs -0 -r cp --parents -t "$OUT_DIR/runs")
"$PY" "$ROOT/bench/fewshot_report.py" --results "$RESULTS" --base builtin --coverage | tee "$OUT_DIR/coverage.md"
exit "$status"
