#!/usr/bin/env bash
# Inference speed of each runtime beside onnxruntime-Python and PyTorch eval on the same model,
# same threads, one run: images/s at batch 1, 64 and 1000 and the per-batch latency, one JSON line
# per (runtime, batch).
#
#   scripts/bench-infer.sh [THREADS] [MODEL]        # defaults: 1 thread, models/stn.onnx
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-1} model=${2:-models/stn.onnx}
data=${STN_DATA:-../shared/data/mnist}
scripts/venv.sh >/dev/null
ORT_DYLIB_PATH=$(scripts/fetch-onnxruntime.sh | tail -n1); export ORT_DYLIB_PATH
cargo build --release --locked -q
for rt in fused dfdx ort tract; do
  for b in 1 64 1000; do
    ./target/release/stn-infer --runtime "$rt" --model "$model" --data "$data" --offline --threads "$threads" \
      --batch "$b" --warmup 5 --json 2>/dev/null | tail -n1 | python3 -c '
import json, sys
r = json.load(sys.stdin)
print(json.dumps({"runtime": r["runtime"], "batch": r["batch"], "threads": r["threads"], "isa": r["isa"], "img_per_s": round(r["img_per_s"], 1),
                  "latency_us": round(1e3 * r["batch_latency_ms"], 1), "accuracy": r["accuracy"]}))'
  done
done
OMP_NUM_THREADS=$threads target/venv/bin/python scripts/bench_infer_peer.py "$model" "$data" "$threads" 1,64,1000 ../shared/reference
