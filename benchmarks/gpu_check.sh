#!/usr/bin/env bash
# Every GPU figure tinyllm reports, in at most six minutes: versions, the test suite on the GPU, training-step
# and decoding speed beside PyTorch, and the Shakespeare recipe. Run from anywhere; nothing is installed.
#   bash benchmarks/gpu_check.sh            # results in ${OUT:-gpu-results}/summary.txt and gpu_check.json
#   bash benchmarks/gpu_check.sh --dry-run  # the same on the CPU with tiny sizes
# See benchmarks/gpu_check.py for what each part measures.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
