#!/usr/bin/env bash
# Puts into .whl/ the pure-Python wheels a GPU machine lacks for experiments/gpu_check.sh (hydra-core, omegaconf and
# antlr4-python3-runtime, whose 4.9.3 release is an sdist only: built into a wheel here). Run where PyPI is reachable.
# Example: bash experiments/gpu_wheels.sh && ls .whl     (then carry .whl to the GPU machine with the working tree)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
mkdir -p .whl
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    -d .whl hydra-core==1.3.8 omegaconf==2.3.0
"$PYTHON" -m pip wheel --quiet --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls -l .whl
