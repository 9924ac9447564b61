#!/usr/bin/env bash
# Every GPU check of the project in one call, for a lent GPU machine (the `device` tool), after
# scripts/device-pack.sh here (vendored crates, MNIST, the reference; the machine has no network):
#   run(command="scripts/gpu-check.sh", carry=["target/device"])   # writes $OUT/gpu-report.md
# 1. the GPU and driver (nvidia-smi);
# 2. the CUDA ops against the CPU ops (crates/stn-ops/tests/cuda_vs_cpu.rs: outputs and gradients,
#    random shapes, 1e-5);
# 3. one epoch of `stn-train --device cuda` at batch 64 and 256, beside PyTorch CUDA
#    (scripts/peer_cuda.py) on the same GPU;
# 4. `stn-infer --runtime ort --device cuda` against tract and dfdx on the 10,000 test images
#    (needs the onnxruntime-gpu library in target/onnxruntime-gpu/: scripts/fetch-onnxruntime.sh --gpu).
# Steps 2-3 build with `--features cuda` where cargo is available (the build needs nvcc and
# nvidia-smi for dfdx's kernels, and the CUDA libraries to link); a step that cannot run says why in
# the report instead of failing the whole call.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-target}
mkdir -p "$out"
report="$out/gpu-report.md"
# Data and the reference from ../shared, else from what scripts/device-pack.sh packed.
data=${STN_DATA:-../shared/data/mnist}; [[ -d $data ]] || data=target/device/mnist
ref=../shared/reference; [[ -d $ref ]] || ref=target/device/reference
py=${PYTHON:-python3}
# Offline builds from the vendored crates, when packed.
cargo_src=()
if [[ -f target/device/vendor.tar.xz ]]; then
  [[ -d target/device/vendor ]] || tar xJf target/device/vendor.tar.xz -C target/device
  cargo_src=(--offline --config 'source.crates-io.replace-with="vendored-sources"'
             --config "source.vendored-sources.directory=\"$(pwd)/target/device/vendor\"")
fi
say() { echo "$*" | tee -a "$report"; }
step() { say ""; say "## $*"; say ""; }
run() { # command... ; output into the report as a code block
  say '```'; say "\$ $*"; "$@" 2>&1 | tail -n 40 | tee -a "$report"; local rc=${PIPESTATUS[0]}; say '```'
  say "exit status: $rc"; return "$rc"
}
: > "$report"
say "# GPU report ($(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"

step "1. GPU and driver"
if ! command -v nvidia-smi >/dev/null; then
  say "No nvidia-smi on this machine: no GPU, nothing else to check here."
  exit 0
fi
run nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv
export CUDA_COMPUTE_CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d .)

step "2. CUDA ops against the CPU ops"
if command -v cargo >/dev/null; then
  run cargo "${cargo_src[@]}" test --release --features cuda -p stn-ops --test cuda_vs_cpu
  run cargo "${cargo_src[@]}" build --release --features cuda --bins
else
  say "cargo is not installed here: bring binaries built with --features cuda (see ../shared/gpu/NOTES.md)."
fi

step "3. Training: stn-train --device cuda beside PyTorch CUDA"
if [[ -x target/release/stn-train ]]; then
  for b in 64 256; do
    run ./target/release/stn-train --data "$data" --offline --device cuda --epochs 1 --batch "$b" \
      --out "$out/cuda-b$b.safetensors" --force --json
    run "$py" scripts/peer_cuda.py "$data" "$ref" "$b"
  done
else
  say "no target/release/stn-train: skipped."
fi

step "4. ONNX Runtime CUDA against tract and dfdx on the test set"
lib=$(ls target/onnxruntime-gpu/libonnxruntime.so.* 2>/dev/null | head -n1)
if [[ -n "$lib" && -x target/release/stn-infer ]]; then
  export LD_LIBRARY_PATH="$(dirname "$lib"):${LD_LIBRARY_PATH:-}"
  run ./target/release/stn-infer --data "$data" --offline --device cuda --ort-lib "$lib" --runtime ort --json
  # ort on CUDA, tract and dfdx on the CPU (--allow-cpu-fallback lets those two warn instead of failing).
  run ./target/release/stn-infer --data "$data" --offline --device cuda --allow-cpu-fallback --ort-lib "$lib" \
    --compare ort,tract,dfdx --json
else
  say "the onnxruntime-gpu library (target/onnxruntime-gpu/, scripts/fetch-onnxruntime.sh --gpu) or stn-infer is missing: skipped."
fi
say ""
say "Report written to $report."
