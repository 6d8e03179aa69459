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
# Not yet: training on the GPU itself (CUDA tensors, NCCL meshes, bf16; GPU
# vs CPU parity, dense_peer and Qwen2-0.5B throughput, MFU): the runtime
# places every tensor on the CPU so far (issue 24 builds it).
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
say() { echo "gpu_check: $*" | tee -a "$results"; }
step() {  # step NAME LIMIT_S CMD...: runs CMD under its limit, logs it, stops the script on failure
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS rc=0
  say "== $name (limit ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$build/gpu_check.$name.log" 2>&1 || rc=$?
  tail -n 40 "$build/gpu_check.$name.log" | sed 's/^/  | /' >>"$results"
  if ((rc != 0)); then
    say "FAILED: $name (exit $rc$( ((rc == 124 || rc == 137)) && echo ', time limit reached'), $((SECONDS - t0)) s); log: $build/gpu_check.$name.log"
    tail -n 60 "$build/gpu_check.$name.log" >&2
    failed+=("$name")
    [[ ${KEEP_GOING:-0} == 1 ]] || exit 1
    return 0
  fi
  say "ok: $name ($((SECONDS - t0)) s)"
}
failed=()

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
prefixes="$prefix${DEPS:+;$(realpath "$DEPS")}"
step configure 240 cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_PREFIX_PATH="$prefixes" \
  -DVEOMNI_BUILD_EXAMPLES=OFF -DVEOMNI_BUILD_BENCHMARKS=OFF -DVEOMNI_BUILD_TRAINER=OFF "-DVEOMNI_SKIP_TEST_AREAS=nn" \
  "${nccl_args[@]}"
fail() {  # fail NAME WHY: a failure outside a step
  say "FAILED: $1: $2"
  failed+=("$1")
  [[ ${KEEP_GOING:-0} == 1 ]] || exit 1
}
grep -q '^VEOMNI_NCCL_LIBRARY:.*nccl' "$build/CMakeCache.txt" || fail nccl_found "CMake found no NCCL"

keep=()
[[ ${KEEP_GOING:-0} == 1 ]] && keep=(-- -k 0)
step build 420 cmake --build "$build" -j "$(nproc)" --target comm_nccl_worker comm_worker comm_tests veomni-launch \
  parity_worker contract_worker parallel_tests "${keep[@]}"

export VEOMNI_COMM_TIMEOUT=${VEOMNI_COMM_TIMEOUT:-30}
if [[ -x $build/tests/comm/comm_nccl_worker ]]; then
  step nccl_world1 120 env -u RANK -u WORLD_SIZE -u MASTER_ADDR -u MASTER_PORT "$build/tests/comm/comm_nccl_worker" collectives
  if ((ngpu > 1)); then
    step nccl_world$ngpu 180 "$build/tools/veomni-launch" --nproc "$ngpu" --timeout 120 -- "$build/tests/comm/comm_nccl_worker" collectives
  else
    # a world of one runs no collective at all (groups of one are no-ops); two
    # ranks on the one GPU is what NCCL may refuse: recorded, not a failure
    say "== nccl_two_ranks_one_gpu (informational)"
    timeout 90 "$build/tools/veomni-launch" --nproc 2 --timeout 60 -- "$build/tests/comm/comm_nccl_worker" collectives \
      2>&1 | tail -n 8 | sed 's/^/  | /' | tee -a "$results" || true
  fi
else
  fail nccl "no comm_nccl_worker was built"
fi
step comm 240 ctest --test-dir "$build" -L comm -j 4 --output-on-failure --timeout 120
step parallel 300 ctest --test-dir "$build" -L parallel -LE compile_fail -j 8 --output-on-failure --timeout 200
if ((${#failed[@]})); then
  say "failed steps: ${failed[*]}"
  exit 1
fi
say "all steps passed"
