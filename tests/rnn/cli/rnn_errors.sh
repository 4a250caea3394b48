#!/bin/sh
# Bad input to datanas-search-rnn and datanas-train-rnn gets a clear error and exit status 2.
search=$1
train=$2
fail=0
expect() {  # expect "message part" program args...
  msg=$1; shift
  out=$("$@" 2>&1); rc=$?
  if [ $rc -ne 2 ] || ! echo "$out" | grep -q -- "$msg"; then
    echo "FAIL: $* -> rc $rc, output: $out"; fail=1
  fi
}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
expect "unknown flag --estimatr" "$search" --estimatr egs
expect "'bogus' is not one of {softmax, snas, gdas, egs}" "$search" --estimator bogus
expect "--epochs: 'x' is not a valid integer" "$search" --epochs x
expect "--M: 9 is not supported" "$search" --M 9 --dry-run
expect "--emsize must equal --nhid" "$search" --emsize 100 --dry-run
expect "--sparse needs a hard estimator" "$search" --estimator softmax --sparse
expect "corpus directory '$dir/none' does not exist" "$search" --data-dir "$dir/none"
expect "--resume: no checkpoint at '$dir/out/checkpoint'" "$search" --resume --out "$dir/out"
mkdir -p "$dir/half" && echo "a b" > "$dir/half/ptb.train.txt"
expect "no valid file in '$dir/half'" "$search" --data-dir "$dir/half"
mkdir -p "$dir/bin" && for s in train valid test; do printf 'a\000b\n' > "$dir/bin/ptb.$s.txt"; done
expect "ptb.train.txt: line 1, byte offset 1: control byte 0x00" "$train" --data-dir "$dir/bin"
expect "not a published recurrent cell" "$train" --genotype DARTS_V9
expect "unknown op 'gelu'" "$train" --genotype "Genotype(recurrent=[('gelu', 0)], concat=range(1, 2))" --dry-run
expect "--bptt must be >= 2" "$train" --bptt 1
mkdir -p "$dir/good" && for s in train valid test; do echo " a b c a b " > "$dir/good/ptb.$s.txt"; done
mkdir -p "$dir/bad" && printf 'garbage' > "$dir/bad/checkpoint"
expect "checkpoint '$dir/bad/checkpoint'" "$train" --resume --out "$dir/bad" --data-dir "$dir/good" --batch-size 1 --eval-batch-size 1
expect "'gpu' is not one of {cpu, cuda}" "$search" --device gpu --dry-run
expect "'gpu' is not one of {cpu, cuda}" "$train" --device gpu --dry-run
expect "--cuda-graph needs --device cuda" "$search" --cuda-graph --dry-run
expect "--cuda-graph needs a dense step" "$search" --device cuda --cuda-graph --sparse --dry-run
expect "--cuda-graph needs --device cuda" "$train" --cuda-graph --dry-run
# --device cuda: without a usable GPU (or without the CUDA backend) a clear error, not a crash.
if ! command -v nvidia-smi > /dev/null || ! nvidia-smi > /dev/null 2>&1; then
  for prog in "$search" "$train"; do
    out=$("$prog" --device cuda --dry-run 2>&1); rc=$?
    if [ $rc -ne 2 ] || ! echo "$out" | grep -qE -- "--device cuda: (no CUDA device|this build has no CUDA backend)"; then
      echo "FAIL: $prog --device cuda without a GPU -> rc $rc, output: $out"; fail=1
    fi
  done
fi
[ $fail -eq 0 ] && echo "ok: every bad input was named"
exit $fail
