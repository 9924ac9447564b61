#!/usr/bin/env bash
# The project's test command (README, .ci/run). Installs what the tests need, then runs every test
# with the one optimised profile (`release`) that the binaries and benchmarks share.
#
# MNIST: $STN_DATA, else ../shared/data/mnist beside the repo when it exists, else data/mnist
# (downloaded and verified on first use).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${STN_DATA:-}" ]]; then
  if [[ -d ../shared/data/mnist ]]; then
    STN_DATA=../shared/data/mnist
  else
    # A fresh machine: download (and verify) MNIST into data/mnist once.
    STN_DATA=data/mnist
    cargo run --release --locked -q --bin stn-train -- --data "$STN_DATA" --epochs 0
  fi
fi
# Absolute, because cargo runs each crate's tests and benchmarks in that crate's directory.
if [[ -n "${STN_DATA:-}" ]]; then STN_DATA=$(cd "$STN_DATA" && pwd); export STN_DATA; fi

# The reference ONNX checker, onnxruntime-Python and PyTorch (the seed's Net, to check that an
# exported graph is the seed network), for the export tests.
STN_PYTHON=$(pwd)/$(scripts/venv.sh)/bin/python; export STN_PYTHON
# ONNX Runtime's shared library, for the ort runner and the parity tests.
ORT_DYLIB_PATH=$(scripts/fetch-onnxruntime.sh | tail -n1); export ORT_DYLIB_PATH

cargo fmt --all -- --check
cargo test --release --workspace --locked
# The CPU kernels at the lower ISA levels too (the run above used the best this CPU has): the ops'
# and the model's tests under STN_ISA=avx2 and STN_ISA=scalar, where the CPU runs that level.
best=$(./target/release/stn-train --version | sed -n 's/.*cpu kernels: \([a-z0-9]*\).*/\1/p')
for level in avx2 scalar; do
  if [[ $level == avx2 && $best == scalar ]]; then continue; fi
  echo "== STN_ISA=$level: stn-ops and stn-model tests"
  STN_ISA=$level cargo test --release --locked -q -p stn-ops -p stn-model
done
# No kernel left outside its level's compiled code (see the script).
scripts/check-isa.sh
# Benchmarks are compiled (not run) with the same profile, so they cannot rot.
cargo bench --workspace --locked --no-run
