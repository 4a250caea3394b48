// datanas/detail/eigen.hpp - <Eigen/Core>, included with GCC's uninitialized-variable warnings
// off for its own lines only.
//
// Why: GCC 12 (Debian 12's compiler) defines the AVX-512 intrinsics' _mm512_undefined_ps() as a
// self-initialised variable (`__m512 __Y = __Y;`), and once Eigen's packet code is inlined into
// our kernels, -Wall reports every such use as "'__Y' is used uninitialized": thousands of
// lines per build with -march=native on an AVX-512 machine, none of them about datanas or about
// a real read of an undefined value (a known issue of GCC 12's intrinsic headers). GCC decides
// whether a warning is enabled by the #pragma state at the warning's source line, and those
// lines are in <immintrin.h>, which Eigen includes: wrapping this include, and only it, turns the
// warnings off there and leaves them on in datanas and in user code. Every datanas header
// includes Eigen through this one, so whichever comes first carries the pragma.
#pragma once

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <Eigen/Core>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
