// tests/gpu/gpu_helpers.cu built by the host compiler against the CUDA simulator.
#include "../gpu/gpu_helpers.cu"
