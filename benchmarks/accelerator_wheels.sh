#!/usr/bin/env bash
# Downloads, into .whl/ at the repository root (git-ignored), the wheels benchmarks/accelerator.py
# installs on a machine that lacks them: ml-collections and its two needs, absl-py and PyYAML, for
# CPython 3.12 on manylinux x86-64 (the lent GPU machine's Python). Run it once here, where PyPI is
# reachable; the device call then carries .whl (about 1 MB):
#
#   bash benchmarks/accelerator_wheels.sh
#   run: command "bash benchmarks/accelerator.sh $OUT", carry [".whl"]
#
# Pinned, so that every call installs the same files (ml-collections as in pyproject). absl-py and PyYAML
# usually come with flax, optax and orbax already; the suite installs only what does not import.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl ml-collections==1.1.0 absl-py==2.5.1 PyYAML==6.0.3
ls -l .whl
