#!/usr/bin/env bash
# Compiles all the CUDA code without a GPU (CI has none):
#  1. the Rust CUDA path: `cargo check` of the `cuda` feature, with dfdx's `ci-check` (it skips
#     dfdx's nvcc step; nothing is linked, so no CUDA libraries are needed);
#  2. the project's kernels, crates/stn-ops/cuda/stn_kernels.cu, to PTX for sm_90 with nvcc from
#     PyPI, pinned to CUDA 13.0 (the lent GPUs' driver is CUDA 13.0; newer PTX would not JIT there).
# The kernels' logic is tested on the host by crates/stn-ops/tests/kernels_host.rs (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo check --features cuda-ci-check" >&2
cargo check --release --locked --workspace --all-targets --features cuda-ci-check

venv=target/venv-cuda
want="nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.88 nvidia-cuda-crt==13.0.88"
if [[ ! -f $venv/.stn-packages || "$(cat $venv/.stn-packages)" != "$want" ]]; then
  python3 -m venv "$venv"
  echo "installing $want into $venv (PyPI) ..." >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check $want >&2
  echo "$want" > "$venv/.stn-packages"
fi
cu=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
export PATH="$cu/bin:$cu/nvvm/bin:$PATH"
mkdir -p target/cuda
echo "== nvcc --ptx -arch=sm_90 ($(nvcc --version | tail -n1))" >&2
nvcc --ptx -arch=sm_90 -I"$cu/include" crates/stn-ops/cuda/stn_kernels.cu -o target/cuda/stn_kernels.ptx
entries=$(grep -c '^.visible .entry' target/cuda/stn_kernels.ptx)
echo "target/cuda/stn_kernels.ptx: $(grep -m1 '^.version' target/cuda/stn_kernels.ptx), $entries kernels" >&2
# As many as cuda.rs loads (its KERNELS table), so that the two cannot drift apart.
want=$(sed -n 's/^const KERNELS: \[&str; \([0-9]*\)\].*/\1/p' crates/stn-ops/src/cuda.rs)
[[ -n $want && $entries -eq $want ]] || { echo "error: expected ${want:-?} kernels in the PTX (cuda.rs), found $entries" >&2; exit 1; }
echo "check-cuda: ok" >&2
