#!/usr/bin/env bash
# The device check, for a machine with one or more NVIDIA GPUs and a CUDA
# PyTorch wheel (issue 24). Builds veomni against the wheel's LibTorch and the
# CUDA toolkit's (or the wheel's) NCCL, then runs, each step under its own
# time limit, stopping at the first failure (non-zero exit, the step named):
#   1. build          the communicator, runtime and test targets (no trainer)
#   2. nccl           the NCCL communicator's collectives: a world of one GPU;
#                     with N > 1 GPUs, one rank per GPU
#   3. comm           the communicator suite (Gloo) against the wheel's LibTorch
#   4. parallel       the runtime suite against the wheel's LibTorch (Gloo, CPU
#                     tensors): every recipe's parity with one process, each
#                     rank's trace against the plan, the policy contract
#   5. training on the GPUs (comm_nccl_worker train: the runtime with every
#      tensor on cuda:LOCAL_RANK over the NCCL mesh, one rank per GPU):
#      gpu_parity_dense_lm, gpu_parity_omni_moe
#                     20 fp32 steps on the GPUs against the same steps on the
#                     CPU (Gloo, world 1): loss and grad norm within 1e-4
#      gpu_bf16       50 steps of dense_lm in bf16 (parallel::options::prec)
#                     against fp32 on the GPUs: final loss within 2%
#      gpu_dense_peer, gpu_qwen2_0_5b
#                     throughput in bf16 (8 samples x seq tokens a step, FSDP
#                     over the GPUs): tokens/s per GPU (median of steps 3..),
#                     MFU against the GPU's bf16 dense peak, and peak memory
#                     per GPU (nvidia-smi's used memory, sampled: CUDA context
#                     included)
# Steps 2-5 take at most 8 minutes together (their limits add to 470 s).
#
#   scripts/gpu_check.sh [BUILD_DIR]        # RESULTS=file for the results (default BUILD_DIR/gpu_check.txt)
#   KEEP_GOING=1 scripts/gpu_check.sh       # run every step even after a failure (one lease, all the facts);
#                                           # the exit status is still non-zero if any step failed
#
# Needs: python3 with a CUDA torch, cmake, ninja, the CUDA toolkit (CUDA_HOME
# or /usr/local/cuda), CLI11 and doctest (found by CMake; DEPS=a prefix
# holding them, as scripts/device_deps.sh assembles, where the system has none).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/gpu}
python=${PYTHON:-python3}
results=${RESULTS:-$build/gpu_check.txt}
mkdir -p "$build" "$(dirname "$results")"
: >"$results"
check=gpu_check logs=$build
source scripts/lib/steps.sh

torch_info=$("$python" -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.device_count(), torch.utils.cmake_prefix_path)')
read -r torch_version cuda_version ngpu prefix <<<"$torch_info"
say "torch $torch_version (CUDA $cuda_version), $ngpu GPU(s), LibTorch at $prefix"
((ngpu >= 1)) || { say "FAILED: no GPU visible to torch"; exit 1; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/gpu_check: /' | tee -a "$results"

# NCCL: the CUDA toolkit's, or the one the wheel ships (nvidia-nccl-*)
nccl_args=()
if nccl_dir=$("$python" -c 'import nvidia.nccl as n, os; f = getattr(n, "__file__", None); print(os.path.dirname(f) if f else list(n.__path__)[0])' 2>/dev/null); then
  lib=$(ls "$nccl_dir"/lib/libnccl.so* 2>/dev/null | head -n 1 || true)
  [[ -n $lib && -f $nccl_dir/include/nccl.h ]] && nccl_args=(-DVEOMNI_NCCL_INCLUDE_DIR="$nccl_dir/include" -DVEOMNI_NCCL_LIBRARY="$lib")
fi
# LibTorch: the wheel's, found by CMake through VEOMNI_TORCH_PYTHON (cmake/VeomniTorch.cmake)
step configure 240 cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVEOMNI_TORCH_PYTHON="$python" \
  ${DEPS:+-DCMAKE_PREFIX_PATH="$(realpath "$DEPS")"} \
  -DVEOMNI_BUILD_EXAMPLES=OFF -DVEOMNI_BUILD_BENCHMARKS=OFF -DVEOMNI_BUILD_TRAINER=OFF "-DVEOMNI_SKIP_TEST_AREAS=nn" \
  "${nccl_args[@]}"
grep -q '^VEOMNI_NCCL_LIBRARY:.*nccl' "$build/CMakeCache.txt" || fail nccl_found "CMake found no NCCL"
grep -q 'veomni: LibTorch .* with CUDA' "$build/gpu_check.configure.log" || fail torch_cuda "CMake found no CUDA LibTorch (see $build/gpu_check.configure.log)"

keep=()
[[ ${KEEP_GOING:-0} == 1 ]] && keep=(-- -k 0)
step build 600 cmake --build "$build" -j "$(nproc)" --target comm_nccl_worker comm_worker comm_tests veomni-launch \
  parity_worker contract_worker parallel_tests "${keep[@]}"

export VEOMNI_COMM_TIMEOUT=${VEOMNI_COMM_TIMEOUT:-30}
if [[ -x $build/tests/comm/comm_nccl_worker ]]; then
  step nccl_world1 30 env -u RANK -u WORLD_SIZE -u MASTER_ADDR -u MASTER_PORT "$build/tests/comm/comm_nccl_worker" collectives
  if ((ngpu > 1)); then
    step nccl_world$ngpu 45 "$build/tools/veomni-launch" --nproc "$ngpu" --timeout 40 -- "$build/tests/comm/comm_nccl_worker" collectives
  else
    # a world of one runs no collective at all (groups of one are no-ops); two
    # ranks on the one GPU is what NCCL may refuse: recorded, not a failure
    say "== nccl_two_ranks_one_gpu (informational)"
    timeout 45 "$build/tools/veomni-launch" --nproc 2 --timeout 40 -- "$build/tests/comm/comm_nccl_worker" collectives \
      2>&1 | tail -n 8 | sed 's/^/  | /' | tee -a "$results" || true
  fi
else
  fail nccl "no comm_nccl_worker was built"
fi
step comm 50 ctest --test-dir "$build" -L comm -j 8 --output-on-failure --timeout 45
step parallel 100 ctest --test-dir "$build" -L parallel -LE compile_fail -j 16 --output-on-failure --timeout 95

# ---- 5. training on the GPUs ----------------------------------------------------------------
worker=$build/tests/comm/comm_nccl_worker
launch=$build/tools/veomni-launch
on_gpus() {  # on_gpus ARGS...: the worker's train scenario, one rank per GPU (NCCL)
  if ((ngpu > 1)); then "$launch" --nproc "$ngpu" --timeout 150 -- "$worker" train "$@"
  else env -u RANK -u WORLD_SIZE -u MASTER_ADDR -u MASTER_PORT "$worker" train "$@"; fi
}
on_cpu() { env -u RANK -u WORLD_SIZE -u MASTER_ADDR -u MASTER_PORT "$worker" train "$@" cpu; }
# compare A B TOL [final]: "step loss norm ..." rows; every row (or the last) within TOL, relative
compare() {
  "$python" - "$@" <<'PY'
import sys
a, b, tol = sys.argv[1], sys.argv[2], float(sys.argv[3])
final = len(sys.argv) > 4
ra = [list(map(float, l.split())) for l in open(a) if l.strip()]
rb = [list(map(float, l.split())) for l in open(b) if l.strip()]
if not ra or len(ra) != len(rb): sys.exit(f"{a}: {len(ra)} rows, {b}: {len(rb)} rows")
rows = [len(ra) - 1] if final else range(len(ra))
rel = lambda x, y: abs(x - y) / max(abs(y), 1e-30)
loss = max(rel(ra[i][1], rb[i][1]) for i in rows)
norm = max(rel(ra[i][2], rb[i][2]) for i in rows)
print(f"max rel diff over {len(list(rows))} step(s): loss {loss:.2e}, grad norm {norm:.2e} (tolerance {tol})")
sys.exit(0 if loss <= tol and (final or norm <= tol) else 1)
PY
}
parity() {  # parity MODEL: 20 fp32 steps on the GPUs against the CPU
  on_gpus "$1" 20 "$build/gpu_$1.txt" && on_cpu "$1" 20 "$build/cpu_$1.txt" &&
    compare "$build/gpu_$1.txt" "$build/cpu_$1.txt" 1e-4
}
export build python worker launch ngpu
export -f on_gpus on_cpu compare parity
step gpu_parity_dense_lm 45 parity dense_lm
step gpu_parity_omni_moe 45 parity omni_moe
bf16() { on_gpus dense_lm 50 "$build/gpu_bf16.txt" bf16 && on_gpus dense_lm 50 "$build/gpu_fp32.txt" &&
  compare "$build/gpu_bf16.txt" "$build/gpu_fp32.txt" 0.02 final; }
export -f bf16
step gpu_bf16 45 bf16
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || echo unknown)
case "$gpu_name" in  # bf16 dense peak per GPU, FLOP/s
  *H100* | *H200* | *H800* | *GH200*) peak=989e12 ;;
  *A100* | *A800*) peak=312e12 ;;
  *) peak=0 ;;
esac
throughput() {  # throughput MODEL SEQ: bf16 steps, tokens/s per GPU, MFU, peak memory per GPU
  local model=$1 seq=$2 mem=$build/gpu_mem_$1.txt
  : >"$mem"
  (while sleep 0.2; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >>"$mem" 2>/dev/null || break; done) &
  local sampler=$!
  on_gpus "$model" 8 "$build/gpu_tp_$model.txt" bf16 seq="$seq"
  local rc=$?
  kill "$sampler" 2>/dev/null || true
  ((rc == 0)) || return $rc
  "$python" - "$model" "$seq" "$build/gpu_tp_$model.txt" "$mem" "$ngpu" "$peak" "$gpu_name" <<'PY'
import statistics, sys
model, seq, rows, mem, ngpu, peak, gpu = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6]), sys.argv[7]
# training FLOPs per token, executed (causal attention halved): 3 x forward, of dense_lm's component at these sizes
dims = {"qwen2_0_5b": (151936, 896, 24, 14, 2, 64, 4864), "dense_peer": (1024, 256, 4, 4, 4, 64, 1024)}[model]
vocab, h, layers, heads, kv, hd, ffn = dims
per_layer = 2 * (h * heads * hd + 2 * h * kv * hd + heads * hd * h + 3 * h * ffn) + 4 * (seq / 2) * heads * hd
flops = 3 * (layers * per_layer + 2 * h * vocab)
tps = [float(l.split()[3]) for l in open(rows) if l.strip()][2:]  # rank 0's tokens/s; steps 3.. (warm)
if not tps: sys.exit("no steady-state steps")
tok = statistics.median(tps)
used = [float(x) for x in open(mem).read().split()] or [0.0]
mfu = f"{100 * tok * flops / peak:.1f}% of {peak / 1e12:.0f} TFLOP/s bf16" if peak > 0 else "n/a (no bf16 peak known for this GPU)"
print(f"{model}, seq {seq}, {ngpu} x {gpu}, bf16, FSDP: {tok:,.0f} tokens/s per GPU, {flops / 1e9:.2f} GFLOP per token, "
      f"MFU {mfu}, peak memory per GPU {max(used):,.0f} MiB (nvidia-smi, context included)")
PY
}
export peak gpu_name
export -f throughput
step gpu_dense_peer 40 throughput dense_peer 8192
step gpu_qwen2_0_5b 70 throughput qwen2_0_5b 4096
steps_done
