#!/usr/bin/env bash
# Training throughput, ours beside the peer (../shared/reference/pytorch_stn.py): the seed network,
# batch 64, the same thread count, one epoch each on the same images, ours then the peer, repeated
# ROUNDS times (this shared machine's speed moves by 10–20% between runs; alternating rounds put
# both sides under the same conditions). Prints one JSON line per round with both img/s, the ratio
# (ours / peer) and both peak memories, then a summary line with the median ratio.
#
#   scripts/bench-train.sh [THREADS] [LIMIT] [ROUNDS]   # defaults: 2 threads, all 60,000 images, 3
#   STN_ISA=avx2 scripts/bench-train.sh                  # our kernels at a given ISA level
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2} limit=${2:-0} rounds=${3:-3}
data=${STN_DATA:-../shared/data/mnist}
scripts/venv.sh >/dev/null
cargo build --release --locked -q
lines=()
for _ in $(seq "$rounds"); do
  ours=$(./target/release/stn-train --data "$data" --offline --epochs 1 --limit "$limit" --threads "$threads" \
    --out target/bench-train.safetensors --force --json 2>/dev/null | tail -n1)
  peer=$( /usr/bin/time -f '{"peer_peak_rss_mb": %M}' target/venv/bin/python ../shared/reference/pytorch_stn.py \
    --data "$data" --epochs 1 --limit "$limit" --threads "$threads" 2>&1 | grep '^{')
  line=$(python3 - "$ours" "$peer" <<'PY'
import json, sys
ours = json.loads(sys.argv[1])
peer = {k: v for line in sys.argv[2].splitlines() for k, v in json.loads(line).items()}
print(json.dumps({
    "threads": ours["threads"], "isa": ours["isa"], "images": ours["train_images"],
    "ours_img_per_s": round(ours["train_img_per_s"], 1), "peer_img_per_s": peer["train_img_per_s"],
    "ratio": round(ours["train_img_per_s"] / peer["train_img_per_s"], 2),
    "ours_test_accuracy": ours["test_accuracy"], "peer_test_accuracy": peer["test_accuracy"],
    "ours_peak_rss_mb": round(ours["peak_rss_mb"], 1), "peer_peak_rss_mb": round(peer["peer_peak_rss_mb"] / 1024, 1),
}))
PY
)
  echo "$line"
  lines+=("$line")
done
printf '%s\n' "${lines[@]}" | python3 -c '
import json, statistics, sys
r = [json.loads(l) for l in sys.stdin]
print(json.dumps({"rounds": len(r), "median_ratio": statistics.median(x["ratio"] for x in r),
                  "ratios": [x["ratio"] for x in r]}))'
