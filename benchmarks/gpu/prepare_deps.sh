#!/usr/bin/env bash
# Copies the build dependencies that the device machine lacks into <repo>/.deps (gitignored), so
# that the device tool can carry them with the working tree (carry: [".deps"]).
#
# The device machine has nvcc, CUDA, cuBLAS, meson, ninja, cmake and a C++ compiler, but neither
# Eigen nor doctest, and perhaps no zlib headers or pkg-config. This script, run HERE (on the
# development machine, which has them under /usr), lays out a small prefix:
#
#   .deps/include/{eigen3/Eigen, doctest, zlib.h, zconf.h}
#   .deps/lib/libz.so*                                    (x86-64, as the device machine)
#   .deps/share/eigen3/cmake/eigen3-config*.cmake         (written here, relocatable)
#   .deps/lib/cmake/doctest/doctestConfig*.cmake          (written here: Debian's hard-codes /usr)
#   .deps/lib/pkgconfig/{eigen3,zlib}.pc                  (relocatable through ${pcfiledir})
#   .deps/bin/pkg-config                                  (a stub that finds nothing, put on PATH
#                                                          by device_check.sh only when the
#                                                          machine has no pkg-config, so that
#                                                          meson falls back to CMake)
#
# About 7 MB. benchmarks/gpu/device_check.sh points meson at it (cmake_prefix_path,
# pkg_config_path). Re-running replaces .deps entirely.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
deps="$repo/.deps"
eigen_src=${EIGEN_INCLUDE:-/usr/include/eigen3}
doctest_src=${DOCTEST_INCLUDE:-/usr/include/doctest}
libdir=${ZLIB_LIBDIR:-/usr/lib/x86_64-linux-gnu}

for f in "$eigen_src/Eigen/Core" "$doctest_src/doctest.h" \
         /usr/include/zlib.h /usr/include/zconf.h "$libdir/libz.so"; do
  [ -e "$f" ] || { echo "prepare_deps: $f is missing on this machine (install libeigen3-dev, doctest-dev, zlib1g-dev)" >&2; exit 1; }
done
git -C "$repo" check-ignore -q .deps/include || { echo "prepare_deps: .deps is not gitignored in $repo" >&2; exit 1; }

rm -rf "$deps"
mkdir -p "$deps/include/eigen3" "$deps/lib/cmake/doctest" "$deps/lib/pkgconfig" \
         "$deps/share/eigen3/cmake" "$deps/bin"

# Headers. Eigen's unsupported/ modules are not used by datanas.
cp -r "$eigen_src/Eigen" "$eigen_src/signature_of_eigen3_matrix_library" "$deps/include/eigen3/"
cp -r "$doctest_src" "$deps/include/doctest"
cp /usr/include/zlib.h /usr/include/zconf.h "$deps/include/"
cp -P "$libdir"/libz.so* "$deps/lib/"

eigen_version=$(sed -n 's/^Version: *//p' /usr/share/pkgconfig/eigen3.pc 2>/dev/null || true)
eigen_version=${eigen_version:-3.4.0}
doctest_version=$(for part in MAJOR MINOR PATCH; do
  sed -n "s/^#define DOCTEST_VERSION_$part \([0-9]*\)$/\1/p" "$doctest_src/doctest.h"; done | paste -sd.)
zlib_version=$(sed -n 's/^#define ZLIB_VERSION "\(.*\)"/\1/p' /usr/include/zlib.h)

# Eigen's own CMake package names its target Eigen3::Eigen, which meson's lookup of "eigen3"
# does not pick up; write one it does (an interface target eigen3::eigen3 and eigen3_VERSION).
cat > "$deps/share/eigen3/cmake/eigen3-config.cmake" <<CMAKE
# Minimal relocatable Eigen package for meson (written by benchmarks/gpu/prepare_deps.sh).
get_filename_component(_eigen3_prefix "\${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
if(NOT TARGET eigen3::eigen3)
  add_library(eigen3::eigen3 INTERFACE IMPORTED)
  set_target_properties(eigen3::eigen3 PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "\${_eigen3_prefix}/include/eigen3")
endif()
set(eigen3_VERSION "$eigen_version")
set(eigen3_FOUND TRUE)
CMAKE
cat > "$deps/share/eigen3/cmake/eigen3-config-version.cmake" <<CMAKE
set(PACKAGE_VERSION "$eigen_version")
if(NOT PACKAGE_FIND_VERSION VERSION_GREATER PACKAGE_VERSION)
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
endif()
CMAKE

# doctest ships only a CMake package, and Debian's hard-codes the prefix /usr: write a
# relocatable one (header-only: an interface target with the include directory).
cat > "$deps/lib/cmake/doctest/doctestConfig.cmake" <<CMAKE
# Minimal relocatable doctest package (written by benchmarks/gpu/prepare_deps.sh).
get_filename_component(_doctest_prefix "\${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
if(NOT TARGET doctest::doctest)
  add_library(doctest::doctest INTERFACE IMPORTED)
  set_target_properties(doctest::doctest PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "\${_doctest_prefix}/include")
endif()
set(doctest_VERSION "$doctest_version")
set(doctest_FOUND TRUE)
CMAKE
cat > "$deps/lib/cmake/doctest/doctestConfigVersion.cmake" <<CMAKE
set(PACKAGE_VERSION "$doctest_version")
set(PACKAGE_VERSION_COMPATIBLE TRUE)
if(PACKAGE_FIND_VERSION STREQUAL PACKAGE_VERSION)
  set(PACKAGE_VERSION_EXACT TRUE)
endif()
CMAKE

cat > "$deps/lib/pkgconfig/eigen3.pc" <<PC
prefix=\${pcfiledir}/../..
Name: Eigen3
Description: Eigen headers carried for the device machine
Version: $eigen_version
Cflags: -I\${prefix}/include/eigen3
PC
cat > "$deps/lib/pkgconfig/zlib.pc" <<PC
prefix=\${pcfiledir}/../..
Name: zlib
Description: zlib carried for the device machine
Version: $zlib_version
Libs: -L\${prefix}/lib -lz
Cflags: -I\${prefix}/include
PC

# A pkg-config that finds nothing (not even its own version), for machines without one.
printf '#!/bin/sh\n# Stub: makes meson fall back to CMake (see prepare_deps.sh).\nexit 1\n' > "$deps/bin/pkg-config"
chmod +x "$deps/bin/pkg-config"

echo "prepare_deps: wrote $(du -sh "$deps" | cut -f1) to $deps (Eigen $eigen_version, doctest $doctest_version, zlib $zlib_version)"
