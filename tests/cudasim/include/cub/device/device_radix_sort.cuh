// cub/device/device_radix_sort.cuh (cudasim) - cub::DeviceRadixSort::SortPairs on the host.
//
// The simulator's stand-in for CUB's device radix sort, the pointer overload of SortPairs that
// datanas uses, with CUB's protocol and results:
//   - d_temp_storage == nullptr: only sets temp_storage_bytes (1 here) and returns cudaSuccess;
//   - otherwise sorts num_items (key, value) pairs ascending by the bits [begin_bit, end_bit) of
//     each key, stably (equal keys keep their input order), as one work item queued with
//     cudasim::enqueue on `stream` (so it runs in stream order and is recorded under capture).
// Keys are ordered as CUB orders them: unsigned integers by value, signed integers by value
// (sign bit flipped), floating point by value with -0.0 equal to +0.0 (NaNs by their bits).
// Bits are counted on that order-preserving transformation of the key, as in CUB.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <numeric>
#include <type_traits>
#include <vector>

#include "cuda_runtime.h"

namespace cub {

namespace cudasim_detail {

template <std::size_t Bytes>
struct UnsignedBits;
template <>
struct UnsignedBits<1> {
  using type = std::uint8_t;
};
template <>
struct UnsignedBits<2> {
  using type = std::uint16_t;
};
template <>
struct UnsignedBits<4> {
  using type = std::uint32_t;
};
template <>
struct UnsignedBits<8> {
  using type = std::uint64_t;
};

/// The key's bits transformed so that unsigned comparison orders keys as CUB does.
template <class Key>
std::uint64_t radix_bits(Key key) {
  static_assert(std::is_integral_v<Key> || std::is_floating_point_v<Key>,
                "cudasim SortPairs: integral or floating-point keys only");
  using U = typename UnsignedBits<sizeof(Key)>::type;
  constexpr U sign = U(U(1) << (sizeof(Key) * 8 - 1));
  if constexpr (std::is_floating_point_v<Key>) {
    if (key == Key(0)) key = Key(0);  // -0.0 sorts as +0.0
    U u;
    std::memcpy(&u, &key, sizeof(Key));
    return std::uint64_t((u & sign) ? U(~u) : U(u ^ sign));
  } else {
    U u;
    std::memcpy(&u, &key, sizeof(Key));
    if constexpr (std::is_signed_v<Key>) u ^= sign;
    return std::uint64_t(u);
  }
}

}  // namespace cudasim_detail

struct DeviceRadixSort {
  /// Sorts (key, value) pairs by key: see the file comment.
  template <typename KeyT, typename ValueT, typename NumItemsT>
  static cudaError_t SortPairs(void* d_temp_storage, std::size_t& temp_storage_bytes,
                               const KeyT* d_keys_in, KeyT* d_keys_out, const ValueT* d_values_in,
                               ValueT* d_values_out, NumItemsT num_items, int begin_bit = 0,
                               int end_bit = sizeof(KeyT) * 8, cudaStream_t stream = 0) {
    constexpr std::size_t kTempBytes = 1;
    if (d_temp_storage == nullptr) {
      temp_storage_bytes = kTempBytes;
      return cudaSuccess;
    }
    if (temp_storage_bytes < kTempBytes) return cudaErrorInvalidValue;
    constexpr int key_bits = int(sizeof(KeyT) * 8);
    if (begin_bit < 0 || end_bit > key_bits || begin_bit > end_bit) return cudaErrorInvalidValue;
    if (!(num_items > NumItemsT(0))) return cudaSuccess;
    const std::size_t n = std::size_t(num_items);
    if (!d_keys_in || !d_keys_out || !d_values_in || !d_values_out) return cudaErrorInvalidValue;
    return cudasim::enqueue(stream, [=] {
      const int width = end_bit - begin_bit;
      const std::uint64_t mask = width >= 64 ? ~std::uint64_t(0) : (std::uint64_t(1) << width) - 1;
      std::vector<std::uint64_t> digit(n);
      for (std::size_t i = 0; i < n; ++i)
        digit[i] = width == 0 ? 0 : (cudasim_detail::radix_bits(d_keys_in[i]) >> begin_bit) & mask;
      std::vector<std::size_t> order(n);
      std::iota(order.begin(), order.end(), std::size_t(0));
      std::stable_sort(order.begin(), order.end(),
                       [&](std::size_t a, std::size_t b) { return digit[a] < digit[b]; });
      // Copy first: the outputs may alias the inputs.
      std::vector<KeyT> keys(n);
      std::vector<ValueT> values(n);
      for (std::size_t i = 0; i < n; ++i) {
        keys[i] = d_keys_in[order[i]];
        values[i] = d_values_in[order[i]];
      }
      std::copy(keys.begin(), keys.end(), d_keys_out);
      std::copy(values.begin(), values.end(), d_values_out);
    });
  }
};

}  // namespace cub
