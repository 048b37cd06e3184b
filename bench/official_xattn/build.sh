#!/usr/bin/env bash
# Build the trimmed official Block-Sparse-Attention extension (forward, head dim 128, bf16/fp16, sm_90)
# into $BSA_DST (default /tmp/bsa); afterwards `PYTHONPATH=/tmp/bsa` imports block_sparse_attn.
# Run from the repo root on the device, with .official/ carried (see README.md here).
# Env: BSA_SRC (default .official/Block-Sparse-Attention), BSA_DST, BSA_ARCH (90), MAX_JOBS (16), PYTHON.
set -euo pipefail
ROOT=$(pwd)
SRC=${BSA_SRC:-$ROOT/.official/Block-Sparse-Attention}
DST=${BSA_DST:-/tmp/bsa}
PY=$(command -v "${PYTHON:-python3}")
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute (we cd below), venv kept
export MAX_JOBS=${MAX_JOBS:-16}
export BSA_ARCH=${BSA_ARCH:-90}
export TORCH_CUDA_ARCH_LIST="${BSA_ARCH:0:1}.${BSA_ARCH:1}"
for d in /usr/local/cuda/bin /usr/local/cuda-13*/bin /opt/cuda/bin; do
  if ! command -v nvcc >/dev/null && [ -x "$d/nvcc" ]; then export PATH="$d:$PATH"; fi
done
command -v nvcc >/dev/null || { echo "build.sh: nvcc not found"; exit 1; }
export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}
echo "build.sh: nvcc $(nvcc --version | tail -1); CUDA_HOME=$CUDA_HOME; MAX_JOBS=$MAX_JOBS; sm_$BSA_ARCH"

stamp=$(cat "$ROOT/bench/official_xattn/trim_bsa.py" "$SRC/../SOURCES.txt" 2>/dev/null | sha256sum | cut -c1-16) || true
if [ -f "$DST/.built_$stamp" ] && ls "$DST"/block_sparse_attn_cuda*.so >/dev/null 2>&1; then
  echo "build.sh: $DST already built ($stamp), skipping"
  exit 0
fi
"$PY" "$ROOT/bench/official_xattn/trim_bsa.py" --src "$SRC" --dst "$DST"
cd "$DST"
t0=$(date +%s)
# nvcc's deprecation warnings for old cutlass (long4/double4...) are many; keep them in the log only
"$PY" setup_trimmed.py build_ext --inplace > "$DST/build.log" 2>&1 || {
  grep -n -i "error" "$DST/build.log" | head -40
  tail -40 "$DST/build.log"
  echo "build.sh: BUILD FAILED after $(( $(date +%s) - t0 )) s (full log $DST/build.log)"
  exit 1
}
echo "build.sh: built in $(( $(date +%s) - t0 )) s: $(ls "$DST"/block_sparse_attn_cuda*.so)"
cd "$ROOT"
PYTHONPATH="$DST${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c \
  "import torch, block_sparse_attn, block_sparse_attn_cuda; print('build.sh: import ok', block_sparse_attn.__file__)"
touch "$DST/.built_$stamp"
