// datanas/detail/sanitizer.hpp - whether AddressSanitizer is on, for every compiler.
//
// GCC defines __SANITIZE_ADDRESS__ under -fsanitize=address; clang (14 at least) defines no
// macro and answers __has_feature(address_sanitizer) instead. Code that must know (the
// allocators' poisoning, the tests' malloc interposition, the CUDA simulator's stack switches)
// tests DATANAS_ASAN, so that a clang ASan build behaves as a g++ one.
#pragma once

#if defined(__SANITIZE_ADDRESS__)
#define DATANAS_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DATANAS_ASAN 1
#endif
#endif

#if defined(DATANAS_ASAN)
#include <sanitizer/asan_interface.h>
#define DATANAS_ASAN_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define DATANAS_ASAN_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define DATANAS_ASAN_POISON(p, n) ((void)(p), (void)(n))
#define DATANAS_ASAN_UNPOISON(p, n) ((void)(p), (void)(n))
#endif
