"""Where a step's time goes, by operator: reads the trace bench_peer writes
with BENCH_PEER_PROFILE=FILE (LibTorch's profiler, chrome format) and prints
each operator's self time (its span minus the operators nested in it on the
same thread), summed over the traced steps and divided by their number.

  python3 benchmarks/profile_summary.py FILE STEPS [TOP]
"""
import collections
import json
import sys


def main(path, steps, top):
    with open(path) as f:
        events = [e for e in json.load(f) if e.get("ph") == "X"]
    by_tid = collections.defaultdict(list)
    for e in events:
        by_tid[e["tid"]].append(e)
    self_us = collections.Counter()
    calls = collections.Counter()
    for evs in by_tid.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []  # (end, name)
        for e in evs:
            start, end = e["ts"], e["ts"] + e["dur"]
            while stack and stack[-1][0] <= start:
                stack.pop()
            if stack:  # nested: not the parent's own time
                self_us[stack[-1][1]] -= e["dur"]
            self_us[e["name"]] += e["dur"]
            calls[e["name"]] += 1
            stack.append((end, e["name"]))
    total = sum(self_us.values())
    print(f"{'operator':<48}{'ms/step':>9}{'share':>8}{'calls/step':>12}")
    for name, us in self_us.most_common(top):
        print(f"{name[:47]:<48}{us / 1e3 / steps:>9.2f}{100 * us / total:>7.1f}%{calls[name] / steps:>12.0f}")
    print(f"{'all operators (self time summed over threads)':<48}{total / 1e3 / steps:>9.2f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 30)
