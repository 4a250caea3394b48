#!/bin/sh
# datanas-search interrupted with --stop-after and continued with --resume ends bit-identical
# (alpha, genotype, checkpoint bytes) to an uninterrupted run. Needs Fashion-MNIST (77 otherwise).
set -eu
search=$1
[ -d /usr/share/datasets/fashion-mnist ] || { echo "Fashion-MNIST not installed: skipped"; exit 77; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
flags="--train-limit 192 --init-channels 4 --layers 3 --nodes 3 --epochs 3 --batch-size 32 --sparse --M 3"
"$search" $flags --out "$dir/straight" > "$dir/straight.log" 2>&1
"$search" $flags --out "$dir/split" --stop-after 1 > "$dir/split1.log" 2>&1
grep -q "continue with --resume" "$dir/split1.log"
# As if the run had been killed after logging epoch 2 but before its checkpoint landed.
echo '2,stale row of a lost epoch' >> "$dir/split/log.csv"
[ ! -f "$dir/split/summary.json" ]
"$search" $flags --out "$dir/split" --resume --stop-after 1 > "$dir/split2.log" 2>&1
grep -q "resumed from .* at epoch 1 of 3" "$dir/split2.log"
"$search" $flags --out "$dir/split" --resume > "$dir/split3.log" 2>&1
for f in alpha.json genotype.txt genotype.json checkpoint summary.json; do
  cmp "$dir/straight/$f" "$dir/split/$f" || { echo "FAIL: $f differs after resume"; exit 1; }
done
[ "$(wc -l < "$dir/split/log.csv")" -eq 4 ] || { echo "FAIL: log.csv should hold a header and 3 epochs"; exit 1; }
echo "ok: resumed run is bit-identical"
