#!/usr/bin/env bash
# The pipeline on its defaults, from a fresh clone: builds, fetches what it needs, trains the seed
# network for one epoch (MNIST is downloaded and verified into data/mnist unless STN_DATA or
# ../shared/data/mnist has it), writes the STN's before/after picture, and evaluates the embedded
# default model (models/stn.safetensors, 20 epochs of the seed recipe).
#
# Export (stn-export) and inference on tract / ONNX Runtime with the parity report join this
# script when they land (issues 5 and 6).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${STN_DATA:-}" && -d ../shared/data/mnist ]]; then export STN_DATA=../shared/data/mnist; fi
out=target/pipeline
mkdir -p "$out"
cargo build --release --locked
echo "== train: 1 epoch of the seed recipe" >&2
./target/release/stn-train --epochs 1 --out "$out/stn.safetensors" --visualize "$out/warped.png" \
  --metrics "$out/metrics.jsonl" --json | tee "$out/train.log" | tail -n 3
echo "== the embedded default model, models/stn.safetensors, on the test set" >&2
# (stn-infer --runtime dfdx will do this; until then, a resume with nothing left to train evaluates.)
cp models/stn.safetensors "$out/default.safetensors"
./target/release/stn-train --resume --out "$out/default.safetensors" --epochs 1 --json | tail -n 1
echo "wrote $out/ (checkpoint, metrics, warped.png)" >&2
