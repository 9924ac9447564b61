#!/usr/bin/env bash
# The long reliability runs: the ONNX mutation fuzz across tract, ONNX Runtime, dfdx and fused
# (N mutants per opset, default 5000, seed S), then the reliability suite's bad-input cases.
#   scripts/fuzz.sh [N] [S]
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${STN_DATA:-}" && -d ../shared/data/mnist ]]; then STN_DATA=../shared/data/mnist; fi
STN_DATA=$(cd "${STN_DATA:-data/mnist}" && pwd); export STN_DATA
ORT_DYLIB_PATH=$(scripts/fetch-onnxruntime.sh | tail -n1); export ORT_DYLIB_PATH
STN_FUZZ_MUTANTS=${1:-5000} STN_FUZZ_SEED=${2:-$RANDOM} \
  cargo test --release --locked --test fuzz_onnx -- --nocapture
cargo test --release --locked --test reliability
