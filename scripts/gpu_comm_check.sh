#!/usr/bin/env bash
# Builds veomni against the LibTorch inside this machine's PyTorch wheel and
# runs the NCCL backend's tests: a world of one GPU, then (with more than one
# GPU) one rank per GPU under veomni-launch. Needs: a CUDA PyTorch wheel
# importable by python3, the CUDA toolkit with NCCL (CUDA_HOME or
# /usr/local/cuda), cmake, ninja, CLI11 headers, and gloo headers
# (the wheel ships them). Usage: scripts/gpu_comm_check.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/gpu}
python=${PYTHON:-python3}

prefix=$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)')
ngpu=$("$python" -c 'import torch; print(torch.cuda.device_count())')
echo "gpu_comm_check: torch $("$python" -c 'import torch; print(torch.__version__)') at $prefix; $ngpu GPU(s)"
if [[ "$ngpu" -lt 1 ]]; then
  echo "gpu_comm_check: no GPU visible to torch; nothing to run" >&2
  exit 77
fi

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_PREFIX_PATH="$prefix" -DVEOMNI_BUILD_EXAMPLES=OFF -DVEOMNI_BUILD_BENCHMARKS=OFF
grep -q '^VEOMNI_NCCL_LIBRARY:.*nccl' "$build/CMakeCache.txt" || { echo "gpu_comm_check: CMake found no NCCL" >&2; exit 1; }
cmake --build "$build" --target comm_nccl_worker veomni-launch comm_worker comm_tests

worker="$build/tests/comm/comm_nccl_worker"
launch="$build/tools/veomni-launch"
export VEOMNI_COMM_TIMEOUT=${VEOMNI_COMM_TIMEOUT:-30}

echo "== NCCL, world of 1"
env -u RANK -u WORLD_SIZE -u MASTER_ADDR -u MASTER_PORT timeout 120 "$worker" collectives

if [[ "$ngpu" -gt 1 ]]; then
  echo "== NCCL, $ngpu ranks (one per GPU)"
  "$launch" --nproc "$ngpu" --timeout 120 -- "$worker" collectives
  if [[ "$ngpu" -ge 4 ]]; then
    echo "== NCCL, 2 ranks"
    "$launch" --nproc 2 --timeout 120 -- "$worker" collectives
  fi
fi

echo "== Gloo comm suite against the wheel's LibTorch"
ctest --test-dir "$build" -L comm --output-on-failure --timeout 120
echo "gpu_comm_check: ok"
