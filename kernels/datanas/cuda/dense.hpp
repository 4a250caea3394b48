// datanas/cuda/dense.hpp - declarations of the dense-family launchers (dense.cuh), for host
// code compiled by the C++ compiler: the GEMM helpers of linear (bias rows, column sums),
// embedding, softmax / log-softmax / cross-entropy, channel concatenation and crop, dropout and
// drop path. The GEMMs themselves are cuBLAS calls made from the host (ops/cuda/dense.hpp).
//
// Same conventions as elementwise.hpp: the launchers are templates defined in dense.cuh and
// instantiated for float and double in kernels/src/dense.cu; pointers are device pointers of
// contiguous row-major arrays; every launcher queues its work on `stream` and returns without
// synchronising; gradients follow the GradSlot convention (`accumulate` adds, otherwise the
// buffer is overwritten, never zero-filled first). No kernel here uses atomics: every result is
// the same, bit for bit, run after run.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace datanas::cuda {

// ---- linear -----------------------------------------------------------------------------------

/// y[r, c] = b[c] for r < rows, c < cols: the bias preloaded into a GEMM output (beta = 1).
template <class T>
void bias_rows(std::int64_t rows, std::int64_t cols, const T* b, T* y, cudaStream_t stream);
/// g[c] (+)= sum_r dy[r, c] over rows: the bias gradient. Deterministic (a fixed tree per
/// column).
template <class T>
void column_sums(std::int64_t rows, std::int64_t cols, const T* dy, T* g, bool accumulate,
                 cudaStream_t stream);

// ---- embedding --------------------------------------------------------------------------------

/// y[i, :] = w[ids[i], :] for i < count; w is [vocab, e]. An id outside [0, vocab) (the host
/// cannot check device ids without waiting for the GPU) makes its row of y NaN; nothing is read
/// or written out of bounds.
template <class T>
void embedding_forward(std::int64_t count, std::int64_t e, std::int64_t vocab, const std::int32_t* ids,
                       const T* w, T* y, cudaStream_t stream);
/// Elements of int32 workspace embedding_backward needs for `count` ids.
std::int64_t embedding_backward_workspace(std::int64_t count);
/// g[v, :] (+)= sum over i with ids[i] == v of dy[i, :]; g is [vocab, e]. Without `accumulate`
/// rows no id names get 0 (as on the CPU). Deterministic: the (id, position) pairs are sorted by
/// a stable radix sort and one block per distinct id adds its rows in position order, the CPU's
/// order. Out-of-range ids are skipped. workspace: embedding_backward_workspace(count) int32.
template <class T>
void embedding_backward(std::int64_t count, std::int64_t e, std::int64_t vocab, const std::int32_t* ids,
                        const T* dy, T* g, bool accumulate, std::int32_t* workspace, cudaStream_t stream);

// ---- softmax and losses (rows of k elements; one thread block per row) -----------------------

/// y = log softmax(x) row-wise, y_c = x_c - (m + log sum_j exp(x_j - m)) with m the row max; or
/// softmax(x) = exp of that when `exponentiate`.
template <class T>
void log_softmax_forward(std::int64_t rows, std::int64_t k, const T* x, T* y, bool exponentiate,
                         cudaStream_t stream);
/// From the output y = softmax(x): g (+)= y * (dy - <dy, y>) per row.
template <class T>
void softmax_backward(std::int64_t rows, std::int64_t k, const T* y, const T* dy, T* g, bool accumulate,
                      cudaStream_t stream);
/// From the output y = log softmax(x): g (+)= dy - exp(y) * sum(dy) per row.
template <class T>
void log_softmax_backward(std::int64_t rows, std::int64_t k, const T* y, const T* dy, T* g,
                          bool accumulate, cudaStream_t stream);
/// Elements of T cross_entropy_forward needs as workspace for n rows.
inline std::int64_t cross_entropy_workspace(std::int64_t n) { return n; }
/// loss[0] = -(1/n) sum_i log softmax(logits_i)[labels_i]; logits [n, k]. Also writes
/// lse[i] = log sum_j exp(logits_ij) (what the backward needs, instead of the CPU's [n, k]
/// log-probabilities). A label outside [0, k) makes the loss NaN: the host cannot check device
/// labels without waiting for the GPU, and a NaN loss is what a training loop already watches
/// for. workspace: cross_entropy_workspace(n) elements (per-row terms, summed in a fixed order).
template <class T>
void cross_entropy_forward(std::int64_t n, std::int64_t k, const T* logits, const std::int32_t* labels,
                           T* lse, T* loss, T* workspace, cudaStream_t stream);
/// count[0] = the number of rows i of logits [n, k] whose first maximum is at labels[i] (the
/// accuracy count; the CPU's std::max_element rule), so that a loop reads 4 bytes instead of
/// the logits. A label outside [0, k) counts as wrong.
template <class T>
void count_correct(std::int64_t n, std::int64_t k, const T* logits, const std::int32_t* labels,
                   std::int32_t* count, cudaStream_t stream);
/// g (+)= (softmax(logits) - onehot(labels)) * dloss[0] / n, dloss a device scalar. The row of
/// a label outside [0, k) gets NaN.
template <class T>
void cross_entropy_backward(std::int64_t n, std::int64_t k, const T* logits, const std::int32_t* labels,
                            const T* lse, const T* dloss, T* g, bool accumulate, cudaStream_t stream);

// ---- structure --------------------------------------------------------------------------------

/// Most inputs of one concatenation launch; longer lists are split into several launches.
inline constexpr int kMaxConcatParts = 16;

/// Consecutive inputs of a channel concatenation, passed to a kernel by value. Part t owns the
/// output channels [c_begin[t], c_begin[t + 1]) (it has c_begin[t + 1] - c_begin[t] channels;
/// zero-channel parts are allowed). P is `const T*` in forward (the inputs; nullptr is a
/// symbolic zero, written as zero channels) and `T*` in backward (the gradients; nullptr: no
/// gradient wanted).
template <class P>
struct ChannelParts {
  P ptr[kMaxConcatParts] = {};
  std::int64_t c_begin[kMaxConcatParts + 1] = {};
  bool accumulate[kMaxConcatParts] = {};
  int count = 0;
};

/// y [n, c_total, hw] gets the parts' channels: y[b, c, :] = x_t[b, c - c_begin[t], :].
template <class T>
void concat_channels_forward(std::int64_t n, std::int64_t hw, std::int64_t c_total,
                             const ChannelParts<const T*>& parts, T* y, cudaStream_t stream);
/// g_t[b, c - c_begin[t], :] (+)= dy[b, c, :] for every part with a gradient (per-part accumulate).
template <class T>
void concat_channels_backward(std::int64_t n, std::int64_t hw, std::int64_t c_total, const T* dy,
                              const ChannelParts<T*>& parts, cudaStream_t stream);
/// y[p, r, q] = x[p, r + top, q + left]: x [planes, h, w] -> y [planes, h - top, w - left].
template <class T>
void crop_forward(std::int64_t planes, std::int64_t h, std::int64_t w, int top, int left, const T* x,
                  T* y, cudaStream_t stream);
/// g[p, r, q] (+)= dy[p, r - top, q - left], and 0 in the cut rows and columns (overwrite only).
template <class T>
void crop_backward(std::int64_t planes, std::int64_t h, std::int64_t w, int top, int left, const T* dy,
                   T* g, bool accumulate, cudaStream_t stream);

// ---- dropout (the CPU's masks, drawn again in backward) ---------------------------------------

/// dst[i] (+)= src[i] * scale_i over n elements, scale_i = inv_keep when
/// uniform_open01(philox4x32(base + i / 4, 0, seed).v[i % 4]) < keep, else 0: the forward
/// (src = x, dst = y, overwrite) and the backward (src = dy, dst = g) of dropout. A null src
/// counts as all ones: dst receives the mask itself (the recurrent cell's locked-dropout masks,
/// bernoulli_mask). base_device, when not null, holds the base instead (a captured step's
/// per-replay word, StepGraph).
template <class T>
void dropout_apply(std::int64_t n, std::uint64_t seed, std::uint64_t base, const std::uint64_t* base_device,
                   float keep, T inv_keep, const T* src, T* dst, bool accumulate, cudaStream_t stream);
/// dst[s, j] (+)= scale_s * src[s, j] for samples s < n of `per` elements, scale_s as above with
/// i = s: drop path's forward and backward.
template <class T>
void drop_path_apply(std::int64_t n, std::int64_t per, std::uint64_t seed, std::uint64_t base,
                     const std::uint64_t* base_device, float keep, T inv_keep, const T* src, T* dst,
                     bool accumulate, cudaStream_t stream);

}  // namespace datanas::cuda
