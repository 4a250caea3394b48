// datanas/ops/cuda/dense.hpp - the Cuda side of linear, matmul, embedding (ops/linear.hpp),
// softmax, log_softmax, cross_entropy (ops/loss.hpp), concat_channels, crop (ops/structure.hpp),
// dropout and drop_path (ops/dropout.hpp): cuBLAS GEMMs called from the host, and the launchers
// of kernels/datanas/cuda/dense.hpp, all queued on the current stream. Shape checks stay in the
// generic ops; nothing here synchronises the host.
//
// Part of DeviceOps<Cuda> (datanas/cuda.hpp).
#pragma once

#include <cublas_v2.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <span>

#include "datanas/autograd/variable.hpp"
#include "datanas/core/cuda.hpp"
#include "datanas/cuda/dense.hpp"

/// Throws datanas::error naming the cuBLAS call, its status and the source line.
#define DATANAS_CUBLAS_CHECK(call)                                                                \
  do {                                                                                            \
    const cublasStatus_t datanas_cublas_status_ = (call);                                         \
    if (datanas_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                          \
      throw ::datanas::error(::datanas::detail::concat(                                           \
          #call, " failed: ", cublasGetStatusName(datanas_cublas_status_), " (",                  \
          cublasGetStatusString(datanas_cublas_status_), ") at ", __FILE__, ":", __LINE__));      \
  } while (0)

namespace datanas::cuda {

namespace dense_host {

/// One cuBLAS handle per host thread, created on first use (a handle is not safe to share
/// between threads that call cuBLAS at the same time). Full fp32: CUBLAS_DEFAULT_MATH never uses
/// TF32 tensor cores or the BF16x9 emulation for single precision (those need
/// CUBLAS_TF32_TENSOR_OP_MATH / CUBLAS_FP32_EMULATED_BF16X9_MATH), and we set it explicitly
/// rather than trust the handle's default, because the GPU must agree with the CPU's fp32 GEMMs
/// to 1e-4 and TF32 keeps only 10 mantissa bits.
struct CublasHandle {
  cublasHandle_t h = nullptr;
  CublasHandle() = default;
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
  // Unbound first (the last stream it was given may be destroyed already); at thread exit the
  // status no longer matters.
  ~CublasHandle() {
    if (!h) return;
    (void)cublasSetStream(h, nullptr);
    (void)cublasDestroy(h);
  }
};

/// This thread's handle, bound to the current stream (set before every call: the current
/// stream changes with StreamGuard, and a handle remembers the last one it was given). Setting
/// the stream also puts the handle back on cuBLAS's own workspace pool: the caller gives it
/// one of ours next (Workspace below).
inline cublasHandle_t cublas() {
  thread_local CublasHandle handle;
  if (!handle.h) {
    DATANAS_CUBLAS_CHECK(cublasCreate(&handle.h));
    DATANAS_CUBLAS_CHECK(cublasSetMathMode(handle.h, CUBLAS_DEFAULT_MATH));
  }
  DATANAS_CUBLAS_CHECK(cublasSetStream(handle.h, current_stream().handle));
  return handle.h;
}

/// The process-wide choice behind set_cublas_workspace (0: by device).
inline std::atomic<std::size_t> cublas_workspace_choice{0};

/// NVIDIA's recommended cuBLAS workspace for this thread's device: 32 MiB from compute
/// capability 9 (Hopper) on, 4 MiB before (the size of cuBLAS's own pool there). Asked once
/// per thread: a thread's handles stay on one device.
inline std::size_t recommended_cublas_workspace() {
  thread_local std::size_t bytes = 0;
  if (bytes == 0) {
    int device = 0, major = 0;
    DATANAS_CUDA_CHECK(cudaGetDevice(&device));
    DATANAS_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    bytes = std::size_t(major >= 9 ? 32 : 4) << 20;
  }
  return bytes;
}

/// The bytes of the next call's workspace: the user's choice, else the recommendation.
inline std::size_t workspace_bytes() {
  const std::size_t chosen = cublas_workspace_choice.load();
  return chosen ? chosen : recommended_cublas_workspace();
}

/// The workspace of one cuBLAS call: a temporary block of the caching allocator, given to the
/// handle with cublasSetWorkspace after cublas() bound it to the stream. Without it cuBLAS
/// works in a pool of its own that the allocator cannot see (nor its statistics, nor a peak
/// compared with PyTorch's, whose allocator does hold cuBLAS's workspaces), and inside a stream
/// capture (cuBLAS 12.2 and later) allocates it with cudaMallocAsync, a memory node of the
/// graph. The block returns to the stream's free list when the call that queued the GEMM
/// returns: later work on the stream, the only work that can get it, runs after the GEMM.
/// Inside a capture it comes from the graph's pool, as every temporary does.
struct Workspace {
  Tensor<double, Cuda> block;
  explicit Workspace(cublasHandle_t h) {
    const std::size_t bytes = workspace_bytes();
    block = Tensor<double, Cuda>::empty({index_t((bytes + sizeof(double) - 1) / sizeof(double))});
    DATANAS_CUBLAS_CHECK(cublasSetWorkspace(h, block.data(), bytes));  // 256-byte aligned blocks
  }
};

}  // namespace dense_host

/// Bytes of device memory each cuBLAS call gets as its workspace (cublasSetWorkspace), for
/// every later call of the process; 0 restores the default, NVIDIA's recommendation for the
/// device (32 MiB from Hopper on, 4 MiB before). Less than 16 KiB is refused: cuBLAS documents
/// that much as what keeps its routines from failing with CUBLAS_STATUS_ALLOC_FAILED.
/// A smaller workspace saves memory at the peak and may make large GEMMs slower. Thread-safe.
inline void set_cublas_workspace(std::size_t bytes) {
  DATANAS_CHECK(bytes == 0 || bytes >= (std::size_t(16) << 10), "set_cublas_workspace: ", bytes,
                " bytes is below cuBLAS's minimum of 16 KiB "
                "(0 restores the default)");
  dense_host::cublas_workspace_choice.store(bytes);
}
/// The bytes the next cuBLAS call on this thread gets as its workspace.
inline std::size_t cublas_workspace_bytes() { return dense_host::workspace_bytes(); }

namespace dense_host {

/// cuBLAS takes int dimensions.
inline int blas_dim(index_t v, const char* what) {
  DATANAS_CHECK(v >= 0 && v <= INT_MAX, "cuda gemm: ", what, " = ", v, " exceeds cuBLAS's int range");
  return int(v);
}

/// Column-major C [m, n] = op(A) op(B) (+ C when accumulate), the cuBLAS convention. A row-major
/// matrix M [r, c] is the column-major M^T [c, r] with leading dimension c, so the callers below
/// get the row-major product by swapping operands: row-major Y = A B is column-major
/// Y^T = B^T A^T. beta = 0 lets C hold anything (NaN poison included): cuBLAS does not read it.
template <class T>
void gemm(bool trans_a, bool trans_b, index_t m, index_t n, index_t k, const T* a, index_t lda,
          const T* b, index_t ldb, T* c, index_t ldc, bool accumulate) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // an empty sum: C = 0 (or unchanged); cuBLAS would reject lda = 0
    if (!accumulate)
      DATANAS_CUDA_CHECK(cudaMemsetAsync(c, 0, sizeof(T) * std::size_t(ldc) * std::size_t(n),
                                         current_stream().handle));
    return;
  }
  const T one = 1, beta = accumulate ? T(1) : T(0);
  const cublasOperation_t ta = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t tb = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int im = blas_dim(m, "m"), in = blas_dim(n, "n"), ik = blas_dim(k, "k");
  const int ia = blas_dim(lda, "lda"), ib = blas_dim(ldb, "ldb"), ic = blas_dim(ldc, "ldc");
  const cublasHandle_t h = cublas();
  const Workspace ws(h);
  if constexpr (std::same_as<T, float>)
    DATANAS_CUBLAS_CHECK(cublasSgemm(h, ta, tb, im, in, ik, &one, a, ia, b, ib, &beta, c, ic));
  else
    DATANAS_CUBLAS_CHECK(cublasDgemm(h, ta, tb, im, in, ik, &one, a, ia, b, ib, &beta, c, ic));
}

}  // namespace dense_host

struct DenseOps {
  template <class T>
  using DTensor = Tensor<T, Cuda>;

  // ---- linear, matmul: cuBLAS ----------------------------------------------------------------
  // Row-major shapes throughout; each comment gives the column-major product cuBLAS computes.

  /// y [N, out] = x [N, in] w^T (w [out, in]) + b [out] (b may be undefined). The bias is
  /// preloaded and the GEMM adds onto it (beta = 1): y = (x w^T) + b, the CPU's order.
  /// Column-major: y^T [out, N] = w^T' x^T, where w's memory is w^T [in, out] (ld in).
  template <class T>
  static void linear_forward(const DTensor<T>& x, const DTensor<T>& w, const DTensor<T>& b,
                             const DTensor<T>& y) {
    const index_t n = x.dim(0), in = x.dim(1), out = w.dim(0);
    if (b.defined()) bias_rows<T>(n, out, b.data(), y.data(), current_stream().handle);
    dense_host::gemm<T>(true, false, out, n, in, w.data(), in, x.data(), in, y.data(), out, b.defined());
  }
  /// dx [N, in] (+)= dy [N, out] w [out, in]. Column-major: dx^T [in, N] = w^T [in, out] dy^T.
  template <class T>
  static void linear_backward_input(const DTensor<T>& dy, const DTensor<T>& w, const DTensor<T>& g,
                                    bool accumulate) {
    const index_t n = dy.dim(0), out = dy.dim(1), in = w.dim(1);
    dense_host::gemm<T>(false, false, in, n, out, w.data(), in, dy.data(), out, g.data(), in, accumulate);
  }
  /// dw [out, in] (+)= dy^T [out, N] x [N, in]. Column-major: dw^T [in, out] = x^T [in, N] dy.
  template <class T>
  static void linear_backward_weight(const DTensor<T>& dy, const DTensor<T>& x, const DTensor<T>& g,
                                     bool accumulate) {
    const index_t n = dy.dim(0), out = dy.dim(1), in = x.dim(1);
    dense_host::gemm<T>(false, true, in, out, n, x.data(), in, dy.data(), out, g.data(), in, accumulate);
  }
  /// db [out] (+)= sum over rows of dy [N, out] (deterministic).
  template <class T>
  static void linear_backward_bias(const DTensor<T>& dy, const DTensor<T>& g, bool accumulate) {
    column_sums<T>(dy.dim(0), dy.dim(1), dy.data(), g.data(), accumulate, current_stream().handle);
  }
  /// y [n, m] = a [n, k] b [k, m]. Column-major: y^T [m, n] = b^T [m, k] a^T [k, n].
  template <class T>
  static void matmul_forward(const DTensor<T>& a, const DTensor<T>& b, const DTensor<T>& y) {
    const index_t n = a.dim(0), k = a.dim(1), m = b.dim(1);
    dense_host::gemm<T>(false, false, m, n, k, b.data(), m, a.data(), k, y.data(), m, false);
  }
  /// da [n, k] (+)= dy [n, m] b^T. Column-major: da^T [k, n] = (b^T)^T [k, m] dy^T [m, n].
  template <class T>
  static void matmul_backward_a(const DTensor<T>& dy, const DTensor<T>& b, const DTensor<T>& g,
                                bool accumulate) {
    const index_t n = dy.dim(0), m = dy.dim(1), k = b.dim(0);
    dense_host::gemm<T>(true, false, k, n, m, b.data(), m, dy.data(), m, g.data(), k, accumulate);
  }
  /// db [k, m] (+)= a^T dy. Column-major: db^T [m, k] = dy^T [m, n] (a^T)^T [n, k].
  template <class T>
  static void matmul_backward_b(const DTensor<T>& a, const DTensor<T>& dy, const DTensor<T>& g,
                                bool accumulate) {
    const index_t n = a.dim(0), k = a.dim(1), m = dy.dim(1);
    dense_host::gemm<T>(false, true, m, k, n, dy.data(), m, a.data(), k, g.data(), m, accumulate);
  }

  // ---- embedding -----------------------------------------------------------------------------

  /// y [ids..., E] = weight [V, E] rows at ids. Out-of-range ids give NaN rows (dense.hpp).
  template <class T>
  static void embedding_forward(const DTensor<T>& weight, const DTensor<std::int32_t>& ids,
                                const DTensor<T>& y) {
    cuda::embedding_forward<T>(ids.numel(), weight.dim(1), weight.dim(0), ids.data(), weight.data(),
                               y.data(), current_stream().handle);
  }
  /// g [V, E] (+)= the scatter of dy's rows at ids: deterministic (a stable sort by id, then one
  /// block per distinct id adding its rows in position order), no atomics.
  template <class T>
  static void embedding_backward(const DTensor<std::int32_t>& ids, const DTensor<T>& dy,
                                 const DTensor<T>& g, bool accumulate) {
    const index_t count = ids.numel();
    DTensor<std::int32_t> work =
        DTensor<std::int32_t>::empty({std::max<index_t>(1, embedding_backward_workspace(count))});
    cuda::embedding_backward<T>(count, g.dim(1), g.dim(0), ids.data(), dy.data(), g.data(), accumulate,
                                work.data(), current_stream().handle);
  }

  // ---- softmax and cross-entropy (rows x k) --------------------------------------------------

  /// y = log softmax(x) row-wise, or softmax(x) when `exponentiate`.
  template <class T>
  static void log_softmax_forward(const DTensor<T>& x, index_t rows, index_t k, bool exponentiate,
                                  const DTensor<T>& y) {
    cuda::log_softmax_forward<T>(rows, k, x.data(), y.data(), exponentiate, current_stream().handle);
  }
  /// g (+)= y * (dy - <dy, y>), y = softmax(x).
  template <class T>
  static void softmax_backward(const DTensor<T>& y, const DTensor<T>& dy, index_t rows, index_t k,
                               const DTensor<T>& g, bool accumulate) {
    cuda::softmax_backward<T>(rows, k, y.data(), dy.data(), g.data(), accumulate, current_stream().handle);
  }
  /// g (+)= dy - exp(y) * sum(dy), y = log softmax(x).
  template <class T>
  static void log_softmax_backward(const DTensor<T>& y, const DTensor<T>& dy, index_t rows, index_t k,
                                   const DTensor<T>& g, bool accumulate) {
    cuda::log_softmax_backward<T>(rows, k, y.data(), dy.data(), g.data(), accumulate,
                                  current_stream().handle);
  }
  /// loss [1] = mean cross-entropy of logits [N, K] at labels [N]; lse [N] receives each row's
  /// log-sum-exp for the backward. A label outside [0, K) makes the loss NaN (dense.hpp).
  template <class T>
  static void cross_entropy_forward(const DTensor<T>& logits, const DTensor<std::int32_t>& labels,
                                    const DTensor<T>& lse, const DTensor<T>& loss) {
    const index_t n = logits.dim(0), k = logits.dim(1);
    DTensor<T> work = DTensor<T>::empty({cross_entropy_workspace(n)});
    cuda::cross_entropy_forward<T>(n, k, logits.data(), labels.data(), lse.data(), loss.data(),
                                   work.data(), current_stream().handle);
  }
  /// count[0] = rows whose first maximum is at their label (int32 [1]).
  template <class T>
  static void count_correct(const DTensor<T>& logits, const DTensor<std::int32_t>& labels,
                            const DTensor<std::int32_t>& count) {
    cuda::count_correct<T>(logits.dim(0), logits.dim(1), logits.data(), labels.data(), count.data(),
                           current_stream().handle);
  }
  /// g (+)= (softmax(logits) - onehot(labels)) * dloss[0] / N.
  template <class T>
  static void cross_entropy_backward(const DTensor<T>& logits, const DTensor<std::int32_t>& labels,
                                     const DTensor<T>& lse, const DTensor<T>& dloss, const DTensor<T>& g,
                                     bool accumulate) {
    cuda::cross_entropy_backward<T>(logits.dim(0), logits.dim(1), logits.data(), labels.data(), lse.data(),
                                    dloss.data(), g.data(), accumulate, current_stream().handle);
  }

  // ---- structure -----------------------------------------------------------------------------

  /// y [N, C, H, W] = the inputs xs[i] [N, C_i, H, W] along channels (C = sum C_i); a symbolic
  /// zero (no value) becomes zero channels. One launch per kMaxConcatParts inputs.
  template <class T>
  static void concat_channels_forward(std::span<const Var<T, Cuda>> xs, const DTensor<T>& y) {
    const index_t n = y.dim(0), c_total = y.dim(1), hw = y.dim(2) * y.dim(3);
    ChannelParts<const T*> parts;
    index_t c = 0;
    for (std::size_t i = 0; i < xs.size(); ++i) {
      const Var<T, Cuda>& x = xs[i];
      parts.ptr[parts.count] = x.value().defined() ? x.value().data() : nullptr;
      parts.c_begin[parts.count] = c;
      c += x.shape().c();
      parts.c_begin[++parts.count] = c;
      if (parts.count == kMaxConcatParts || i + 1 == xs.size()) {
        cuda::concat_channels_forward<T>(n, hw, c_total, parts, y.data(), current_stream().handle);
        parts = {};
      }
    }
  }
  /// The gradients of a concatenation: part(i) returns {gradient data or nullptr, channels of
  /// input i, accumulate}, and is called once per input, in order.
  template <class T, class Part>
  static void concat_channels_backward(std::size_t count, Part&& part, const DTensor<T>& dy) {
    const index_t n = dy.dim(0), c_total = dy.dim(1), hw = dy.dim(2) * dy.dim(3);
    ChannelParts<T*> parts;
    index_t c = 0;
    bool any = false;
    const auto flush = [&] {
      if (any) cuda::concat_channels_backward<T>(n, hw, c_total, dy.data(), parts, current_stream().handle);
      parts = {};
      any = false;
    };
    for (std::size_t i = 0; i < count; ++i) {
      const auto [g, channels, accumulate] = part(i);
      // An input concatenated twice has one gradient: in one launch, one thread would overwrite
      // (or add to) an element while another adds to it, a race. The repeat starts a new launch,
      // which the stream orders after the first, as the CPU's loop.
      if (g && std::find(parts.ptr, parts.ptr + parts.count, g) != parts.ptr + parts.count) flush();
      parts.ptr[parts.count] = g;
      parts.accumulate[parts.count] = accumulate;
      parts.c_begin[parts.count] = c;
      c += channels;
      parts.c_begin[++parts.count] = c;
      any = any || g != nullptr;
      if (parts.count == kMaxConcatParts || i + 1 == count) flush();
    }
  }
  /// y = x[:, :, top:, left:].
  template <class T>
  static void crop_forward(const DTensor<T>& x, int top, int left, const DTensor<T>& y) {
    cuda::crop_forward<T>(x.dim(0) * x.dim(1), x.dim(2), x.dim(3), top, left, x.data(), y.data(),
                          current_stream().handle);
  }
  /// g [N, C, H, W] (+)= dy placed at (top, left), zero elsewhere.
  template <class T>
  static void crop_backward(const DTensor<T>& dy, int top, int left, const DTensor<T>& g, bool accumulate) {
    cuda::crop_backward<T>(g.dim(0) * g.dim(1), g.dim(2), g.dim(3), top, left, dy.data(), g.data(),
                           accumulate, current_stream().handle);
  }

  // ---- dropout: the CPU's Philox masks, recomputed in backward ------------------------------

  /// dst (+)= src * mask / keep, element i kept when
  /// uniform_open01(philox4x32(base + i / 4, 0, seed).v[i % 4]) < keep.
  template <class T>
  static void dropout_apply(std::uint64_t seed, std::uint64_t base, const std::uint64_t* base_device,
                            float keep, T inv_keep, const DTensor<T>& src, const DTensor<T>& dst,
                            bool accumulate) {
    cuda::dropout_apply<T>(src.numel(), seed, base, base_device, keep, inv_keep, src.data(), dst.data(),
                           accumulate, current_stream().handle);
  }
  /// dst (+)= src * mask_s / keep per sample s of src [N, ...] (mask_s drawn as above, i = s).
  template <class T>
  static void drop_path_apply(std::uint64_t seed, std::uint64_t base, const std::uint64_t* base_device,
                              float keep, T inv_keep, const DTensor<T>& src, const DTensor<T>& dst,
                              bool accumulate) {
    const index_t n = src.dim(0);
    if (n == 0) return;
    cuda::drop_path_apply<T>(n, src.numel() / n, seed, base, base_device, keep, inv_keep, src.data(),
                             dst.data(), accumulate, current_stream().handle);
  }
};

}  // namespace datanas::cuda
