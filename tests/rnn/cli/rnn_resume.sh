#!/bin/sh
# datanas-search-rnn and datanas-train-rnn interrupted with --stop-after and continued with
# --resume end bit-identical to uninterrupted runs (checkpoint, genotype, summary). Runs on a
# generated toy corpus, so it needs no data set.
set -eu
search=$1
train=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/data"
# A toy corpus with some structure (word i+1 follows word i more often than not).
for s in train:900 valid:200 test:200; do
  name=${s%%:*}; n=${s##*:}
  seq 1 "$n" | awk '{ a = ($1 * 7) % 23; printf " w%d w%d w%d w%d \n", a, (a + 1) % 23, ($1 * 5) % 29, (a + 2) % 23 }' \
    > "$dir/data/ptb.$name.txt"
done
check_resume() {  # name program flags...
  name=$1; prog=$2; shift 2
  "$prog" "$@" --data-dir "$dir/data" --out "$dir/$name-straight" > "$dir/$name-straight.log" 2>&1
  "$prog" "$@" --data-dir "$dir/data" --out "$dir/$name-split" --stop-after 1 > "$dir/$name-1.log" 2>&1
  grep -q "continue with --resume" "$dir/$name-1.log"
  echo '2,stale row of a lost epoch' >> "$dir/$name-split/log.csv"
  "$prog" "$@" --data-dir "$dir/data" --out "$dir/$name-split" --resume --stop-after 1 > "$dir/$name-2.log" 2>&1
  grep -q "resumed from .* at epoch 1 of 3" "$dir/$name-2.log"
  "$prog" "$@" --data-dir "$dir/data" --out "$dir/$name-split" --resume > "$dir/$name-3.log" 2>&1
  for f in checkpoint genotype.txt genotype.json summary.json; do
    cmp "$dir/$name-straight/$f" "$dir/$name-split/$f" || { echo "FAIL: $name: $f differs after resume"; exit 1; }
  done
  [ "$(wc -l < "$dir/$name-split/log.csv")" -eq 4 ] || { echo "FAIL: $name: log.csv should hold a header and 3 epochs"; exit 1; }
  grep -q "test ppl" "$dir/$name-straight.log" || { echo "FAIL: $name: no test perplexity reported"; exit 1; }
}
check_resume search "$search" --emsize 8 --nhid 8 --batch-size 8 --eval-batch-size 4 --bptt 8 --epochs 3 --M 3 --sparse
cmp "$dir/search-straight/alpha.json" "$dir/search-split/alpha.json"
check_resume train "$train" --emsize 8 --nhid 8 --batch-size 8 --bptt 8 --epochs 3 --nonmono 0 --test-batch-size 2
grep -q "switching to averaged SGD" "$dir/train-straight.log" && echo "(averaged SGD was active across the resume)"
echo "ok: resumed runs are bit-identical"
