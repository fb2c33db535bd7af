#!/usr/bin/env bash
# The GPU check: one command, about 6 minutes on a machine with one NVIDIA GPU and the repo's test setup
# (bash tests/run.sh built .venv-host; ComfyUI at $COMFYUI_PATH or .host/ComfyUI; Ray, the 'fleet' extra, for step 7).
# Any ComfyUI: COMFYUI_PATH=/path/to/ComfyUI runs it there, with that ComfyUI's own Python (its venv/ or .venv/, or the
# portable build's python_embeded) unless PYTHON names one; that Python needs the pack's test extra (pyproject.toml).
#
#   bash benchmarks/gpu_check.sh          # on the GPU
#   bash benchmarks/gpu_check.sh --cpu    # the same steps on the CPU with the tiny fixture model: checks the plumbing
#                                         # on a machine without a GPU; its numbers mean nothing
#
# Steps (each with its own time limit; a failed step is reported and the others still run):
#   1. weights       the full-size random Paint-by-Example model (1.31 B parameters, both layouts, no download;
#                    benchmarks/weights.py, kept in benchmarks/.weights/ for the next run)
#   2. census        tests/host/test_host_census_host.py: every host symbol the pack relies on, checked against this
#                    ComfyUI (its version and what moved, if anything did), and the server on the GPU, no --cpu
#   3. inprocess     tests/host/test_inprocess_host.py with ComfyUI on the GPU (PBE_HOST_DEVICE=cuda; the tests of
#                    CPU-only behaviour left out)
#   4. ours          one 512² edit (20 steps) in fp32, fp16 and bf16 weights: time, peak VRAM, max |diff| to fp32
#   5. ours_lowvram  the fp16 edit again with ComfyUI's --lowvram: peak VRAM against step 4's
#   6. diffusers     diffusers' PaintByExamplePipeline in fp16 on the same weights and noise: the time to beat
#   7. fleet         python -m pbe_core.client batch --ray over 8 photos: one worker on the GPU, then two workers
#                    sharing it (--workers 2 --gpus-per-worker 0.5); rows/s and rows per worker
#   8. summary       the tables (benchmarks/gpu_edit.py summary) in OUT/summary.md
#
# Results: $GPU_CHECK_OUT, else $OUT, else benchmarks/.gpu_check/ (JSON, .npy images, each step's log, summary.md).
# Exit status: 0 every step passed, 1 some failed or did not run, 2 no usable GPU (with --cpu: no ComfyUI/Python).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

MODE=cuda
if [ "${1:-}" = "--cpu" ]; then
  MODE=cpu
elif [ $# -gt 0 ]; then
  echo "usage: bash benchmarks/gpu_check.sh [--cpu]" >&2
  exit 2
fi

export COMFYUI_PATH=${COMFYUI_PATH:-$ROOT/.host/ComfyUI}
PY=${PYTHON:-}
for candidate in "$COMFYUI_PATH/venv/bin/python" "$COMFYUI_PATH/.venv/bin/python" "$COMFYUI_PATH/../python_embeded/python" \
  "$ROOT/.venv-host/bin/python"; do
  [ -z "$PY" ] && [ -x "$candidate" ] && PY=$candidate
done
[ -n "$PY" ] || PY=$(command -v python3)
OUTDIR=${GPU_CHECK_OUT:-${OUT:-$ROOT/benchmarks/.gpu_check}}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
export OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
BUDGET=${GPU_CHECK_BUDGET:-470}  # seconds for all steps: a step that would start with less than its need left is skipped

if [ "$MODE" = cuda ]; then
  DEVICE=cuda SIZE=512 STEPS=20 REPS=2 ROWS=8 TINY=() LOW_DTYPE=fp16 DIFF_DTYPE=fp16 EXTRA_SET=()
  SHARED=(--workers 2 --gpus-per-worker 0.5) ONE=()
else
  DEVICE=cpu SIZE=128 STEPS=2 REPS=1 ROWS=4 TINY=(--tiny) LOW_DTYPE=fp32 DIFF_DTYPE=fp32
  EXTRA_SET=(--set "Paint by Example.working_size=0")  # the tiny model edits the 128² photo whole
  SHARED=(--workers 2) ONE=(--workers 1)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
fi
# the in-process tests that check CPU-only behaviour (they skip, saying why, under PBE_HOST_DEVICE=cuda)
CPU_ONLY="test_cpu_attention_is_sdpa_and_exact or test_opt_in_channels_last_vae_is_in_place_with_the_same_results \
or test_partially_loaded_models_give_the_same_results or test_default_optimisations_stay_within_the_thread_count_noise_floor"

STATUS=$OUTDIR/steps.tsv
: >"$STATUS"
say() { printf '\n== %s\n' "$*" >&2; }

# step NAME NEED_S LIMIT_S COMMAND...: run COMMAND under LIMIT_S seconds, its output in OUTDIR/NAME.log and on stderr
step() {
  local name=$1 need=$2 limit=$3
  shift 3
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt "$need" ]; then
    printf '%s\tnot run\tonly %ss of the budget left, it needs about %ss\n' "$name" "$left" "$need" >>"$STATUS"
    say "$name: not run (only ${left}s left of ${BUDGET}s)"
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "$name (at most ${limit}s): $*"
  local t0=$SECONDS rc
  timeout --kill-after=20 "$limit" "$@" > >(tee "$OUTDIR/$name.log") 2>&1
  rc=$?
  local took=$((SECONDS - t0))
  if [ $rc -eq 0 ]; then
    printf '%s\tpassed\t%ss\n' "$name" "$took" >>"$STATUS"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    printf '%s\tFAILED\ttimed out after %ss\n' "$name" "$took" >>"$STATUS"
  else
    printf '%s\tFAILED\texit status %s after %ss (see %s.log)\n' "$name" "$rc" "$took" "$name" >>"$STATUS"
  fi
  return $rc
}

# --- 0. what this machine has --------------------------------------------------------------------------------------
say "mode $MODE; Python $PY; ComfyUI $COMFYUI_PATH; results in $OUTDIR"
if [ ! -f "$COMFYUI_PATH/main.py" ]; then
  echo "error: no ComfyUI at $COMFYUI_PATH (set COMFYUI_PATH, or run bash tests/run.sh once, which unpacks .host/)" >&2
  exit 2
fi
if [ "$MODE" = cuda ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv 2>&1 | tee "$OUTDIR/nvidia-smi.txt"
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    "$PY" -c "import torch; print('torch', torch.__version__, 'CUDA build', torch.version.cuda, 'available:', torch.cuda.is_available())" >&2
    echo "error: torch sees no GPU here; run with --cpu to check the script's plumbing only" >&2
    exit 2
  fi
fi
"$PY" -c "import torch, platform; print('Python', platform.python_version(), 'torch', torch.__version__, 'CUDA', torch.version.cuda, \
'GPU', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)" | tee "$OUTDIR/versions.txt"

# --- 1-5 -------------------------------------------------------------------------------------------------------------
step weights 30 240 "$PY" benchmarks/gpu_edit.py weights "${TINY[@]}"
step census 30 120 env PBE_HOST_DEVICE=$DEVICE "$PY" -m pytest -q -p no:cacheprovider \
  tests/host/test_host_census_host.py
step inprocess 40 180 env PBE_HOST_DEVICE=$DEVICE "$PY" -m pytest -q -p no:cacheprovider \
  tests/host/test_inprocess_host.py -k "not ($CPU_ONLY)"
step ours 40 180 "$PY" benchmarks/gpu_edit.py ours --out "$OUTDIR" --device $DEVICE --size $SIZE --steps $STEPS \
  --reps $REPS "${TINY[@]}"
step ours_lowvram 30 120 "$PY" benchmarks/gpu_edit.py ours --lowvram --dtypes $LOW_DTYPE --out "$OUTDIR" \
  --device $DEVICE --size $SIZE --steps $STEPS --reps $REPS "${TINY[@]}"
step diffusers 30 120 "$PY" benchmarks/gpu_edit.py diffusers --dtype $DIFF_DTYPE --out "$OUTDIR" --device $DEVICE \
  --size $SIZE --steps $STEPS --reps $REPS "${TINY[@]}"

# --- 6. the client's batch on Ray: one worker on the GPU, then two sharing it ------------------------------------------
if "$PY" -c "import ray" 2>/dev/null; then
  rows_json=$("$PY" benchmarks/gpu_edit.py rows --out "$OUTDIR/rows" --size $SIZE --rows $ROWS "${TINY[@]}" | tail -n 1)
  ROWS_CSV=$("$PY" -c "import json, sys; print(json.loads(sys.argv[1])['rows'])" "$rows_json")
  MODEL=$("$PY" -c "import json, sys; print(json.loads(sys.argv[1])['model'])" "$rows_json")
  batch=(-m pbe_core.client batch "$ROWS_CSV" --comfyui "$COMFYUI_PATH" --model "$MODEL" --steps $STEPS
         "${EXTRA_SET[@]}" --no-progress --force)
  rm -rf "$OUTDIR/fleet-1-worker" "$OUTDIR/fleet-2-workers-sharing"
  step fleet_one 50 200 "$PY" "${batch[@]}" -o "$OUTDIR/fleet-1-worker" --ray "${ONE[@]}"
  step fleet_shared 50 200 "$PY" "${batch[@]}" -o "$OUTDIR/fleet-2-workers-sharing" --ray "${SHARED[@]}"
else
  printf 'fleet\tnot run\tRay is not installed in %s (pip install the fleet extra: ray>=2.10)\n' "$PY" >>"$STATUS"
  say "fleet: not run (no Ray in $PY)"
fi

# --- 7. the tables -----------------------------------------------------------------------------------------------------
"$PY" benchmarks/gpu_edit.py summary "$OUTDIR" >"$OUTDIR/summary.md" 2>"$OUTDIR/summary.log" || \
  printf 'summary\tFAILED\tsee summary.log\n' >>"$STATUS"
say "summary ($OUTDIR/summary.md)"
cat "$OUTDIR/summary.md"
say "steps (${SECONDS}s in all)"
column -t -s $'\t' "$STATUS" 2>/dev/null || cat "$STATUS"
if grep -q -v $'\tpassed\t' "$STATUS"; then
  exit 1
fi
exit 0
