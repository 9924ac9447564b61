#!/usr/bin/env bash
# Our ops beside PyTorch's, same shapes, same thread count, one run: prints one JSON line per op
# with ours_us, torch_us and ratio = torch_us / ours_us (> 1: we are faster).
#
#   scripts/bench-ops.sh [THREADS]        # default 2 (the project's machines)
#   STN_ISA=avx2 scripts/bench-ops.sh     # our kernels at a given ISA level (default: the best)
#
# Each line also names the kernels' ISA level and the CPU (lscpu's model name).
#
# PyTorch comes from PyPI into target/venv (made on first use; torch brings ~3 GB of CUDA
# libraries but runs on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
scripts/venv.sh >/dev/null
ours=$(RAYON_NUM_THREADS=$threads cargo bench --locked -q -p stn-ops --bench ops 2>/dev/null)
theirs=$(OMP_NUM_THREADS=$threads target/venv/bin/python scripts/bench_ops_torch.py "$threads")
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n1)
python3 - "$threads" "$ours" "$theirs" "$cpu" <<'PY'
import json, sys
threads, ours, theirs, cpu = sys.argv[1], sys.argv[2].splitlines(), sys.argv[3].splitlines(), sys.argv[4]
key = lambda d: (d["op"], d.get("layer", ""), tuple(d["shape"]))
t = {key(d): d for d in map(json.loads, theirs)}
ours = [json.loads(l) for l in ours]
isa = ours[0]["isa"]
for d in ours[1:]:
    d["torch_us"] = t[key(d)]["torch_us"]
    d["ratio"] = round(d["torch_us"] / d["ours_us"], 2)
    d["threads"] = int(threads)
    d["isa"], d["cpu"] = isa, cpu
    print(json.dumps(d))
PY
