#!/usr/bin/env bash
# Train the CoT policy and the no-CoT ablation side by side on a lent multi-GPU machine (one GPU each),
# from a windows folder (vla-export-windows) and instruction features (VLA_TEXT_CACHE); no LeRobot there.
#
#   call 1, carry data/windows data/carry_whl (draccus and its pure-python needs, as wheels):
#     bash bench/policy_embedded_device.sh train [extra bench.policy_embedded args]
#   call 2 (within 30 s: /tmp and the uncarried data/windows survive only while the machine is warm),
#   carry .devbundle .whl/act (lerobot's wheels, 40 MiB: they and the windows folder don't fit one call):
#     bash bench/policy_embedded_device.sh eval_and_act     # eval cot + no_cot, train ACT meanwhile
#   call 3, same carry:  bash bench/policy_embedded_device.sh eval   # whatever is still missing, and ACT
#
# Run folders land in $PE_OUT (default /tmp/pe); logs, metrics, bench_train.json and the merged eval
# results come back through $OUT. Checkpoints stay there (73 MB CoT, 206 MB ACT: over $OUT's 16 MiB).
set -uo pipefail
stage=${1:?usage: policy_embedded_device.sh train [args]}
shift
PE_OUT=${PE_OUT:-/tmp/pe}
OUT=${OUT:-/tmp/out}
mkdir -p "$PE_OUT" "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi -L
ckpt() { if [ "$1" = lerobot_act ]; then echo "$PE_OUT/lerobot_act/checkpoint"; else echo "$PE_OUT/$1/checkpoints/last/pretrained_model"; fi; }
run_eval_shards() {  # every variant whose checkpoint exists; completed shards are skipped
  local args=() v
  for v in cot no_cot lerobot_act; do [ -d "$(ckpt $v)" ] && args+=(--policy "$v=$(ckpt $v)"); done
  python3 scripts/device/eval_shards.py "${args[@]}" --episodes 50 --parts 5 --jobs "$(($(nproc) - 1))" \
    --policy_device cuda --text_cache .devbundle/textcache --time_limit_s "${EVAL_LIMIT:-500}" \
    --out_dir /tmp/evals --export_dir "$OUT" -- --video=false 2>&1 | tail -n 30
}
case $stage in
  train)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      data/carry_whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD VLA_TEXT_CACHE=$PWD/data/windows/text_cache_24.safetensors
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
  eval_and_act | eval)
    source scripts/device/setup_env.sh || exit 1
    if [ "$stage" = eval_and_act ]; then
      (python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/act/*.whl && CUDA_VISIBLE_DEVICES=$(($(nvidia-smi -L | wc -l) - 1)) PYTHONPATH=/tmp/site:$PYTHONPATH \
        timeout "${TRAIN_TIMEOUT:-520}" python3 -m vla.scripts.train_act --config_path=configs/train/act_embedded_goal.yaml \
        --windows=data/windows/embedded_goal --output_dir="$PE_OUT/lerobot_act" --device=cuda >"$OUT/train_act.log" 2>&1
      cp "$PE_OUT/lerobot_act/bench_train.json" "$OUT/bench_train_lerobot_act.json") &
    else  # ACT's eval needs lerobot: the wheels again, in case this is a fresh machine
      [ -d /tmp/site/lerobot ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/site .whl/act/*.whl
      export PYTHONPATH=/tmp/site:$PYTHONPATH
    fi
    run_eval_shards
    wait
    ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
