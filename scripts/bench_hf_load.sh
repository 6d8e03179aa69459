#!/usr/bin/env bash
# Loading a Hugging Face checkpoint of the Qwen2-0.5B shape (issue 19): random
# weights written by the tests' reference (tests/hf/hf_reference.py --preset
# qwen2-0.5b: vocab 151,936, hidden 896, 24 layers, 14 heads over 2 KV heads,
# tied; BF16, 2 shards), loaded by veomni-train at world 1 and at FSDP-2 and
# trained for STEPS steps on 8 short pre-tokenized samples. Prints each rank's
# load line (time, resident memory before the model and after its shard) and
# its peak resident memory over the run.
#
#   scripts/bench_hf_load.sh [BUILD_DIR]      (default build/release; STEPS=2; CKPT=/tmp/veomni-qwen2-0.5b)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/release}
steps=${STEPS:-2}
ckpt=${CKPT:-/tmp/veomni-qwen2-0.5b}
train=$build/tools/train/veomni-train
launch=$build/tools/veomni-launch
[[ -x $train && -x $launch ]] || { echo "bench_hf_load: build veomni_train and veomni-launch in $build" >&2; exit 2; }
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
if [[ ! -f $ckpt/model.safetensors.index.json ]]; then
  echo "writing $ckpt (Qwen2-0.5B shape, random weights, bf16)"
  /usr/bin/python3 tests/hf/hf_reference.py write "$ckpt" --arch qwen2 --preset qwen2-0.5b --dtype bfloat16 --shards 2 --std 0.03 >/dev/null
fi
du -sh "$ckpt"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
/usr/bin/python3 - "$out/tokens.jsonl" <<'PY'
import json, random, sys
r = random.Random(1)
with open(sys.argv[1], "w") as f:
    for _ in range(8):
        f.write(json.dumps({"input_ids": [r.randrange(256) for _ in range(64)]}) + "\n")  # the byte tokenizer's ids (the checkpoint has no tokenizer)
PY
args=(--model.path="$ckpt" --data.manifest="$out/tokens.jsonl" --data.eval_manifest= --train.max_steps="$steps"
      --train.global_batch_size=8 --train.save_checkpoints=false --train.export_safetensors=false --train.log_steps=1)
echo "== world 1"
"$train" /dev/null "${args[@]}" --train.output_dir="$out/w1" 2>&1 | grep -E "loaded its shard|peak resident|step [0-9]+/|error"
echo "== FSDP-2 (veomni-launch --nproc 2)"
"$launch" --nproc 2 -- "$train" /dev/null "${args[@]}" --train.output_dir="$out/w2" 2>&1 | grep -E "loaded its shard|peak resident|step [0-9]+/|error"
