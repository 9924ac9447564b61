#!/usr/bin/env bash
# Fetches the ONNX Runtime shared library that the `ort` crate loads at run time (feature
# load-dynamic): from the pinned PyPI wheel, with pip (PyPI is the only host contacted), checked
# against its SHA-256, extracted into target/onnxruntime/ (or target/onnxruntime-gpu/ with --gpu).
# Prints the library's path as its last line. Idempotent: a second run downloads nothing.
#
#   scripts/fetch-onnxruntime.sh          # CPU library   -> target/onnxruntime/libonnxruntime.so.1.32.0
#   scripts/fetch-onnxruntime.sh --gpu    # CUDA provider -> target/onnxruntime-gpu/ (255 MB wheel)
set -euo pipefail
cd "$(dirname "$0")/.."

# name version wheel-sha256 (the cp311 manylinux_2_28 x86-64 wheel; the libraries inside do not
# depend on Python, so one wheel serves any local Python).
CPU=(onnxruntime 1.32.0 5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d)
GPU=(onnxruntime-gpu 1.31.1 e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6)

spec=("${CPU[@]}"); dest=target/onnxruntime
if [[ "${1:-}" == "--gpu" ]]; then spec=("${GPU[@]}"); dest=target/onnxruntime-gpu;
elif [[ $# -gt 0 ]]; then echo "usage: $0 [--gpu]" >&2; exit 2; fi
name=${spec[0]} version=${spec[1]} sha=${spec[2]}
lib="$dest/libonnxruntime.so.$version"

if [[ -f "$dest/.wheel-sha256" && "$(cat "$dest/.wheel-sha256")" == "$sha" && -f "$lib" ]]; then
  echo "$(pwd)/$lib"; exit 0
fi

command -v python3 >/dev/null || { echo "error: python3 (with pip) is needed to fetch $name" >&2; exit 1; }
mkdir -p "$dest" target/wheels
req=$(mktemp); trap 'rm -f "$req"' EXIT
echo "$name==$version --hash=sha256:$sha" > "$req"
echo "fetching $name $version from PyPI ..." >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
  --python-version 3.11 --platform manylinux_2_28_x86_64 -r "$req" -d target/wheels >&2
wheel=$(ls target/wheels/"${name//-/_}"-"$version"-*.whl | head -n1)
echo "$sha  $wheel" | sha256sum -c --quiet - || { echo "error: $wheel: SHA-256 mismatch" >&2; exit 1; }

# Extract the shared libraries (and nothing else) into $dest.
python3 - "$wheel" "$dest" <<'PY'
import sys, zipfile, os
wheel, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    for n in z.namelist():
        base = os.path.basename(n)
        if n.startswith("onnxruntime/capi/") and base.startswith("lib") and ".so" in base:
            tmp = os.path.join(dest, base + ".part")
            with z.open(n) as src, open(tmp, "wb") as out:
                out.write(src.read())
            os.replace(tmp, os.path.join(dest, base))
PY
[[ -f "$lib" ]] || { echo "error: $wheel has no libonnxruntime.so.$version" >&2; exit 1; }
echo "$sha" > "$dest/.wheel-sha256"
echo "$(pwd)/$lib"
