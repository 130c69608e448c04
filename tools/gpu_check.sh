#!/usr/bin/env bash
# The prepared GPU check, as one command from a bare machine (no install: tradelib is imported from this checkout).
#   bash tools/gpu_check.sh                               # on the GPU machine: at most 560 s (the figures first, then the CUDA tests)
#   bash tools/gpu_check.sh OUTDIR --device cpu --quick   # the CPU dry run (tests/test_gpu_check.py runs it)
# Writes OUTDIR (default docs/gpu-runs)/<date>-<device>-<commit>.{json,log}; `python tools/gpu_check.py --help` for the options.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python="${PYTHON:-$(command -v python3 || command -v python)}"
exec "$python" tools/gpu_check.py "$@"
