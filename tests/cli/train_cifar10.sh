#!/bin/sh
# datanas-train on real CIFAR-10 at tiny size: 3 channels, 32x32, the CIFAR auxiliary head on
# 8x8 maps, the per-class report. Needs the data in $DATANAS_CIFAR10_DIR or the directory given
# as $2 (../shared/data/cifar10 beside the source tree); exits 77 (skipped) without it.
set -eu
train=$1
data=${DATANAS_CIFAR10_DIR:-$2}
[ -f "$data/data_batch_1.bin" ] || { echo "CIFAR-10 not found in '$data': skipped"; exit 77; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$train" --dataset cifar10 --data-dir "$data" --genotype DATA_M4 --init-channels 4 --layers 3 \
  --batch-size 32 --train-limit 96 --test-limit 100 --epochs 1 --out "$dir" > "$dir/log" 2>&1 ||
  { cat "$dir/log"; exit 1; }
grep -q "train: cifar10, 96 training / 100 test images, C=4, 3 cells, auxiliary head" "$dir/log"
grep -q '"airplane"' "$dir/summary.json"
grep -q '"test_images": 100' "$dir/summary.json"
echo "ok: CIFAR-10 training and report"
