// kernels/src/recurrent.cu for the CUDA simulator: built by the host compiler (meson.build here).
#include "../../kernels/src/recurrent.cu"
