// kernels/src/estimators.cu built by the host compiler against the CUDA simulator (see meson.build here).
#include "../../kernels/src/estimators.cu"
