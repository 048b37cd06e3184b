#!/usr/bin/env bash
# ONE device call: build the trimmed official extension, then run bench/vs_official_xattn.py.
# From the repo root, with .official carried (and .whl_official if it holds wheels):
#   bash bench/official_xattn/device.sh
# Writes $OUT/vs_official_xattn.json, $OUT/vs_official_xattn.log, $OUT/bsa_build.log; prints a table last.
# Env: OUT (default /tmp/vs_official_out), LIMIT_S (wall budget of the call, default 570), BENCH_ARGS.
set -uo pipefail
T0=$(date +%s)
OUT=${OUT:-/tmp/vs_official_out}
LIMIT_S=${LIMIT_S:-570}
mkdir -p "$OUT"
LOG="$OUT/vs_official_xattn.log"
{
  echo "== device.sh $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, '|', torch.cuda.get_device_name())"
  echo "nproc $(nproc)"
  cat .official/SOURCES.txt
} >>"$LOG" 2>&1
if compgen -G ".whl_official/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site_official \
    .whl_official/*.whl >>"$LOG" 2>&1 && export PYTHONPATH=/tmp/site_official${PYTHONPATH:+:$PYTHONPATH}
fi

echo "== build" >>"$LOG"
MAX_JOBS=${MAX_JOBS:-16} bash bench/official_xattn/build.sh >>"$LOG" 2>&1
BUILD_RC=$?
cp /tmp/bsa/build.log "$OUT/bsa_build.log" 2>/dev/null
T_BUILD=$(( $(date +%s) - T0 ))
echo "== build rc=$BUILD_RC after ${T_BUILD} s" | tee -a "$LOG"
if [ "$BUILD_RC" -ne 0 ]; then
  tail -60 "$LOG"
  exit 1
fi

export PYTHONPATH=/tmp/bsa${PYTHONPATH:+:$PYTHONPATH}
BUDGET=$(( LIMIT_S - T_BUILD - 75 ))  # stop starting new cases with ~75 s left for the one in flight
echo "== bench (budget_s=$BUDGET)" >>"$LOG"
python3 bench/vs_official_xattn.py --out_dir="$OUT" --budget_s="$BUDGET" ${BENCH_ARGS:-} >"$OUT/bench_stdout.txt" 2>>"$LOG"
BENCH_RC=$?
cat "$OUT/bench_stdout.txt" >>"$LOG"
echo "== bench rc=$BENCH_RC; total $(( $(date +%s) - T0 )) s (build ${T_BUILD} s)" | tee -a "$LOG"
grep -E '"kind": "(cross_attn|skipped)"' "$LOG" | sed 's/^[0-9-]* [0-9:,]* //' | cut -c1-220 | tail -20
cat "$OUT/bench_stdout.txt"
exit $BENCH_RC
