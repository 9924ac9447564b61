#!/usr/bin/env bash
# Python environments, pinned, made on first use (idempotent), printed on stdout:
#   scripts/venv.sh --test   target/venv-test: onnx (the reference checker), onnxruntime, numpy
#   scripts/venv.sh          target/venv: the above and torch (the peer of the benchmarks; large)
set -euo pipefail
cd "$(dirname "$0")/.."
base="numpy==2.4.6 onnx==1.23.2 onnxruntime==1.32.0"
if [[ "${1:-}" == "--test" ]]; then dir=target/venv-test want=$base
else dir=target/venv want="$base torch==2.15.0 onnxscript==0.7.2"; fi
stamp=$dir/.stn-packages
if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]]; then echo "$dir"; exit 0; fi
python3 -m venv "$dir"
echo "installing $want into $dir (PyPI) ..." >&2
"$dir/bin/pip" install --quiet --disable-pip-version-check $want >&2
echo "$want" > "$stamp"
echo "$dir"
