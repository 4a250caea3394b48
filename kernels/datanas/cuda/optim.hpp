// datanas/cuda/optim.hpp - declarations of the optimiser launchers (optim.cuh) for host code
// compiled by the C++ compiler: the fused updates of SGD (many parameters per launch), Adam and
// ASGD (one launch per parameter), the multi-tensor squared norm and gradient clipping, the
// small tensor algebra of DARTS' unrolled step (ops/tensor_math.hpp), and the L1 distance of
// the DATA code term. The datanas_cuda library instantiates them for float and double
// (kernels/src/optim.cu); see elementwise.hpp for why the split.
//
// Pointers are device pointers; every launcher queues its work on `stream` and returns without
// synchronising. Scalars that depend on earlier device work (a norm, a clipping coefficient, a
// finite-difference step) stay in device memory and are read by the kernels that need them, so
// that no launcher ever waits for the GPU. Reductions are deterministic: per-block partial sums in
// a fixed tree, then one block adds the partials in a fixed order (no atomics).
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

namespace datanas::cuda {

/// Threads per block of every optimiser kernel.
inline constexpr int kOptimThreads = 256;
/// Tensors one multi-tensor launch covers: their pointers and sizes travel as kernel arguments
/// (32 x 16 bytes, well under the 4 KiB parameter limit), so no host-to-device copy is needed.
inline constexpr int kTensorChunk = 32;

/// Blocks per tensor of a multi-tensor reduction for a largest tensor of n elements (at most 256,
/// so that the finishing block adds at most 256 partials per tensor).
inline std::int64_t norm_blocks(std::int64_t n) {
  return std::clamp<std::int64_t>((n + kOptimThreads - 1) / kOptimThreads, 1, 256);
}
/// Elements of double the multi-tensor squared norm needs as workspace for `count` tensors of
/// n[0 .. count) elements: chunks of kTensorChunk tensors, each with norm_blocks(its largest)
/// partial sums per tensor. The launcher lays the partials out in exactly this order.
inline std::int64_t squared_norm_workspace(int count, const std::int64_t* n) {
  std::int64_t total = 0;
  for (int first = 0; first < count; first += kTensorChunk) {
    const int c = std::min(kTensorChunk, count - first);
    std::int64_t largest = 0;
    for (int t = 0; t < c; ++t) largest = std::max(largest, n[first + t]);
    total += norm_blocks(largest) * c;
  }
  return total;
}
/// Elements of double the L1 distance needs as workspace for n elements.
inline std::int64_t l1_distance_workspace(std::int64_t n) { return norm_blocks(n); }

/// Where the multi-tensor squared norm writes; null pointers are skipped. With sq the sum of
/// squares (accumulated in double):
///   sq_value[0] = T(sq)
///   norm[0]     = T(sqrt(sq))
///   clip_coef[0] = max_norm / (sqrt(sq) + 1e-6), in double: the coefficient of clip_grad_norm,
///                  applied only when it is < 1 (optimizers.hpp's CPU formula, NaN included).
template <class T>
struct NormOutputs {
  T* sq_value = nullptr;
  T* norm = nullptr;
  double* clip_coef = nullptr;
  double max_norm = 0;
};

/// The sum of squares of `count` tensors x[t] of n[t] elements (host arrays of device pointers and
/// sizes, read before this returns), into `out`. workspace: squared_norm_workspace(count, n)
/// doubles. Deterministic; count may be 0 (the sum is 0).
template <class T>
void squared_norm(int count, T* const* x, const std::int64_t* n, double* workspace,
                  const NormOutputs<T>& out, cudaStream_t stream);
/// x[t] *= T(coef[0]) for every tensor when coef[0] < 1 (a device scalar in double; nothing is
/// written otherwise): the scaling of clip_grad_norm.
template <class T>
void scale_by_coef(int count, T* const* x, const std::int64_t* n, const double* coef,
                   cudaStream_t stream);

/// One parameter of a multi-tensor SGD launch: n elements of w, g and (with momentum) buf;
/// `first`: its momentum buffer is new this step (buf = g).
template <class T>
struct SgdParam {
  T* w = nullptr;
  T* g = nullptr;
  T* buf = nullptr;  ///< nullptr: no momentum
  std::int64_t n = 0;
  bool first = false;
};
/// Parameters one SGD launch updates: they travel as kernel arguments (64 x 40 bytes, under
/// the 4 KiB parameter limit). A supernet has a thousand or more weight tensors; one launch each
/// would make the update alone a thousand launches a step, where this makes it a few dozen.
inline constexpr int kSgdChunk = 64;
/// Up to kSgdChunk parameters and the step's scalars (SgdBatch fills it on the host).
template <class T>
struct SgdChunk {
  SgdParam<T> p[kSgdChunk];
  int count = 0;
  T lr = 0, momentum = 0, wd = 0;
  bool decay = false;
};
/// SGD (torch semantics) on every parameter of the chunk, one launch, elementwise:
///   g = g + wd w (written back to g, only when decay)
///   buf = first ? g : momentum buf + g;  w = w - lr buf      (buf != nullptr)
///   w = w - lr g                                               (buf == nullptr: no momentum)
/// The parameters must not share storage (their blocks run at once; SgdBatch ensures it).
template <class T>
void sgd_chunk(const SgdChunk<T>& chunk, cudaStream_t stream);

/// The per-step scalars of Adam, computed on the host exactly as the CPU step does.
template <class T>
struct AdamScalars {
  T beta1, one_minus_beta1, beta2, one_minus_beta2;
  bool decay;
  T wd;
  T step_size;  ///< lr / (1 - beta1^t)
  T c2;         ///< 1 - beta2^t
  T eps;
  /// In a captured step (StepGraph): the device pair {step_size, c2}, written before each
  /// replay because t advances between replays; nullptr when the update runs eagerly.
  const T* per_step = nullptr;
};
/// Adam (torch semantics), elementwise:
///   g = g + wd w (written back, only when decay); m = b1 m + (1 - b1) g;
///   v = b2 v + (1 - b2) g^2;  w = w - step_size m / (sqrt(v / c2) + eps).
template <class T>
void adam_step(std::int64_t n, T* w, T* g, T* m, T* v, const AdamScalars<T>& s, cudaStream_t stream);

/// The per-step scalars of ASGD (optim/asgd.hpp).
template <class T>
struct AsgdScalars {
  bool decay;
  T wd;
  bool shrink;  ///< lambd != 0
  T shrink_factor;  ///< 1 - lambd eta
  T eta;
  bool average;  ///< mu != 1 (else ax = w)
  T mu;
  /// In a captured step (StepGraph): the device values {shrink_factor, eta, mu, average (1 or
  /// 0)}, written before each replay because they change with the step count (and eta with the
  /// previous step's lr); nullptr when the update runs eagerly.
  const T* per_step = nullptr;
};
/// ASGD (torch semantics), elementwise: g = g + wd w (written back, only when decay);
/// w = w * shrink_factor (when shrink); w = w - eta g; ax = average ? ax + mu (w - ax) : w.
template <class T>
void asgd_step(std::int64_t n, T* w, T* g, T* ax, const AsgdScalars<T>& s, cudaStream_t stream);

/// out = a x + (s ? b s[0] : b) y over n elements; out may be x or y.
template <class T>
void axpby(std::int64_t n, T a, const T* x, T b, const T* s, const T* y, T* out, cudaStream_t stream);
/// x *= (s ? factor s[0] : factor) over n elements (s a device scalar).
template <class T>
void scale_by(std::int64_t n, T* x, const T* s, T factor, cudaStream_t stream);
/// out[0] = T(num / max(sqrt(sq[0]), floor)), computed in double (one thread).
template <class T>
void norm_ratio(const T* sq, double num, double floor, T* out, cudaStream_t stream);
/// out[0] = 1 / s[0] (one thread); out may be s.
template <class T>
void reciprocal(const T* s, T* out, cudaStream_t stream);

/// y[0] = coeff * sum_i |p[i] - code[i]| (accumulated in double); workspace:
/// l1_distance_workspace(n) doubles.
template <class T>
void l1_distance(std::int64_t n, const T* p, const T* code, T coeff, T* y, double* workspace,
                 cudaStream_t stream);
/// g (+)= dy[0] coeff sign(p - code) (sign 0 where they are equal).
template <class T>
void l1_distance_backward(std::int64_t n, const T* p, const T* code, const T* dy, T coeff, T* g,
                          bool accumulate, cudaStream_t stream);

}  // namespace datanas::cuda
