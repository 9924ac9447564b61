#!/usr/bin/env bash
# The training runs recorded in BENCHMARKS.md and models/README.md (~15 minutes on 2 cores).
#   scripts/runs.sh [all|default|best-adam|best-cosine|rts|rts-cosine|rts-b32|rts-long|rts-search]
#   scripts/runs.sh paper-table [DISTORTIONS] [MODELS] [SEEDS]   # the STN paper's Table 1 (hours)
#   scripts/runs.sh paper-table-long [DISTORTIONS] [MODELS] [SEEDS]   # the same at batch 256 (4× the hours)
# Each run writes its log and metrics under target/runs/.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q
mkdir -p target/runs
data=${STN_DATA:-../shared/data/mnist}
run() { # name, args...
  local name=$1; shift
  rm -f "target/runs/$name.metrics.jsonl"
  echo "== $name: stn-train $*" >&2
  ./target/release/stn-train --data "$data" --offline --threads 2 --json --force \
    --metrics "target/runs/$name.metrics.jsonl" "$@" > "target/runs/$name.log" 2>&1 || echo "   ($name exited $?)" >&2
  tail -n1 "target/runs/$name.log" >&2
}
case "${1:-all}" in
  default|all)
    # The default model: the seed's recipe, 20 epochs.
    run default --epochs 20 --out models/stn.safetensors --visualize models/stn-warped.png ;;&
  best-adam|all)
    run best-adam --epochs 10 --optimizer adam --lr 0.001 --out target/runs/best-adam.safetensors ;;&
  best-cosine|all)
    run best-cosine --epochs 10 --optimizer adam --lr 0.002 --schedule cosine --out target/runs/best-cosine.safetensors ;;&
  rts|all)
    run rts-stn --distort rts --epochs 10 --optimizer adam --lr 0.001 --loc-lr-scale 0.1 --clip 5 \
      --out target/runs/rts-stn.safetensors --visualize target/runs/rts-stn-warped.png
    run rts-nostn --distort rts --no-stn --epochs 10 --optimizer adam --lr 0.001 --out target/runs/rts-nostn.safetensors ;;&
  rts-cosine|all)
    run rts-stn-cosine --distort rts --epochs 10 --optimizer adam --lr 0.002 --schedule cosine --loc-lr-scale 0.3 --clip 5 \
      --out target/runs/rts-stn-cosine.safetensors
    run rts-nostn-cosine --distort rts --no-stn --epochs 10 --optimizer adam --lr 0.002 --schedule cosine --clip 5 \
      --out target/runs/rts-nostn-cosine.safetensors ;;&
  rts-b32|all)
    # The best RTS recipe found: batch 32.
    run rts-stn-b32 --distort rts --epochs 10 --batch 32 --optimizer adam --lr 0.001 --schedule cosine --loc-lr-scale 0.3 --clip 5 \
      --out target/runs/rts-stn-b32.safetensors --visualize target/runs/rts-stn-b32-warped.png
    run rts-nostn-b32 --distort rts --no-stn --epochs 10 --batch 32 --optimizer adam --lr 0.001 --schedule cosine --clip 5 \
      --out target/runs/rts-nostn-b32.safetensors ;;
  rts-long)
    # The RTS goal's run: the batch-32 recipe for 40 epochs on new distortions every epoch, and
    # the baseline under the same budget (~12 minutes; not in `all`).
    long=(--distort rts --epochs 40 --batch 32 --optimizer adam --lr 0.001 --schedule cosine --clip 5 --fresh-distortions)
    run rts-long-stn "${long[@]}" --loc-lr-scale 0.3 \
      --out target/runs/rts-long-stn.safetensors --visualize target/runs/rts-long-stn-warped.png
    run rts-long-nostn "${long[@]}" --no-stn --out target/runs/rts-long-nostn.safetensors ;;
  rts-search)
    # The RTS recipe search of BENCHMARKS.md (not in `all`: ~10 minutes more).
    rts=(--distort rts --epochs 10 --optimizer adam --schedule cosine --clip 5)
    run rts-search-lr2e-3 "${rts[@]}" --batch 32 --lr 0.002 --loc-lr-scale 0.3 --out target/runs/rts-search-lr2e-3.safetensors
    run rts-search-b16 "${rts[@]}" --batch 16 --lr 0.001 --loc-lr-scale 0.3 --out target/runs/rts-search-b16.safetensors
    run rts-search-b128 "${rts[@]}" --batch 128 --lr 0.004 --loc-lr-scale 0.3 --out target/runs/rts-search-b128.safetensors
    run rts-search-loc1 "${rts[@]}" --batch 64 --lr 0.002 --loc-lr-scale 1.0 --out target/runs/rts-search-loc1.safetensors
    run rts-search-loc01 "${rts[@]}" --batch 32 --lr 0.001 --loc-lr-scale 0.1 --out target/runs/rts-search-loc01.safetensors
    run rts-search-fresh "${rts[@]}" --batch 32 --lr 0.001 --loc-lr-scale 0.3 --fresh-distortions \
      --out target/runs/rts-search-fresh.safetensors ;;
  paper-table|paper-table-long)
    # The paper's Table 1 (docs/paper-table.md): its CNN and ST-CNNs on R, RTS, P and E, a tenth
    # of its training at most (it ran 150k iterations at batch 256; here 15 epochs at batch 64 =
    # 14,070 iterations), new distortions every epoch as its data, Adam with a cosine schedule,
    # the localisation net at 0.3× the learning rate, clipping at norm 5. Each run ~5–15 minutes
    # on 2 cores; not in `all`. The summary: scripts/paper_table.py target/runs.
    # paper-table-long: the paper's batch, 256, for 63 epochs (14,805 iterations, a tenth of its
    # 150k at most; 4.2× the images of the short recipe and of its time), lr 0.002; runs named
    # paper-long-*, summed up by scripts/paper_table.py target/runs --recipe long.
    dists=${2:-"r rts p e"}; models=${3:-"cnn st-affine st-projective st-tps"}; seeds=${4:-"1 2 3"}
    if [[ $1 == paper-table-long ]]; then
      prefix=paper-long; recipe=(--epochs 63 --batch 256 --lr 0.002); table=(--recipe long)
    else
      prefix=paper; recipe=(--epochs 15 --batch 64 --lr 0.001); table=()
    fi
    for seed in $seeds; do
      for d in $dists; do
        for m in $models; do
          preset=paper-$m; [[ $d == rts ]] && preset=$preset-42
          name=$prefix-$d-$m-s$seed
          [[ -f target/runs/$name.safetensors && -s target/runs/$name.log ]] && continue
          run "$name" --spec "$preset" --distort "$d" --fresh-distortions --seed "$seed" \
            "${recipe[@]}" --optimizer adam --schedule cosine --clip 5 --loc-lr-scale 0.3 \
            --out "target/runs/$name.safetensors"
        done
      done
    done
    python3 scripts/paper_table.py target/runs "${table[@]}" ;;
esac
