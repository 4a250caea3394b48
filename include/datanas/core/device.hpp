// datanas/core/device.hpp - devices are type tags carried by tensor types (no global switch).
#pragma once

#include <concepts>
#include <cstdint>

namespace datanas {

/// Host memory; kernels in datanas/ops/cpu (Eigen + OpenMP).
struct Cpu {
  static constexpr const char* name = "cpu";
};

/// NVIDIA GPU memory. Declared here so that types can name it; its allocator and kernels are
/// provided by the CUDA backend (datanas_cuda_dep) and exist only when that is built.
struct Cuda {
  static constexpr const char* name = "cuda";
};

template <class D>
concept Device = std::same_as<D, Cpu> || std::same_as<D, Cuda>;

/// True for the host device. Ops branch on it at compile time:
///   if constexpr (is_cpu<D>) cpu::kernel(...); else DeviceOps<D>::kernel(...);
template <class D>
inline constexpr bool is_cpu = std::same_as<D, Cpu>;

/// The kernels of a non-host device, as static member functions on tensors of that device.
/// Only declared here: DeviceOps<Cuda> is defined by <datanas/cuda.hpp> (the CUDA backend).
/// Because ops name it only in code that depends on the device parameter, a CPU-only program
/// never sees a CUDA header, and a program that runs an op on Cuda without including the
/// backend fails to compile at that op ("incomplete type DeviceOps<Cuda>").
template <class D>
struct DeviceOps;

/// A training step captured once and replayed as one launch (CUDA graphs). Only declared here:
/// <datanas/cuda.hpp> defines StepGraph<Cuda>; the Cpu has nothing to capture.
template <class D>
class StepGraph;
/// Memory shared by several StepGraph<Cuda> (defined in <datanas/cuda.hpp>).
class GraphPool;

/// Floating-point types of values and gradients.
template <class T>
concept Scalar = std::same_as<T, float> || std::same_as<T, double>;

/// Types a Tensor may hold: Scalars, and 32-bit integers for labels and token indices.
template <class T>
concept Element = Scalar<T> || std::same_as<T, std::int32_t>;

}  // namespace datanas
