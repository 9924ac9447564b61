#!/usr/bin/env bash
# Makes target/venv with the Python packages the benchmarks and checks need (torch for the peer,
# onnx for the reference checker, onnxruntime for Python-side parity), pinned. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
want="torch==2.15.0 numpy==2.4.6 onnx==1.23.2 onnxscript==0.7.2 onnxruntime==1.32.0"
stamp=target/venv/.stn-packages
if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]]; then echo target/venv; exit 0; fi
python3 -m venv target/venv
echo "installing $want into target/venv (PyPI; torch is large) ..." >&2
target/venv/bin/pip install --quiet $want >&2
echo "$want" > "$stamp"
echo target/venv
