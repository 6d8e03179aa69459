#!/usr/bin/env bash
# veomni-train as a user runs it, at world 1 on the dense_peer shape
# (benchmarks/configs/dense_peer.yaml): the threads it now chooses by default
# against train.threads=1 (LibTorch's default here, what a run got before the
# choice existed), alternated ROUNDS times, the order flipping each round.
# Prints one RESULT line per run: the median tokens/s and step time of steps
# 6..STEPS from metrics.jsonl. OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are
# unset for both sides (see README), OMP_NUM_THREADS too (the user's choice
# would win over the default).
#
#   scripts/bench_threads.sh [BUILD_DIR]      (default build/default; ROUNDS=3 STEPS=30)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/default}
rounds=${ROUNDS:-3}
steps=${STEPS:-30}
train_bin=$build/tools/train/veomni-train
[[ -x $train_bin ]] || { echo "bench_threads: no $train_bin (build the veomni_train target)" >&2; exit 2; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
shape=(--model.name=dense_lm --model.lm.vocab=1024 --model.lm.hidden=256 --model.lm.layers=4 --model.lm.heads=4
       --model.lm.kv_heads=4 --model.lm.head_dim=64 --model.lm.ffn=1024 --data.synthetic_seq_len=256
       --train.global_batch_size=8 --train.max_steps="$steps" --train.log_steps=1000 --train.save_checkpoints=false
       --train.export_safetensors=false)
for ((round = 1; round <= rounds; ++round)); do
  order=(default one)
  ((round % 2 == 0)) && order=(one default)
  for side in "${order[@]}"; do
    extra=()
    [[ $side == one ]] && extra=(--train.threads=1)
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE -u OMP_NUM_THREADS "$train_bin" configs/dense_lm.yaml "${shape[@]}" \
      --train.output_dir="$out/$side" "${extra[@]}" | grep " uses "
    /usr/bin/python3 - "$out/$side/metrics.jsonl" "$round" "$side" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][5:]
print("RESULT round=%s side=%s tok_s=%.0f step_s=%.4f load=%s" % (
    sys.argv[2], sys.argv[3], statistics.median(r["tokens_per_s"] for r in rows),
    statistics.median(r["step_time_s"] for r in rows), open("/proc/loadavg").read().split()[0]))
PY
  done
done
