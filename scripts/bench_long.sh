#!/usr/bin/env bash
# Long context (issue 22) in one invocation, on this machine: the dense_peer
# model (benchmarks/configs/dense_peer.yaml) on one sample per step of 8k to
# 64k tokens, activation checkpointing on:
#   veomni world 1 (2 threads) and Ulysses over 2 ranks (veomni-launch, 1
#   thread each): step time, tokens/s, peak RSS per rank (freed memory kept
#   for the next step, as veomni-train runs); then one more step each with
#   freed memory returned at once (BENCH_LONG_LIVE=1), whose peak is the
#   peak of live memory: what it adds to the resident memory against the
#   cost model's activations and buffers;
#   the attention core alone at each length (GFLOP/s against the GEMM peak
#   measured in the same process);
#   PyTorch's model (benchmarks/peer_torch.py), plain and with
#   torch.utils.checkpoint, at the same lengths until a length fails (out of
#   memory, or past STEP_LIMIT_S a step); then the summary
#   (benchmarks/long_summary.py).
#
#   cmake --build build/bench -j1 --target bench_long veomni-launch
#   scripts/bench_long.sh [BUILD_DIR]    # default build/bench
#   env: LENGTHS="8192 16384 32768 65536"  TORCH_LENGTHS (default LENGTHS)
#        STEPS=1 WARMUP=1 (per length)  STEP_LIMIT_S=600  MEMORY_GIB=22
#
# Every process runs under the same address-space limit (ulimit -v
# MEMORY_GIB): an allocation past it fails inside the process (PyTorch says
# "can't allocate memory"), instead of the kernel's OOM killer choosing a
# victim on this 24 GiB machine. OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are
# unset for every command on both sides.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build/bench}
LENGTHS=${LENGTHS:-"8192 16384 32768 65536"}
TORCH_LENGTHS=${TORCH_LENGTHS:-$LENGTHS}
STEPS=${STEPS:-1}
WARMUP=${WARMUP:-1}
STEP_LIMIT_S=${STEP_LIMIT_S:-600}
MEMORY_GIB=${MEMORY_GIB:-22}
PY=/usr/bin/python3
LONG="$B/benchmarks/bench_long"
LAUNCH="$B/tools/veomni-launch"
for f in "$LONG" "$LAUNCH"; do
  [[ -x $f ]] || { echo "bench_long.sh: $f is missing: cmake --build $B -j1 --target bench_long veomni-launch" >&2; exit 2; }
done
OUT=$(mktemp -d /tmp/bench_long.XXXXXX)
LIMIT_S=$(( (STEPS + WARMUP) * STEP_LIMIT_S + 120 ))
# run NAME CMD...: keeps the RESULT lines; a failure (out of memory, time
# limit) is recorded as a FAILED line with its reason, and returns 1
run() {
  local name=$1; shift
  echo "== $name  (load: $(cut -d' ' -f1-3 /proc/loadavg))"
  echo "   \$ $*"
  local rc=0
  ( ulimit -v $(( MEMORY_GIB * 1024 * 1024 ))
    exec timeout "$LIMIT_S" env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$@" ) >"$OUT/$name.log" 2>&1 || rc=$?
  if (( rc != 0 )); then
    local why="exit $rc"
    (( rc == 124 )) && why="past ${LIMIT_S}s for $((STEPS + WARMUP)) steps"
    grep -qiE "can't allocate memory|out of memory|bad_alloc|std::bad_alloc|MemoryError" "$OUT/$name.log" && why="out of memory"
    echo "FAILED name=$name why=\"$why\"" | tee -a "$OUT/results.txt"
    tail -3 "$OUT/$name.log" | sed 's/^/   | /'
    return 1
  fi
  grep -h "RESULT" "$OUT/$name.log" | sed 's/^\[rank [0-9]*\] //; s/^\[default[0-9]*\]:\?//' |
    sed "s/^RESULT /RESULT name=$name /" | tee -a "$OUT/results.txt"
}
echo "bench_long.sh: $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)," \
     "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- include benchmarks || echo '+changes')"
run peak "$LONG" peak 2
for L in $LENGTHS; do
  run "attention_$L" "$LONG" attention "$L" 4 64 0 2 "$STEPS" || true
  run "veomni_w1_$L" "$LONG" train "$L" "$STEPS" "$WARMUP" 2 || true
  run "veomni_sp2_$L" OMP_NUM_THREADS=1 "$LAUNCH" --nproc 2 -- "$LONG" train "$L" "$STEPS" "$WARMUP" 1 || true
  # memory against the plan: one step with freed memory returned at once
  run "live_w1_$L" BENCH_LONG_LIVE=1 "$LONG" train "$L" 1 0 2 || true
  run "live_sp2_$L" BENCH_LONG_LIVE=1 OMP_NUM_THREADS=1 "$LAUNCH" --nproc 2 -- "$LONG" train "$L" 1 0 1 || true
done
for mode in plain checkpoint; do
  flag=""
  [[ $mode == checkpoint ]] && flag="--checkpoint"
  for L in $TORCH_LENGTHS; do
    run "torch_${mode}_$L" OMP_NUM_THREADS=2 $PY benchmarks/peer_torch.py --threads 2 --seq "$L" --global-batch 1 \
      $flag --steps "$STEPS" --warmup "$WARMUP" || break  # a longer one fails too
  done
done
echo
$PY benchmarks/long_summary.py "$OUT/results.txt"
echo "(logs: $OUT)"
