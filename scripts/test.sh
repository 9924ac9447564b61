#!/usr/bin/env bash
# The project's test command (README, .ci/run). Installs what the tests need, then runs every test
# with the one optimised profile (`release`) that the binaries and benchmarks share.
#
# MNIST: $STN_DATA, else ../shared/data/mnist beside the repo when it exists, else data/mnist
# (downloaded and verified on first use).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${STN_DATA:-}" && -d ../shared/data/mnist ]]; then export STN_DATA=../shared/data/mnist; fi

# ONNX Runtime's shared library, for the ort runner and the parity tests.
ORT_DYLIB_PATH=$(scripts/fetch-onnxruntime.sh | tail -n1); export ORT_DYLIB_PATH

cargo fmt --all -- --check
cargo test --release --workspace --locked
# Benchmarks are compiled (not run) with the same profile, so they cannot rot.
cargo bench --workspace --locked --no-run
