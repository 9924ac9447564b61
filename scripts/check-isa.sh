#!/usr/bin/env bash
# The CPU kernels' dispatch holds (crates/stn-ops/src/isa.rs): every kernel is compiled inside its
# ISA level's `#[target_feature]` function, so no SIMD intrinsic may be left as an out-of-line
# call — one is, wherever a kernel's code ended up in a function the compiler did not inline (a
# closure handed to an iterator adapter, a helper without `#[inline(always)]`), and there each
# vector instruction costs a call (measured: the sampler 7× slower). This disassembles the release
# binaries and fails, naming the functions, if any calls a `core::core_arch` intrinsic.
#
#   scripts/check-isa.sh [BINARY...]     # default: target/release/stn-{train,infer,export}
set -euo pipefail
cd "$(dirname "$0")/.."
command -v objdump >/dev/null || { echo "check-isa: objdump not found (install binutils)" >&2; exit 1; }
bins=("$@")
if [[ ${#bins[@]} -eq 0 ]]; then
  cargo build --release --locked -q
  bins=(target/release/stn-train target/release/stn-infer target/release/stn-export)
fi
status=0
for b in "${bins[@]}"; do
  # Functions (demangled) holding a call to an intrinsic. Named exceptions: std's feature
  # detection, and dependencies built for the baseline that call their own intrinsics out of
  # line (tract's linalg dispatches at run time by itself; rustfft, tract-core's 2×2 max-pool
  # and chacha20 are not on our kernels' paths). A kernel of ours shows up under its own name,
  # as `stn_ops::isa::run_*`, or as a library function instantiated for its closure
  # (`core::iter::…::fold`): none of them is excepted.
  bad=$(objdump -d --no-show-raw-insn -C "$b" \
    | awk '/^[0-9a-f]+ <.*>:$/ {fn = $0} /call.*<core::core_arch::/ {print fn}' \
    | grep -v -e '<std_detect::' -e '<compiler_builtins::' -e '<rustfft::' -e '<tract_linalg::' \
      -e '<tract_core::' -e '<chacha20::' | sort | uniq -c || true)
  if [[ -n "$bad" ]]; then
    echo "check-isa: $b calls SIMD intrinsics out of line, from:" >&2
    echo "$bad" >&2
    status=1
  else
    echo "check-isa: $b: no out-of-line intrinsics"
  fi
done
exit $status
