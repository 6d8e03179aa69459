#!/usr/bin/env bash
# The CPU rehearsal of scripts/gpu_check.sh: veomni against a LibTorch 2.x
# (the GPU machines have a PyTorch 2.x wheel; Debian bookworm, this project's
# machine, has LibTorch 1.13). Debian's unstable suite carries a current
# LibTorch 2.x (CPU) and the g++ it was built with; this script puts them in a
# chroot and runs, each step stopping the script at its first failure:
#   1. chroot      debootstrap of Debian sid with the build's packages (once;
#                  reused while ROOT exists, missing packages added)
#   2. build       gpu_check.sh's targets (communicator, launcher, runtime
#                  workers and suites) against LibTorch 2.x; with the CUDA
#                  toolkit of this machine bound in, the NCCL worker too
#   3. comm        the communicator suite (Gloo, c10d 2.x), torchrun 2.x's jobs too
#   4. parallel    the runtime suite: every recipe's parity with one process,
#                  each rank's trace against the plan, the policy contract
#   5. cuda_syntax every header and the NCCL worker with VEOMNI_TORCH_CUDA
#                  (the CUDA-stream and device paths), -fsyntax-only against
#                  LibTorch 2.x's c10/cuda headers and the CUDA toolkit's
# Needs root, debootstrap and Debian's package mirror; about 3 GB in ROOT.
#
#   scripts/torch2_check.sh [ROOT]     # default ROOT=/var/tmp/veomni-sid; RESULTS=file (default ROOT/torch2_check.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(realpath -m "${1:-/var/tmp/veomni-sid}")
results=${RESULTS:-$root/torch2_check.txt}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
cuda=$(realpath -e /usr/local/cuda 2>/dev/null || true)
packages=g++,cmake,ninja-build,ccache,libtorch-dev,libgloo-dev,libcli11-dev,doctest-dev,libopenblas0-openmp,nlohmann-json3-dev,libpcre2-dev,libutf8proc-dev,pkgconf,python3-torch,libyaml-cpp-dev,libsndfile1-dev,libplplot-dev,libstb-dev,zlib1g-dev

((EUID == 0)) || { echo "torch2_check: needs root (debootstrap, chroot, mounts)" >&2; exit 1; }
mkdir -p "$root" "$(dirname "$results")"
: >"$results"
check=torch2_check logs=$root
source scripts/lib/steps.sh
# Debian's LibTorch is built without libuv, which torchrun's rendezvous store
# asks for by default (the wheels have it): USE_LIBUV=0 for torch.distributed's
# own stores, and a sitecustomize that defaults it off for torchrun's.
in_root() {
  chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root CCACHE_DIR=/ccache \
    USE_LIBUV=0 PYTHONPATH=/opt/veomni_py bash -c "$1"
}
export root
export -f in_root

mounted=()
cleanup() { for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done; }
trap cleanup EXIT
bind() {  # bind SRC DEST [ro]: mounted for this run only
  mkdir -p "$2"
  mount --bind "$1" "$2"
  mounted+=("$2")
  [[ ${3:-} != ro ]] || mount -o remount,bind,ro "$2"
}

if [[ ! -x $root/usr/bin/g++ ]]; then
  step chroot 1500 debootstrap --variant=minbase --include="$packages" sid "$root" "$mirror"
fi
mount -t proc proc "$root/proc" && mounted+=("$root/proc")
cp /etc/hosts "$root/etc/hosts"  # this host's name resolves there too (torchrun's agent looks it up)
mkdir -p "$root/opt/veomni_py"
cat >"$root/opt/veomni_py/sitecustomize.py" <<'PY'
import sys
if sys.argv and sys.argv[0].endswith("torchrun"):
    import torch.distributed as _dist
    _TCPStore = _dist.TCPStore
    def _tcp_store(*args, **kwargs):
        kwargs.setdefault("use_libuv", False)
        return _TCPStore(*args, **kwargs)
    _dist.TCPStore = _tcp_store
PY
bind /dev "$root/dev"
# a ROOT made earlier gets what this list has gained since (quick when nothing is missing)
step packages 900 in_root "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${packages//,/ }"
if [[ -n $cuda && -f $cuda/include/nccl.h ]]; then
  bind "$cuda" "$root/usr/local/cuda" ro
  say "CUDA toolkit $cuda bound in: the NCCL communicator is built too"
fi
say "LibTorch $(in_root "dpkg-query -W -f='\${Version}' libtorch-dev"), $(in_root "g++ --version | head -n 1"), cmake $(in_root 'cmake --version | head -n 1 | cut -d" " -f3')"

# the working tree's tracked files, as they are now
rm -rf "$root/src" && mkdir -p "$root/src"
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$root/src"
say "source: $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' + uncommitted changes')"

step configure 300 in_root "cmake -S /src -B /b -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=g++ \
  -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_EXPORT_COMPILE_COMMANDS=ON -DCUDAToolkit_ROOT=/usr/local/cuda \
  -DVEOMNI_BUILD_EXAMPLES=OFF -DVEOMNI_BUILD_BENCHMARKS=OFF -DVEOMNI_BUILD_TRAINER=OFF -DVEOMNI_SKIP_TEST_AREAS=nn"
grep -h 'veomni: LibTorch' "$root/torch2_check.configure.log" | tee -a "$results"
targets="comm_worker comm_tests veomni-launch parity_worker contract_worker parallel_tests"
grep -q '^VEOMNI_NCCL_LIBRARY:.*nccl' "$root/b/CMakeCache.txt" && targets+=" comm_nccl_worker"
step build 3600 in_root "cmake --build /b -j$(nproc) --target $targets"
step comm 600 in_root "ctest --test-dir /b -L comm -j2 --output-on-failure --timeout 120"
step parallel 1800 in_root "ctest --test-dir /b -L parallel -LE compile_fail -j2 --output-on-failure --timeout 300"

# The CUDA paths: LibTorch's c10/cuda headers want one generated file that a
# CPU package leaves out; its content is a build switch for Windows DLLs.
mkdir -p "$root/gen/c10/cuda/impl"
printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' >"$root/gen/c10/cuda/impl/cuda_cmake_macros.h"
cuda_syntax() {
  [[ -f $root/usr/local/cuda/include/cuda_runtime_api.h ]] || { echo "no CUDA toolkit at /usr/local/cuda: nothing to check"; return 1; }
  python3 - "$root" <<'PY'
import json, shlex, subprocess, sys
root = sys.argv[1]
cc = json.load(open(f"{root}/b/compile_commands.json"))
picked = [c for c in cc if "/standalone/veomni_" in c["file"] or c["file"].endswith("nccl_worker.cpp")]
if not picked: sys.exit("no translation units to check in compile_commands.json")
bad = 0
for c in picked:
    args = shlex.split(c["command"])
    keep, skip = [], 0
    for i, a in enumerate(args):
        if skip: skip -= 1; continue
        if a in ("-o", "-MF", "-MT", "-include"): skip = 1; continue
        if a in ("-c", "-MD", "-Winvalid-pch") or a.endswith("ccache"): continue
        keep.append(a)
    keep += ["-fsyntax-only", "-DVEOMNI_TORCH_CUDA=1", "-DVEOMNI_WITH_NCCL=1", "-isystem", "/gen", "-isystem", "/usr/local/cuda/include"]
    r = subprocess.run(["chroot", root, "bash", "-c", f"cd {shlex.quote(c['directory'])} && {shlex.join(keep)}"],
                       capture_output=True, text=True)
    name = c["file"].rsplit("/", 1)[-1]
    print(("ok   " if r.returncode == 0 else "FAIL ") + name, flush=True)
    if r.returncode: bad += 1; print(r.stderr[-4000:])
print(f"{len(picked)} translation units with VEOMNI_TORCH_CUDA, {bad} failed")
sys.exit(1 if bad else 0)
PY
}
export -f cuda_syntax
step cuda_syntax 1200 cuda_syntax
steps_done
