#!/usr/bin/env bash
# ctest's reliability.fuzz: builds the fuzz targets with clang into BUILD and
# runs each for SECONDS (default 20; VEOMNI_FUZZ_SECONDS overrides) over its
# seeds and regressions. Exit 77 (ctest: skipped) when clang++ or the libFuzzer
# runtime is absent (Debian: clang, libclang-rt-14-dev).
#   run_fuzz.sh SOURCE_DIR BUILD_DIR [SECONDS]
set -euo pipefail
src=$(cd "$1" && pwd)
bin=$2
secs=${VEOMNI_FUZZ_SECONDS:-${3:-20}}
mkdir -p "$bin"
bin=$(cd "$bin" && pwd)

cxx=$(command -v clang++ || command -v clang++-14 || true)
if [[ -z "$cxx" ]]; then
  echo "SKIPPED: clang++ not found (Debian: apt-get install clang libclang-rt-14-dev)"
  exit 77
fi
probe=$bin/probe
printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' > "$probe.cpp"
if ! "$cxx" -fsanitize=fuzzer,address,undefined "$probe.cpp" -o "$probe" > "$probe.log" 2>&1; then
  cat "$probe.log"
  echo "SKIPPED: $cxx cannot link -fsanitize=fuzzer,address,undefined (Debian: apt-get install libclang-rt-14-dev)"
  exit 77
fi

generator=()
command -v ninja > /dev/null && generator=(-G Ninja)
cmake -S "$src" -B "$bin/build" "${generator[@]}" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=Debug > "$bin/configure.log" ||
  { cat "$bin/configure.log"; exit 1; }
cmake --build "$bin/build" -j1

status=0
for t in fuzz_config fuzz_manifest; do
  corpus=$bin/corpus/$t   # new inputs go here, not into the source tree
  mkdir -p "$corpus" "$bin/artifacts/$t"
  echo "== $t: the regressions, one by one"
  for f in "$src/regressions/$t"/*; do
    [[ -f "$f" ]] || continue
    "$bin/build/$t" -runs=1 "$f" > "$bin/artifacts/$t/last_regression.log" 2>&1 ||
      { cat "$bin/artifacts/$t/last_regression.log"; echo "FAILED: regression $f"; status=1; }
  done
  echo "== $t: fuzzing for ${secs} s"
  dirs=("$corpus" "$src/seeds/$t")
  [[ -d "$src/regressions/$t" ]] && dirs+=("$src/regressions/$t")  # git keeps no empty folder
  if ! "$bin/build/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=4096 -print_final_stats=1 \
      -dict="$src/$t.dict" -artifact_prefix="$bin/artifacts/$t/" "${dirs[@]}" > "$bin/artifacts/$t/fuzz.log" 2>&1; then
    tail -n 60 "$bin/artifacts/$t/fuzz.log"
    echo "FAILED: $t found a crash; the input is in $bin/artifacts/$t/ (fix it, then add it to $src/regressions/$t/)"
    status=1
  else
    grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)" "$bin/artifacts/$t/fuzz.log" || true
  fi
done
exit $status
