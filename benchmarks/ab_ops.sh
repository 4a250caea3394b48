#!/usr/bin/env bash
# Compares two builds' bench_ops on the same machine: runs them alternately ROUNDS times, one
# thread each, and prints the minimum real time per benchmark and the ratio. Alternating and
# taking the minimum is what makes a before/after comparison usable on a machine whose speed
# drifts between runs (a shared VM).
#   benchmarks/ab_ops.sh BUILD_BEFORE BUILD_AFTER [FILTER] [ROUNDS]
#   benchmarks/ab_ops.sh /tmp/base/build build 'dw|sep_conv' 3
set -euo pipefail
before=$1 after=$2 filter=${3:-.} rounds=${4:-3}
for r in $(seq "$rounds"); do
  for side in before after; do
    dir=$before
    [ "$side" = after ] && dir=$after
    OMP_NUM_THREADS=1 "$dir/benchmarks/bench_ops" --benchmark_filter="$filter" --benchmark_min_time=0.2 \
        --benchmark_format=csv 2>/dev/null | grep 'real_time"' | awk -F, -v s="$side" '{print s, $1, $3}'
  done
done | python3 -c '
import collections, sys
t = collections.defaultdict(list)
order = []
for line in sys.stdin:
    side, name, ms = line.split()
    name = name.strip("\"")
    if name not in order:
        order.append(name)
    t[(name, side)].append(float(ms))
print("%-40s %10s %10s %13s" % ("benchmark", "before ms", "after ms", "after/before"))
for n in order:
    b, a = min(t[(n, "before")]), min(t[(n, "after")])
    print(f"{n:40s} {b:10.3f} {a:10.3f} {a / b:13.3f}")
'
