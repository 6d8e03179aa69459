"""Summary of one scripts/bench_ab.sh run: per configuration, the median over
rounds of each run's median step time, for the old and the new build; new/old;
and each build's tokens/s against PyTorch's in the same rounds (world 1 vs
PyTorch single, world 2 vs PyTorch DDP-2).

  python3 benchmarks/ab_summary.py DIR
"""
import glob
import os
import statistics
import sys


def parse(path):
    rows = []
    with open(path) as f:
        for line in f:
            if "RESULT" not in line:
                continue
            kv = dict(t.split("=", 1) for t in line.split("RESULT", 1)[1].split() if "=" in t)
            rows.append(kv)
    return rows


def main(d):
    r = {os.path.basename(p)[:-len(".result")]: parse(p) for p in glob.glob(os.path.join(d, "*.result"))}
    med = lambda name: statistics.median(float(x["step_s"]) for x in r[name])
    torch = {"single": med("torch_single"), "ddp2": med("torch_ddp2")}
    print(f"{'config':10} {'old step':>10} {'new step':>10} {'new/old':>8} {'old vs torch':>13} {'new vs torch':>13}  rounds")
    for cfg, peer in (("w1_fsdp", "single"), ("w1_ddp", "single"), ("fsdp2", "ddp2"), ("ddp2", "ddp2")):
        o, n = med("old_" + cfg), med("new_" + cfg)
        print(f"{cfg:10} {o:10.4f} {n:10.4f} {n / o:8.4f} {torch[peer] / o:12.3f}x {torch[peer] / n:12.3f}x  "
              f"{len(r['old_' + cfg])}")
        # per round: each pair ran within the same minutes
        pairs = [float(b["step_s"]) / float(a["step_s"]) for a, b in zip(r["old_" + cfg], r["new_" + cfg])]
        print(f"{'':10} per-round new/old: {' '.join(f'{p:.3f}' for p in pairs)}  median {statistics.median(pairs):.4f}")
    print(f"pytorch single {torch['single']:.4f} s, ddp2 {torch['ddp2']:.4f} s (step medians over rounds)")


if __name__ == "__main__":
    main(sys.argv[1])
