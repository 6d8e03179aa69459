#!/usr/bin/env python3
"""Lines up the ranks' collective traces (include/veomni/comm/trace.hpp).

    VEOMNI_COMM_TRACE=/tmp/t veomni-launch --nproc 2 -- bench_peer train fsdp 30 3 1
    benchmarks/comm_timeline.py /tmp/t --per-step 15 --skip 5

reads /tmp/t.rank*.csv (one host: the ranks share one clock), checks that
every rank issued the same collectives in the same order, and prints, for
each collective of a step (median over the steps after --skip):

    at      when rank 0 issued it, from the issue of the step's first collective
    skew    how much later each other rank issued it than rank 0
    took    issue to completion, per rank (the engine's completion time)
    wait    time in wait(), per rank (mean over steps; includes the engine's
            local finishing step, e.g. the sum of a Gloo reduce_scatter)
    ready   share of steps in which it had completed before the rank waited

and the total wait per step of each rank. Times in ms. Without --per-step the
whole run is one step.
"""
import argparse
import csv
import glob
import re
import statistics
import sys


def load(prefix):
    files = {}
    for path in glob.glob(glob.escape(prefix) + ".rank*.csv"):
        m = re.search(r"\.rank(\d+)\.csv$", path)
        if m:
            files[int(m.group(1))] = path
    if not files:
        sys.exit(f"comm_timeline: no {prefix}.rank<R>.csv files")
    ranks = sorted(files)
    if ranks != list(range(len(ranks))):
        sys.exit(f"comm_timeline: ranks {ranks} are not 0..{len(ranks) - 1}")
    rows = []
    for r in ranks:
        with open(files[r], newline="") as f:
            rows.append([{k.removesuffix("_ns"): (v if k in ("op", "axis") else int(v)) for k, v in row.items()}
                         for row in csv.DictReader(f)])
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prefix")
    ap.add_argument("--per-step", type=int, default=0, help="collectives per step (default: the whole run)")
    ap.add_argument("--skip", type=int, default=0, help="steps to leave out at the start (warm-up)")
    a = ap.parse_args()
    rows = load(a.prefix)
    n = len(rows[0])
    for r, rr in enumerate(rows):
        if len(rr) != n:
            sys.exit(f"comm_timeline: rank {r} issued {len(rr)} collectives, rank 0 {n}")
        for i, (x, y) in enumerate(zip(rows[0], rr)):
            if (x["op"], x["axis"], x["bytes"]) != (y["op"], y["axis"], y["bytes"]):
                sys.exit(f"comm_timeline: collective {i} differs: rank 0 {x['op']} over {x['axis']} ({x['bytes']} B), "
                         f"rank {r} {y['op']} over {y['axis']} ({y['bytes']} B)")
    per = a.per_step or n
    if n % per:
        sys.exit(f"comm_timeline: {n} collectives are not a whole number of steps of {per}")
    steps = range(a.skip, n // per)
    if not steps:
        sys.exit(f"comm_timeline: {n // per} steps, all skipped")
    ms = 1e-6
    med = statistics.median
    world = len(rows)

    def cols(label, values, first=0):
        return "  ".join(f"{label}{r} {v:6.2f}" for r, v in enumerate(values, first))

    print(f"{world} ranks, {len(steps)} steps of {per} collectives (after {a.skip} skipped); ms, medians over steps")
    total_wait = [0.0] * world
    for i in range(per):
        ev = [[rows[r][s * per + i] for s in steps] for r in range(world)]
        first = [rows[0][s * per] for s in steps]
        at = med((e["issued"] - f["issued"]) * ms for e, f in zip(ev[0], first))
        skew = [med((x["issued"] - y["issued"]) * ms for x, y in zip(ev[r], ev[0])) for r in range(world)]
        took = [med((e["done"] - e["issued"]) * ms if e["done"] >= 0 else float("nan") for e in ev[r]) for r in range(world)]
        wait = [statistics.fmean((e["wait_end"] - e["wait_begin"]) * ms if e["wait_begin"] >= 0 else 0.0 for e in ev[r])
                for r in range(world)]
        ready = [statistics.fmean(1.0 if e["wait_begin"] < 0 or 0 <= e["done"] <= e["wait_begin"] else 0.0 for e in ev[r])
                 for r in range(world)]
        for r in range(world):
            total_wait[r] += wait[r]
        e0 = ev[0][0]
        print(f"{i:3d} {e0['op']:<15} {e0['axis']:<26} {e0['bytes']:>10} B  at {at:7.2f}  "
              + cols("skew", skew[1:], 1) + ("  " if world > 1 else "") + cols("took", took) + "  " + cols("wait", wait)
              + "  " + "  ".join(f"ready{r} {v:4.2f}" for r, v in enumerate(ready)))
    step = [(rows[0][(s + 1) * per]["issued"] - rows[0][s * per]["issued"]) * ms for s in steps if (s + 1) * per < n]
    print("wait per step: " + "  ".join(f"rank {r} {w:.2f}" for r, w in enumerate(total_wait))
          + (f"; step (first issue to next) {med(step):.1f}" if step else ""))


if __name__ == "__main__":
    main()
