// datanas/cuda/check.cuh - the one checking macro for CUDA runtime calls.
#pragma once

#include <cuda_runtime.h>

#include "datanas/core/error.hpp"

/// Throws datanas::error naming the call, the CUDA error and the source line.
#define DATANAS_CUDA_CHECK(call)                                                              \
  do {                                                                                        \
    const cudaError_t datanas_status_ = (call);                                               \
    if (datanas_status_ != cudaSuccess)                                                       \
      throw ::datanas::error(::datanas::detail::concat(#call, " failed: ",                     \
                                                       cudaGetErrorString(datanas_status_), \
                                                       " at ", __FILE__, ":", __LINE__));     \
  } while (0)
