#!/usr/bin/env bash
# The pipeline on its defaults, from a fresh clone: builds, fetches what it needs (the ONNX Runtime
# library from PyPI; MNIST into data/mnist unless STN_DATA or ../shared/data/mnist has it), trains
# the seed network for one epoch with its before/after picture, exports it as ONNX, runs it on
# tract and ONNX Runtime, reports the parity of every runtime on the test set, and evaluates the
# embedded default model (models/stn.onnx, 20 epochs of the seed recipe).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${STN_DATA:-}" && -d ../shared/data/mnist ]]; then export STN_DATA=../shared/data/mnist; fi
out=target/pipeline
mkdir -p "$out"
ORT_DYLIB_PATH=$(scripts/fetch-onnxruntime.sh | tail -n1); export ORT_DYLIB_PATH
cargo build --release --locked
echo "== train: 1 epoch of the seed recipe" >&2
./target/release/stn-train --epochs 1 --force --out "$out/stn.safetensors" --visualize "$out/warped.png" \
  --metrics "$out/metrics.jsonl" --json | tail -n 3
echo "== export: $out/stn.onnx (opset 16)" >&2
./target/release/stn-export "$out/stn.onnx" --checkpoint "$out/stn.safetensors"
for rt in tract ort; do
  echo "== infer on $rt" >&2
  ./target/release/stn-infer --runtime "$rt" --model "$out/stn.onnx" --threads 1
done
echo "== parity: tract, ONNX Runtime, dfdx, fused and dfdx in float64 on the 10,000 test images" >&2
./target/release/stn-infer --model "$out/stn.onnx" --compare tract,ort,dfdx,fused,dfdx-f64
echo "== the embedded default model, models/stn.onnx (20 epochs), on ONNX Runtime" >&2
./target/release/stn-infer --runtime ort --model models/stn.onnx
echo "wrote $out/ (checkpoint, ONNX model, metrics, warped.png)" >&2
