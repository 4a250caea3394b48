// cublas_v2.h (cudasim) - the part of cuBLAS that datanas uses, computed on the host.
//
// The simulator's stand-in for NVIDIA's cublas_v2.h: handles that remember a stream and a math
// mode, and single/double GEMM with cuBLAS's semantics (column-major, op(A) op(B), lda/ldb/ldc,
// host pointer mode: alpha and beta are read when the call is made; beta == 0 means C is not
// read, so it may hold NaN). Each GEMM is one work item queued with cudasim::enqueue on the
// handle's stream, so it runs in stream order and is recorded when the stream is captured into a
// graph. Sums accumulate in double. Arguments are checked as cuBLAS checks them. A handle's
// user workspace (cublasSetWorkspace; cublasSetStream drops it, as in cuBLAS) is checked and
// written by each GEMM; GEMMs on cuBLAS's own pool are counted (cudasim::counters()).
//
// As in the real header, the _v2 entry points are the functions and the plain names are macros.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <new>
#include <vector>

#include "cuda_runtime.h"

#define CUBLAS_VER_MAJOR 12
#define CUBLAS_VER_MINOR 9
#define CUBLAS_VER_PATCH 0
#define CUBLAS_VER_BUILD 0
#define CUBLAS_VERSION (CUBLAS_VER_MAJOR * 10000 + CUBLAS_VER_MINOR * 100 + CUBLAS_VER_PATCH)

typedef enum {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_NOT_INITIALIZED = 1,
  CUBLAS_STATUS_ALLOC_FAILED = 3,
  CUBLAS_STATUS_INVALID_VALUE = 7,
  CUBLAS_STATUS_ARCH_MISMATCH = 8,
  CUBLAS_STATUS_MAPPING_ERROR = 11,
  CUBLAS_STATUS_EXECUTION_FAILED = 13,
  CUBLAS_STATUS_INTERNAL_ERROR = 14,
  CUBLAS_STATUS_NOT_SUPPORTED = 15,
  CUBLAS_STATUS_LICENSE_ERROR = 16
} cublasStatus_t;

typedef enum {
  CUBLAS_OP_N = 0,
  CUBLAS_OP_T = 1,
  CUBLAS_OP_C = 2,
  CUBLAS_OP_HERMITAN = 2,
  CUBLAS_OP_CONJG = 3
} cublasOperation_t;

typedef enum {
  CUBLAS_DEFAULT_MATH = 0,
  CUBLAS_TENSOR_OP_MATH = 1,
  CUBLAS_PEDANTIC_MATH = 2,
  CUBLAS_TF32_TENSOR_OP_MATH = 3,
  CUBLAS_FP32_EMULATED_BF16X9_MATH = 4,
  CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION = 16
} cublasMath_t;

/// A handle: the stream its calls go to, its math mode and the user workspace its calls get
/// (none: cuBLAS's own pool). The simulator always computes in full precision (double
/// accumulation), whatever the mode.
struct cublasContext {
  cudaStream_t stream = nullptr;
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
};
typedef struct cublasContext* cublasHandle_t;

inline cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new (std::nothrow) cublasContext{};
  return *handle ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}

inline cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

/// As cuBLAS documents it, setting the stream also puts the handle back on cuBLAS's own
/// workspace pool, whatever cublasSetWorkspace gave it before.
inline cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  handle->workspace = nullptr;
  handle->workspace_bytes = 0;
  return CUBLAS_STATUS_SUCCESS;
}

/// A user workspace for the handle's later calls on its current stream: 256-byte aligned, as
/// cuBLAS requires (INVALID_VALUE otherwise). A null pointer with 0 bytes means no workspace.
inline cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void* workspace,
                                            std::size_t workspaceSizeInBytes) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (reinterpret_cast<std::uintptr_t>(workspace) % 256 != 0) return CUBLAS_STATUS_INVALID_VALUE;
  if (!workspace && workspaceSizeInBytes != 0) return CUBLAS_STATUS_INVALID_VALUE;
  handle->workspace = workspace;
  handle->workspace_bytes = workspaceSizeInBytes;
  return CUBLAS_STATUS_SUCCESS;
}

inline cublasStatus_t cublasGetStream_v2(cublasHandle_t handle, cudaStream_t* stream) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!stream) return CUBLAS_STATUS_INVALID_VALUE;
  *stream = handle->stream;
  return CUBLAS_STATUS_SUCCESS;
}

inline cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  const int base = int(mode) & ~int(CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION);
  if (base < int(CUBLAS_DEFAULT_MATH) || base > int(CUBLAS_FP32_EMULATED_BF16X9_MATH))
    return CUBLAS_STATUS_INVALID_VALUE;
  handle->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}

inline cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t* mode) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
  *mode = handle->math;
  return CUBLAS_STATUS_SUCCESS;
}

inline const char* cublasGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR:
      return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

inline const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "an absent device architectural feature is required";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "the functionality requested is not supported";
    case CUBLAS_STATUS_LICENSE_ERROR:
      return "error detected trying to check the license";
  }
  return "unknown error";
}

namespace cudasim::cublas_detail {

inline bool valid_op(cublasOperation_t op) {
  return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C;
}

/// C = alpha op(A) op(B) + beta C, column-major, accumulated in double. For real types
/// CUBLAS_OP_C is CUBLAS_OP_T. beta == 0: C is only written; alpha == 0 or k == 0: A and B are
/// not read.
template <class T>
void gemm_host(bool ta, bool tb, int m, int n, int k, double alpha, const T* a, int lda, const T* b,
               int ldb, double beta, T* c, int ldc) {
  std::vector<double> acc(std::size_t(m), 0.0);
  std::vector<double> bcol(std::size_t(k), 0.0);
  const bool product = alpha != 0.0 && k > 0;
  for (int j = 0; j < n; ++j) {
    T* cj = c + std::ptrdiff_t(j) * ldc;
    if (product) {
      // Column j of op(B), k entries.
      for (int l = 0; l < k; ++l)
        bcol[std::size_t(l)] =
            tb ? double(b[std::ptrdiff_t(l) * ldb + j]) : double(b[std::ptrdiff_t(j) * ldb + l]);
      if (!ta) {  // op(A)(i, l) = a[i + l lda]: walk the columns of A
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int l = 0; l < k; ++l) {
          const double bl = bcol[std::size_t(l)];
          const T* al = a + std::ptrdiff_t(l) * lda;
          for (int i = 0; i < m; ++i) acc[std::size_t(i)] += double(al[i]) * bl;
        }
      } else {  // op(A)(i, l) = a[l + i lda]: a dot product with column i of A
        for (int i = 0; i < m; ++i) {
          const T* ai = a + std::ptrdiff_t(i) * lda;
          double s = 0.0;
          for (int l = 0; l < k; ++l) s += double(ai[l]) * bcol[std::size_t(l)];
          acc[std::size_t(i)] = s;
        }
      }
    }
    for (int i = 0; i < m; ++i) {
      double v = product ? alpha * acc[std::size_t(i)] : 0.0;
      if (beta != 0.0) v += beta * double(cj[i]);
      cj[i] = T(v);
    }
  }
}

inline cublasStatus_t from_cuda(cudaError_t e) {
  if (e == cudaSuccess) return CUBLAS_STATUS_SUCCESS;
  if (e == cudaErrorMemoryAllocation) return CUBLAS_STATUS_ALLOC_FAILED;
  return CUBLAS_STATUS_EXECUTION_FAILED;
}

template <class T>
cublasStatus_t gemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                    int m, int n, int k, const T* alpha, const T* a, int lda, const T* b, int ldb,
                    const T* beta, T* c, int ldc) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!valid_op(transa) || !valid_op(transb)) return CUBLAS_STATUS_INVALID_VALUE;
  const bool ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
  if (m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_INVALID_VALUE;
  const int a_rows = ta ? k : m, b_rows = tb ? n : k;
  if (lda < (a_rows > 1 ? a_rows : 1) || ldb < (b_rows > 1 ? b_rows : 1) || ldc < (m > 1 ? m : 1))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
  const double al = double(*alpha), be = double(*beta);  // host pointer mode: read now
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  if ((al == 0.0 || k == 0) && be == 1.0) return CUBLAS_STATUS_SUCCESS;
  // A user workspace: a GPU would corrupt an operand that shares its memory, silently; here
  // that is an error (cuBLAS itself does not check). The call then scribbles over the ends of
  // the workspace, as a GEMM's scratch writes would: a workspace shorter than it was declared
  // runs into the block's guard page, and one still in use by other work shows wrong values.
  void* const ws = handle->workspace;
  const std::size_t ws_bytes = handle->workspace_bytes;
  if (ws) {
    const auto extent = [](int rows, int cols, int ld) {
      return (std::size_t(ld) * std::size_t(cols - 1) + std::size_t(rows)) * sizeof(T);
    };
    const auto* lo = static_cast<const char*>(ws);
    const auto* hi = lo + ws_bytes;
    const auto overlaps = [&](const void* p, std::size_t bytes) {
      const auto* q = static_cast<const char*>(p);
      return q < hi && lo < q + bytes;
    };
    if ((al != 0.0 && (overlaps(a, extent(a_rows, ta ? m : k, lda)) ||
                       overlaps(b, extent(b_rows, tb ? k : n, ldb)))) ||
        overlaps(c, extent(m, n, ldc)))
      return CUBLAS_STATUS_INVALID_VALUE;
  } else {
    ++cudasim::counters().cublas_own_workspace;
  }
  ++cudasim::counters().library_calls;
  return from_cuda(cudasim::enqueue(handle->stream, [=] {
    if (ws) {
      const std::size_t end = std::min<std::size_t>(ws_bytes, 4096);
      std::memset(ws, 0x5a, end);
      std::memset(static_cast<char*>(ws) + (ws_bytes - end), 0x5a, end);
    }
    gemm_host<T>(ta, tb, m, n, k, al, a, lda, b, ldb, be, c, ldc);
  }));
}

}  // namespace cudasim::cublas_detail

inline cublasStatus_t cublasSgemm_v2(cublasHandle_t handle, cublasOperation_t transa,
                                     cublasOperation_t transb, int m, int n, int k,
                                     const float* alpha, const float* A, int lda, const float* B,
                                     int ldb, const float* beta, float* C, int ldc) {
  return cudasim::cublas_detail::gemm<float>(handle, transa, transb, m, n, k, alpha, A, lda, B, ldb,
                                             beta, C, ldc);
}

inline cublasStatus_t cublasDgemm_v2(cublasHandle_t handle, cublasOperation_t transa,
                                     cublasOperation_t transb, int m, int n, int k,
                                     const double* alpha, const double* A, int lda, const double* B,
                                     int ldb, const double* beta, double* C, int ldc) {
  return cudasim::cublas_detail::gemm<double>(handle, transa, transb, m, n, k, alpha, A, lda, B,
                                              ldb, beta, C, ldc);
}

#define cublasCreate cublasCreate_v2
#define cublasDestroy cublasDestroy_v2
#define cublasSetStream cublasSetStream_v2
#define cublasGetStream cublasGetStream_v2
#define cublasSetWorkspace cublasSetWorkspace_v2
#define cublasSgemm cublasSgemm_v2
#define cublasDgemm cublasDgemm_v2
