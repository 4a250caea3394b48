// datanas/cuda.hpp - the CUDA backend: include this (and use the datanas-cuda dependency) to put
// tensors, Vars, networks and optimisers on the Cuda device.
//
// What it adds to the header-only CPU library:
//   - core/cuda.hpp: streams, the stream-ordered caching allocator behind Tensor<T, Cuda>,
//     to_device / to_host copies;
//   - DeviceOps<Cuda>: the device side of every op, gathered from the op families in ops/cuda/.
//     Generic ops (ops/*.hpp) call DeviceOps<D>::kernel(...) when D is not Cpu;
//   - StepGraph<Cuda> (core/cuda.hpp, ops/cuda/graph.hpp): a step captured once as a CUDA graph
//     and replayed;
//   - the kernels themselves live in kernels/datanas/cuda/*.cuh and are compiled once, by nvcc,
//     into the datanas_cuda library; host code sees only their declarations (the .hpp beside
//     each .cuh), so nvcc never compiles Eigen and user code never needs nvcc.
// docs/cuda.md explains the design and lists what has run on which GPU.
#pragma once

#include "datanas/core/cuda.hpp"
#include "datanas/ops/cuda/dnn.hpp"
#include "datanas/ops/cuda/elementwise.hpp"
#include "datanas/ops/cuda/dense.hpp"
#include "datanas/ops/cuda/graph.hpp"
#include "datanas/ops/cuda/recurrent.hpp"
#include "datanas/ops/cuda/optim.hpp"

namespace datanas {

/// The Cuda kernels of every op family (each family's header documents its functions).
template <>
struct DeviceOps<Cuda>
    : cuda::ElementwiseOps,
      cuda::DenseOps,
      cuda::DnnOps,
      cuda::RecurrentOps,
      cuda::OptimOps,
      cuda::GraphOps {};

}  // namespace datanas
