#!/usr/bin/env bash
# Our ops beside PyTorch's, same shapes, same thread count: prints one JSON line per op with
# ours_us, torch_us and ratio = torch_us / ours_us (> 1: we are faster).
#
#   scripts/bench-ops.sh [THREADS] [ROUNDS]   # defaults: 2 threads (the project's machines), 1 round
#   STN_ISA=avx2 scripts/bench-ops.sh         # our kernels at a given ISA level (default: the best)
#
# With ROUNDS > 1, ours and PyTorch's run alternately ROUNDS times (this shared machine's speed
# drifts by up to 2× over a minute, so one run of each side, a minute apart, can measure the host
# rather than the ops); each line then gives the medians of both sides' times, the median of the
# per-round ratios (`ratio`) and every round's ratio (`ratios`).
#
# Each line also names the kernels' ISA level and the CPU (lscpu's model name).
#
# PyTorch comes from PyPI into target/venv (made on first use; torch brings ~3 GB of CUDA
# libraries but runs on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2} rounds=${2:-1}
scripts/venv.sh >/dev/null
cargo bench --locked -q -p stn-ops --bench ops --no-run 2>/dev/null
runs=$(mktemp -d)
trap 'rm -rf "$runs"' EXIT
for r in $(seq "$rounds"); do
  RAYON_NUM_THREADS=$threads cargo bench --locked -q -p stn-ops --bench ops 2>/dev/null >"$runs/ours.$r"
  OMP_NUM_THREADS=$threads target/venv/bin/python scripts/bench_ops_torch.py "$threads" >"$runs/theirs.$r"
done
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n1)
python3 - "$threads" "$rounds" "$runs" "$cpu" <<'PY'
import json, statistics, sys
threads, rounds, runs, cpu = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
key = lambda d: (d["op"], d.get("layer", ""), tuple(d["shape"]))
load = lambda path: [json.loads(l) for l in open(path) if l.strip()]
ours = [load(f"{runs}/ours.{r}") for r in range(1, rounds + 1)]
theirs = [{key(d): d for d in load(f"{runs}/theirs.{r}")} for r in range(1, rounds + 1)]
isa = ours[0][0]["isa"]
for i, d in enumerate(ours[0][1:], start=1):
    mine = [run[i]["ours_us"] for run in ours]
    torch = [t[key(d)]["torch_us"] for t in theirs]
    ratios = [round(t / o, 2) for o, t in zip(mine, torch)]
    d["ours_us"] = round(statistics.median(mine), 1)
    d["torch_us"] = round(statistics.median(torch), 1)
    d["ratio"] = round(statistics.median(ratios), 2)
    if rounds > 1:
        d["ratios"] = ratios
    d["threads"], d["isa"], d["cpu"] = threads, isa, cpu
    print(json.dumps(d))
PY
