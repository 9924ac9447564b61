#!/usr/bin/env python3
"""The STN paper's Table 1 from the runs of `scripts/runs.sh paper-table`: test error % (mean of
the seeds that finished, and each seed's), beside the paper's figures, with each run's wall time.

    python3 scripts/paper_table.py target/runs [--recipe long]

`--recipe long`: the runs of `scripts/runs.sh paper-table-long` (named paper-long-*).
"""
import glob
import json
import os
import re
import statistics
import sys

PAPER = {  # Jaderberg et al. 2015, Table 1 (test error %)
    "cnn": {"r": 1.2, "rts": 0.8, "p": 1.5, "e": 1.4},
    "st-affine": {"r": 0.7, "rts": 0.5, "p": 0.8, "e": 1.2},
    "st-projective": {"r": 0.8, "rts": 0.6, "p": 0.8, "e": 1.3},
    "st-tps": {"r": 0.7, "rts": 0.5, "p": 0.8, "e": 1.1},
}
DISTS = ["r", "rts", "p", "e"]


def runs(d, prefix):
    out = {}
    for log in glob.glob(os.path.join(d, f"{prefix}-*-s*.log")):
        m = re.match(prefix + r"-(r|rts|p|e)-(.+)-s(\d+)\.log$", os.path.basename(log))
        if not m:
            continue
        last = None
        for line in open(log):
            line = line.strip()
            if line.startswith("{") and "test_accuracy" in line:
                last = json.loads(line)
        if last is None:
            continue
        dist, model, seed = m.group(1), m.group(2), int(m.group(3))
        err = 100.0 * (1.0 - last["test_accuracy"])
        out.setdefault((model, dist), []).append((seed, err, last.get("train_seconds", 0.0)))
    return out


def main():
    args = sys.argv[1:]
    prefix = "paper"
    if "--recipe" in args:
        i = args.index("--recipe")
        recipe = args[i + 1] if i + 1 < len(args) else ""
        if recipe != "long":
            sys.exit(f"--recipe: 'long' is the one other recipe, not {recipe!r}")
        prefix = "paper-long"
        del args[i:i + 2]
    d = args[0] if args else "target/runs"
    r = runs(d, prefix)
    print("| model | " + " | ".join(x.upper() for x in DISTS) + " |")
    print("|---|" + "---|" * len(DISTS))
    for model, paper in PAPER.items():
        print(f"| {model} (paper) | " + " | ".join(f"{paper[x]}" for x in DISTS) + " |")
        cells = []
        for x in DISTS:
            rs = sorted(r.get((model, x), []))
            if not rs:
                cells.append("—")
                continue
            mean = statistics.mean(e for _, e, _ in rs)
            mins = statistics.mean(t for _, _, t in rs) / 60
            each = ", ".join(f"{e:.2f}" for _, e, _ in rs)
            cells.append(f"**{mean:.2f}** ({each}; {len(rs)} seed{'s' * (len(rs) > 1)}, {mins:.0f} min each)")
        print(f"| {model} (ours) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
