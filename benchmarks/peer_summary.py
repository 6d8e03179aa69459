"""Summary of one scripts/bench_peer.sh run: reads the RESULT lines it kept
(DIR/*.result, one line per round; compute-only runs two per round) and
prints tokens/s, MFU, the ratios against the targets, FSDP vs DDP and the
plan's bytes. Per configuration: the median over rounds of its median step.

  python3 benchmarks/peer_summary.py DIR

MFU = model FLOPs per token (core/flops.hpp, executed convention: the
matmuls x 3 for forward + backward, causal attention counted for the half it
computes) x tokens/s / the fp32 GEMM peak measured in the same run (at::mm,
2 threads; the higher of the measurements before and after the rounds). The
paper convention (6N with the embedding + full attention) is printed
alongside, and MFU against the quiet-machine peak (a 1-thread GEMM per
second of its own CPU time, x 2 cores), which contention does not deflate.
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
            kv = dict(tok.split("=", 1) for tok in line.split("RESULT", 1)[1].split() if "=" in tok)
            row = {}
            for k, v in kv.items():
                try:
                    row[k] = float(v)
                except ValueError:
                    row[k] = v
            rows.append(row)
    return rows


def main(d):
    r = {os.path.basename(p)[:-len(".result")]: parse(p) for p in glob.glob(os.path.join(d, "*.result"))}
    med = lambda name, key: statistics.median(x[key] for x in r[name])
    flops = r["flops"][0]
    peaks = r["peak"] + r.get("peak_end", [])
    peak = max(x["gflops"] for x in peaks) * 1e9
    quiet = max(x.get("quiet_gflops", 0) for x in peaks) * 1e9 or float("nan")
    fpt, fpt_paper = flops["flops_per_token_executed"], flops["flops_per_token_paper"]
    rounds = len(r["veomni_fsdp2"])
    print(f"\n{rounds} round(s). fp32 GEMM peak (at::mm, 2 threads): "
          + ", ".join(f"{x['gflops']:.1f}" for x in peaks) + f" GFLOP/s -> {peak / 1e9:.1f}; "
          f"quiet-machine peak {quiet / 1e9:.1f} GFLOP/s")
    print(f"model FLOPs per token: {fpt / 1e6:.2f} M executed, {fpt_paper / 1e6:.2f} M paper convention; "
          f"params {flops['params']:.0f}")
    print(f"\n{'run':<18}{'tokens/s':>10}{'step ms':>9}{'MFU':>7}{'MFU(paper)':>11}{'MFU(quiet)':>11}"
          f"  tokens/s per round; loss step0 -> last")
    tp = {}
    for name in ["torch_single", "torch_single_retain", "veomni_w1_ddp", "veomni_w1_fsdp", "torch_single_t1",
                 "veomni_w1_ddp_t1", "torch_ddp2", "torch_ddp2_retain", "veomni_fsdp2", "veomni_ddp2", "veomni_fsdp_keep2",
                 "torch_ddp2_bound", "veomni_fsdp2_bound", "veomni_ddp2_bound"]:
        if name not in r:
            continue
        step = med(name, "step_s")
        t = flops["global_tokens"] / step if "global_tokens" in flops else 2048 / step
        tp[name] = t
        per_round = " ".join(f"{x['global_tokens_per_s']:.0f}" for x in r[name])
        print(f"{name:<18}{t:>10.1f}{1e3 * step:>9.1f}{100 * fpt * t / peak:>6.1f}%{100 * fpt_paper * t / peak:>10.1f}%"
              f"{100 * fpt * t / quiet:>10.1f}%  [{per_round}]; {r[name][0]['loss0']:.4f} -> {r[name][0]['loss_last']:.4f}")
    print("\nratios (target):")
    print(f"  veomni FSDP-2 / PyTorch DDP-2          {tp['veomni_fsdp2'] / tp['torch_ddp2']:.3f}x  (>= 1.2x)")
    print(f"  veomni DDP-2  / PyTorch DDP-2          {tp['veomni_ddp2'] / tp['torch_ddp2']:.3f}x")
    if "veomni_fsdp_keep2" in tp:
        print(f"  veomni FSDP-2 keeping gathered params  {tp['veomni_fsdp_keep2'] / tp['torch_ddp2']:.3f}x")
    print(f"  veomni world 1 (DDP recipe) / single   {tp['veomni_w1_ddp'] / tp['torch_single']:.3f}x  (>= 1.1x)")
    print(f"  veomni world 1 (FSDP recipe) / single  {tp['veomni_w1_fsdp'] / tp['torch_single']:.3f}x  (>= 1.1x)")
    if "veomni_w1_ddp_t1" in tp:
        print(f"  1 thread: veomni world 1 / single      {tp['veomni_w1_ddp_t1'] / tp['torch_single_t1']:.3f}x")
    if "torch_ddp2_bound" in tp and "veomni_fsdp2_bound" in tp:
        print("  each rank on its own core, both sides (veomni-launch --bind-cores):")
        print(f"  veomni FSDP-2 / PyTorch DDP-2          {tp['veomni_fsdp2_bound'] / tp['torch_ddp2_bound']:.3f}x  (>= 1.2x)")
        print(f"  veomni DDP-2  / PyTorch DDP-2          {tp['veomni_ddp2_bound'] / tp['torch_ddp2_bound']:.3f}x")
    if "torch_single_retain" in tp:
        print("  against PyTorch with the same allocator setting (glibc thresholds 1 GiB, as veomni keeps):")
        print(f"  veomni FSDP-2 / PyTorch DDP-2          {tp['veomni_fsdp2'] / tp['torch_ddp2_retain']:.3f}x")
        print(f"  veomni world 1 (DDP recipe) / single   {tp['veomni_w1_ddp'] / tp['torch_single_retain']:.3f}x")
        print(f"  veomni world 1 (FSDP recipe) / single  {tp['veomni_w1_fsdp'] / tp['torch_single_retain']:.3f}x")
    # The machine's speed drifts over minutes (a slow period can cover a whole
    # round): each round's own ratio compares sides run a minute apart at most.
    print("  ratio within each round (same round, both sides), median over rounds:")
    for label, a, b in [("veomni FSDP-2 / PyTorch DDP-2", "veomni_fsdp2", "torch_ddp2"),
                        ("the same, each rank on its own core", "veomni_fsdp2_bound", "torch_ddp2_bound"),
                        ("veomni world 1 (DDP recipe) / single", "veomni_w1_ddp", "torch_single"),
                        ("veomni world 1 (FSDP recipe) / single", "veomni_w1_fsdp", "torch_single"),
                        ("1 thread: veomni world 1 / single", "veomni_w1_ddp_t1", "torch_single_t1")]:
        if a not in r or b not in r:
            continue
        xs = [x["global_tokens_per_s"] / y["global_tokens_per_s"] for x, y in zip(r[a], r[b])]
        print(f"  {label:<39}{statistics.median(xs):.3f}x  [" + " ".join(f"{x:.3f}" for x in xs) + "]")
    best = max(v for k, v in tp.items() if k.startswith("veomni"))
    print(f"  best veomni MFU                        {100 * fpt * best / peak:.1f}% of the measured peak, "
          f"{100 * fpt * best / quiet:.1f}% of the quiet peak  (>= 65%)")
    if r["torch_single"][0]["params"] != flops["params"]:
        print(f"  WARNING: parameter counts differ: pytorch {r['torch_single'][0]['params']:.0f}, veomni {flops['params']:.0f}")

    print("\nFSDP vs DDP at 2 ranks (rank 0; per round, then the median):")
    print(f"  {'':<6}{'round':>6}{'tokens/s':>10}{'fb+norm ms':>12}{'compute ms':>12}{'exposed ms':>12}"
          f"{'comm alone ms':>15}{'hidden':>8}")
    for k in ["fsdp", "ddp"]:
        hid = []
        for i in range(rounds):
            run = r[f"veomni_{k}2"][i]
            comp = r[f"{k}_compute"][2 * i:2 * i + 2]
            compute = sum(c["fb_s"] + c["norm_s"] for c in comp) / len(comp)
            step = run["fb_s"] + run["norm_s"]
            exposed = step - compute
            total = r[f"{k}_comm_only"][i]["comm_s"]
            hid.append(1 - exposed / total)
            print(f"  {k:<6}{i + 1:>6}{run['global_tokens_per_s']:>10.1f}{1e3 * step:>12.1f}{1e3 * compute:>12.1f}"
                  f"{1e3 * exposed:>12.1f}{1e3 * total:>15.1f}{100 * hid[-1]:>7.1f}%")
        print(f"  {k:<6}{'median':>6}{'':>58}{100 * statistics.median(hid):>7.1f}%")
    print("  hidden = 1 - exposed / comm alone; exposed = (forward_backward + grad_norm) of the 2-rank run minus the same"
          "\n  per-rank work run at world 1 by two processes at once (same contention, no collective).")
    print("\nper-rank memory (bytes of local shards, fp32):")
    for k in ["fsdp", "ddp"]:
        x = r[f"veomni_{k}2"][0]
        print(f"  {k:<6} params {x['local_param_bytes']:.0f} (cost model memory<P>().params {x['plan_param_bytes']:.0f}); "
              f"model grads {x['plan_grad_bytes']:.0f}, optimizer {x['plan_optimizer_bytes']:.0f}")

    print("\ncommunicator bytes per step vs the plan's cost model (every step checked; a difference exits 3):")
    for k in ["veomni_fsdp2", "veomni_ddp2", "veomni_fsdp_keep2", "veomni_fsdp2_bound", "veomni_ddp2_bound"]:
        if k not in r:
            continue
        x = r[k][0]
        ok = "equal" if all(y["comm_bytes_step"] == y["plan_bytes_step"] for y in r[k]) else "DIFFERENT"
        print(f"  {k:<18} ran {x['comm_bytes_step']:.0f} B, plan {x['plan_bytes_step']:.0f} B: {ok}")


if __name__ == "__main__":
    main(sys.argv[1])
