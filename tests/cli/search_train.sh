#!/bin/sh
# The DATA story at tiny size: datanas-search on Fashion-MNIST, datanas-train of the cell it
# found (from genotype.json), test accuracy in summary.json, --eval-only of the saved model
# giving the same accuracy; an interrupted and resumed training ends bit-identical to a straight
# one; a saved model that does not match the flags is refused. Needs Fashion-MNIST (77 otherwise).
set -eu
search=$1
train=$2
[ -d /usr/share/datasets/fashion-mnist ] || { echo "Fashion-MNIST not installed: skipped"; exit 77; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
field() {  # field FILE KEY: the number after "KEY": in a JSON file
  sed -n "s/.*\"$2\": \([-0-9.e]*\).*/\1/p" "$1" | head -n 1
}

"$search" --train-limit 128 --epochs 1 --init-channels 4 --layers 3 --batch-size 32 --sparse \
  --out "$dir/search" > "$dir/search.log" 2>&1
flags="--dataset fashion-mnist --genotype $dir/search/genotype.json --init-channels 4 --layers 3 \
  --batch-size 32 --train-limit 128 --test-limit 200 --epochs 3"
"$train" $flags --out "$dir/straight" > "$dir/straight.log" 2>&1
acc=$(field "$dir/straight/summary.json" test_accuracy)
[ -n "$acc" ] || { echo "FAIL: no test_accuracy in summary.json"; cat "$dir/straight/summary.json"; exit 1; }
grep -q '"confusion"' "$dir/straight/summary.json"
grep -q '"params_millions"' "$dir/straight/summary.json"
echo "search -> train: test accuracy $acc"

# The saved model evaluates to the same accuracy.
"$train" --eval-only --model "$dir/straight/model.ckpt" --test-limit 200 --out "$dir/eval" > "$dir/eval.log" 2>&1
[ "$(field "$dir/eval/eval.json" test_accuracy)" = "$acc" ] || {
  echo "FAIL: --eval-only gives $(field "$dir/eval/eval.json" test_accuracy), training reported $acc"; exit 1; }

# A model file against flags describing another network: a clear error, exit 2.
if "$train" --eval-only --model "$dir/straight/model.ckpt" --genotype DARTS_V2 --out "$dir/eval" \
    > "$dir/mismatch.log" 2>&1; then
  echo "FAIL: a mismatched --genotype was accepted"; exit 1
fi
grep -q "holds a network with genotype" "$dir/mismatch.log" || { cat "$dir/mismatch.log"; exit 1; }
if "$train" --eval-only --model "$dir/straight/checkpoint" > "$dir/notmodel.log" 2>&1; then
  echo "FAIL: a training checkpoint was accepted as a model"; exit 1
fi
grep -q "is not a model written by datanas-train" "$dir/notmodel.log" || { cat "$dir/notmodel.log"; exit 1; }

# Interrupted twice, resumed: the same bytes as the straight run.
"$train" $flags --out "$dir/split" --stop-after 1 > "$dir/split1.log" 2>&1
grep -q "continue with --resume" "$dir/split1.log"
echo '2,stale row of a lost epoch' >> "$dir/split/log.csv"
"$train" $flags --out "$dir/split" --resume --stop-after 1 > "$dir/split2.log" 2>&1
grep -q "resumed from .* at epoch 1 of 3" "$dir/split2.log"
"$train" $flags --out "$dir/split" --resume > "$dir/split3.log" 2>&1
for f in checkpoint model.ckpt summary.json; do
  cmp "$dir/straight/$f" "$dir/split/$f" || { echo "FAIL: $f differs after resume"; exit 1; }
done
[ "$(wc -l < "$dir/split/log.csv")" -eq 4 ] || { echo "FAIL: log.csv should hold a header and 3 epochs"; exit 1; }
if "$train" $flags --epochs 4 --out "$dir/split" --resume > "$dir/flags.log" 2>&1; then
  echo "FAIL: resumed under different flags"; exit 1
fi
grep -q "was written with different flags" "$dir/flags.log"
echo "ok: search -> train -> eval, resume bit-identical, mismatches refused"
