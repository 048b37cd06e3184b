#!/usr/bin/env bash
# Train the CoT policy and the no-CoT ablation side by side on a lent multi-GPU machine (one GPU each),
# from a windows folder (vla-export-windows) and instruction features (VLA_TEXT_CACHE); no LeRobot there.
#
#   carry: data/windows data/carry_whl (draccus and its pure-python needs, as wheels)
#   bash bench/policy_embedded_device.sh train [extra bench.policy_embedded args]
#
# Run folders land in $PE_OUT (default /tmp/pe); logs, metrics and bench_train.json files are copied to
# $OUT so they come back with the call. The evaluation follows with scripts/device/eval_shards.py.
set -uo pipefail
stage=${1:?usage: policy_embedded_device.sh train [args]}
shift
PE_OUT=${PE_OUT:-/tmp/pe}
OUT=${OUT:-/tmp/out}
mkdir -p "$PE_OUT" "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  data/carry_whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 VLA_TEXT_CACHE=$PWD/data/windows/text_cache_24.safetensors
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi -L
case $stage in
  train)
    gpu=0
    for v in cot no_cot; do
      CUDA_VISIBLE_DEVICES=$gpu timeout "${TRAIN_TIMEOUT:-560}" python3 -m bench.policy_embedded train \
        --variant=$v --windows=data/windows/embedded_goal --out_dir="$PE_OUT" "$@" >"$OUT/train_$v.log" 2>&1 &
      gpu=$((gpu + 1))
    done
    wait
    for v in cot no_cot; do
      cp "$PE_OUT/$v/bench_train.json" "$OUT/bench_train_$v.json" 2>/dev/null
      cp "$PE_OUT/$v/metrics.jsonl" "$OUT/metrics_$v.jsonl" 2>/dev/null
      tr '\r' '\n' <"$OUT/train_$v.log" | grep -v "it/s\]$" | tail -n 15
    done
    cp "$PE_OUT/cot/tokenizer/report.json" "$OUT/tokenizer_report.json" 2>/dev/null
    ls -la "$PE_OUT"/*/checkpoints/ 2>/dev/null
    ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
