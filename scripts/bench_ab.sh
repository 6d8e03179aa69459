#!/usr/bin/env bash
# Two builds of veomni side by side on the dense_peer benchmark, alternated
# in rounds so both see the same machine load, with PyTorch's runs in every
# round: is a change free (the ratios to PyTorch of the old build and of the
# new one, measured together)?
#
#   scripts/bench_ab.sh OLD_BUILD NEW_BUILD     # each with benchmarks/bench_peer and tools/veomni-launch
#   ROUNDS=5 STEPS=30 WARMUP=3 CONFIGS="fsdp2 ddp2" scripts/bench_ab.sh build/bench_old build/bench
#
# Per round, in an order that flips every round: world 1 (FSDP and DDP
# recipes, 2 threads) and world 2 (FSDP, DDP; 1 thread per rank), old and
# new; PyTorch single (2 threads) and DDP-2. As bench_peer.sh: OPENBLAS_CORETYPE
# and OPENBLAS_L2_SIZE unset for every command, both sides alike. The summary
# (benchmarks/ab_summary.py): per configuration the median over rounds of
# each run's median step, new/old, and each build's ratio to PyTorch.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: bench_ab.sh OLD_BUILD NEW_BUILD}
NEW=${2:?usage: bench_ab.sh OLD_BUILD NEW_BUILD}
STEPS=${STEPS:-30}
WARMUP=${WARMUP:-3}
ROUNDS=${ROUNDS:-5}
PY=/usr/bin/python3
for b in "$OLD" "$NEW"; do
  for f in "$b/benchmarks/bench_peer" "$b/tools/veomni-launch"; do
    [[ -x $f ]] || { echo "bench_ab.sh: $f is missing: cmake --build $b -j1 --target bench_peer veomni-launch" >&2; exit 2; }
  done
done
OUT=$(mktemp -d /tmp/bench_ab.XXXXXX)
run() {  # run NAME CMD...: keeps the RESULT lines
  local name=$1; shift
  echo "== $name  (load: $(cut -d' ' -f1-3 /proc/loadavg))"
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$@" >"$OUT/$name.log" 2>&1 || { cat "$OUT/$name.log" >&2; exit 1; }
  grep -h "RESULT" "$OUT/$name.log" | sed 's/^\[rank 0\] //; s/^\[default0\]:\?//' | tee -a "$OUT/$name.result"
}
CONFIGS=${CONFIGS:-w1_fsdp w1_ddp fsdp2 ddp2}
veomni() {  # veomni SIDE BUILD
  local side=$1 b=$2 c
  for c in $CONFIGS; do
    case $c in
      w1_fsdp) run "${side}_w1_fsdp" "$b/benchmarks/bench_peer" train fsdp "$STEPS" "$WARMUP" 2 ;;
      w1_ddp) run "${side}_w1_ddp" "$b/benchmarks/bench_peer" train ddp "$STEPS" "$WARMUP" 2 ;;
      # one process on one thread: no OpenMP team to stall when another process takes a core
      w1_ddp_t1) run "${side}_w1_ddp_t1" OMP_NUM_THREADS=1 "$b/benchmarks/bench_peer" train ddp "$STEPS" "$WARMUP" 1 ;;
      w1_fsdp_t1) run "${side}_w1_fsdp_t1" OMP_NUM_THREADS=1 "$b/benchmarks/bench_peer" train fsdp "$STEPS" "$WARMUP" 1 ;;
      fsdp2) run "${side}_fsdp2" OMP_NUM_THREADS=1 "$b/tools/veomni-launch" --nproc 2 -- "$b/benchmarks/bench_peer" train fsdp "$STEPS" "$WARMUP" 1 ;;
      ddp2) run "${side}_ddp2" OMP_NUM_THREADS=1 "$b/tools/veomni-launch" --nproc 2 -- "$b/benchmarks/bench_peer" train ddp "$STEPS" "$WARMUP" 1 ;;
      *) echo "bench_ab.sh: unknown configuration '$c' (CONFIGS: w1_fsdp w1_ddp w1_fsdp_t1 w1_ddp_t1 fsdp2 ddp2)" >&2; exit 2 ;;
    esac
  done
}
echo "bench_ab.sh: $(date -u +%FT%TZ) $(nproc) cores; old $OLD ($(git -C "$OLD/.." rev-parse --short HEAD 2>/dev/null || echo ?)), new $NEW"
for round in $(seq 1 "$ROUNDS"); do
  echo "==== round $round of $ROUNDS"
  run torch_single OMP_NUM_THREADS=2 $PY benchmarks/peer_torch.py --threads 2 --steps "$STEPS" --warmup "$WARMUP"
  [[ $CONFIGS == *_t1* ]] && run torch_single_t1 OMP_NUM_THREADS=1 $PY benchmarks/peer_torch.py --threads 1 --steps "$STEPS" --warmup "$WARMUP"
  if ((round % 2)); then veomni old "$OLD"; veomni new "$NEW"; else veomni new "$NEW"; veomni old "$OLD"; fi
  run torch_ddp2 OMP_NUM_THREADS=1 /usr/bin/torchrun --nproc_per_node 2 --master_port 29571 --redirects 1 --tee 1 \
    benchmarks/peer_torch.py --threads 1 --steps "$STEPS" --warmup "$WARMUP"
done
$PY benchmarks/ab_summary.py "$OUT"
echo "logs: $OUT"
