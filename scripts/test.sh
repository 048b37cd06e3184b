#!/usr/bin/env bash
# Runs the default test suite (installs first if needed). Extra args go to pytest, e.g.
#   bash scripts/test.sh -m slow      bash scripts/test.sh tests/sim -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-run
export MUJOCO_GL=${MUJOCO_GL:-egl} PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-egl} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
