#!/usr/bin/env bash
# LoRA against full fine-tuning (issue 21), on dense_peer and on the
# Qwen2-0.5B shape (BENCH_PEER_SHAPE), at world 1 and FSDP-2, with
# benchmarks/bench_peer: the same synthetic batch (8 x 256 tokens), fp32, AdamW.
# For each run: the median step time, the communicator bytes of a step (the
# run fails if any step differs from the cost model), the parameter, gradient
# and optimizer bytes each rank holds (it fails if they differ from memory<P>),
# and each rank's peak resident memory.
#   scripts/bench_lora.sh [BUILD_DIR]      # STEPS, WARMUP (dense_peer), QSTEPS, QWARMUP (0.5B)
# Build first: cmake --build BUILD_DIR -j1 --target bench_peer veomni-launch
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build/bench}
STEPS=${STEPS:-30}
WARMUP=${WARMUP:-5}
QSTEPS=${QSTEPS:-3}
QWARMUP=${QWARMUP:-1}
PEER="$B/benchmarks/bench_peer"
LAUNCH="$B/tools/veomni-launch"
for f in "$PEER" "$LAUNCH"; do
  [[ -x $f ]] || { echo "bench_lora.sh: $f is missing: cmake --build $B -j1 --target bench_peer veomni-launch" >&2; exit 2; }
done
# the GEMM speed of this CPU (see the machine notes in benchmarks/RESULTS.md), for both sides alike
E="env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE"
row() {  # shape recipe world: one run, one table row
  local shape=$1 recipe=$2 world=$3 steps=$STEPS warmup=$WARMUP out
  [[ $shape == qwen2_0.5b ]] && steps=$QSTEPS warmup=$QWARMUP
  if [[ $world == 1 ]]; then
    out=$($E BENCH_PEER_SHAPE=$shape OMP_NUM_THREADS=2 "$PEER" train "$recipe" "$steps" "$warmup" 2)
  else
    out=$($E BENCH_PEER_SHAPE=$shape "$LAUNCH" --nproc 2 -- "$PEER" train "$recipe" "$steps" "$warmup" 1 2>&1)
  fi
  local result rss
  result=$(grep -o 'RESULT side=veomni.*' <<<"$out")
  rss=$(grep -o 'peak_rss_mib=[0-9.]*' <<<"$(grep 'RSS rank' <<<"$out")" | cut -d= -f2 | paste -sd/)
  get() { grep -o " $1=[^ ]*" <<<"$result" | cut -d= -f2; }
  printf '| %s | %s | %s | %s | %.3f | %s | %s | %s | %s | %s | %s | %s |\n' "$shape" "$recipe" "$world" "$(get trainable)" \
    "$(get step_s)" "$(get comm_bytes_step)" "$(get plan_bytes_step)" "$(get held_param_bytes)" "$(get held_grad_bytes)" \
    "$(get held_optimizer_bytes)" "$(get plan_optimizer_bytes)" "$rss"
}
echo "| shape | recipe | world | trainable elements (rank 0) | step s (median) | comm B/step | plan B/step | params B | grads B | optimizer B | plan optimizer B | peak RSS MiB (per rank) |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for shape in dense_peer qwen2_0.5b; do
  for world in 1 2; do
    for recipe in fsdp lora_fsdp; do row "$shape" "$recipe" "$world"; done
  done
done
