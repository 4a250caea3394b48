// cudnn.h (cudasim) - the part of cuDNN 9's legacy API that datanas uses, computed on the host.
//
// The simulator's stand-in for NVIDIA's cudnn.h: a handle that remembers a stream; 4-d tensor,
// filter and convolution descriptors; the heuristics queries and workspace-size queries (below,
// "Algorithms"); and 2-d convolution forward, backward data, backward filter, backward bias and
// cudnnAddTensor for float and double data, with cuDNN's semantics:
//   - x [N, C, H, W], w [K, C / groups, R, S], y [N, K, P, Q] with
//     P = 1 + (H + 2 pad_h - ((R - 1) dil_h + 1)) / stride_h (likewise Q); element addresses come
//     from the descriptors' strides (NCHW, NHWC or explicit strides);
//   - CUDNN_CROSS_CORRELATION: y[n, k, p, q] = sum w[k, c, r, s] x[n, g C/groups + c,
//     p stride_h - pad_h + r dil_h, q stride_w - pad_w + s dil_w] (outside the input: 0), g the
//     group of k; CUDNN_CONVOLUTION uses the filter flipped, w[k, c, R-1-r, S-1-s];
//   - backward data and backward filter are the adjoints of forward in x and in w;
//   - blending: dst = alpha * result + beta * dst, with alpha and beta read from host memory
//     when the call is made (double for double data, float otherwise); beta == 0 means the
//     destination is only written (it may hold NaN), as in cuDNN.
// Algorithms: every algorithm computes the same reference sums, but the heuristics rank several
// per direction, as cuDNN does, so that the library's choice and its workspaces run as on a GPU:
// for float a tensor-op (TF32) entry first, an FFT entry that is not supported, in the backward
// directions non-deterministic entries ahead of the deterministic one, and the deterministic
// FMA/default-math algorithm that needs a workspace (an im2col-sized buffer), then algorithm 0
// (forward only, no workspace). A call checks its workspace as cuDNN needs it (present, at
// least the algorithm's size, overlapping no operand) and overwrites it before computing, so a
// workspace that is too small or shared shows as a fault or a wrong result; an algorithm that
// is not offered for the direction is CUDNN_STATUS_NOT_SUPPORTED.
// Sums accumulate in double. Each computation is one work item queued with cudasim::enqueue on
// the handle's stream (so it runs in stream order and is recorded when the stream is captured),
// capturing the descriptors' contents and the scaling factors by value. Inconsistent
// descriptors give CUDNN_STATUS_BAD_PARAM (or _NULL_POINTER), with a message for
// cudnnGetLastErrorString.
#pragma once

#include <algorithm>
#include <array>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "cuda_runtime.h"

#define CUDNN_MAJOR 9
#define CUDNN_MINOR 0
#define CUDNN_PATCHLEVEL 0
#define CUDNN_VERSION (CUDNN_MAJOR * 10000 + CUDNN_MINOR * 100 + CUDNN_PATCHLEVEL)

typedef enum {
  CUDNN_STATUS_SUCCESS = 0,
  CUDNN_STATUS_NOT_INITIALIZED = 1001,
  CUDNN_STATUS_SUBLIBRARY_VERSION_MISMATCH = 1002,
  CUDNN_STATUS_SERIALIZATION_VERSION_MISMATCH = 1003,
  CUDNN_STATUS_DEPRECATED = 1004,
  CUDNN_STATUS_LICENSE_ERROR = 1005,
  CUDNN_STATUS_RUNTIME_IN_PROGRESS = 1006,
  CUDNN_STATUS_RUNTIME_FP_OVERFLOW = 1007,
  CUDNN_STATUS_BAD_PARAM = 2000,
  CUDNN_STATUS_NOT_SUPPORTED = 3000,
  CUDNN_STATUS_INTERNAL_ERROR = 4000,
  CUDNN_STATUS_EXECUTION_FAILED = 5000,
  CUDNN_STATUS_INVALID_VALUE = 2001,
  CUDNN_STATUS_BAD_PARAM_NULL_POINTER = 2002,
  CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER = 2003,
  CUDNN_STATUS_BAD_PARAM_NOT_FINALIZED = 2004,
  CUDNN_STATUS_BAD_PARAM_OUT_OF_BOUND = 2005,
  CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT = 2006,
  CUDNN_STATUS_BAD_PARAM_STREAM_MISMATCH = 2007,
  CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH = 2008,
  CUDNN_STATUS_BAD_PARAM_DUPLICATED_ENTRIES = 2009,
  CUDNN_STATUS_BAD_PARAM_ATTRIBUTE_TYPE = 2010,
  CUDNN_STATUS_NOT_SUPPORTED_GRAPH_PATTERN = 3001,
  CUDNN_STATUS_NOT_SUPPORTED_SHAPE = 3002,
  CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE = 3003,
  CUDNN_STATUS_NOT_SUPPORTED_LAYOUT = 3004,
  CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDA_DRIVER = 3005,
  CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDART = 3006,
  CUDNN_STATUS_NOT_SUPPORTED_ARCH_MISMATCH = 3007,
  CUDNN_STATUS_NOT_SUPPORTED_RUNTIME_PREREQUISITE_MISSING = 3008,
  CUDNN_STATUS_NOT_SUPPORTED_SUBLIBRARY_UNAVAILABLE = 3009,
  CUDNN_STATUS_NOT_SUPPORTED_SHARED_MEMORY_INSUFFICIENT = 3010,
  CUDNN_STATUS_NOT_SUPPORTED_PADDING = 3011,
  CUDNN_STATUS_NOT_SUPPORTED_BAD_LAUNCH_PARAM = 3012,
  CUDNN_STATUS_INTERNAL_ERROR_COMPILATION_FAILED = 4001,
  CUDNN_STATUS_INTERNAL_ERROR_UNEXPECTED_VALUE = 4002,
  CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED = 4003,
  CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED = 4004,
  CUDNN_STATUS_INTERNAL_ERROR_BAD_LAUNCH_PARAM = 4005,
  CUDNN_STATUS_INTERNAL_ERROR_TEXTURE_CREATION_FAILED = 4006,
  CUDNN_STATUS_EXECUTION_FAILED_CUDA_DRIVER = 5001,
  CUDNN_STATUS_EXECUTION_FAILED_CUBLAS = 5002,
  CUDNN_STATUS_EXECUTION_FAILED_CUDART = 5003,
  CUDNN_STATUS_EXECUTION_FAILED_CURAND = 5004
} cudnnStatus_t;

typedef enum {
  CUDNN_DATA_FLOAT = 0,
  CUDNN_DATA_DOUBLE = 1,
  CUDNN_DATA_HALF = 2,
  CUDNN_DATA_INT8 = 3,
  CUDNN_DATA_INT32 = 4,
  CUDNN_DATA_INT8x4 = 5,
  CUDNN_DATA_UINT8 = 6,
  CUDNN_DATA_UINT8x4 = 7,
  CUDNN_DATA_INT8x32 = 8,
  CUDNN_DATA_BFLOAT16 = 9,
  CUDNN_DATA_INT64 = 10,
  CUDNN_DATA_BOOLEAN = 11,
  CUDNN_DATA_FP8_E4M3 = 12,
  CUDNN_DATA_FP8_E5M2 = 13,
  CUDNN_DATA_FAST_FLOAT_FOR_FP8 = 14
} cudnnDataType_t;

typedef enum {
  CUDNN_DEFAULT_MATH = 0,
  CUDNN_TENSOR_OP_MATH = 1,
  CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION = 2,
  CUDNN_FMA_MATH = 3
} cudnnMathType_t;

typedef enum {
  CUDNN_TENSOR_NCHW = 0,
  CUDNN_TENSOR_NHWC = 1,
  CUDNN_TENSOR_NCHW_VECT_C = 2
} cudnnTensorFormat_t;

typedef enum { CUDNN_CONVOLUTION = 0, CUDNN_CROSS_CORRELATION = 1 } cudnnConvolutionMode_t;

typedef enum { CUDNN_NON_DETERMINISTIC = 0, CUDNN_DETERMINISTIC = 1 } cudnnDeterminism_t;

typedef enum {
  CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM = 0,
  CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM = 1,
  CUDNN_CONVOLUTION_FWD_ALGO_GEMM = 2,
  CUDNN_CONVOLUTION_FWD_ALGO_DIRECT = 3,
  CUDNN_CONVOLUTION_FWD_ALGO_FFT = 4,
  CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING = 5,
  CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD = 6,
  CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED = 7,
  CUDNN_CONVOLUTION_FWD_ALGO_COUNT = 8
} cudnnConvolutionFwdAlgo_t;

typedef enum {
  CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 = 0,
  CUDNN_CONVOLUTION_BWD_DATA_ALGO_1 = 1,
  CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT = 2,
  CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING = 3,
  CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD = 4,
  CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED = 5,
  CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT = 6
} cudnnConvolutionBwdDataAlgo_t;

typedef enum {
  CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 = 0,
  CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1 = 1,
  CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT = 2,
  CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3 = 3,
  CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD = 4,
  CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED = 5,
  CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING = 6,
  CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT = 7
} cudnnConvolutionBwdFilterAlgo_t;

typedef struct cudnnConvolutionFwdAlgoPerfStruct {
  cudnnConvolutionFwdAlgo_t algo;
  cudnnStatus_t status;
  float time;
  size_t memory;
  cudnnDeterminism_t determinism;
  cudnnMathType_t mathType;
  int reserved[3];
} cudnnConvolutionFwdAlgoPerf_t;

typedef struct cudnnConvolutionBwdDataAlgoPerfStruct {
  cudnnConvolutionBwdDataAlgo_t algo;
  cudnnStatus_t status;
  float time;
  size_t memory;
  cudnnDeterminism_t determinism;
  cudnnMathType_t mathType;
  int reserved[3];
} cudnnConvolutionBwdDataAlgoPerf_t;

typedef struct cudnnConvolutionBwdFilterAlgoPerfStruct {
  cudnnConvolutionBwdFilterAlgo_t algo;
  cudnnStatus_t status;
  float time;
  size_t memory;
  cudnnDeterminism_t determinism;
  cudnnMathType_t mathType;
  int reserved[3];
} cudnnConvolutionBwdFilterAlgoPerf_t;

/// The handle: the stream its calls go to.
struct cudnnContext {
  cudaStream_t stream = nullptr;
};
/// A 4-d tensor: sizes and element strides.
struct cudnnTensorStruct {
  bool set = false;
  cudnnDataType_t type = CUDNN_DATA_FLOAT;
  int n = 0, c = 0, h = 0, w = 0;
  std::int64_t ns = 0, cs = 0, hs = 0, ws = 0;
};
/// A 4-d filter [K, C, R, S] in NCHW (KCRS) or NHWC (KRSC) layout.
struct cudnnFilterStruct {
  bool set = false;
  cudnnDataType_t type = CUDNN_DATA_FLOAT;
  cudnnTensorFormat_t format = CUDNN_TENSOR_NCHW;
  int k = 0, c = 0, h = 0, w = 0;
};
/// A 2-d convolution.
struct cudnnConvolutionStruct {
  bool set = false;
  int pad_h = 0, pad_w = 0, stride_h = 1, stride_w = 1, dil_h = 1, dil_w = 1;
  cudnnConvolutionMode_t mode = CUDNN_CONVOLUTION;
  cudnnDataType_t compute = CUDNN_DATA_FLOAT;
  int groups = 1;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
};

typedef struct cudnnContext* cudnnHandle_t;
typedef struct cudnnTensorStruct* cudnnTensorDescriptor_t;
typedef struct cudnnFilterStruct* cudnnFilterDescriptor_t;
typedef struct cudnnConvolutionStruct* cudnnConvolutionDescriptor_t;

namespace cudasim::cudnn_detail {

/// This thread's last error message (cudnnGetLastErrorString).
inline std::string& last_error() {
  thread_local std::string message;
  return message;
}
/// Records `what` as the last error of `fn` and returns `status`.
inline cudnnStatus_t fail(cudnnStatus_t status, const char* fn, const std::string& what) {
  last_error() = std::string(fn) + ": " + what;
  return status;
}

/// A 4-d operand as the kernels see it: sizes, element strides and type.
struct Layout {
  int n = 0, c = 0, h = 0, w = 0;
  std::int64_t ns = 0, cs = 0, hs = 0, ws = 0;
  cudnnDataType_t type = CUDNN_DATA_FLOAT;
  std::int64_t at(std::int64_t in, std::int64_t ic, std::int64_t ih, std::int64_t iw) const {
    return in * ns + ic * cs + ih * hs + iw * ws;
  }
  std::string dims() const {
    return "[" + std::to_string(n) + ", " + std::to_string(c) + ", " + std::to_string(h) + ", " +
           std::to_string(w) + "]";
  }
};

inline Layout layout(const cudnnTensorStruct& t) {
  return Layout{t.n, t.c, t.h, t.w, t.ns, t.cs, t.hs, t.ws, t.type};
}
inline Layout layout(const cudnnFilterStruct& f) {
  Layout l{f.k, f.c, f.h, f.w, 0, 0, 0, 0, f.type};
  if (f.format == CUDNN_TENSOR_NHWC) {  // KRSC
    l.cs = 1;
    l.ws = f.c;
    l.hs = std::int64_t(f.w) * f.c;
    l.ns = std::int64_t(f.h) * f.w * f.c;
  } else {  // KCRS
    l.ws = 1;
    l.hs = f.w;
    l.cs = std::int64_t(f.h) * f.w;
    l.ns = std::int64_t(f.c) * f.h * f.w;
  }
  return l;
}

/// A checked convolution: the operands and the geometry.
struct Conv {
  Layout x, w, y;
  int pad_h = 0, pad_w = 0, stride_h = 1, stride_w = 1, dil_h = 1, dil_w = 1, groups = 1;
  bool flip = false;
  cudnnDataType_t type = CUDNN_DATA_FLOAT;
};

inline bool supported_type(cudnnDataType_t t) {
  return t == CUDNN_DATA_FLOAT || t == CUDNN_DATA_DOUBLE;
}

/// One output size: 1 + (in + 2 pad - ((k - 1) dil + 1)) / stride, or 0 when the dilated
/// filter does not fit the padded input.
inline std::int64_t out_size(std::int64_t in, int pad, std::int64_t k, int dil, int stride) {
  const std::int64_t span = in + 2 * std::int64_t(pad) - ((k - 1) * dil + 1);
  return span < 0 ? 0 : 1 + span / stride;
}

/// Checks x, w and the convolution (not y): types, groups, a positive output size.
inline cudnnStatus_t check_input(const char* fn, cudnnTensorDescriptor_t x,
                                 cudnnFilterDescriptor_t w, cudnnConvolutionDescriptor_t conv,
                                 Conv* out) {
  if (!x || !w || !conv) return fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, fn, "null descriptor");
  if (!x->set || !w->set || !conv->set)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "descriptor used before it was set");
  Conv g;
  g.x = layout(*x);
  g.w = layout(*w);
  g.pad_h = conv->pad_h, g.pad_w = conv->pad_w;
  g.stride_h = conv->stride_h, g.stride_w = conv->stride_w;
  g.dil_h = conv->dil_h, g.dil_w = conv->dil_w;
  g.groups = conv->groups;
  g.flip = conv->mode == CUDNN_CONVOLUTION;
  g.type = x->type;
  if (w->type != x->type)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "input and filter data types differ");
  if (!supported_type(x->type))
    return fail(CUDNN_STATUS_NOT_SUPPORTED, fn, "only float and double data are simulated");
  if (conv->compute != x->type)
    return fail(CUDNN_STATUS_NOT_SUPPORTED, fn,
                "the compute type must equal the data type for float and double data");
  if (std::int64_t(g.w.c) * g.groups != g.x.c)
    return fail(CUDNN_STATUS_BAD_PARAM, fn,
                "input channels " + std::to_string(g.x.c) + " != filter channels " +
                    std::to_string(g.w.c) + " x groups " + std::to_string(g.groups));
  if (g.w.n % g.groups != 0)
    return fail(CUDNN_STATUS_BAD_PARAM, fn,
                "output channels " + std::to_string(g.w.n) + " not divisible by groups " +
                    std::to_string(g.groups));
  const std::int64_t p = out_size(g.x.h, g.pad_h, g.w.h, g.dil_h, g.stride_h);
  const std::int64_t q = out_size(g.x.w, g.pad_w, g.w.w, g.dil_w, g.stride_w);
  if (p <= 0 || q <= 0)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "the dilated filter is larger than the padded input");
  g.y = Layout{g.x.n, g.w.n, int(p), int(q), 0, 0, 0, 0, g.type};
  *out = g;
  return CUDNN_STATUS_SUCCESS;
}

/// check_input, then y: its sizes must be the convolution's output and its type the input's.
inline cudnnStatus_t check_conv(const char* fn, cudnnTensorDescriptor_t x,
                                cudnnFilterDescriptor_t w, cudnnConvolutionDescriptor_t conv,
                                cudnnTensorDescriptor_t y, Conv* out) {
  Conv g;
  if (const cudnnStatus_t s = check_input(fn, x, w, conv, &g); s != CUDNN_STATUS_SUCCESS) return s;
  if (!y) return fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, fn, "null output descriptor");
  if (!y->set) return fail(CUDNN_STATUS_BAD_PARAM, fn, "output descriptor used before it was set");
  if (y->type != g.type) return fail(CUDNN_STATUS_BAD_PARAM, fn, "output data type differs");
  const Layout yl = layout(*y);
  if (yl.n != g.y.n || yl.c != g.y.c || yl.h != g.y.h || yl.w != g.y.w)
    return fail(CUDNN_STATUS_BAD_PARAM, fn,
                "output tensor " + yl.dims() + " but the convolution of input " + g.x.dims() +
                    " by filter " + g.w.dims() + " gives " + g.y.dims());
  g.y = yl;
  *out = g;
  return CUDNN_STATUS_SUCCESS;
}

/// A host scaling factor: double for double data, float otherwise.
inline double scale(const void* p, cudnnDataType_t t) {
  return t == CUDNN_DATA_DOUBLE ? *static_cast<const double*>(p)
                                : double(*static_cast<const float*>(p));
}

/// dst = alpha * v + beta * dst; dst is not read when beta == 0.
template <class T>
inline void blend(T* dst, double alpha, double v, double beta) {
  double r = alpha * v;
  if (beta != 0.0) r += beta * double(*dst);
  *dst = T(r);
}

inline std::size_t volume(const Layout& l) {
  return std::size_t(l.n) * std::size_t(l.c) * std::size_t(l.h) * std::size_t(l.w);
}

/// The filter element that tap (r, s) of output channel k and group-local input channel c uses.
inline std::int64_t tap(const Conv& g, int k, int c, int r, int s) {
  const int rr = g.flip ? g.w.h - 1 - r : r, ss = g.flip ? g.w.w - 1 - s : s;
  return g.w.at(k, c, rr, ss);
}

template <class T>
void forward(const Conv& g, double alpha, const T* x, const T* w, double beta, T* y) {
  const int cpg = g.w.c, kpg = g.w.n / g.groups, P = g.y.h, Q = g.y.w;
  std::vector<double> acc(std::size_t(P) * std::size_t(Q));
  for (int n = 0; n < g.x.n; ++n)
    for (int k = 0; k < g.w.n; ++k) {
      std::fill(acc.begin(), acc.end(), 0.0);
      const int group = k / kpg;
      for (int c = 0; c < cpg; ++c) {
        const T* xp = x + g.x.at(n, group * cpg + c, 0, 0);
        for (int r = 0; r < g.w.h; ++r)
          for (int s = 0; s < g.w.w; ++s) {
            const double wv = double(w[tap(g, k, c, r, s)]);
            for (int p = 0; p < P; ++p) {
              const std::int64_t ih =
                  std::int64_t(p) * g.stride_h - g.pad_h + std::int64_t(r) * g.dil_h;
              if (ih < 0 || ih >= g.x.h) continue;
              double* ap = acc.data() + std::size_t(p) * std::size_t(Q);
              for (int q = 0; q < Q; ++q) {
                const std::int64_t iw =
                    std::int64_t(q) * g.stride_w - g.pad_w + std::int64_t(s) * g.dil_w;
                if (iw < 0 || iw >= g.x.w) continue;
                ap[q] += wv * double(xp[ih * g.x.hs + iw * g.x.ws]);
              }
            }
          }
      }
      for (int p = 0; p < P; ++p)
        for (int q = 0; q < Q; ++q)
          blend(y + g.y.at(n, k, p, q), alpha,
                acc[std::size_t(p) * std::size_t(Q) + std::size_t(q)], beta);
    }
}

template <class T>
void backward_data(const Conv& g, double alpha, const T* w, const T* dy, double beta, T* dx) {
  const int cpg = g.w.c, kpg = g.w.n / g.groups, P = g.y.h, Q = g.y.w, H = g.x.h, W = g.x.w;
  std::vector<double> acc(volume(g.x), 0.0);  // dense NCHW
  auto at = [&](std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w_) {
    return std::size_t(((n * g.x.c + c) * H + h) * W + w_);
  };
  for (int n = 0; n < g.x.n; ++n)
    for (int k = 0; k < g.w.n; ++k) {
      const int group = k / kpg;
      const T* dyp = dy + g.y.at(n, k, 0, 0);
      for (int c = 0; c < cpg; ++c) {
        const int ci = group * cpg + c;
        for (int r = 0; r < g.w.h; ++r)
          for (int s = 0; s < g.w.w; ++s) {
            const double wv = double(w[tap(g, k, c, r, s)]);
            for (int p = 0; p < P; ++p) {
              const std::int64_t ih =
                  std::int64_t(p) * g.stride_h - g.pad_h + std::int64_t(r) * g.dil_h;
              if (ih < 0 || ih >= H) continue;
              for (int q = 0; q < Q; ++q) {
                const std::int64_t iw =
                    std::int64_t(q) * g.stride_w - g.pad_w + std::int64_t(s) * g.dil_w;
                if (iw < 0 || iw >= W) continue;
                acc[at(n, ci, ih, iw)] += wv * double(dyp[p * g.y.hs + q * g.y.ws]);
              }
            }
          }
      }
    }
  for (int n = 0; n < g.x.n; ++n)
    for (int c = 0; c < g.x.c; ++c)
      for (int h = 0; h < H; ++h)
        for (int w_ = 0; w_ < W; ++w_)
          blend(dx + g.x.at(n, c, h, w_), alpha, acc[at(n, c, h, w_)], beta);
}

template <class T>
void backward_filter(const Conv& g, double alpha, const T* x, const T* dy, double beta, T* dw) {
  const int cpg = g.w.c, kpg = g.w.n / g.groups, P = g.y.h, Q = g.y.w, R = g.w.h, S = g.w.w;
  std::vector<double> acc(volume(g.w), 0.0);  // dense [K, C/groups, R, S]
  auto at = [&](std::int64_t k, std::int64_t c, std::int64_t r, std::int64_t s) {
    return std::size_t(((k * cpg + c) * R + r) * S + s);
  };
  for (int n = 0; n < g.x.n; ++n)
    for (int k = 0; k < g.w.n; ++k) {
      const int group = k / kpg;
      const T* dyp = dy + g.y.at(n, k, 0, 0);
      for (int c = 0; c < cpg; ++c) {
        const T* xp = x + g.x.at(n, group * cpg + c, 0, 0);
        for (int r = 0; r < R; ++r)
          for (int s = 0; s < S; ++s) {
            double sum = 0.0;
            for (int p = 0; p < P; ++p) {
              const std::int64_t ih =
                  std::int64_t(p) * g.stride_h - g.pad_h + std::int64_t(r) * g.dil_h;
              if (ih < 0 || ih >= g.x.h) continue;
              for (int q = 0; q < Q; ++q) {
                const std::int64_t iw =
                    std::int64_t(q) * g.stride_w - g.pad_w + std::int64_t(s) * g.dil_w;
                if (iw < 0 || iw >= g.x.w) continue;
                sum += double(xp[ih * g.x.hs + iw * g.x.ws]) * double(dyp[p * g.y.hs + q * g.y.ws]);
              }
            }
            acc[at(k, c, g.flip ? R - 1 - r : r, g.flip ? S - 1 - s : s)] += sum;
          }
      }
    }
  for (int k = 0; k < g.w.n; ++k)
    for (int c = 0; c < cpg; ++c)
      for (int r = 0; r < R; ++r)
        for (int s = 0; s < S; ++s)
          blend(dw + g.w.at(k, c, r, s), alpha, acc[at(k, c, r, s)], beta);
}

/// db[c] = alpha * sum over n, h, w of dy[n, c, h, w] + beta * db[c].
template <class T>
void backward_bias(const Layout& dy_l, const Layout& db_l, double alpha, const T* dy, double beta,
                   T* db) {
  for (int c = 0; c < dy_l.c; ++c) {
    double sum = 0.0;
    for (int n = 0; n < dy_l.n; ++n)
      for (int h = 0; h < dy_l.h; ++h)
        for (int w = 0; w < dy_l.w; ++w) sum += double(dy[dy_l.at(n, c, h, w)]);
    blend(db + db_l.at(0, c, 0, 0), alpha, sum, beta);
  }
}

/// C = alpha * A + beta * C, A broadcast along its dimensions of size 1.
template <class T>
void add_tensor(const Layout& a_l, const Layout& c_l, double alpha, const T* a, double beta, T* c) {
  for (int n = 0; n < c_l.n; ++n)
    for (int ch = 0; ch < c_l.c; ++ch)
      for (int h = 0; h < c_l.h; ++h)
        for (int w = 0; w < c_l.w; ++w) {
          const double av = double(a[a_l.at(a_l.n == 1 ? 0 : n, a_l.c == 1 ? 0 : ch,
                                            a_l.h == 1 ? 0 : h, a_l.w == 1 ? 0 : w)]);
          blend(c + c_l.at(n, ch, h, w), alpha, av, beta);
        }
}

/// Queues `work` on the handle's stream; a CUDA error becomes a cuDNN execution failure.
inline cudnnStatus_t launch(const char* fn, cudnnHandle_t handle, std::function<void()> work) {
  const cudasim::SimScope scope;
  ++cudasim::counters().library_calls;
  const cudaError_t e = cudasim::enqueue(handle->stream, std::move(work));
  if (e == cudaSuccess) return CUDNN_STATUS_SUCCESS;
  return fail(CUDNN_STATUS_EXECUTION_FAILED_CUDART, fn,
              "queueing the work on the stream failed with cudaError_t " + std::to_string(int(e)));
}

/// launch() of f(T{}) with T = double or float, as `type` says: f is a generic lambda that
/// reads its element type from its argument's type.
template <class F>
cudnnStatus_t launch_as(const char* fn, cudnnHandle_t handle, cudnnDataType_t type, F f) {
  const cudasim::SimScope scope;
  if (type == CUDNN_DATA_DOUBLE) return launch(fn, handle, [f] { f(double{}); });
  return launch(fn, handle, [f] { f(float{}); });
}

/// The checks cudnnConvolutionBackwardBias and cudnnAddTensor share: handle, pointers, both
/// descriptors set, one supported data type. Their layouts go to *in_l and *out_l, the scaling
/// factors to *a and *b.
inline cudnnStatus_t check_pair(const char* fn, cudnnHandle_t handle, const void* alpha,
                                const void* beta, const void* in, const void* out,
                                cudnnTensorDescriptor_t in_d, cudnnTensorDescriptor_t out_d,
                                Layout* in_l, Layout* out_l, double* a, double* b) {
  if (!handle) return fail(CUDNN_STATUS_BAD_PARAM, fn, "null handle");
  if (!alpha || !beta || !in || !out)
    return fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, fn, "null pointer");
  if (!in_d || !out_d) return fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, fn, "null descriptor");
  if (!in_d->set || !out_d->set)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "descriptor used before it was set");
  *in_l = layout(*in_d);
  *out_l = layout(*out_d);
  if (in_l->type != out_l->type) return fail(CUDNN_STATUS_BAD_PARAM, fn, "data types differ");
  if (!supported_type(out_l->type))
    return fail(CUDNN_STATUS_NOT_SUPPORTED, fn, "only float and double data are simulated");
  *a = scale(alpha, out_l->type);
  *b = scale(beta, out_l->type);
  return CUDNN_STATUS_SUCCESS;
}

/// Sizes and strides of a 4-d tensor, checked as cuDNN checks them.
inline cudnnStatus_t set_tensor(const char* fn, cudnnTensorDescriptor_t d, cudnnDataType_t type,
                                int n, int c, int h, int w, std::int64_t ns, std::int64_t cs,
                                std::int64_t hs, std::int64_t ws) {
  if (!d) return fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, fn, "null descriptor");
  if (n <= 0 || c <= 0 || h <= 0 || w <= 0)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "every dimension must be positive");
  if (ns <= 0 || cs <= 0 || hs <= 0 || ws <= 0)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "every stride must be positive");
  if (std::int64_t(n) * c * h * w > INT_MAX)
    return fail(CUDNN_STATUS_NOT_SUPPORTED, fn, "tensors of 2^31 or more elements");
  *d = cudnnTensorStruct{true, type, n, c, h, w, ns, cs, hs, ws};
  return CUDNN_STATUS_SUCCESS;
}

}  // namespace cudasim::cudnn_detail

// ---- library, errors, handle --------------------------------------------------------------------

inline size_t cudnnGetVersion(void) { return CUDNN_VERSION; }

namespace cudasim::cudnn_detail {
/// The CUDA runtime version this cuDNN reports it was built for (cudnnGetCudartVersion); a test
/// sets another to see the library refuse a cuDNN built for another CUDA major version.
inline size_t built_for_cudart = CUDART_VERSION;
}  // namespace cudasim::cudnn_detail
inline size_t cudnnGetCudartVersion(void) { return cudasim::cudnn_detail::built_for_cudart; }

inline const char* cudnnGetErrorString(cudnnStatus_t status) {
  switch (status) {
#define CUDASIM_CUDNN_NAME(s) \
  case s:                     \
    return #s;
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_SUCCESS)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_NOT_INITIALIZED)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_SUBLIBRARY_VERSION_MISMATCH)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_SERIALIZATION_VERSION_MISMATCH)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_DEPRECATED)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_LICENSE_ERROR)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_RUNTIME_IN_PROGRESS)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_RUNTIME_FP_OVERFLOW)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_BAD_PARAM)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_NOT_SUPPORTED)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_INTERNAL_ERROR)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_EXECUTION_FAILED)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_INVALID_VALUE)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_BAD_PARAM_NULL_POINTER)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_BAD_PARAM_NOT_FINALIZED)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_BAD_PARAM_OUT_OF_BOUND)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_BAD_PARAM_STREAM_MISMATCH)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_BAD_PARAM_DUPLICATED_ENTRIES)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_BAD_PARAM_ATTRIBUTE_TYPE)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_NOT_SUPPORTED_GRAPH_PATTERN)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_NOT_SUPPORTED_SHAPE)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_NOT_SUPPORTED_LAYOUT)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDA_DRIVER)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDART)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_NOT_SUPPORTED_ARCH_MISMATCH)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_NOT_SUPPORTED_RUNTIME_PREREQUISITE_MISSING)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_NOT_SUPPORTED_SUBLIBRARY_UNAVAILABLE)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_NOT_SUPPORTED_SHARED_MEMORY_INSUFFICIENT)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_NOT_SUPPORTED_PADDING)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_NOT_SUPPORTED_BAD_LAUNCH_PARAM)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_INTERNAL_ERROR_COMPILATION_FAILED)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_INTERNAL_ERROR_UNEXPECTED_VALUE)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_INTERNAL_ERROR_BAD_LAUNCH_PARAM)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_INTERNAL_ERROR_TEXTURE_CREATION_FAILED)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_EXECUTION_FAILED_CUDA_DRIVER)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_EXECUTION_FAILED_CUBLAS)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_EXECUTION_FAILED_CUDART)
    CUDASIM_CUDNN_NAME(CUDNN_STATUS_EXECUTION_FAILED_CURAND)
#undef CUDASIM_CUDNN_NAME
  }
  return "CUDNN_STATUS_UNKNOWN";
}

/// Copies this thread's last error message into `message` (at most max_size bytes, NUL
/// included; empty when there is none) and clears it.
inline void cudnnGetLastErrorString(char* message, size_t max_size) {
  if (!message || max_size == 0) return;
  std::string& last = cudasim::cudnn_detail::last_error();
  const std::size_t n = std::min(last.size(), max_size - 1);
  std::memcpy(message, last.data(), n);
  message[n] = '\0';
  last.clear();
}

inline cudnnStatus_t cudnnCreate(cudnnHandle_t* handle) {
  if (!handle)
    return cudasim::cudnn_detail::fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, "cudnnCreate",
                                       "null handle pointer");
  *handle = new (std::nothrow) cudnnContext{};
  return *handle ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED;
}

inline cudnnStatus_t cudnnDestroy(cudnnHandle_t handle) {
  if (!handle)
    return cudasim::cudnn_detail::fail(CUDNN_STATUS_BAD_PARAM, "cudnnDestroy", "null handle");
  delete handle;
  return CUDNN_STATUS_SUCCESS;
}

inline cudnnStatus_t cudnnSetStream(cudnnHandle_t handle, cudaStream_t streamId) {
  if (!handle)
    return cudasim::cudnn_detail::fail(CUDNN_STATUS_BAD_PARAM, "cudnnSetStream", "null handle");
  handle->stream = streamId;
  return CUDNN_STATUS_SUCCESS;
}

inline cudnnStatus_t cudnnGetStream(cudnnHandle_t handle, cudaStream_t* streamId) {
  if (!handle || !streamId)
    return cudasim::cudnn_detail::fail(CUDNN_STATUS_BAD_PARAM, "cudnnGetStream", "null argument");
  *streamId = handle->stream;
  return CUDNN_STATUS_SUCCESS;
}

// ---- tensor and filter descriptors --------------------------------------------------------------

inline cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t* tensorDesc) {
  if (!tensorDesc)
    return cudasim::cudnn_detail::fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER,
                                       "cudnnCreateTensorDescriptor", "null pointer");
  *tensorDesc = new (std::nothrow) cudnnTensorStruct{};
  return *tensorDesc ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED;
}

inline cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t tensorDesc) {
  delete tensorDesc;
  return CUDNN_STATUS_SUCCESS;
}

inline cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t tensorDesc,
                                                cudnnTensorFormat_t format,
                                                cudnnDataType_t dataType, int n, int c, int h,
                                                int w) {
  constexpr const char* fn = "cudnnSetTensor4dDescriptor";
  const std::int64_t H = h, W = w, C = c;
  if (format == CUDNN_TENSOR_NCHW)
    return cudasim::cudnn_detail::set_tensor(fn, tensorDesc, dataType, n, c, h, w, C * H * W, H * W,
                                             W, 1);
  if (format == CUDNN_TENSOR_NHWC)
    return cudasim::cudnn_detail::set_tensor(fn, tensorDesc, dataType, n, c, h, w, H * W * C, 1,
                                             W * C, C);
  return cudasim::cudnn_detail::fail(CUDNN_STATUS_NOT_SUPPORTED, fn,
                                     "only NCHW and NHWC are simulated");
}

inline cudnnStatus_t cudnnSetTensor4dDescriptorEx(cudnnTensorDescriptor_t tensorDesc,
                                                  cudnnDataType_t dataType, int n, int c, int h,
                                                  int w, int nStride, int cStride, int hStride,
                                                  int wStride) {
  return cudasim::cudnn_detail::set_tensor("cudnnSetTensor4dDescriptorEx", tensorDesc, dataType, n,
                                           c, h, w, nStride, cStride, hStride, wStride);
}

inline cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t* filterDesc) {
  if (!filterDesc)
    return cudasim::cudnn_detail::fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER,
                                       "cudnnCreateFilterDescriptor", "null pointer");
  *filterDesc = new (std::nothrow) cudnnFilterStruct{};
  return *filterDesc ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED;
}

inline cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t filterDesc) {
  delete filterDesc;
  return CUDNN_STATUS_SUCCESS;
}

inline cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t filterDesc,
                                                cudnnDataType_t dataType,
                                                cudnnTensorFormat_t format, int k, int c, int h,
                                                int w) {
  using cudasim::cudnn_detail::fail;
  constexpr const char* fn = "cudnnSetFilter4dDescriptor";
  if (!filterDesc) return fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, fn, "null descriptor");
  if (k <= 0 || c <= 0 || h <= 0 || w <= 0)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "every dimension must be positive");
  if (format != CUDNN_TENSOR_NCHW && format != CUDNN_TENSOR_NHWC)
    return fail(CUDNN_STATUS_NOT_SUPPORTED, fn, "only NCHW and NHWC are simulated");
  if (std::int64_t(k) * c * h * w > INT_MAX)
    return fail(CUDNN_STATUS_NOT_SUPPORTED, fn, "filters of 2^31 or more elements");
  *filterDesc = cudnnFilterStruct{true, dataType, format, k, c, h, w};
  return CUDNN_STATUS_SUCCESS;
}

// ---- convolution descriptors --------------------------------------------------------------------

inline cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t* convDesc) {
  if (!convDesc)
    return cudasim::cudnn_detail::fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER,
                                       "cudnnCreateConvolutionDescriptor", "null pointer");
  *convDesc = new (std::nothrow) cudnnConvolutionStruct{};
  return *convDesc ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED;
}

inline cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t convDesc) {
  delete convDesc;
  return CUDNN_STATUS_SUCCESS;
}

inline cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t convDesc,
                                                     int pad_h, int pad_w, int u, int v,
                                                     int dilation_h, int dilation_w,
                                                     cudnnConvolutionMode_t mode,
                                                     cudnnDataType_t computeType) {
  using cudasim::cudnn_detail::fail;
  constexpr const char* fn = "cudnnSetConvolution2dDescriptor";
  if (!convDesc) return fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, fn, "null descriptor");
  if (pad_h < 0 || pad_w < 0) return fail(CUDNN_STATUS_BAD_PARAM, fn, "negative padding");
  if (u <= 0 || v <= 0) return fail(CUDNN_STATUS_BAD_PARAM, fn, "strides must be positive");
  if (dilation_h <= 0 || dilation_w <= 0)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "dilations must be positive");
  if (mode != CUDNN_CONVOLUTION && mode != CUDNN_CROSS_CORRELATION)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "unknown convolution mode");
  convDesc->set = true;
  convDesc->pad_h = pad_h, convDesc->pad_w = pad_w;
  convDesc->stride_h = u, convDesc->stride_w = v;
  convDesc->dil_h = dilation_h, convDesc->dil_w = dilation_w;
  convDesc->mode = mode;
  convDesc->compute = computeType;
  return CUDNN_STATUS_SUCCESS;
}

inline cudnnStatus_t cudnnSetConvolutionGroupCount(cudnnConvolutionDescriptor_t convDesc,
                                                   int groupCount) {
  using cudasim::cudnn_detail::fail;
  if (!convDesc)
    return fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, "cudnnSetConvolutionGroupCount",
                "null descriptor");
  if (groupCount < 1)
    return fail(CUDNN_STATUS_BAD_PARAM, "cudnnSetConvolutionGroupCount", "groupCount < 1");
  convDesc->groups = groupCount;
  return CUDNN_STATUS_SUCCESS;
}

inline cudnnStatus_t cudnnGetConvolutionGroupCount(cudnnConvolutionDescriptor_t convDesc,
                                                   int* groupCount) {
  if (!convDesc || !groupCount)
    return cudasim::cudnn_detail::fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER,
                                       "cudnnGetConvolutionGroupCount", "null argument");
  *groupCount = convDesc->groups;
  return CUDNN_STATUS_SUCCESS;
}

inline cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t convDesc,
                                                 cudnnMathType_t mathType) {
  using cudasim::cudnn_detail::fail;
  if (!convDesc)
    return fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, "cudnnSetConvolutionMathType",
                "null descriptor");
  if (mathType != CUDNN_DEFAULT_MATH && mathType != CUDNN_TENSOR_OP_MATH &&
      mathType != CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION && mathType != CUDNN_FMA_MATH)
    return fail(CUDNN_STATUS_BAD_PARAM, "cudnnSetConvolutionMathType", "unknown math type");
  convDesc->math = mathType;
  return CUDNN_STATUS_SUCCESS;
}

inline cudnnStatus_t cudnnGetConvolutionMathType(cudnnConvolutionDescriptor_t convDesc,
                                                 cudnnMathType_t* mathType) {
  if (!convDesc || !mathType)
    return cudasim::cudnn_detail::fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER,
                                       "cudnnGetConvolutionMathType", "null argument");
  *mathType = convDesc->math;
  return CUDNN_STATUS_SUCCESS;
}

inline cudnnStatus_t cudnnGetConvolution2dForwardOutputDim(
    const cudnnConvolutionDescriptor_t convDesc, const cudnnTensorDescriptor_t inputTensorDesc,
    const cudnnFilterDescriptor_t filterDesc, int* n, int* c, int* h, int* w) {
  using namespace cudasim::cudnn_detail;
  constexpr const char* fn = "cudnnGetConvolution2dForwardOutputDim";
  if (!n || !c || !h || !w)
    return fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, fn, "null output pointer");
  Conv g;
  if (const cudnnStatus_t s = check_input(fn, inputTensorDesc, filterDesc, convDesc, &g);
      s != CUDNN_STATUS_SUCCESS)
    return s;
  *n = g.y.n, *c = g.y.c, *h = g.y.h, *w = g.y.w;
  return CUDNN_STATUS_SUCCESS;
}

// ---- algorithm heuristics and workspaces --------------------------------------------------------

inline cudnnStatus_t cudnnGetConvolutionForwardAlgorithmMaxCount(cudnnHandle_t handle, int* count) {
  if (!handle || !count)
    return cudasim::cudnn_detail::fail(
        CUDNN_STATUS_BAD_PARAM, "cudnnGetConvolutionForwardAlgorithmMaxCount", "null argument");
  *count = CUDNN_CONVOLUTION_FWD_ALGO_COUNT;
  return CUDNN_STATUS_SUCCESS;
}
inline cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithmMaxCount(cudnnHandle_t handle,
                                                                      int* count) {
  if (!handle || !count)
    return cudasim::cudnn_detail::fail(CUDNN_STATUS_BAD_PARAM,
                                       "cudnnGetConvolutionBackwardDataAlgorithmMaxCount",
                                       "null argument");
  *count = CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT;
  return CUDNN_STATUS_SUCCESS;
}
inline cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(cudnnHandle_t handle,
                                                                        int* count) {
  if (!handle || !count)
    return cudasim::cudnn_detail::fail(CUDNN_STATUS_BAD_PARAM,
                                       "cudnnGetConvolutionBackwardFilterAlgorithmMaxCount",
                                       "null argument");
  *count = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT;
  return CUDNN_STATUS_SUCCESS;
}

namespace cudasim::cudnn_detail {
enum class Direction { kForward, kBackwardData, kBackwardFilter };

/// One entry of the simulated heuristics (file comment, "Algorithms").
struct Offer {
  int algo;
  bool tensor_op;      // labelled CUDNN_TENSOR_OP_MATH (float only)
  bool deterministic;
  bool supported;      // false: listed with CUDNN_STATUS_NOT_SUPPORTED
  int columns;         // workspace: this many 1/4ths of an im2col buffer of one image
};

/// A direction's offers in rank order (fixed capacity: a convolution call looks its algorithm
/// up here, and a steady-state step must make no host allocation, test_host_allocation_gpu.cpp).
struct Offers {
  std::array<Offer, 5> list{};
  int size = 0;
  void push_back(const Offer& o) { list[std::size_t(size++)] = o; }
  const Offer* begin() const { return list.data(); }
  const Offer* end() const { return list.data() + size; }
};

/// The ranked offers of a direction for data of `type`.
inline Offers offers(Direction d, cudnnDataType_t type) {
  Offers r;
  if (type == CUDNN_DATA_FLOAT) r.push_back({1, true, true, true, 4});
  switch (d) {
    case Direction::kForward:
      r.push_back({CUDNN_CONVOLUTION_FWD_ALGO_FFT, false, true, false, 0});
      r.push_back({1, false, true, true, 4});
      r.push_back({0, false, true, true, 0});
      break;
    case Direction::kBackwardData:
      r.push_back({0, false, false, true, 0});
      r.push_back({CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT, false, true, false, 0});
      r.push_back({1, false, true, true, 4});
      break;
    case Direction::kBackwardFilter:
      r.push_back({0, false, false, true, 0});
      r.push_back({3, false, false, true, 2});
      r.push_back({CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT, false, true, false, 0});
      r.push_back({1, false, true, true, 4});
      break;
  }
  return r;
}

/// The offer of `algo` for the direction (the first, math types aside), or null.
inline const Offer* find_offer(const Offers& list, int algo) {
  for (const Offer& o : list)
    if (o.algo == algo && !o.tensor_op) return &o;
  return nullptr;
}

/// Workspace bytes of an offer: `columns` quarters of one image's im2col matrix
/// ((C / groups) R S x P Q elements).
inline std::size_t workspace_bytes(const Offer& o, const Conv& g) {
  const std::size_t elem = g.type == CUDNN_DATA_DOUBLE ? sizeof(double) : sizeof(float);
  const std::size_t im2col = std::size_t(g.w.c) * std::size_t(g.w.h) * std::size_t(g.w.w) *
                             std::size_t(g.y.h) * std::size_t(g.y.w) * elem;
  return (im2col * std::size_t(o.columns) + 3) / 4;
}

/// The heuristics' answer (file comment, "Algorithms"), after the same checks as the computation.
template <class Perf, class Algo>
cudnnStatus_t heuristics(const char* fn, Direction d, cudnnHandle_t handle,
                         cudnnTensorDescriptor_t x, cudnnFilterDescriptor_t w,
                         cudnnConvolutionDescriptor_t conv, cudnnTensorDescriptor_t y,
                         int requested, int* returned, Perf* results) {
  if (!handle) return fail(CUDNN_STATUS_BAD_PARAM, fn, "null handle");
  if (!returned || !results)
    return fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, fn, "null result pointer");
  if (requested < 1) return fail(CUDNN_STATUS_BAD_PARAM, fn, "requestedAlgoCount < 1");
  Conv g;
  if (const cudnnStatus_t s = check_conv(fn, x, w, conv, y, &g); s != CUDNN_STATUS_SUCCESS)
    return s;
  const Offers list = offers(d, g.type);
  const int n = std::min(requested, list.size);
  for (int i = 0; i < n; ++i) {
    const Offer& o = list.list[std::size_t(i)];
    Perf r{};
    r.algo = Algo(o.algo);
    r.status = o.supported ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_NOT_SUPPORTED;
    r.time = -1.0f;  // heuristics do not time
    r.memory = o.supported ? workspace_bytes(o, g) : ~std::size_t(0);  // unset when unsupported
    r.determinism = o.deterministic ? CUDNN_DETERMINISTIC : CUDNN_NON_DETERMINISTIC;
    r.mathType = o.tensor_op ? CUDNN_TENSOR_OP_MATH : conv->math;
    results[i] = r;
  }
  *returned = n;
  return CUDNN_STATUS_SUCCESS;
}
/// A workspace-size query: the offer's size; NOT_SUPPORTED for an algorithm not offered.
inline cudnnStatus_t workspace(const char* fn, Direction d, cudnnHandle_t handle,
                               cudnnTensorDescriptor_t x, cudnnFilterDescriptor_t w,
                               cudnnConvolutionDescriptor_t conv, cudnnTensorDescriptor_t y,
                               int algo, int algo_count, size_t* bytes) {
  if (!handle) return fail(CUDNN_STATUS_BAD_PARAM, fn, "null handle");
  if (!bytes) return fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, fn, "null size pointer");
  if (algo < 0 || algo >= algo_count) return fail(CUDNN_STATUS_BAD_PARAM, fn, "unknown algorithm");
  Conv g;
  if (const cudnnStatus_t s = check_conv(fn, x, w, conv, y, &g); s != CUDNN_STATUS_SUCCESS)
    return s;
  const Offers list = offers(d, g.type);
  const Offer* o = find_offer(list, algo);
  if (!o || !o->supported)
    return fail(CUDNN_STATUS_NOT_SUPPORTED, fn,
                "algorithm " + std::to_string(algo) + " is not offered for this direction");
  *bytes = workspace_bytes(*o, g);
  return CUDNN_STATUS_SUCCESS;
}
}  // namespace cudasim::cudnn_detail

inline cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t srcDesc,
    const cudnnFilterDescriptor_t filterDesc, const cudnnConvolutionDescriptor_t convDesc,
    const cudnnTensorDescriptor_t destDesc, const int requestedAlgoCount, int* returnedAlgoCount,
    cudnnConvolutionFwdAlgoPerf_t* perfResults) {
  return cudasim::cudnn_detail::heuristics<cudnnConvolutionFwdAlgoPerf_t,
                                           cudnnConvolutionFwdAlgo_t>(
      "cudnnGetConvolutionForwardAlgorithm_v7", cudasim::cudnn_detail::Direction::kForward, handle, srcDesc, filterDesc, convDesc, destDesc,
      requestedAlgoCount, returnedAlgoCount, perfResults);
}

inline cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm_v7(
    cudnnHandle_t handle, const cudnnFilterDescriptor_t filterDesc,
    const cudnnTensorDescriptor_t diffDesc, const cudnnConvolutionDescriptor_t convDesc,
    const cudnnTensorDescriptor_t gradDesc, const int requestedAlgoCount, int* returnedAlgoCount,
    cudnnConvolutionBwdDataAlgoPerf_t* perfResults) {
  return cudasim::cudnn_detail::heuristics<cudnnConvolutionBwdDataAlgoPerf_t,
                                           cudnnConvolutionBwdDataAlgo_t>(
      "cudnnGetConvolutionBackwardDataAlgorithm_v7", cudasim::cudnn_detail::Direction::kBackwardData, handle, gradDesc, filterDesc, convDesc,
      diffDesc, requestedAlgoCount, returnedAlgoCount, perfResults);
}

inline cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm_v7(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t srcDesc,
    const cudnnTensorDescriptor_t diffDesc, const cudnnConvolutionDescriptor_t convDesc,
    const cudnnFilterDescriptor_t gradDesc, const int requestedAlgoCount, int* returnedAlgoCount,
    cudnnConvolutionBwdFilterAlgoPerf_t* perfResults) {
  return cudasim::cudnn_detail::heuristics<cudnnConvolutionBwdFilterAlgoPerf_t,
                                           cudnnConvolutionBwdFilterAlgo_t>(
      "cudnnGetConvolutionBackwardFilterAlgorithm_v7", cudasim::cudnn_detail::Direction::kBackwardFilter, handle, srcDesc, gradDesc, convDesc,
      diffDesc, requestedAlgoCount, returnedAlgoCount, perfResults);
}

inline cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc, const cudnnFilterDescriptor_t wDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnTensorDescriptor_t yDesc,
    cudnnConvolutionFwdAlgo_t algo, size_t* sizeInBytes) {
  return cudasim::cudnn_detail::workspace("cudnnGetConvolutionForwardWorkspaceSize",
                                          cudasim::cudnn_detail::Direction::kForward, handle, xDesc,
                                          wDesc, convDesc, yDesc, int(algo),
                                          CUDNN_CONVOLUTION_FWD_ALGO_COUNT, sizeInBytes);
}

inline cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(
    cudnnHandle_t handle, const cudnnFilterDescriptor_t wDesc, const cudnnTensorDescriptor_t dyDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnTensorDescriptor_t dxDesc,
    cudnnConvolutionBwdDataAlgo_t algo, size_t* sizeInBytes) {
  return cudasim::cudnn_detail::workspace("cudnnGetConvolutionBackwardDataWorkspaceSize",
                                          cudasim::cudnn_detail::Direction::kBackwardData, handle,
                                          dxDesc, wDesc, convDesc, dyDesc, int(algo),
                                          CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, sizeInBytes);
}

inline cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc, const cudnnTensorDescriptor_t dyDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnFilterDescriptor_t gradDesc,
    cudnnConvolutionBwdFilterAlgo_t algo, size_t* sizeInBytes) {
  return cudasim::cudnn_detail::workspace("cudnnGetConvolutionBackwardFilterWorkspaceSize",
                                          cudasim::cudnn_detail::Direction::kBackwardFilter, handle,
                                          xDesc, gradDesc, convDesc, dyDesc, int(algo),
                                          CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, sizeInBytes);
}

// ---- computation --------------------------------------------------------------------------------

namespace cudasim::cudnn_detail {
/// The checks every convolution call shares: handle, scaling factors, data pointers, algorithm
/// and descriptors. Reads alpha and beta (host memory) into *a and *b.
inline cudnnStatus_t check_call(const char* fn, cudnnHandle_t handle, const void* alpha,
                                const void* beta, const void* in1, const void* in2, const void* out,
                                int algo, int algo_count, cudnnTensorDescriptor_t x,
                                cudnnFilterDescriptor_t w, cudnnConvolutionDescriptor_t conv,
                                cudnnTensorDescriptor_t y, Conv* g, double* a, double* b) {
  if (!handle) return fail(CUDNN_STATUS_BAD_PARAM, fn, "null handle");
  if (!alpha || !beta) return fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, fn, "null alpha or beta");
  if (!in1 || !in2 || !out)
    return fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, fn, "null data pointer");
  if (algo < 0 || algo >= algo_count) return fail(CUDNN_STATUS_BAD_PARAM, fn, "unknown algorithm");
  if (const cudnnStatus_t s = check_conv(fn, x, w, conv, y, g); s != CUDNN_STATUS_SUCCESS) return s;
  *a = scale(alpha, g->type);
  *b = scale(beta, g->type);
  return CUDNN_STATUS_SUCCESS;
}

/// Bytes from an operand's first element to one past its last (positive strides).
inline std::size_t extent_bytes(const Layout& l) {
  const std::int64_t last = std::int64_t(l.n - 1) * l.ns + std::int64_t(l.c - 1) * l.cs +
                            std::int64_t(l.h - 1) * l.hs + std::int64_t(l.w - 1) * l.ws;
  const std::size_t elem = l.type == CUDNN_DATA_DOUBLE ? sizeof(double) : sizeof(float);
  return std::size_t(last + 1) * elem;
}

/// The algorithm a call names must be offered for its direction, and its workspace must be
/// present, large enough and apart from the operands (as cuDNN needs it). The bytes the
/// algorithm uses go to *bytes.
inline cudnnStatus_t check_workspace(const char* fn, Direction d, int algo, const Conv& g,
                                     const void* ws, std::size_t ws_size, const void* x,
                                     const void* w, const void* y, std::size_t* bytes) {
  const Offers list = offers(d, g.type);
  const Offer* o = find_offer(list, algo);
  if (!o || !o->supported)
    return fail(CUDNN_STATUS_NOT_SUPPORTED, fn,
                "algorithm " + std::to_string(algo) + " is not offered for this direction");
  *bytes = workspace_bytes(*o, g);
  if (*bytes == 0) return CUDNN_STATUS_SUCCESS;
  if (!ws) return fail(CUDNN_STATUS_BAD_PARAM, fn, "null workspace for an algorithm that needs one");
  if (ws_size < *bytes)
    return fail(CUDNN_STATUS_BAD_PARAM, fn,
                "workspace of " + std::to_string(ws_size) + " bytes; the algorithm needs " +
                    std::to_string(*bytes));
  const auto* lo = static_cast<const char*>(ws);
  const auto* hi = lo + *bytes;
  const std::pair<const void*, const Layout*> operands[] = {{x, &g.x}, {w, &g.w}, {y, &g.y}};
  for (const auto& [p, l] : operands) {
    const auto* b = static_cast<const char*>(p);
    if (b < hi && lo < b + extent_bytes(*l))
      return fail(CUDNN_STATUS_BAD_PARAM, fn, "the workspace overlaps an operand");
  }
  return CUDNN_STATUS_SUCCESS;
}
}  // namespace cudasim::cudnn_detail

inline cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t handle, const void* alpha,
                                             const cudnnTensorDescriptor_t xDesc, const void* x,
                                             const cudnnFilterDescriptor_t wDesc, const void* w,
                                             const cudnnConvolutionDescriptor_t convDesc,
                                             cudnnConvolutionFwdAlgo_t algo, void* workSpace,
                                             size_t workSpaceSizeInBytes, const void* beta,
                                             const cudnnTensorDescriptor_t yDesc, void* y) {
  using namespace cudasim::cudnn_detail;
  constexpr const char* fn = "cudnnConvolutionForward";
  Conv g;
  double a = 0, b = 0;
  std::size_t used = 0;
  if (const cudnnStatus_t s =
          check_call(fn, handle, alpha, beta, x, w, y, int(algo), CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
                     xDesc, wDesc, convDesc, yDesc, &g, &a, &b);
      s != CUDNN_STATUS_SUCCESS)
    return s;
  if (const cudnnStatus_t s = check_workspace(fn, Direction::kForward, int(algo), g, workSpace,
                                              workSpaceSizeInBytes, x, w, y, &used);
      s != CUDNN_STATUS_SUCCESS)
    return s;
  return launch_as(fn, handle, g.type, [=](auto t) {
    using T = decltype(t);
    if (used) std::memset(workSpace, 0x5a, used);  // the algorithm's scratch
    forward<T>(g, a, static_cast<const T*>(x), static_cast<const T*>(w), b, static_cast<T*>(y));
  });
}

inline cudnnStatus_t cudnnConvolutionBackwardData(
    cudnnHandle_t handle, const void* alpha, const cudnnFilterDescriptor_t wDesc, const void* w,
    const cudnnTensorDescriptor_t dyDesc, const void* dy,
    const cudnnConvolutionDescriptor_t convDesc, cudnnConvolutionBwdDataAlgo_t algo,
    void* workSpace, size_t workSpaceSizeInBytes, const void* beta,
    const cudnnTensorDescriptor_t dxDesc, void* dx) {
  using namespace cudasim::cudnn_detail;
  constexpr const char* fn = "cudnnConvolutionBackwardData";
  Conv g;
  double a = 0, b = 0;
  std::size_t used = 0;
  if (const cudnnStatus_t s = check_call(fn, handle, alpha, beta, w, dy, dx, int(algo),
                                         CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, dxDesc, wDesc,
                                         convDesc, dyDesc, &g, &a, &b);
      s != CUDNN_STATUS_SUCCESS)
    return s;
  if (const cudnnStatus_t s = check_workspace(fn, Direction::kBackwardData, int(algo), g,
                                              workSpace, workSpaceSizeInBytes, dx, w, dy, &used);
      s != CUDNN_STATUS_SUCCESS)
    return s;
  return launch_as(fn, handle, g.type, [=](auto t) {
    using T = decltype(t);
    if (used) std::memset(workSpace, 0x5a, used);
    backward_data<T>(g, a, static_cast<const T*>(w), static_cast<const T*>(dy), b,
                     static_cast<T*>(dx));
  });
}

inline cudnnStatus_t cudnnConvolutionBackwardFilter(
    cudnnHandle_t handle, const void* alpha, const cudnnTensorDescriptor_t xDesc, const void* x,
    const cudnnTensorDescriptor_t dyDesc, const void* dy,
    const cudnnConvolutionDescriptor_t convDesc, cudnnConvolutionBwdFilterAlgo_t algo,
    void* workSpace, size_t workSpaceSizeInBytes, const void* beta,
    const cudnnFilterDescriptor_t dwDesc, void* dw) {
  using namespace cudasim::cudnn_detail;
  constexpr const char* fn = "cudnnConvolutionBackwardFilter";
  Conv g;
  double a = 0, b = 0;
  std::size_t used = 0;
  if (const cudnnStatus_t s = check_call(fn, handle, alpha, beta, x, dy, dw, int(algo),
                                         CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, xDesc, dwDesc,
                                         convDesc, dyDesc, &g, &a, &b);
      s != CUDNN_STATUS_SUCCESS)
    return s;
  if (const cudnnStatus_t s = check_workspace(fn, Direction::kBackwardFilter, int(algo), g,
                                              workSpace, workSpaceSizeInBytes, x, dw, dy, &used);
      s != CUDNN_STATUS_SUCCESS)
    return s;
  return launch_as(fn, handle, g.type, [=](auto t) {
    using T = decltype(t);
    if (used) std::memset(workSpace, 0x5a, used);
    backward_filter<T>(g, a, static_cast<const T*>(x), static_cast<const T*>(dy), b,
                       static_cast<T*>(dw));
  });
}

inline cudnnStatus_t cudnnConvolutionBackwardBias(cudnnHandle_t handle, const void* alpha,
                                                  const cudnnTensorDescriptor_t dyDesc,
                                                  const void* dy, const void* beta,
                                                  const cudnnTensorDescriptor_t dbDesc, void* db) {
  using namespace cudasim::cudnn_detail;
  constexpr const char* fn = "cudnnConvolutionBackwardBias";
  Layout dyl, dbl;
  double a = 0, b = 0;
  if (const cudnnStatus_t s =
          check_pair(fn, handle, alpha, beta, dy, db, dyDesc, dbDesc, &dyl, &dbl, &a, &b);
      s != CUDNN_STATUS_SUCCESS)
    return s;
  if (dbl.n != 1 || dbl.c != dyl.c || dbl.h != 1 || dbl.w != 1)
    return fail(CUDNN_STATUS_BAD_PARAM, fn,
                "bias gradient " + dbl.dims() + " for dy " + dyl.dims());
  return launch_as(fn, handle, dyl.type, [=](auto t) {
    using T = decltype(t);
    backward_bias<T>(dyl, dbl, a, static_cast<const T*>(dy), b, static_cast<T*>(db));
  });
}

inline cudnnStatus_t cudnnAddTensor(cudnnHandle_t handle, const void* alpha,
                                    const cudnnTensorDescriptor_t aDesc, const void* A,
                                    const void* beta, const cudnnTensorDescriptor_t cDesc,
                                    void* C) {
  using namespace cudasim::cudnn_detail;
  constexpr const char* fn = "cudnnAddTensor";
  Layout al, cl;
  double a = 0, b = 0;
  if (const cudnnStatus_t s =
          check_pair(fn, handle, alpha, beta, A, C, aDesc, cDesc, &al, &cl, &a, &b);
      s != CUDNN_STATUS_SUCCESS)
    return s;
  const int ad[4] = {al.n, al.c, al.h, al.w}, cd[4] = {cl.n, cl.c, cl.h, cl.w};
  for (int i = 0; i < 4; ++i)
    if (ad[i] != cd[i] && ad[i] != 1)
      return fail(CUDNN_STATUS_BAD_PARAM, fn,
                  "A " + al.dims() + " does not broadcast to C " + cl.dims());
  return launch_as(fn, handle, cl.type, [=](auto t) {
    using T = decltype(t);
    add_tensor<T>(al, cl, a, static_cast<const T*>(A), b, static_cast<T*>(C));
  });
}
