// Counts the heap allocations of the whole process, for the tests that prove a step makes none:
// every malloc-family call (ours, Eigen's, libstdc++'s, OpenMP's) goes through the definitions
// below, which interpose the C allocator in the executable that includes this header (include
// it in exactly one source file of that executable). Off until a MallocCount is alive.
//
// `ignored` lets a caller leave some allocations out: the GPU tests on the CUDA simulator skip
// the simulator's own (its kernels run on the host), so that only the library's remain.
// AddressSanitizer interposes the allocator itself, so under it (DATANAS_ASAN: g++'s or clang's)
// nothing is counted and `kMallocCounting` is false: tests then skip their checks.
#pragma once

#include <malloc.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdlib>

#include "datanas/detail/sanitizer.hpp"

// Its posix_memalign declaration (Eigen includes it) must come before the definition below.
#if __has_include(<mm_malloc.h>)
#include <mm_malloc.h>
#endif

namespace datanas::testing {

#if defined(DATANAS_ASAN)
inline constexpr bool kMallocCounting = false;
#else
inline constexpr bool kMallocCounting = true;
#endif

namespace malloc_detail {
inline std::atomic<bool> counting{false};
inline std::atomic<long> count{0};
inline bool (*ignored)() = nullptr;
inline void note() {
  if (counting.load(std::memory_order_relaxed) && !(ignored && ignored()))
    count.fetch_add(1, std::memory_order_relaxed);
}
}  // namespace malloc_detail

/// Counts allocations while alive (one at a time). `ignore`: allocations made while it returns
/// true are not counted.
class MallocCount {
 public:
  explicit MallocCount(bool (*ignore)() = nullptr) {
    malloc_detail::ignored = ignore;
    malloc_detail::count = 0;
    malloc_detail::counting = true;
  }
  ~MallocCount() { stop(); }
  MallocCount(const MallocCount&) = delete;
  MallocCount& operator=(const MallocCount&) = delete;
  /// Stops counting; the count so far.
  long stop() {
    malloc_detail::counting = false;
    malloc_detail::ignored = nullptr;
    return malloc_detail::count.load();
  }
  [[nodiscard]] long count() const { return malloc_detail::count.load(); }
};

}  // namespace datanas::testing

#if !defined(DATANAS_ASAN)
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void __libc_free(void*);

void* malloc(std::size_t n) {
  datanas::testing::malloc_detail::note();
  return __libc_malloc(n);
}
void* calloc(std::size_t a, std::size_t b) {
  datanas::testing::malloc_detail::note();
  return __libc_calloc(a, b);
}
void* realloc(void* p, std::size_t n) {
  datanas::testing::malloc_detail::note();
  return __libc_realloc(p, n);
}
void* aligned_alloc(std::size_t al, std::size_t n) {
  datanas::testing::malloc_detail::note();
  return __libc_memalign(al, n);
}
void* memalign(std::size_t al, std::size_t n) {
  datanas::testing::malloc_detail::note();
  return __libc_memalign(al, n);
}
int posix_memalign(void** out, std::size_t al, std::size_t n) {
  datanas::testing::malloc_detail::note();
  *out = __libc_memalign(al, n);
  return *out ? 0 : ENOMEM;
}
void free(void* p) { __libc_free(p); }
}
#endif
