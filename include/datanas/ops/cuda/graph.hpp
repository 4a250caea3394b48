// datanas/ops/cuda/graph.hpp - what library code does differently while a step is being captured
// into a CUDA graph (StepGraph<Cuda>, core/cuda.hpp): values that change from step to step reach
// the captured kernels through device words refreshed before each replay.
//
// Part of DeviceOps<Cuda> (datanas/cuda.hpp).
#pragma once

#include "datanas/core/cuda.hpp"

namespace datanas::cuda {

struct GraphOps {
  /// The per-step values of a launch. Eagerly: fill(host) computes them now and the result is
  /// nullptr (pass `host` as kernel arguments, as before). While a step is being captured:
  /// fill is registered with the graph and runs before every replay instead, and the result is
  /// the device address the kernel must read the values from. n <= 8.
  template <class T, class F>
  static const T* step_values(T* host, int n, F&& fill) {
    if (StepGraph<Cuda>* g = capturing_graph()) return g->template per_replay<T>(n, std::forward<F>(fill));
    fill(host);
    return nullptr;
  }

  /// Throws unless the current stream can be captured (a cuda::Stream made current with a
  /// StreamGuard; the legacy default stream cannot be): checked where graph capture is requested,
  /// before any work, so the error does not come one step later.
  static void check_capturable(const char* what) {
    DATANAS_CHECK(current_stream().handle != nullptr, what, ": CUDA graph capture needs a cuda::Stream made "
                  "current with cuda::StreamGuard (the legacy default stream cannot be captured)");
  }
};

}  // namespace datanas::cuda
