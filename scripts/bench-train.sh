#!/usr/bin/env bash
# Training throughput, ours beside the peer (../shared/reference/pytorch_stn.py) in one run: the
# seed network, batch 64, the same thread count, one epoch each on the same images. Prints one JSON
# line with both img/s, the ratio (ours / peer) and both peak memories.
#
#   scripts/bench-train.sh [THREADS] [LIMIT]     # defaults: 2 threads, all 60,000 images
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2} limit=${2:-0}
data=${STN_DATA:-../shared/data/mnist}
scripts/venv.sh >/dev/null
cargo build --release --locked -q
ours=$(./target/release/stn-train --data "$data" --offline --epochs 1 --limit "$limit" --threads "$threads" \
  --out target/bench-train.safetensors --json 2>/dev/null | tail -n1)
peer=$( /usr/bin/time -f '{"peer_peak_rss_mb": %M}' target/venv/bin/python ../shared/reference/pytorch_stn.py \
  --data "$data" --epochs 1 --limit "$limit" --threads "$threads" 2>&1 | grep '^{')
python3 - "$ours" "$peer" <<'PY'
import json, sys
ours = json.loads(sys.argv[1])
peer = {k: v for line in sys.argv[2].splitlines() for k, v in json.loads(line).items()}
print(json.dumps({
    "threads": ours["threads"], "images": ours["train_images"],
    "ours_img_per_s": round(ours["train_img_per_s"], 1), "peer_img_per_s": peer["train_img_per_s"],
    "ratio": round(ours["train_img_per_s"] / peer["train_img_per_s"], 2),
    "ours_test_accuracy": ours["test_accuracy"], "peer_test_accuracy": peer["test_accuracy"],
    "ours_peak_rss_mb": round(ours["peak_rss_mb"], 1), "peer_peak_rss_mb": round(peer["peer_peak_rss_mb"] / 1024, 1),
}))
PY
