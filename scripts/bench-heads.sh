#!/usr/bin/env bash
# Training time of the transform heads on the seed network, side by side in one run: the seed's
# spec with its affine head, then with the projective and the 4×4 TPS head in its place (nothing
# else changed), one full epoch each, the three alternated for ROUNDS rounds. Prints one JSON line
# per epoch, then each head's median img/s and its training time against affine's (issue 16's
# goal: projective and TPS at most 10% over affine). The CPU is lscpu's model name.
#
#   scripts/bench-heads.sh [ROUNDS] [THREADS]     # defaults: 3 rounds, 2 threads
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3} threads=${2:-2}
data=${STN_DATA:-../shared/data/mnist}
[[ -n ${STN_NO_BUILD:-} ]] || cargo build --release --locked -q
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# The tutorial's parameter names exist for the affine head only: the three use nn.Sequential's.
./target/release/stn-train --print-spec seed | grep -v '^names = ' > "$dir/affine.toml"
sed 's/^kind = "affine"/kind = "projective"/' "$dir/affine.toml" > "$dir/projective.toml"
sed 's/^kind = "affine"/kind = "tps"\ngrid = 4/' "$dir/affine.toml" > "$dir/tps.toml"
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n1)
for round in $(seq "$rounds"); do
  for head in affine projective tps; do
    ./target/release/stn-train --spec "$dir/$head.toml" --data "$data" --offline --threads "$threads" \
      --epochs 1 --json --force --out "$dir/$head.safetensors" 2>/dev/null | tail -n1 |
      python3 -c '
import json, sys
r = json.load(sys.stdin)
print(json.dumps({"round": int(sys.argv[1]), "head": sys.argv[2], "train_img_per_s": round(r["train_img_per_s"]),
                  "train_seconds": round(r["train_seconds"], 2), "test_accuracy": r["test_accuracy"],
                  "isa": r["isa"], "threads": r["threads"], "cpu": sys.argv[3]}))' "$round" "$head" "$cpu"
  done
done | tee "$dir/rows.jsonl"
python3 - "$dir/rows.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = {h: statistics.median(r["train_img_per_s"] for r in rows if r["head"] == h)
       for h in ("affine", "projective", "tps")}
for h, v in med.items():
    print(json.dumps({"head": h, "median_img_per_s": round(v),
                      "time_vs_affine": f"{(med['affine'] / v - 1) * 100:+.1f}%"}))
PY
