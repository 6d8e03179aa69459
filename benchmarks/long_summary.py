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


def cells(results, failed, name, width, fill):
    """A run's cells: fill(its RESULT lines), or why it failed and dashes."""
    r = results.get(name)
    return fill(r) if r else [failed.get(name, "-")] + ["-"] * (width - 1)


def by_rank(rs):
    return sorted(rs, key=lambda r: int(r["rank"]))


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
        def sp2(s):
            step = max(float(r["step_s"]) for r in s)
            return [f"{step:.2f} s", f"{n / step:.0f}", "/".join(r["peak_rss_mb"] for r in by_rank(s)) + " MB"]
        row = [length_label(n)]
        row += cells(results, failed, f"attention_{n}", 3, lambda a: [
            f"{float(a[0]['fwd_bwd_s']):.2f} s", f"{float(a[0]['model_gflops']):.1f}",
            f"{float(a[0]['of_peak']) * 100:.1f} %"])
        row += cells(results, failed, f"veomni_w1_{n}", 3, lambda w: [
            f"{float(w[0]['step_s']):.2f} s", f"{float(w[0]['tokens_per_s']):.0f}", f"{w[0]['peak_rss_mb']} MB"])
        row += cells(results, failed, f"veomni_sp2_{n}", 3, sp2)
        print("| " + " | ".join(row) + " |")

    print("\nMemory against the plan (one step, freed memory returned at once: the peak RSS is the peak of live "
          "memory; 'adds' = peak - resident before the step, which held LibTorch, parameters, gradient buffers "
          "and AdamW's moments; 'plan' = the cost model's activations + FSDP buffers per rank)\n")
    print("| tokens | world 1: adds | plan | adds/plan | plan: kept, recomputed block, gradients in flight, "
          "head+loss | Ulysses-2 per rank: adds | plan | adds/plan |")
    print("|---|---|---|---|---|---|---|---|")
    for n in lengths:
        parts = ("plan_kept_mb", "plan_working_mb", "plan_backward_mb", "plan_root_mb")
        row = [length_label(n)]
        row += cells(results, failed, f"live_w1_{n}", 4, lambda w: [
            f"{float(w[0]['step_mb']):.0f} MB", f"{float(w[0]['plan_step_mb']):.0f} MB",
            f"{float(w[0]['step_over_plan']):.3f}", ", ".join(f"{float(w[0][k]):.0f}" for k in parts) + " MB"])
        row += cells(results, failed, f"live_sp2_{n}", 3, lambda s: [
            "/".join(f"{float(r['step_mb']):.0f}" for r in by_rank(s)) + " MB",
            f"{float(s[0]['plan_step_mb']):.0f} MB", "/".join(f"{float(r['step_over_plan']):.3f}" for r in by_rank(s))])
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
