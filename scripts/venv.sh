#!/usr/bin/env bash
# The Python environment of the tests and benchmarks, pinned, made on first use (idempotent); its
# path is printed on stdout: target/venv with onnx (the reference checker), onnxruntime, numpy and
# torch (the peer; PyPI's wheel brings ~3 GB of CUDA libraries but runs on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/venv
want="numpy==2.4.6 onnx==1.23.2 onnxruntime==1.32.0 torch==2.15.0 onnxscript==0.7.2 tritonclient==2.73.0"
stamp=$dir/.stn-packages
if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]]; then echo "$dir"; exit 0; fi
python3 -m venv "$dir"
echo "installing $want into $dir (PyPI) ..." >&2
"$dir/bin/pip" install --quiet --disable-pip-version-check $want >&2
echo "$want" > "$stamp"
echo "$dir"
