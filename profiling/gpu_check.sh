#!/usr/bin/env bash
# The prepared GPU check (issues 13, 22); docs/kernels.md "GPU check" has the device call.
#
#   python profiling/wheelhouse.py                 # before the call, here: .wheelhouse/
#   bash profiling/gpu_check.sh OUTDIR [options]   # on the GPU machine (OUTDIR = $OUT)
#   PYTHON=venv/bin/python bash profiling/gpu_check.sh --dry-run OUTDIR   # CPU (CI)
#
# PYTHON: the interpreter (default python3: the GPU image has no `python`). The wheels in
# DPC_WHEELHOUSE (default .wheelhouse/) are installed with --no-index into a temporary
# folder put on PYTHONPATH: the image lacks hydra-core, omegaconf, antlr4, trimesh,
# embreex, pykeops and keopscore, and nothing can be downloaded there. The whole check
# is time-boxed (--budget, default 330 s on the GPU; this wrapper kills it 30 s later at
# the latest); report.md, report.json and logs.txt are rewritten in OUTDIR after each phase.
set -uo pipefail
PY="${PYTHON:-python3}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DPC_CALLER_CWD="$PWD"  # OUTDIR is relative to where the check was called from
cd "$ROOT" || exit 2
args=("$@")
if [[ ${#args[@]} -eq 0 ]]; then
  echo "usage: [PYTHON=python3] bash profiling/gpu_check.sh [--dry-run] OUTDIR [--budget S] [--skip phases]" >&2
  exit 2
fi
budget=""
dry=0
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --dry-run) dry=1 ;;
    --budget) budget="${args[i + 1]:-}" ;;
    --budget=*) budget="${args[i]#--budget=}" ;;
  esac
done
if [[ -z "$budget" ]]; then budget=$([[ $dry == 1 ]] && echo 420 || echo 330); fi
t0=$(date +%s)
WHEELS="${DPC_WHEELHOUSE:-$ROOT/.wheelhouse}"
SITE="$(mktemp -d "${TMPDIR:-/tmp}/dpc-site.XXXXXX")"
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if [[ ${#wheels[@]} -gt 0 ]]; then
  echo "gpu_check: installing ${#wheels[@]} carried wheels from $WHEELS into $SITE" >&2
  if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --disable-pip-version-check --target "$SITE" "${wheels[@]}"; then
    echo "gpu_check: installing the carried wheels failed" >&2
    exit 3
  fi
else
  echo "gpu_check: no wheels in $WHEELS (python profiling/wheelhouse.py makes them);" \
    "using only what $PY has" >&2
fi
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export DPC_COMMIT_FILE="${DPC_COMMIT_FILE:-$WHEELS/COMMIT}"
export WANDB_MODE="${WANDB_MODE:-disabled}"
export TRITON_DEFAULT_FP_FUSION="${TRITON_DEFAULT_FP_FUSION:-1}"
export PYTHONUNBUFFERED=1
# The Python side ends its phases by this deadline (the wheels' install counted in).
export DPC_CHECK_DEADLINE=$((t0 + budget))
# A hard stop 30 s after it: the report on disk is then the last one written.
timeout -k 10 $((budget + 30 - ($(date +%s) - t0))) "$PY" profiling/gpu_check.py "${args[@]}"
rc=$?
rm -rf "$SITE"
exit $rc
