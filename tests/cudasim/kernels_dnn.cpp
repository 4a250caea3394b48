// kernels/src/dnn.cu for the CUDA simulator: built by the host compiler (meson.build here).
#include "../../kernels/src/dnn.cu"
