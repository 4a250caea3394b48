#!/bin/sh
# expect_compile_error.sh SOURCE PATTERN COMPILER... : passes when compiling SOURCE fails with an
# error message containing PATTERN (a compile-fail test, like Eigen's failtest/).
src=$1; pattern=$2; shift 2
out=$("$@" -fsyntax-only "$src" 2>&1) && { echo "FAIL: $src compiled, but must not"; exit 1; }
echo "$out" | grep -q -- "$pattern" || { echo "FAIL: error for $src does not mention '$pattern':"; echo "$out" | head -20; exit 1; }
echo "ok: $src is rejected with '$pattern'"
