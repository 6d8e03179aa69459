"""Summary of scripts/bench_long.sh: reads its results.txt (RESULT and FAILED
lines) and prints markdown tables for benchmarks/RESULTS.md.

  python3 benchmarks/long_summary.py /tmp/bench_long.XXXXXX/results.txt
"""
import re
import shlex
import sys


def parse(path):
    results, failed = {}, {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("RESULT ") or line.startswith("FAILED "):
                kv = dict(tok.split("=", 1) for tok in shlex.split(line[7:]) if "=" in tok)
                if line.startswith("FAILED "):
                    failed[kv["name"]] = kv.get("why", "?")
                else:
                    results.setdefault(kv["name"], []).append(kv)
    return results, failed


def length_label(n):
    return f"{n // 1024}k"


def main():
    results, failed = parse(sys.argv[1])
    peak = float(results["peak"][0]["gflops"]) if "peak" in results else float("nan")
    lengths = sorted({int(m.group(1)) for k in list(results) + list(failed)
                      for m in [re.search(r"_(\d+)$", k)] if m})

    print(f"GEMM peak (at::mm 2048^3, 2 threads): {peak:.1f} GFLOP/s\n")
    print("| tokens | attention fwd+bwd | GFLOP/s (model) | of GEMM peak | "
          "veomni world 1: step | tokens/s | peak RSS | Ulysses-2: step | tokens/s | peak RSS per rank |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in lengths:
        row = [length_label(n)]
        a = results.get(f"attention_{n}")
        if a:
            a = a[0]
            row += [f"{float(a['fwd_bwd_s']):.2f} s", f"{float(a['model_gflops']):.1f}",
                    f"{float(a['of_peak']) * 100:.1f} %"]
        else:
            row += [failed.get(f"attention_{n}", "-")] + ["-"] * 2
        w = results.get(f"veomni_w1_{n}")
        if w:
            w = w[0]
            row += [f"{float(w['step_s']):.2f} s", f"{float(w['tokens_per_s']):.0f}", f"{w['peak_rss_mb']} MB"]
        else:
            row += [failed.get(f"veomni_w1_{n}", "-")] + ["-"] * 2
        s = results.get(f"veomni_sp2_{n}")
        if s:
            step = max(float(r["step_s"]) for r in s)
            rss = "/".join(r["peak_rss_mb"] for r in sorted(s, key=lambda r: int(r["rank"])))
            row += [f"{step:.2f} s", f"{n / step:.0f}", f"{rss} MB"]
        else:
            row += [failed.get(f"veomni_sp2_{n}", "-")] + ["-"] * 2
        print("| " + " | ".join(row) + " |")

    print("\nMemory against the plan (one step, freed memory returned at once: the peak RSS is the peak of live "
          "memory; 'adds' = peak - resident before the step, which held LibTorch, parameters, gradient buffers "
          "and AdamW's moments; 'plan' = the cost model's activations + FSDP buffers per rank)\n")
    print("| tokens | world 1: adds | plan | adds/plan | plan: kept, recomputed block, gradients in flight, "
          "head+loss | Ulysses-2 per rank: adds | plan | adds/plan |")
    print("|---|---|---|---|---|---|---|---|")
    for n in lengths:
        row = [length_label(n)]
        w = results.get(f"live_w1_{n}")
        if w:
            w = w[0]
            row += [f"{float(w['step_mb']):.0f} MB", f"{float(w['plan_step_mb']):.0f} MB",
                    f"{float(w['step_over_plan']):.3f}",
                    ", ".join(f"{float(w[k]):.0f}" for k in ("plan_kept_mb", "plan_working_mb", "plan_backward_mb",
                                                             "plan_root_mb")) + " MB"]
        else:
            row += [failed.get(f"live_w1_{n}", "-")] + ["-"] * 3
        s = results.get(f"live_sp2_{n}")
        if s:
            s = sorted(s, key=lambda r: int(r["rank"]))
            row += ["/".join(f"{float(r['step_mb']):.0f}" for r in s) + " MB", f"{float(s[0]['plan_step_mb']):.0f} MB",
                    "/".join(f"{float(r['step_over_plan']):.3f}" for r in s)]
        else:
            row += [failed.get(f"live_sp2_{n}", "-")] + ["-"] * 2
        print("| " + " | ".join(row) + " |")

    print("\n| tokens | PyTorch step | tokens/s | peak RSS | PyTorch + checkpoint: step | tokens/s | peak RSS | "
          "PyTorch step / veomni world-1 step (plain, checkpoint) |")
    print("|---|---|---|---|---|---|---|---|")
    longest = {}
    for n in lengths:
        row = [length_label(n)]
        w = results.get(f"veomni_w1_{n}")
        speed = []
        for mode in ("plain", "checkpoint"):
            name = f"torch_{mode}_{n}"
            t = results.get(name)
            if t:
                t = t[0]
                row += [f"{float(t['step_s']):.2f} s", f"{float(t['global_tokens_per_s']):.0f}",
                        f"{t['peak_rss_mb']} MB"]
                longest[mode] = max(longest.get(mode, 0), n)
                speed.append(f"{float(t['step_s']) / float(w[0]['step_s']):.2f}x" if w else "-")
            else:
                row += [failed.get(name, "not run")] + ["-"] * 2
                speed.append("-")
        print("| " + " | ".join(row) + " | " + ", ".join(speed) + " |")
    veomni_longest = max([n for n in lengths if f"veomni_w1_{n}" in results] or [0])
    print()
    print(f"longest length trained: veomni {length_label(veomni_longest)}; PyTorch "
          f"{length_label(longest.get('plain', 0))} plain, {length_label(longest.get('checkpoint', 0))} "
          f"with checkpointing (lengths tried: {', '.join(length_label(n) for n in lengths)})")


if __name__ == "__main__":
    main()
