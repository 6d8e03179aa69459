#!/usr/bin/env bash
# The dense_peer comparison (issue 7) in one invocation, on this machine:
# PyTorch (single process; DDP on 2 ranks over Gloo) and veomni (world 1;
# FSDP on 2 ranks; DDP on 2 ranks) train the same model on the same batch
# (benchmarks/configs/dense_peer.yaml); then the summary: tokens/s, MFU and
# the ratios, FSDP vs DDP (hidden communication, per-rank parameter memory)
# and the plan's bytes against the communicators'.
#
#   cmake --build build/bench -j1 --target bench_peer veomni-launch
#   scripts/bench_peer.sh [BUILD_DIR]        # default build/bench; STEPS=50 WARMUP=5 ROUNDS=2
#
# The machine is shared: the configurations run in ROUNDS rounds, each round
# all of them one after another, and the summary takes, per configuration,
# the median over rounds of its median step time (every round is printed).
#
# Every command runs with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset (they
# halve OpenBLAS's GEMM speed here), on both sides alike; one process uses 2
# intra-op threads, 2 ranks on 2 cores use 1 each.
#
# The 2-rank runs go twice: as the launchers start them (torchrun, and
# veomni-launch without binding), and with each rank bound to its own core
# (veomni-launch --bind-cores, PyTorch's ranks too).
#
# veomni keeps freed host memory (parallel::retain_host_memory, as
# veomni-train does); PyTorch runs as shipped (glibc's defaults) and again
# with the same setting through glibc's environment (the *_retain runs), so
# the summary gives the ratios both ways.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build/bench}
STEPS=${STEPS:-50}
WARMUP=${WARMUP:-5}
ROUNDS=${ROUNDS:-2}
PY=/usr/bin/python3
PEER="$B/benchmarks/bench_peer"
LAUNCH="$B/tools/veomni-launch"
for f in "$PEER" "$LAUNCH"; do
  [[ -x $f ]] || { echo "bench_peer.sh: $f is missing: cmake --build $B -j1 --target bench_peer veomni-launch" >&2; exit 2; }
done
OUT=$(mktemp -d /tmp/bench_peer.XXXXXX)
# glibc's equivalent of parallel::retain_host_memory (mmap and trim thresholds 1 GiB)
RETAIN="MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824"
run() {  # run NAME CMD...: keeps the RESULT lines, shows the command and the load
  local name=$1; shift
  echo "== $name  (load: $(cut -d' ' -f1-3 /proc/loadavg))"
  echo "   \$ $*"
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$@" >"$OUT/$name.log" 2>&1 || { cat "$OUT/$name.log" >&2; exit 1; }
  grep -h "RESULT" "$OUT/$name.log" | sed 's/^\[rank 0\] //; s/^\[default0\]:\?//' | tee -a "$OUT/$name.result"
}
echo "bench_peer.sh: $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
run flops "$PEER" flops
run peak "$PEER" peak 2
for round in $(seq 1 "$ROUNDS"); do
  echo "==== round $round of $ROUNDS"
  run torch_single OMP_NUM_THREADS=2 $PY benchmarks/peer_torch.py --threads 2 --steps "$STEPS" --warmup "$WARMUP"
  run torch_single_retain $RETAIN OMP_NUM_THREADS=2 $PY benchmarks/peer_torch.py --threads 2 --steps "$STEPS" --warmup "$WARMUP"
  run veomni_w1_ddp "$PEER" train ddp "$STEPS" "$WARMUP" 2
  run veomni_w1_fsdp "$PEER" train fsdp "$STEPS" "$WARMUP" 2
  # supplementary: one process on one thread (no OpenMP team to stall when another process takes a core)
  run torch_single_t1 OMP_NUM_THREADS=1 $PY benchmarks/peer_torch.py --threads 1 --steps "$STEPS" --warmup "$WARMUP"
  run veomni_w1_ddp_t1 OMP_NUM_THREADS=1 "$PEER" train ddp "$STEPS" "$WARMUP" 1
  run torch_ddp2 OMP_NUM_THREADS=1 /usr/bin/torchrun --nproc_per_node 2 --master_port 29561 --redirects 1 --tee 1 \
    benchmarks/peer_torch.py --threads 1 --steps "$STEPS" --warmup "$WARMUP"
  run torch_ddp2_retain $RETAIN OMP_NUM_THREADS=1 /usr/bin/torchrun --nproc_per_node 2 --master_port 29562 --redirects 1 \
    --tee 1 benchmarks/peer_torch.py --threads 1 --steps "$STEPS" --warmup "$WARMUP"
  run veomni_fsdp2 OMP_NUM_THREADS=1 "$LAUNCH" --nproc 2 -- "$PEER" train fsdp "$STEPS" "$WARMUP" 1
  run veomni_ddp2 OMP_NUM_THREADS=1 "$LAUNCH" --nproc 2 -- "$PEER" train ddp "$STEPS" "$WARMUP" 1
  # supplementary: FSDP keeping gathered parameters from forward to backward (no backward all-gather)
  run veomni_fsdp_keep2 OMP_NUM_THREADS=1 "$LAUNCH" --nproc 2 -- "$PEER" train fsdp_keep "$STEPS" "$WARMUP" 1
  # Each rank on its own core, its communication threads included, both sides
  # alike: PyTorch's ranks under the same launcher (torchrun's environment).
  run torch_ddp2_bound OMP_NUM_THREADS=1 "$LAUNCH" --nproc 2 --bind-cores -- $PY benchmarks/peer_torch.py --threads 1 \
    --steps "$STEPS" --warmup "$WARMUP"
  run veomni_fsdp2_bound OMP_NUM_THREADS=1 "$LAUNCH" --nproc 2 --bind-cores -- "$PEER" train fsdp "$STEPS" "$WARMUP" 1
  run veomni_ddp2_bound OMP_NUM_THREADS=1 "$LAUNCH" --nproc 2 --bind-cores -- "$PEER" train ddp "$STEPS" "$WARMUP" 1
  # Compute only, under the same contention: two world-1 processes at once,
  # each computing one data rank's share of the 2-rank batch (no collective).
  for r in fsdp ddp; do
    echo "== ${r}_compute_only  (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    echo "   \$ OMP_NUM_THREADS=1 $PEER train $r $STEPS $WARMUP 1 2 0 & OMP_NUM_THREADS=1 $PEER train $r $STEPS $WARMUP 1 2 1"
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=1 "$PEER" train $r "$STEPS" "$WARMUP" 1 2 0 >"$OUT/${r}_c0.log" 2>&1 &
    p0=$!
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=1 "$PEER" train $r "$STEPS" "$WARMUP" 1 2 1 >"$OUT/${r}_c1.log" 2>&1
    wait $p0
    grep -h RESULT "$OUT/${r}_c0.log" | sed 's/RESULT /RESULT part=0 /' | tee -a "$OUT/${r}_compute.result"
    grep -h RESULT "$OUT/${r}_c1.log" | sed 's/RESULT /RESULT part=1 /' | tee -a "$OUT/${r}_compute.result"
    # The same step's collectives, issued alone (no computation).
    run ${r}_comm_only OMP_NUM_THREADS=1 "$LAUNCH" --nproc 2 -- "$PEER" comm $r "$STEPS" "$WARMUP"
  done
done
echo "== done  (load: $(cut -d' ' -f1-3 /proc/loadavg))"
run peak_end "$PEER" peak 2
$PY benchmarks/peer_summary.py "$OUT"
echo "logs: $OUT"
