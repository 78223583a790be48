#!/usr/bin/env bash
# One prepared GPU check (issue 13): bash profiling/gpu_check.sh OUTDIR [--dry-run]
# Writes OUTDIR/report.md and report.json (device, driver, versions, git SHA, date, the
# command) plus the logs of every step; see profiling/gpu_check.py for the steps.
# --dry-run: the same steps on the CPU at tiny sizes (CI), no GPU figures.
set -euo pipefail
if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: bash profiling/gpu_check.sh OUTDIR [--dry-run] [--skip tests,profile,registers,train]" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export WANDB_MODE="${WANDB_MODE:-disabled}"
export KEOPS_CACHE_FOLDER="${KEOPS_CACHE_FOLDER:-${TMPDIR:-/tmp}/dpc-keops-cache}"
export TRITON_DEFAULT_FP_FUSION="${TRITON_DEFAULT_FP_FUSION:-1}"
exec python profiling/gpu_check.py "$@"
