#!/usr/bin/env bash
# Packs what a lent GPU machine (no network) needs for scripts/gpu-check.sh into target/device/
# (~40 MB, under the device tool's 64 MiB carry): the vendored crates (cargo vendor, xz), MNIST and
# the PyTorch reference program from ../shared. Then, in one device call:
#
#   run(command="scripts/gpu-check.sh", carry=["target/device"])
#
# ONNX Runtime's CUDA provider (284 MB, scripts/fetch-onnxruntime.sh --gpu) does not fit one carry;
# it can travel in chunks over consecutive calls to a warm machine (../shared/gpu/NOTES.md).
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/device
rm -rf "$out" && mkdir -p "$out/mnist" "$out/reference"
cargo vendor --locked --versioned-dirs "$out/vendor" > "$out/vendor-config.toml"
tar cJf "$out/vendor.tar.xz" -C "$out" vendor && rm -rf "$out/vendor"
cp ../shared/data/mnist/*.gz "$out/mnist/"
cp ../shared/reference/pytorch_stn.py "$out/reference/"
du -sh "$out" >&2
