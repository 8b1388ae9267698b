#!/usr/bin/env bash
# The GPU check: ONE command on a single-GPU machine, at most 8 minutes, nothing from the network.
#
#   make device-wheels                 # here, once: the wheels the GPU machine lacks -> device_wheels/
#   bash scripts/device_check.sh       # there, in the repository root (device_wheels/ carried along)
#   DRY_RUN=1 bash scripts/device_check.sh   # or --dry-run: every step at tiny size on this CPU
#
# What it does:
#   1. installs device_wheels/*.whl (pydantic, pydantic-core, typing-inspection, annotated-types: the
#      GPU machine has its own torch, timm, transformers, accelerate, safetensors, scikit-image, pyyaml,
#      tqdm) with pip --no-index --no-deps into a private folder put on PYTHONPATH; a package the
#      machine already has is not touched. Skipped when device_wheels/ is absent (the dry run needs none).
#   2. runs scripts/device_check.py, whose steps each run in their own process with a time limit:
#      environment (torch, CUDA, device, package versions, that the project imports), the tests
#      marked `gpu` (pytest -m gpu; skipped without CUDA), parity and speed of the neighbourhood-
#      attention backends vs the reference (fp32 and bf16, forward and backward),
#      `bench attention` (reference vs flex vs triton, time and peak memory), CUDA peak memory of
#      an UpsampledTeacher (DINOv2-L size: random, featup 4x) unbounded vs max_memory_mb,
#      `bench upsample` (DINOv2-L size: random at 2x/3x/4x vs the teacher at u x input, bf16) and
#      `bench train` on a stage-3 recipe (a hi-res partition through FeatSharp 3x, bf16: images/s,
#      peak memory).
#   3. writes $OUT/device_report.json and $OUT/device_report.md (OUT defaults to ./device_out).
#      Exit status 0 when every step passed, 1 otherwise (the report still lists each step).
#
# Environment: OUT (report folder), DRY_RUN=1 (same as --dry-run), PYTHON (default python3),
# DEVICE_WHEELS (default device_wheels).
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
OUT="${OUT:-device_out}"
WHEELS="${DEVICE_WHEELS:-device_wheels}"
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    *) ARGS+=("$arg") ;;
  esac
done
export OUT DRY_RUN="${DRY_RUN:-0}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [[ "$DRY_RUN" != 1 ]] && compgen -G "$WHEELS/*.whl" >/dev/null; then
  SITE="${TMPDIR:-/tmp}/radiosharp-device-site"
  missing=()
  for whl in "$WHEELS"/*.whl; do
    name="$(basename "$whl" | cut -d- -f1)"
    "$PYTHON" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "${name//_/-}" 2>/dev/null \
      || missing+=("$whl")
  done
  if ((${#missing[@]})); then
    echo "[device_check] installing ${#missing[@]} wheel(s) from $WHEELS into $SITE"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "${missing[@]}" || { echo "[device_check] wheel install failed"; exit 2; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi

DRY=()
LIMIT=470  # seconds: the steps' own limits sum to 465
[[ "$DRY_RUN" == 1 ]] && DRY=(--dry-run) && LIMIT=1500
exec timeout "$LIMIT" "$PYTHON" scripts/device_check.py "${DRY[@]}" --out "$OUT" "${ARGS[@]}"
