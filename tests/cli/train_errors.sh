#!/bin/sh
# Bad input to datanas-train gets a clear error and exit status 2, never a crash. Needs no data.
train=$1
fail=0
expect() {  # expect "message part" args...
  msg=$1; shift
  out=$("$train" "$@" 2>&1); rc=$?
  if [ $rc -ne 2 ] || ! echo "$out" | grep -qF -- "$msg"; then
    echo "FAIL: datanas-train $* -> rc $rc, output: $out"; fail=1
  fi
}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
expect "unknown flag --genotpye" --genotpye DARTS_V2
expect "genotype 'DARTS_V3' is not a published name" --genotype DARTS_V3 --dry-run
expect "normal cell, node 0: unknown op 'conv_7x7'" --dry-run --genotype \
  "Genotype(normal=[('conv_7x7', 0), ('sep_conv_3x3', 1)], normal_concat=[2], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2])"
expect "reduce cell, node 0: op 'max_pool_3x3' has input 3" --dry-run --genotype \
  "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], normal_concat=[2], reduce=[('max_pool_3x3', 3), ('max_pool_3x3', 1)], reduce_concat=[2])"
expect "genotype text, offset" --dry-run --genotype "Genotype(normal=[('sep_conv_3x3', 0)"
printf '{"normal": 3}' > "$dir/genotype.json"
expect "genotype file '$dir/genotype.json': " --dry-run --genotype "$dir/genotype.json"
expect "auxiliary head: cell 2L/3 outputs 32x32 maps" --dry-run --layers 2 --init-channels 4
expect "--init-channels must be even" --init-channels 5
expect "--drop-path must be in [0, 1)" --drop-path 1
expect "--eval-only needs --model" --eval-only
expect "--model: no file at '$dir/none.ckpt'" --eval-only --model "$dir/none.ckpt"
printf 'garbage' > "$dir/garbage.ckpt"
expect "garbage.ckpt" --eval-only --model "$dir/garbage.ckpt"
expect "--model is read only with --eval-only" --model "$dir/garbage.ckpt"
expect "CIFAR-10 directory '$dir/none' does not exist" --data-dir "$dir/none"
expect "directory '$dir/none' does not exist" --dataset fashion-mnist --data-dir "$dir/none"
expect "--resume: no checkpoint at '$dir/out/checkpoint'" --resume --out "$dir/out" --data-dir "$dir"
expect "'gpu' is not one of {cpu, cuda}" --device gpu --dry-run
expect "--cuda-graph needs --device cuda" --cuda-graph --dry-run
expect "'fast' is not one of {cudnn, own}" --depthwise fast --dry-run
expect "--depthwise own needs --device cuda" --depthwise own --dry-run
# --device cuda: without a usable GPU (or without the CUDA backend) a clear error, not a crash.
if ! command -v nvidia-smi > /dev/null || ! nvidia-smi > /dev/null 2>&1; then
  out=$("$train" --device cuda --dry-run 2>&1); rc=$?
  if [ $rc -ne 2 ] || ! echo "$out" | grep -qE -- "--device cuda: (no CUDA device|this build has no CUDA backend)"; then
    echo "FAIL: --device cuda without a GPU -> rc $rc, output: $out"; fail=1
  fi
fi
[ $fail -eq 0 ] && echo "ok: every bad input was named"
exit $fail
