#!/usr/bin/env bash
# The one prepared check of the CUDA backend on a GPU machine: configure a fresh build for the
# card, build only the GPU tests and the GPU benchmark, run `meson test --suite gpu`, then the
# benchmarks (benchmarks/gpu/bench_gpu_step and its PyTorch twins on the same card), and, where
# compute-sanitizer works, the estimator and depthwise-convolution kernels under memcheck,
# racecheck and synccheck. Logs go to $OUT.
#
# How to run it with the device tool (from the repository root of the development machine):
#   1. benchmarks/gpu/prepare_deps.sh          # once, here: Eigen/doctest/zlib into .deps/
#   2. device run:  command   "bash benchmarks/gpu/device_check.sh"
#                   carry     [".deps"]
#                   timeout_s 540
# The machine has nvcc, CUDA, cuBLAS, meson, ninja, cmake and a compiler, but no Eigen or
# doctest: they come from the carried .deps/. What comes back under $OUT:
#   device_check.log  everything printed (the last lines are a summary table)
#   nvidia-smi.txt    the card, driver and clocks as found
#   meson-log.txt     configure details (dependency lookups), for when configure fails
#   testlog.txt       meson's log of the GPU tests, with each test's output
#   sanitizer.log     compute-sanitizer's reports
#   bench_gpu.jsonl   bench_gpu_step: search step per mode and single ops (median ms, peak MB)
#   torch_gpu.json    benchmarks/pytorch/search_step.py --device cuda (the same steps in PyTorch)
#   torch_gpu_ops.jsonl  benchmarks/pytorch/gpu_ops.py (bench_gpu_step's single ops in PyTorch)
#
# Steps run in order of value (build, GPU tests, benchmarks, compute-sanitizer) within a time
# budget: BUDGET seconds from the start (default 520, under the device tool's 540 s limit); a
# step that would not fit in what is left is skipped and says so in the summary, and each
# step's timeout is cut to what is left, so the logs always come back.
#
# It also runs without a GPU (a dry run: configure and build work, the tests skip with exit
# 77), which is how it was checked on the development machine:
#   OUT=/tmp/devout BUILD_DIR=/tmp/datanas-dry bash benchmarks/gpu/device_check.sh
# Settings (environment): OUT, BUILD_DIR (default /tmp/datanas-gpu-build), GPU_ARCH (default
# 90, the H100/H200), SANITIZE=0 to skip compute-sanitizer, NO_PKG_CONFIG=1 to act as if the
# machine had no pkg-config (tests the CMake fallback), FORCE_CUDA_SHADOW=1 (with CUBLAS_DIR) to
# test the shadow toolkit used when cuBLAS comes only as a Python wheel.
set -uo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$repo/build-device-out}
BUILD_DIR=${BUILD_DIR:-/tmp/datanas-gpu-build}
GPU_ARCH=${GPU_ARCH:-90}
SANITIZE=${SANITIZE:-1}
BUDGET=${BUDGET:-520}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device_check.log") 2>&1

declare -A result
step() { echo; echo "=== $* ($(date +%T))"; }
summary() {
  echo
  echo "=== summary"
  for k in gpu configure build tests bench torch memcheck racecheck synccheck; do
    printf '%-10s %s\n' "$k" "${result[$k]:-not run}"
  done
}
# limit WANTED: WANTED seconds, or what is left of the budget less 10 s for the summary (at
# least 1: `timeout 0` would mean no limit).
limit() {
  local left=$((BUDGET - SECONDS - 10))
  [ "$left" -lt 1 ] && left=1
  [ "$left" -lt "$1" ] && echo "$left" || echo "$1"
}
# fits NEEDED: whether at least NEEDED seconds of the budget are left.
fits() { [ $((BUDGET - SECONDS - 10)) -ge "$1" ]; }
finish() {  # finish EXIT_CODE
  [ -f "$BUILD_DIR/meson-logs/meson-log.txt" ] && cp "$BUILD_DIR/meson-logs/meson-log.txt" "$OUT/"
  [ -f "$BUILD_DIR/meson-logs/testlog.txt" ] && cp "$BUILD_DIR/meson-logs/testlog.txt" "$OUT/"
  summary
  echo "(${SECONDS} s of the ${BUDGET} s budget)"
  exit "$1"
}

# ---- 1. the machine ---------------------------------------------------------------------------
step "machine"
have_gpu=0
if command -v nvidia-smi > /dev/null && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  have_gpu=1
  result[gpu]="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
else
  echo "no GPU visible (nvidia-smi missing or failing): dry run, the GPU tests will skip"
  result[gpu]="none (dry run)"
fi
if ! command -v nvcc > /dev/null; then
  for d in /usr/local/cuda/bin /usr/local/cuda-13/bin; do
    [ -x "$d/nvcc" ] && export PATH="$d:$PATH" && break
  done
fi
if command -v meson > /dev/null; then MESON=(meson); else MESON=(python3 -m mesonbuild.mesonmain); fi
echo "repo:   $repo ($(git -C "$repo" log -1 --oneline 2>/dev/null || echo 'no git metadata'))"
echo "nvcc:   $(command -v nvcc || echo MISSING) $(nvcc --version 2>/dev/null | tail -1)"
echo "c++:    $(c++ --version 2>/dev/null | head -1)"
echo "meson:  ${MESON[*]} $("${MESON[@]}" --version 2>/dev/null)"
echo "ninja:  $(ninja --version 2>/dev/null || echo MISSING)"
echo "cmake:  $(cmake --version 2>/dev/null | head -1 || echo MISSING)"
cuda_root=$(dirname "$(dirname "$(command -v nvcc 2>/dev/null || echo /x/x/x)")")
echo "cuda:   $cuda_root; cudart/cublas there: $(ls "$cuda_root"/lib64/libcudart.so "$cuda_root"/lib64/libcublas.so 2>/dev/null | tr '\n' ' ')"

# cuBLAS: meson's CUDA dependency looks for it inside the toolkit, but an image may ship it only
# as a Python wheel: nvidia-cublas-cu12 in site-packages/nvidia/cublas, or the CUDA 13 wheels
# (PyTorch's cu13 builds) in site-packages/nvidia/cu13, beside the other CUDA 13 libraries. Then
# build a shadow toolkit (links to the real one, plus the wheel's cuBLAS headers and libraries
# only, so the toolkit's own runtime stays the one linked) and point CUDA_PATH at it.
find_cublas_wheel() {
  python3 - << 'PY' 2> /dev/null
import glob, os
import nvidia
for base in nvidia.__path__:
    for sub in ("cublas", "cu13", "cu12"):
        if glob.glob(os.path.join(base, sub, "lib", "libcublas.so.*")):
            print(os.path.join(base, sub))
            raise SystemExit
PY
}
if [ ! -e "$cuda_root/lib64/libcublas.so" ] || [ "${FORCE_CUDA_SHADOW:-0}" = 1 ]; then
  cublas_dir=${CUBLAS_DIR:-$(find_cublas_wheel)}
  if [ -n "$cublas_dir" ] && [ -d "$cublas_dir/lib" ]; then
    shadow=/tmp/datanas-cuda-shadow
    echo "cuBLAS not in $cuda_root/lib64 (or FORCE_CUDA_SHADOW=1): shadow toolkit $shadow with the wheel at $cublas_dir"
    rm -rf "$shadow" && mkdir -p "$shadow/include" "$shadow/lib64"
    for e in "$cuda_root"/*; do
      case "$(basename "$e")" in include | lib64) ;; *) ln -s "$e" "$shadow/" ;; esac
    done
    ln -s "$cuda_root"/include/* "$shadow/include/"
    ln -s "$cuda_root"/lib64/* "$shadow/lib64/"
    ln -sf "$cublas_dir"/include/cublas* "$shadow/include/" 2> /dev/null
    ln -sf "$cublas_dir"/lib/libcublas* "$shadow/lib64/"
    for lib in libcublas libcublasLt; do  # wheels carry only the versioned names
      v=$(ls "$cublas_dir/lib/$lib.so."* 2>/dev/null | head -1)
      [ -n "$v" ] && ln -sf "$v" "$shadow/lib64/$lib.so"
    done
    unset CUDA_ROOT
    # The shadow's lib64, not the wheel's lib: that one may also hold a CUDA runtime.
    export CUDA_PATH="$shadow" CUDA_HOME="$shadow" LD_LIBRARY_PATH="$shadow/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  else
    echo "WARNING: no libcublas.so in $cuda_root/lib64 and no nvidia-cublas wheel: configure will fail"
  fi
fi

# cuDNN: meson looks beside nvcc (or in -Dcudnn_root); an image may ship it only as the Python
# wheel nvidia-cudnn (versioned library names only). Then point cudnn_root at a shadow prefix with
# the wheel's headers and an unversioned libcudnn.so. The build requires cuDNN (-Dcudnn=enabled):
# without it every convolution test would fail, so a missing cuDNN should stop configure.
cudnn_args=()
if ! ls "$cuda_root"/lib64/libcudnn.so > /dev/null 2>&1 && ! ls /usr/lib/x86_64-linux-gnu/libcudnn.so > /dev/null 2>&1; then
  cudnn_dir=${CUDNN_DIR:-$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0])' 2>/dev/null)}
  if [ -n "$cudnn_dir" ] && [ -d "$cudnn_dir/lib" ] && [ -d "$cudnn_dir/include" ]; then
    shadow_dnn=/tmp/datanas-cudnn
    echo "cuDNN not beside nvcc: shadow prefix $shadow_dnn with the wheel at $cudnn_dir"
    rm -rf "$shadow_dnn" && mkdir -p "$shadow_dnn/lib"
    ln -s "$cudnn_dir/include" "$shadow_dnn/include"
    ln -s "$cudnn_dir"/lib/* "$shadow_dnn/lib/"
    v=$(ls "$cudnn_dir"/lib/libcudnn.so.* 2>/dev/null | head -1)
    [ -n "$v" ] && ln -sf "$v" "$shadow_dnn/lib/libcudnn.so"
    cudnn_args=(-Dcudnn_root="$shadow_dnn")
    export LD_LIBRARY_PATH="$cudnn_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  else
    echo "WARNING: no libcudnn.so beside nvcc and no nvidia-cudnn wheel: configure will fail (-Dcudnn=enabled)"
  fi
fi

# ---- 2. carried dependencies ------------------------------------------------------------------
deps="$repo/.deps"
if [ ! -f "$deps/include/eigen3/Eigen/Core" ] || [ ! -f "$deps/include/doctest/doctest.h" ]; then
  echo "ERROR: $deps lacks Eigen or doctest: run benchmarks/gpu/prepare_deps.sh on the development"
  echo "machine and name .deps in the device tool's carry list"
  result[configure]="FAIL (no .deps)"
  finish 2
fi
if [ "${NO_PKG_CONFIG:-0}" = 1 ] || ! command -v pkg-config > /dev/null; then
  echo "no pkg-config: using the stub in .deps/bin, so meson finds the dependencies through CMake"
  export PATH="$deps/bin:$PATH"
fi

# ---- 3. configure -----------------------------------------------------------------------------
step "configure $BUILD_DIR for sm_$GPU_ARCH"
rm -rf "$BUILD_DIR"
if timeout 300 "${MESON[@]}" setup "$BUILD_DIR" "$repo" --buildtype=release \
    -Dcuda=enabled -Dcudnn=enabled "${cudnn_args[@]}" -Dgpu_arch="$GPU_ARCH" -Dsamples=false -Dbenchmarks=auto -Dtests=true \
    -Dcmake_prefix_path="$deps" -Dpkg_config_path="$deps/lib/pkgconfig"; then
  result[configure]=ok
else
  result[configure]=FAIL
  finish 1
fi

# ---- 4. build the GPU tests and the GPU benchmark ---------------------------------------------
step "build the GPU tests and bench_gpu_step"
# Every test of suite gpu, by its executable (tests/meson.build names them tests/test_<name>).
mapfile -t targets < <("${MESON[@]}" introspect "$BUILD_DIR" --tests | python3 -c '
import json, os, sys
build = sys.argv[1]
for t in json.load(sys.stdin):
    if any(s == "gpu" or s.endswith(":gpu") for s in t["suite"]):  # "datanas:gpu"
        print(os.path.relpath(t["cmd"][0], build))' "$BUILD_DIR")
echo "targets: ${targets[*]}"
# The benchmark builds in the same call (one parallel build); it is not built by default.
bench_target=()
[ "${BENCH:-1}" = 1 ] && [ "$have_gpu" = 1 ] && bench_target=(benchmarks/gpu/bench_gpu_step)
if [ ${#targets[@]} -gt 0 ] && timeout "$(limit 420)" "${MESON[@]}" compile -C "$BUILD_DIR" \
    "${targets[@]}" "${bench_target[@]}"; then
  result[build]="ok (${#targets[@]} test programs${bench_target:+ and bench_gpu_step}, ${SECONDS} s in)"
elif [ ${#bench_target[@]} -gt 0 ] && timeout "$(limit 420)" "${MESON[@]}" compile -C "$BUILD_DIR" \
    "${targets[@]}"; then
  # The benchmark failed to build: still run the tests.
  result[build]="tests ok, bench_gpu_step FAILED to build (see the log)"
  result[bench]="FAIL (build)"
  bench_target=()
else
  result[build]=FAIL
  finish 1
fi

# ---- 5. run them ------------------------------------------------------------------------------
step "meson test --suite gpu"
timeout "$(limit 300)" "${MESON[@]}" test -C "$BUILD_DIR" --no-rebuild --suite gpu --print-errorlogs
test_rc=$?
counts=$(grep -E '^(Ok|Fail|Skipped|Timeout):' "$BUILD_DIR/meson-logs/testlog.txt" 2>/dev/null | tr -s ' ' | tr '\n' ' ')
skipped=$(sed -n 's/^Skipped: *//p' "$BUILD_DIR/meson-logs/testlog.txt" 2>/dev/null)
if [ $test_rc -eq 124 ]; then
  result[tests]="FAIL: out of time budget after ${SECONDS} s (see testlog.txt for the tests that ran)"
elif [ $test_rc -ne 0 ]; then
  result[tests]="FAIL ($counts)"
elif [ "$have_gpu" = 1 ] && [ "${skipped:-0}" != 0 ]; then
  result[tests]="FAIL: skipped on a machine with a GPU ($counts)"
  test_rc=1
else
  result[tests]="ok ($counts)"
fi

# ---- 6. benchmarks ----------------------------------------------------------------------------
# run_to NAME FILE SECONDS COMMAND...: runs COMMAND with stdout to $OUT/FILE within the budget,
# records the outcome in result[NAME] (appended when it already holds one) and prints FILE.
run_to() {
  local name=$1 file=$2 want=$3 outcome
  shift 3
  if ! fits 20; then
    outcome="skipped (time budget spent at ${SECONDS} s)"
  elif timeout "$(limit "$want")" "$@" > "$OUT/$file"; then
    outcome="ok"
  else
    outcome="FAIL or timeout (see $file and the log)"
  fi
  result[$name]="${result[$name]:+${result[$name]}; }$file: $outcome"
  cat "$OUT/$file" 2>/dev/null
  [ "$outcome" = ok ]
}
bench_rc=0
if [ ${#bench_target[@]} -gt 0 ]; then
  step "GPU benchmarks"
  run_to bench bench_gpu.jsonl 200 "$BUILD_DIR/benchmarks/gpu/bench_gpu_step" \
      --steps "${BENCH_STEPS:-20}" --warmup 3 || bench_rc=1
  step "PyTorch twins"
  run_to torch torch_gpu.json 150 python3 "$repo/benchmarks/pytorch/search_step.py" --device cuda \
      --steps "${BENCH_STEPS:-20}" --warmup 3
  run_to torch torch_gpu_ops.jsonl 60 python3 "$repo/benchmarks/pytorch/gpu_ops.py" \
      --reps "${BENCH_STEPS:-20}" --warmup 3
else
  result[bench]="${result[bench]:-skipped (no GPU or BENCH=0)}"
  result[torch]="skipped (no GPU, BENCH=0 or no bench_gpu_step)"
fi

# ---- 7. compute-sanitizer on our kernels -------------------------------------------------------
sanitizer=$(command -v compute-sanitizer || ls "$cuda_root/bin/compute-sanitizer" 2>/dev/null)
san_rc=0
if [ "$SANITIZE" = 1 ] && [ "$have_gpu" = 1 ] && [ -n "$sanitizer" ]; then
  step "compute-sanitizer"
  # (program, test case): the estimator test that launches every kernel instantiation on every
  # layout, the parity test of our depthwise convolution kernels (shared-memory reduction), batch
  # norm (every block of a channel reads the channel's partial sums; one writes the statistics)
  # and the multi-tensor SGD (up to 64 parameters a launch).
  san_cases=("tests/test_estimators_gpu|*select the CPU*"
             "tests/test_ops_dnn_gpu|our depthwise convolution kernels*"
             "tests/test_ops_dnn_gpu|batch norm gradients on the GPU are deterministic"
             "tests/test_ops_optim_gpu|SGD on the GPU updates many parameters*")
  for tool in memcheck racecheck synccheck; do
    result[$tool]=ok
    for case in "${san_cases[@]}"; do
      if ! fits 30; then
        result[$tool]="${result[$tool]}; skipped '${case#*|}' (time budget spent)"
        continue
      fi
      echo "--- $tool ${case%%|*} '${case#*|}'" | tee -a "$OUT/sanitizer.log"
      if ! timeout "$(limit 120)" "$sanitizer" --tool "$tool" --error-exitcode 9 "$BUILD_DIR/${case%%|*}" \
          --test-case="${case#*|}" >> "$OUT/sanitizer.log" 2>&1; then
        result[$tool]="FAIL or timeout (see sanitizer.log)"
        san_rc=1
      fi
      tail -3 "$OUT/sanitizer.log"
    done
  done
else
  for tool in memcheck racecheck synccheck; do result[$tool]="skipped (no GPU, no compute-sanitizer, or SANITIZE=0)"; done
fi

[ "${result[bench]:-}" = "FAIL (build)" ] && bench_rc=1
[ $test_rc -eq 0 ] && [ $san_rc -eq 0 ] && [ $bench_rc -eq 0 ] && finish 0
finish 1
