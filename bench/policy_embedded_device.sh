#!/usr/bin/env bash
# Train the CoT policy, the no-CoT ablation and lerobot's ACT on a lent GPU machine, then evaluate all
# three with run_eval; any number of GPUs (variant i trains on GPU i mod n). No LeRobot dataset there: the
# demos travel as a windows folder (vla-export-windows) and instructions as features (VLA_TEXT_CACHE).
# /tmp and uncarried folders survive only while the machine is warm (30 s after a call): chain the calls.
#
#   call 1, carry data/windows/<demos> data/windows/text_cache_24.safetensors data/carry_whl:
#     WINDOWS=data/windows/<demos> BATCH=256 bash bench/policy_embedded_device.sh setup
#       (draccus' wheels into /tmp/site; trains the subgoal tokenizer (TOK_STEPS, default 1500) into
#        /tmp/probe/cot/tokenizer and meanwhile probes the step rates of the CoT and no-CoT trainings, to
#        size the real run; the windows folder stays on the warm machine for the next call)
#   call 2, carry .whl/act (lerobot + av for ACT; 42 MB, so not in the same call as the demos):
#     WINDOWS=data/windows/<demos> TOKENIZER=/tmp/probe/cot/tokenizer/tokenizer \
#       bash bench/policy_embedded_device.sh train --steps=N --batch_size=B ...
#       (CoT with call 1's tokenizer, no-CoT and ACT side by side; ACT gets the same steps and batch:
#        ACT_STEPS / ACT_BATCH override)
#   call 3 (and 4), carry .devbundle:  bash bench/policy_embedded_device.sh eval
#       (every variant whose checkpoint in $PE_OUT exists; completed shards are skipped, so call 4 resumes
#        call 3; SUITE=libero_object with .devbundle_libero carried too (a call of its own: 43 MiB);
#        EVAL_EXPORT=<dir> puts the merged results there instead of $OUT)
#   to take a checkpoint home (it is over $OUT's 16 MiB per file; $OUT takes 8 files a call):
#     bash bench/policy_embedded_device.sh fetch cot      # $OUT/cot.tar.part_aa, _ab, ... (15 MiB each)
#     (several variants: fetch cot no_cot; PARTS=no_cot.tar.part_ad,... sends only those files; each
#      variant's sha256 list comes back too)
#   VARIANTS="cot" trains only CoT (default "cot no_cot"); TRAIN_ACT=0 skips ACT and its wheels
#     here: mkdir -p ckpt/cot && cat <files_at>/cot.tar.part_* | tar -x -C ckpt/cot
#
# Run folders land in $PE_OUT (default /tmp/pe); logs, metrics, bench_train.json and the merged eval
# results come back through $OUT. Checkpoints stay there (73 MB CoT, 206 MB ACT: over $OUT's 16 MiB).
set -uo pipefail
stage=${1:?usage: policy_embedded_device.sh wheels|setup|train|eval|fetch [args]}
shift
PE_OUT=${PE_OUT:-/tmp/pe}
OUT=${OUT:-/tmp/out}
WINDOWS=${WINDOWS:-data/windows/embedded_goal}
mkdir -p "$PE_OUT" "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
[ "$stage" = eval ] || export VLA_TEXT_CACHE=$PWD/data/windows/text_cache_24.safetensors
nvidia-smi -L
ngpu=$(nvidia-smi -L | wc -l)
ckpt() { if [ "$1" = lerobot_act ]; then echo "$PE_OUT/lerobot_act/checkpoint"; else echo "$PE_OUT/$1/checkpoints/last/pretrained_model"; fi; }
install_wheels() {  # lerobot + av (ACT) and draccus' pure-python needs, once per warm machine
  [ -d /tmp/site/lerobot ] && [ -d /tmp/site/draccus ] && return 0
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$@" || return 1
}
train_all() {  # $1 = run folder; the rest go to bench.policy_embedded train (steps, batch, ...)
  local dir=$1 i=0 v
  shift
  for v in ${VARIANTS:-cot no_cot}; do
    local tok=()
    [ $v = cot ] && [ -n "${TOKENIZER:-}" ] && tok=(--tokenizer_path="$TOKENIZER")
    CUDA_VISIBLE_DEVICES=$((i % ngpu)) timeout "${TRAIN_TIMEOUT:-560}" python3 -m bench.policy_embedded train \
      --variant=$v --windows="$WINDOWS" --out_dir="$dir" "${tok[@]}" "$@" >"$OUT/train_$v.log" 2>&1 &
    i=$((i + 1))
  done
  if [ -d /tmp/site/lerobot ] && [ "${TRAIN_ACT:-1}" = 1 ]; then
    CUDA_VISIBLE_DEVICES=$((i % ngpu)) timeout "${TRAIN_TIMEOUT:-560}" python3 -m vla.scripts.train_act \
      --config_path=configs/train/act_embedded_goal.yaml --windows="$WINDOWS" --output_dir="$dir/lerobot_act" \
      --device=cuda --steps="${ACT_STEPS:-$STEPS}" --batch_size="${ACT_BATCH:-$BATCH}" >"$OUT/train_act.log" 2>&1 &
  fi
  wait
  for v in cot no_cot lerobot_act; do
    cp "$dir/$v/bench_train.json" "$OUT/bench_train_$v.json" 2>/dev/null
    cp "$dir/$v/metrics.jsonl" "$OUT/metrics_$v.jsonl" 2>/dev/null
    log=$OUT/train_$v.log; [ $v = lerobot_act ] && log=$OUT/train_act.log
    echo "== $v"; tr '\r' '\n' <"$log" | grep -v "it/s\]$" | tail -n 6
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('$v', d['steps'], 'steps in', d['loop_minutes'], 'min:', round(d['steps'] / max(d['loop_minutes'], 1e-6) / 60, 2), 'steps/s')" "$dir/$v/bench_train.json" 2>/dev/null
  done
  cp "$dir/cot/tokenizer/report.json" "$OUT/tokenizer_report.json" 2>/dev/null
}
run_eval_shards() {  # every variant whose checkpoint exists; completed shards are skipped
  local args=() v
  for v in cot no_cot lerobot_act; do [ -d "$(ckpt $v)" ] && args+=(--policy "$v=$(ckpt $v)"); done
  local jobs=$(( ${#args[@]} / 2 ))  # one shard process per variant (EVAL_JOBS overrides)
  jobs=${EVAL_JOBS:-$jobs}
  local envs=${EVAL_ENVS:-$(( ($(nproc) - jobs) / jobs ))}
  local suite=${SUITE:-embedded_goal}
  python3 scripts/device/eval_shards.py "${args[@]}" --suite "$suite" --episodes 50 --parts 1 --jobs "$jobs" \
    --vector_envs "$envs" --policy_device cuda --text_cache .devbundle/textcache \
    --time_limit_s "${EVAL_LIMIT:-500}" --out_dir "/tmp/evals_$suite" --export_dir "${EVAL_EXPORT:-$OUT}" \
    -- --video=false 2>&1 | tail -n 30
}
case $stage in
  wheels)  # draccus' wheels only (a tokenizer carried in, e.g. data/tok, makes setup's training moot)
    install_wheels data/carry_whl/*.whl || exit 1
    ls /tmp/site
    ;;
  setup)
    install_wheels data/carry_whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD STEPS=${PROBE_STEPS:-150} BATCH=${BATCH:-256}
    TRAIN_ACT=0 train_all /tmp/probe --steps="$STEPS" --batch_size="$BATCH" --tokenizer_steps="${TOK_STEPS:-1500}"
    ls /tmp/probe/cot/tokenizer/tokenizer
    ;;
  train)
    if [ "${TRAIN_ACT:-1}" = 0 ]; then  # draccus alone: data/carry_whl (carried) unless a warm machine has it
      [ -d /tmp/site/draccus ] || install_wheels data/carry_whl/*.whl || exit 1
    else  # .whl/act holds draccus and its needs too
      [ -d /tmp/site/lerobot ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/site .whl/act/*.whl || exit 1
    fi
    export PYTHONPATH=/tmp/site:$PWD
    export STEPS=$(printf '%s\n' "$@" | sed -n 's/^--steps=//p') BATCH=$(printf '%s\n' "$@" | sed -n 's/^--batch_size=//p')
    train_all "$PE_OUT" "$@"
    ls -la "$PE_OUT"/*/checkpoints/ "$PE_OUT"/lerobot_act 2>/dev/null | head -30
    ;;
  eval)
    source scripts/device/setup_env.sh || exit 1
    export PYTHONPATH=/tmp/site:$PYTHONPATH
    run_eval_shards
    ;;
  fetch)
    [ $# -ge 1 ] || { echo "usage: policy_embedded_device.sh fetch cot|no_cot|lerobot_act [...] (PARTS=aa,ab,... a subset)" >&2; exit 2; }
    for v in "$@"; do
      [ -d "$(ckpt "$v")" ] || { echo "no checkpoint $(ckpt "$v") on this machine" >&2; exit 1; }
      mkdir -p "$PE_OUT/parts"
      tar -C "$(ckpt "$v")" -cf - . | split -b 15M - "$PE_OUT/parts/$v.tar.part_"
      (cd "$PE_OUT/parts" && sha256sum "$v".tar.part_* >"$OUT/$v.sha256")
    done
    for f in "$PE_OUT"/parts/*.tar.part_*; do  # PARTS=cot.tar.part_aa,... picks the files of this call
      [ -z "${PARTS:-}" ] || [[ ",$PARTS," == *",$(basename "$f"),"* ]] && cp "$f" "$OUT/"
    done
    n=$(ls "$OUT" | wc -l)
    [ "$n" -le 8 ] || echo "warning: $n files in \$OUT; it returns 8 a call (use PARTS=)" >&2
    ls -la "$OUT"
    ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
