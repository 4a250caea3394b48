// datanas/datanas.hpp - the umbrella header: everything of the CPU library.
#pragma once

#include "datanas/core/allocator.hpp"
#include "datanas/core/device.hpp"
#include "datanas/core/error.hpp"
#include "datanas/core/random.hpp"
#include "datanas/core/shape.hpp"
#include "datanas/core/tensor.hpp"
#include "datanas/autograd/variable.hpp"
#include "datanas/ops/activation.hpp"
#include "datanas/ops/arithmetic.hpp"
#include "datanas/ops/conv.hpp"
#include "datanas/ops/batchnorm.hpp"
#include "datanas/ops/dropout.hpp"
#include "datanas/ops/linear.hpp"
#include "datanas/ops/loss.hpp"
#include "datanas/ops/pool.hpp"
#include "datanas/ops/structure.hpp"
