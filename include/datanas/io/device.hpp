// datanas/io/device.hpp - the --device flag of the sample programs: one runtime-to-compile-time
// switch from "cpu" / "cuda" to the device type tag; and --depthwise, the Cuda device's choice of
// depthwise-convolution implementation.
#pragma once

#include <string_view>

#include "datanas/core/device.hpp"
#include "datanas/core/error.hpp"
#if DATANAS_HAVE_CUDA
#include "datanas/cuda.hpp"
#endif

namespace datanas::io {

/// Calls f.template operator()<Cpu>() for "cpu", f.template operator()<Cuda>() for "cuda".
/// Cuda runs on a new stream (one stream per network). Throws a datanas::error naming the flag
/// when the build has no CUDA backend or the machine has no usable GPU.
template <class F>
int with_device(std::string_view device, F&& f) {
  if (device == "cpu") return f.template operator()<Cpu>();
  DATANAS_CHECK(device == "cuda", "--device must be cpu or cuda, got '", device, "'");
#if DATANAS_HAVE_CUDA
  cuda::require_device("--device cuda");
  cuda::Stream stream;
  cuda::StreamGuard on_stream(stream);
  return f.template operator()<Cuda>();
#else
  throw error("--device cuda: this build has no CUDA backend (build with nvcc, cuBLAS and cuDNN present, "
              "or -Dcuda=enabled)");
#endif
}

/// The --depthwise flag ("cudnn" or "own"): which implementation runs depthwise convolutions on
/// the Cuda device (cuda::set_depthwise_conv). Throws naming the flag when it asks for our
/// kernels on another device, where it would mean nothing.
inline void apply_depthwise(std::string_view choice, std::string_view device) {
  DATANAS_CHECK(choice == "cudnn" || choice == "own", "--depthwise must be cudnn or own, got '",
                choice, "'");
  DATANAS_CHECK(choice == "cudnn" || device == "cuda", "--depthwise own needs --device cuda");
#if DATANAS_HAVE_CUDA
  cuda::set_depthwise_conv(choice == "own" ? cuda::DepthwiseConv::kOwn
                                           : cuda::DepthwiseConv::kCudnn);
#endif
}

}  // namespace datanas::io
