// cudasim: the CUDA runtime API header, which here is the whole simulated runtime.
#pragma once
#include "cuda_runtime.h"
