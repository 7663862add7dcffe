#!/usr/bin/env bash
# The accelerator suite in one device call (docs/gpu.md):
#
#   bash benchmarks/accelerator.sh OUT_DIR [--budget-s 450] [--only PART,...] [--quick]
#
# from the repository root or anywhere; ml-collections (and absl-py, PyYAML where missing) come from
# .whl/, filled once by `bash benchmarks/accelerator_wheels.sh` and carried with the call. Results:
# OUT_DIR/accelerator.{json,md}, rows.jsonl (every row as measured) and accelerator.log.
set -uo pipefail
if [ $# -lt 1 ]; then
    echo "usage: bash benchmarks/accelerator.sh OUT_DIR [options of python -m benchmarks.accelerator]" >&2
    exit 2
fi
out=$(realpath -m "$1")  # before the cd: a relative OUT_DIR is the caller's
shift
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" -m benchmarks.accelerator "$out" "$@" --wheels .whl
