// datanas/cuda/dense.cuh - the kernels of the dense op family (datanas/ops/linear.hpp, loss.hpp,
// structure.hpp, dropout.hpp) and their launchers; declarations and contracts in dense.hpp.
//
// Every kernel follows its CPU op (the specification) statement by statement where the order
// of floating-point operations matters: the row reductions of softmax use a fixed tree (so a
// launch gives the same bits every time, but not the CPU's bits: the CPU sums with Eigen's
// vectorised order), dropout draws the CPU's Philox words, the embedding gradient adds rows in
// the CPU's order. No atomics, no host synchronisation.
#pragma once

#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <cstdint>

#include "datanas/core/error.hpp"
#include "datanas/core/random.hpp"
#include "datanas/cuda/check.cuh"
#include "datanas/cuda/dense.hpp"
#include "datanas/cuda/launch.cuh"
#include "datanas/cuda/map.cuh"

namespace datanas::cuda {

namespace dense_detail {

inline constexpr int kThreads = 256;

/// Blocks for a grid-stride loop over n items (kThreads == kMapThreads).
inline unsigned blocks_for(std::int64_t n, std::int64_t cap = 4096) { return map_blocks(n, cap); }
static_assert(kThreads == kMapThreads);
/// Threads of a block that works on one row of k elements: a multiple of 32 (the warp
/// reductions need whole warps), at most 256.
inline unsigned row_threads(std::int64_t k) {
  return unsigned(std::clamp<std::int64_t>((k + 31) / 32 * 32, 32, kThreads));
}
/// Blocks of a one-block-per-row launch (the kernels loop when rows exceed it).
inline unsigned row_blocks(std::int64_t rows) {
  return unsigned(std::clamp<std::int64_t>(rows, 1, std::int64_t(1) << 20));
}

using cuda::launch_map;

template <class T>
__device__ __forceinline__ T quiet_nan() {
  if constexpr (sizeof(T) == 4)
    return __int_as_float(0x7fffffff);
  else
    return __longlong_as_double(0x7ff8000000000000LL);
}
template <class T>
__device__ __forceinline__ T negative_infinity() {
  if constexpr (sizeof(T) == 4)
    return __int_as_float(int(0xff800000u));
  else
    return __longlong_as_double(static_cast<long long>(0xfff0000000000000ull));
}
template <class T>
__device__ __forceinline__ void store(T* g, T v, bool accumulate) {
  *g = accumulate ? *g + v : v;
}

struct MaxOp {
  template <class T>
  __device__ T operator()(T a, T b) const { return a > b ? a : b; }
};
struct SumOp {
  template <class T>
  __device__ T operator()(T a, T b) const { return a + b; }
};

/// The reduction of v over the block, returned to every thread: a butterfly inside each warp,
/// then every thread combines the warps' results in warp order. The order is fixed by the
/// block size, so the result is deterministic. Every thread of the block must call it (block
/// size a multiple of 32); `shared` holds 32 values and may be reused by the next call.
template <class T, class Op>
__device__ T block_reduce(T v, T* shared, Op op) {
  for (int offset = 16; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  const int warp = int(threadIdx.x) / 32, warps = int(blockDim.x) / 32;
  __syncthreads();  // the previous call's readers are done with `shared`
  if (threadIdx.x % 32 == 0) shared[warp] = v;
  __syncthreads();
  T r = shared[0];
  for (int i = 1; i < warps; ++i) r = op(r, shared[i]);
  return r;
}

/// log sum_j exp(x_j) of one row, max-shifted as on the CPU: m + log(sum exp(x_j - m)).
template <class T>
__device__ T row_logsumexp(const T* x, std::int64_t k, T* shared) {
  T m = negative_infinity<T>();
  for (std::int64_t c = threadIdx.x; c < k; c += blockDim.x) m = MaxOp{}(m, x[c]);
  m = block_reduce(m, shared, MaxOp{});
  T s = 0;
  for (std::int64_t c = threadIdx.x; c < k; c += blockDim.x) s += exp(x[c] - m);
  s = block_reduce(s, shared, SumOp{});
  return m + log(s);
}

// ---- linear ----

template <class T>
struct BiasRowsOp {
  std::int64_t cols;
  const T* b;
  T* y;
  __device__ void operator()(std::int64_t i) const { y[i] = b[i % cols]; }
};

/// Block (32, 8): thread (x, y) sums rows y, y + 8, ... of column 32 blockIdx.x + x, then
/// thread (x, 0) adds the eight partial sums in order.
template <class T>
__global__ void __launch_bounds__(256)
    column_sums_kernel(std::int64_t rows, std::int64_t cols, const T* dy, T* g, bool accumulate) {
  __shared__ T part[8][33];
  const std::int64_t c = std::int64_t(blockIdx.x) * 32 + threadIdx.x;
  T s = 0;
  if (c < cols)
    for (std::int64_t r = threadIdx.y; r < rows; r += 8) s += dy[r * cols + c];
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    T t = part[0][threadIdx.x];
    for (int j = 1; j < 8; ++j) t += part[j][threadIdx.x];
    store(g + c, t, accumulate);
  }
}

// ---- embedding ----

template <class T>
struct EmbeddingForwardOp {
  std::int64_t e, vocab;
  const std::int32_t* ids;
  const T* w;
  T* y;
  __device__ void operator()(std::int64_t i) const {
    const std::int32_t id = ids[i / e];
    y[i] = id >= 0 && id < vocab ? w[std::int64_t(id) * e + i % e] : quiet_nan<T>();
  }
};
struct IotaOp {
  std::int32_t* p;
  __device__ void operator()(std::int64_t i) const { p[i] = std::int32_t(i); }
};

/// keys: the ids sorted (stably); pos: their positions. Sorted index s starts a run of equal
/// ids when s == 0 or keys[s - 1] != keys[s]; the block at such an s owns the row keys[s] and
/// adds dy[pos[t], :] for t over the run, in increasing t, i.e. increasing position (the sort
/// is stable): the CPU's order. Blocks at other s do nothing.
template <class T>
__global__ void __launch_bounds__(kThreads)
    embedding_grad_kernel(int count, std::int64_t e, std::int64_t vocab, const std::int32_t* keys,
                          const std::int32_t* pos, const T* dy, T* g, bool accumulate) {
  // 64-bit s: count < 2^31 and the step up to 2^20, so an int s could wrap near 2^31.
  for (std::int64_t s = blockIdx.x; s < count; s += gridDim.x) {
    const std::int32_t key = keys[s];
    if ((s > 0 && keys[s - 1] == key) || key < 0 || key >= vocab) continue;
    std::int64_t end = s + 1;
    while (end < count && keys[end] == key) ++end;
    T* row = g + std::int64_t(key) * e;
    for (std::int64_t c = threadIdx.x; c < e; c += blockDim.x) {
      T acc = 0;
      for (std::int64_t t = s; t < end; ++t) acc += dy[std::int64_t(pos[t]) * e + c];
      store(row + c, acc, accumulate);
    }
  }
}

/// Bytes of CUB's temporary storage for sorting `count` (int32 id, int32 position) pairs.
inline std::size_t sort_temp_bytes(int count) {
  std::size_t bytes = 0;
  DATANAS_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, bytes, static_cast<const std::int32_t*>(nullptr), static_cast<std::int32_t*>(nullptr),
      static_cast<const std::int32_t*>(nullptr), static_cast<std::int32_t*>(nullptr), count));
  return bytes;
}
/// int32 elements rounded up to 256 bytes, so that every region of the workspace is aligned as
/// cudaMalloc's blocks are.
inline std::int64_t aligned_words(std::int64_t words) { return (words + 63) / 64 * 64; }

// ---- softmax and losses ----

template <class T>
__global__ void log_softmax_kernel(std::int64_t rows, std::int64_t k, const T* x, T* y, bool exponentiate) {
  __shared__ T shared[32];
  for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * k;
    T* yr = y + r * k;
    const T lse = row_logsumexp(xr, k, shared);
    for (std::int64_t c = threadIdx.x; c < k; c += blockDim.x) {
      const T v = xr[c] - lse;  // the CPU's softmax is exp(log_softmax): round, then exp
      yr[c] = exponentiate ? exp(v) : v;
    }
  }
}

template <class T>
__global__ void softmax_backward_kernel(std::int64_t rows, std::int64_t k, const T* y, const T* dy, T* g,
                                        bool accumulate, bool from_log) {
  __shared__ T shared[32];
  for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T *yr = y + r * k, *dr = dy + r * k;
    T* gr = g + r * k;
    T s = 0;  // softmax: <dy, y>; log softmax: sum(dy)
    for (std::int64_t c = threadIdx.x; c < k; c += blockDim.x) s += from_log ? dr[c] : yr[c] * dr[c];
    s = block_reduce(s, shared, SumOp{});
    for (std::int64_t c = threadIdx.x; c < k; c += blockDim.x)
      store(gr + c, from_log ? dr[c] - exp(yr[c]) * s : yr[c] * (dr[c] - s), accumulate);
  }
}

/// Per row: lse[r], and term[r] = -(logits[r, label] - lse[r]) (NaN for a bad label).
template <class T>
__global__ void cross_entropy_rows_kernel(std::int64_t n, std::int64_t k, const T* logits,
                                          const std::int32_t* labels, T* lse, T* term) {
  __shared__ T shared[32];
  for (std::int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const T* xr = logits + r * k;
    const T l = row_logsumexp(xr, k, shared);
    if (threadIdx.x == 0) {
      const std::int32_t label = labels[r];
      lse[r] = l;
      term[r] = label >= 0 && label < k ? -(xr[label] - l) : quiet_nan<T>();
    }
  }
}
/// Per row: its first maximum (each thread scans a strided part, then a tree in shared memory
/// keeps the larger value, the smaller index on ties), compared with the label; exact integer
/// atomics add the hits, so the count does not depend on the order.
template <class T>
__global__ void __launch_bounds__(kThreads)
    count_correct_kernel(std::int64_t n, std::int64_t k, const T* logits, const std::int32_t* labels,
                         std::int32_t* count) {
  __shared__ T value[kThreads];
  __shared__ std::int64_t index[kThreads];
  const unsigned tid = threadIdx.x;
  for (std::int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const T* xr = logits + r * k;
    T best = T(0);
    std::int64_t at = k;  // k: nothing seen
    for (std::int64_t c = tid; c < k; c += blockDim.x)
      if (at == k || xr[c] > best) {  // increasing c: only a larger value replaces
        best = xr[c];
        at = c;
      }
    value[tid] = best;
    index[tid] = at;
    __syncthreads();
    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
      if (tid < half) {
        const T v = value[tid + half];
        const std::int64_t i = index[tid + half];
        if (i < k && (index[tid] == k || v > value[tid] || (v == value[tid] && i < index[tid]))) {
          value[tid] = v;
          index[tid] = i;
        }
      }
      __syncthreads();
    }
    if (tid == 0 && index[0] == std::int64_t(labels[r])) atomicAdd(count, 1);
    __syncthreads();  // value/index are rewritten for the next row
  }
}

/// loss[0] = sum(term) / n, on one block in a fixed order.
template <class T>
__global__ void __launch_bounds__(kThreads) mean_kernel(std::int64_t n, const T* term, T* loss) {
  __shared__ T shared[32];
  T s = 0;
  for (std::int64_t i = threadIdx.x; i < n; i += blockDim.x) s += term[i];
  s = block_reduce(s, shared, SumOp{});
  if (threadIdx.x == 0) loss[0] = s / T(n);
}

template <class T>
struct CrossEntropyBackwardOp {
  std::int64_t n, k;
  const T* logits;
  const std::int32_t* labels;
  const T* lse;
  const T* dloss;
  T* g;
  bool accumulate;
  __device__ void operator()(std::int64_t i) const {
    const std::int64_t r = i / k, c = i % k;
    const std::int32_t label = labels[r];
    const T scale = dloss[0] / T(n);
    T v = exp(logits[i] - lse[r]) * scale;  // the CPU's exp(logp) * scale
    if (c == label) v -= scale;
    if (label < 0 || label >= k) v = quiet_nan<T>();
    store(g + i, v, accumulate);
  }
};

// ---- structure ----

/// Which part owns channel c (c_begin[0] <= c < c_begin[count]); zero-channel parts are skipped.
template <class P>
__device__ __forceinline__ int part_of(const ChannelParts<P>& parts, std::int64_t c) {
  int t = 0;
  while (t + 1 < parts.count && c >= parts.c_begin[t + 1]) ++t;
  return t;
}

/// Over the elements (b, c, j) of the output channels [c_begin[0], c_begin[count]):
/// i = (b * cc + (c - c_begin[0])) * hw + j with cc the parts' channel count.
template <class T>
struct ConcatForwardOp {
  std::int64_t hw, c_total, cc;
  ChannelParts<const T*> parts;
  T* y;
  __device__ void operator()(std::int64_t i) const {
    const std::int64_t j = i % hw, q = i / hw;
    const std::int64_t c = parts.c_begin[0] + q % cc, b = q / cc;
    const int t = part_of(parts, c);
    const std::int64_t ct = parts.c_begin[t + 1] - parts.c_begin[t];
    const T* x = parts.ptr[t];
    y[(b * c_total + c) * hw + j] = x ? x[(b * ct + (c - parts.c_begin[t])) * hw + j] : T(0);
  }
};
template <class T>
struct ConcatBackwardOp {
  std::int64_t hw, c_total, cc;
  const T* dy;
  ChannelParts<T*> parts;
  __device__ void operator()(std::int64_t i) const {
    const std::int64_t j = i % hw, q = i / hw;
    const std::int64_t c = parts.c_begin[0] + q % cc, b = q / cc;
    const int t = part_of(parts, c);
    T* g = parts.ptr[t];
    if (!g) return;
    const std::int64_t ct = parts.c_begin[t + 1] - parts.c_begin[t];
    store(g + (b * ct + (c - parts.c_begin[t])) * hw + j, dy[(b * c_total + c) * hw + j],
          parts.accumulate[t]);
  }
};

template <class T>
struct CropForwardOp {
  std::int64_t h, w, ho, wo;
  int top, left;
  const T* x;
  T* y;
  __device__ void operator()(std::int64_t i) const {
    const std::int64_t q = i % wo, r = (i / wo) % ho, p = i / (wo * ho);
    y[i] = x[(p * h + r + top) * w + q + left];
  }
};
template <class T>
struct CropBackwardOp {
  std::int64_t h, w, ho, wo;
  int top, left;
  const T* dy;
  T* g;
  bool accumulate;
  __device__ void operator()(std::int64_t i) const {
    const std::int64_t q = i % w, r = (i / w) % h, p = i / (w * h);
    if (r >= top && q >= left)
      store(g + i, dy[(p * ho + r - top) * wo + q - left], accumulate);
    else if (!accumulate)
      g[i] = T(0);  // cut away: zero gradient (adding 0 changes nothing)
  }
};

// ---- dropout ----

/// The CPU's scale of element (or sample) i: word i % 4 of counter base + i / 4.
template <class T>
__device__ __forceinline__ T keep_scale(std::uint32_t bits, float keep, T inv_keep) {
  return uniform_open01(bits) < keep ? inv_keep : T(0);
}

/// One thread per Philox counter j: elements 4j .. 4j + 3.
template <class T>
__global__ void __launch_bounds__(kThreads)
    dropout_kernel(std::int64_t n, std::uint64_t seed, std::uint64_t base, const std::uint64_t* base_device,
                   float keep, T inv_keep, const T* src, T* dst, bool accumulate) {
  if (base_device) base = *base_device;  // a captured step's per-replay base
  const std::int64_t counters = (n + 3) / 4, stride = std::int64_t(gridDim.x) * blockDim.x;
  for (std::int64_t j = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < counters; j += stride) {
    const Philox4x32 r = philox4x32(base + std::uint64_t(j), 0, seed);
    for (int w = 0; w < 4; ++w) {
      const std::int64_t i = 4 * j + w;
      if (i >= n) continue;
      const T scale = keep_scale(r.v[w], keep, inv_keep);
      store(dst + i, src ? src[i] * scale : scale, accumulate);
    }
  }
}

/// blockIdx.y walks the samples; each thread draws its sample's scale once.
template <class T>
__global__ void __launch_bounds__(kThreads)
    drop_path_kernel(std::int64_t n, std::int64_t per, std::uint64_t seed, std::uint64_t base,
                     const std::uint64_t* base_device, float keep, T inv_keep, const T* src, T* dst,
                     bool accumulate) {
  if (base_device) base = *base_device;  // a captured step's per-replay base
  const std::int64_t stride = std::int64_t(gridDim.x) * blockDim.x;
  for (std::int64_t s = blockIdx.y; s < n; s += gridDim.y) {
    const T scale =
        keep_scale(philox4x32(base + std::uint64_t(s) / 4, 0, seed).v[s % 4], keep, inv_keep);
    const T* x = src + s * per;
    T* y = dst + s * per;
    for (std::int64_t j = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < per; j += stride)
      store(y + j, scale * x[j], accumulate);
  }
}

}  // namespace dense_detail

// ---- launchers ----------------------------------------------------------------------------------

template <class T>
void bias_rows(std::int64_t rows, std::int64_t cols, const T* b, T* y, cudaStream_t stream) {
  dense_detail::launch_map(rows * cols, dense_detail::BiasRowsOp<T>{cols, b, y}, stream);
}

template <class T>
void column_sums(std::int64_t rows, std::int64_t cols, const T* dy, T* g, bool accumulate,
                 cudaStream_t stream) {
  if (cols <= 0) return;
  cuda::launch(dense_detail::column_sums_kernel<T>, unsigned((cols + 31) / 32), dim3(32, 8), stream,
               rows, cols, dy, g, accumulate);
}

template <class T>
void embedding_forward(std::int64_t count, std::int64_t e, std::int64_t vocab, const std::int32_t* ids,
                       const T* w, T* y, cudaStream_t stream) {
  if (e <= 0) return;
  dense_detail::launch_map(count * e, dense_detail::EmbeddingForwardOp<T>{e, vocab, ids, w, y}, stream);
}

/// Workspace: [CUB temporary storage | sorted ids | positions | sorted positions], each region
/// 256-byte aligned (the workspace itself comes from the caching allocator, 256-byte aligned).
template <class T>
void embedding_backward(std::int64_t count, std::int64_t e, std::int64_t vocab, const std::int32_t* ids,
                        const T* dy, T* g, bool accumulate, std::int32_t* workspace, cudaStream_t stream) {
  using dense_detail::aligned_words;
  if (!accumulate && vocab * e > 0)  // rows no id names get 0; owned rows are overwritten below
    DATANAS_CUDA_CHECK(cudaMemsetAsync(g, 0, sizeof(T) * std::size_t(vocab * e), stream));
  if (count <= 0 || e <= 0) return;
  const int n = int(count);
  std::size_t temp_bytes = dense_detail::sort_temp_bytes(n);
  std::int32_t* keys = workspace + aligned_words(std::int64_t((temp_bytes + 3) / 4));
  std::int32_t* pos = keys + aligned_words(count);
  std::int32_t* pos_sorted = pos + aligned_words(count);
  dense_detail::launch_map(count, dense_detail::IotaOp{pos}, stream);
  // All 32 bits: negative (bad) ids sort too, and are then skipped.
  DATANAS_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(workspace, temp_bytes, ids, keys, pos, pos_sorted, n,
                                                     0, 32, stream));
  cuda::launch(dense_detail::embedding_grad_kernel<T>, dense_detail::row_blocks(count),
               dense_detail::row_threads(e), stream, n, e, vocab, keys, pos_sorted, dy, g,
               accumulate);
}

template <class T>
void log_softmax_forward(std::int64_t rows, std::int64_t k, const T* x, T* y, bool exponentiate,
                         cudaStream_t stream) {
  if (rows <= 0 || k <= 0) return;
  cuda::launch(dense_detail::log_softmax_kernel<T>, dense_detail::row_blocks(rows),
               dense_detail::row_threads(k), stream, rows, k, x, y, exponentiate);
}

template <class T>
void softmax_backward(std::int64_t rows, std::int64_t k, const T* y, const T* dy, T* g, bool accumulate,
                      cudaStream_t stream) {
  if (rows <= 0 || k <= 0) return;
  cuda::launch(dense_detail::softmax_backward_kernel<T>, dense_detail::row_blocks(rows),
               dense_detail::row_threads(k), stream, rows, k, y, dy, g, accumulate, false);
}

template <class T>
void log_softmax_backward(std::int64_t rows, std::int64_t k, const T* y, const T* dy, T* g,
                          bool accumulate, cudaStream_t stream) {
  if (rows <= 0 || k <= 0) return;
  cuda::launch(dense_detail::softmax_backward_kernel<T>, dense_detail::row_blocks(rows),
               dense_detail::row_threads(k), stream, rows, k, y, dy, g, accumulate, true);
}

template <class T>
void cross_entropy_forward(std::int64_t n, std::int64_t k, const T* logits, const std::int32_t* labels,
                           T* lse, T* loss, T* workspace, cudaStream_t stream) {
  DATANAS_CHECK(n > 0 && k > 0, "cuda cross_entropy: empty logits [", n, ", ", k, "]");
  cuda::launch(dense_detail::cross_entropy_rows_kernel<T>, dense_detail::row_blocks(n),
               dense_detail::row_threads(k), stream, n, k, logits, labels, lse, workspace);
  cuda::launch(dense_detail::mean_kernel<T>, 1, dense_detail::kThreads, stream, n, workspace, loss);
}

template <class T>
void count_correct(std::int64_t n, std::int64_t k, const T* logits, const std::int32_t* labels,
                   std::int32_t* count, cudaStream_t stream) {
  DATANAS_CUDA_CHECK(cudaMemsetAsync(count, 0, sizeof(std::int32_t), stream));
  if (n <= 0 || k <= 0) return;
  // Power-of-two threads for the tree (row_threads gives multiples of 32).
  unsigned threads = 32;
  while (threads < unsigned(std::min<std::int64_t>(k, dense_detail::kThreads))) threads *= 2;
  cuda::launch(dense_detail::count_correct_kernel<T>, dense_detail::row_blocks(n), threads, stream,
               n, k, logits, labels, count);
}

template <class T>
void cross_entropy_backward(std::int64_t n, std::int64_t k, const T* logits, const std::int32_t* labels,
                            const T* lse, const T* dloss, T* g, bool accumulate, cudaStream_t stream) {
  dense_detail::launch_map(
      n * k, dense_detail::CrossEntropyBackwardOp<T>{n, k, logits, labels, lse, dloss, g, accumulate},
      stream);
}

template <class T>
void concat_channels_forward(std::int64_t n, std::int64_t hw, std::int64_t c_total,
                             const ChannelParts<const T*>& parts, T* y, cudaStream_t stream) {
  DATANAS_CHECK(parts.count >= 1 && parts.count <= kMaxConcatParts, "cuda concat_channels: ",
                parts.count, " parts in one launch, must be in [1, ", kMaxConcatParts, "]");
  const std::int64_t cc = parts.c_begin[parts.count] - parts.c_begin[0];
  if (cc <= 0 || hw <= 0) return;
  dense_detail::launch_map(n * cc * hw, dense_detail::ConcatForwardOp<T>{hw, c_total, cc, parts, y},
                           stream);
}

template <class T>
void concat_channels_backward(std::int64_t n, std::int64_t hw, std::int64_t c_total, const T* dy,
                              const ChannelParts<T*>& parts, cudaStream_t stream) {
  DATANAS_CHECK(parts.count >= 1 && parts.count <= kMaxConcatParts, "cuda concat_channels: ",
                parts.count, " parts in one launch, must be in [1, ", kMaxConcatParts, "]");
  const std::int64_t cc = parts.c_begin[parts.count] - parts.c_begin[0];
  if (cc <= 0 || hw <= 0) return;
  dense_detail::launch_map(n * cc * hw, dense_detail::ConcatBackwardOp<T>{hw, c_total, cc, dy, parts},
                           stream);
}

template <class T>
void crop_forward(std::int64_t planes, std::int64_t h, std::int64_t w, int top, int left, const T* x,
                  T* y, cudaStream_t stream) {
  const std::int64_t ho = h - top, wo = w - left;
  dense_detail::launch_map(planes * ho * wo,
                           dense_detail::CropForwardOp<T>{h, w, ho, wo, top, left, x, y}, stream);
}

template <class T>
void crop_backward(std::int64_t planes, std::int64_t h, std::int64_t w, int top, int left, const T* dy,
                   T* g, bool accumulate, cudaStream_t stream) {
  const std::int64_t ho = h - top, wo = w - left;
  dense_detail::launch_map(planes * h * w,
                           dense_detail::CropBackwardOp<T>{h, w, ho, wo, top, left, dy, g, accumulate},
                           stream);
}

template <class T>
void dropout_apply(std::int64_t n, std::uint64_t seed, std::uint64_t base, const std::uint64_t* base_device,
                   float keep, T inv_keep, const T* src, T* dst, bool accumulate, cudaStream_t stream) {
  if (n <= 0) return;
  cuda::launch(dense_detail::dropout_kernel<T>, dense_detail::blocks_for((n + 3) / 4),
               dense_detail::kThreads, stream, n, seed, base, base_device, keep, inv_keep, src, dst,
               accumulate);
}

template <class T>
void drop_path_apply(std::int64_t n, std::int64_t per, std::uint64_t seed, std::uint64_t base,
                     const std::uint64_t* base_device, float keep, T inv_keep, const T* src, T* dst,
                     bool accumulate, cudaStream_t stream) {
  if (n <= 0 || per <= 0) return;
  const dim3 grid(dense_detail::blocks_for(per, 1024), unsigned(std::min<std::int64_t>(n, 65535)));
  cuda::launch(dense_detail::drop_path_kernel<T>, grid, dense_detail::kThreads, stream, n, per,
               seed, base, base_device, keep, inv_keep, src, dst, accumulate);
}

}  // namespace datanas::cuda
