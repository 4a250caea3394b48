#!/bin/sh
# Bad input to datanas-search gets a clear error and exit status 2, never a crash.
search=$1
fail=0
expect() {  # expect "message part" args...
  msg=$1; shift
  out=$("$search" "$@" 2>&1); rc=$?
  if [ $rc -ne 2 ] || ! echo "$out" | grep -q -- "$msg"; then
    echo "FAIL: datanas-search $* -> rc $rc, output: $out"; fail=1
  fi
}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
expect "unknown flag --estimatr" --estimatr egs
expect "'bogus' is not one of {softmax, snas, gdas, egs}" --estimator bogus
expect "--epochs: 'x' is not a valid integer" --epochs x
expect "--M: 9 is not supported" --M 9 --dry-run
expect "--nodes: 7 is not supported" --nodes 7 --dry-run
expect "--sparse needs a hard estimator" --estimator softmax --sparse
expect "directory '$dir/none' does not exist" --data-dir "$dir/none"
expect "CIFAR-10 directory '$dir/none' does not exist" --dataset cifar10 --data-dir "$dir/none"
expect "--resume: no checkpoint at '$dir/out/checkpoint'" --resume --out "$dir/out" --data-dir "$dir"
mkdir -p "$dir/bad" && printf 'garbage' > "$dir/bad/checkpoint"
[ -d /usr/share/datasets/fashion-mnist ] && expect "checkpoint" --resume --out "$dir/bad"
expect "'gpu' is not one of {cpu, cuda}" --device gpu --dry-run
expect "--cuda-graph needs --device cuda" --cuda-graph --dry-run
expect "--cuda-graph needs a dense step" --device cuda --cuda-graph --sparse --dry-run
expect "'fast' is not one of {cudnn, own}" --depthwise fast --dry-run
expect "--depthwise own needs --device cuda" --depthwise own --dry-run
# --device cuda: without a usable GPU (or without the CUDA backend) a clear error, not a crash.
if ! command -v nvidia-smi > /dev/null || ! nvidia-smi > /dev/null 2>&1; then
  out=$("$search" --device cuda --dry-run 2>&1); rc=$?
  if [ $rc -ne 2 ] || ! echo "$out" | grep -qE -- "--device cuda: (no CUDA device|this build has no CUDA backend)"; then
    echo "FAIL: --device cuda without a GPU -> rc $rc, output: $out"; fail=1
  fi
fi
[ $fail -eq 0 ] && echo "ok: every bad input was named"
exit $fail
