// cudasim's stand-in for <cuda_runtime.h>: the subset of the CUDA runtime that datanas uses,
// executed on the host, so that the CUDA backend (host code, our kernels, the GPU tests) builds
// with g++ and runs in CI on machines without a GPU. See cudasim/runtime.hpp for the model and
// docs/cuda.md ("The CUDA simulator") for what it does and does not prove.
#pragma once

#include "cudasim/runtime.hpp"
