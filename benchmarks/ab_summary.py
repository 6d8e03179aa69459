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

from peer_summary import parse  # RESULT lines as dicts of numbers (and strings)


def main(d):
    r = {os.path.basename(p)[:-len(".result")]: parse(p) for p in glob.glob(os.path.join(d, "*.result"))}
    med = lambda name: statistics.median(x["step_s"] for x in r[name])
    torch = {"single": med("torch_single"), "ddp2": med("torch_ddp2")}
    if "torch_single_t1" in r:
        torch["single_t1"] = med("torch_single_t1")
    print(f"{'config':10} {'old step':>10} {'new step':>10} {'new/old':>8} {'old vs torch':>13} {'new vs torch':>13}  rounds")
    for cfg, peer in (("w1_fsdp", "single"), ("w1_ddp", "single"), ("w1_fsdp_t1", "single_t1"),
                      ("w1_ddp_t1", "single_t1"), ("fsdp2", "ddp2"), ("ddp2", "ddp2")):
        if "old_" + cfg not in r:
            continue
        o, n = med("old_" + cfg), med("new_" + cfg)
        print(f"{cfg:10} {o:10.4f} {n:10.4f} {n / o:8.4f} {torch[peer] / o:12.3f}x {torch[peer] / n:12.3f}x  "
              f"{len(r['old_' + cfg])}")
        # per round: each pair ran within the same minutes
        pairs = [b["step_s"] / a["step_s"] for a, b in zip(r["old_" + cfg], r["new_" + cfg])]
        print(f"{'':10} per-round new/old: {' '.join(f'{p:.3f}' for p in pairs)}  median {statistics.median(pairs):.4f}")
    print("pytorch step medians over rounds: " + ", ".join(f"{k} {v:.4f} s" for k, v in torch.items()))


if __name__ == "__main__":
    main(sys.argv[1])
