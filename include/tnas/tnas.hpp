// tnas: neural architecture search in C++. This header brings everything; each folder's
// headers also stand alone.
#pragma once

#include "tnas/core/allocator.hpp"
#include "tnas/core/error.hpp"
#include "tnas/core/graph.hpp"
#include "tnas/core/rng.hpp"
#include "tnas/core/shape.hpp"
#include "tnas/core/tensor.hpp"

#include "tnas/autograd/engine.hpp"
#include "tnas/autograd/grad_mode.hpp"
#include "tnas/autograd/gradcheck.hpp"

#include "tnas/ops/binary.hpp"
#include "tnas/ops/conv.hpp"
#include "tnas/ops/elementwise.hpp"
#include "tnas/ops/linear.hpp"
#include "tnas/ops/loss.hpp"
#include "tnas/ops/mixed.hpp"
#include "tnas/ops/norm.hpp"
#include "tnas/ops/pool.hpp"
#include "tnas/ops/reduce.hpp"
#include "tnas/ops/shape.hpp"

#include "tnas/io/archive.hpp"
#include "tnas/nn/binary.hpp"
#include "tnas/nn/layers.hpp"
#include "tnas/nn/module.hpp"
#include "tnas/nn/nas_blocks.hpp"
#include "tnas/nn/serialize.hpp"
#include "tnas/optim/adam.hpp"
#include "tnas/optim/clip.hpp"
#include "tnas/optim/schedule.hpp"
#include "tnas/optim/sgd.hpp"

#include "tnas/data/dataset.hpp"
#include "tnas/data/idx.hpp"
#include "tnas/data/loader.hpp"

#include "tnas/train/evaluate.hpp"
#include "tnas/train/fit.hpp"
#include "tnas/train/network.hpp"

#include "tnas/space/cell.hpp"
#include "tnas/space/genotype.hpp"
#include "tnas/space/op_set.hpp"
#include "tnas/space/ops.hpp"

#include "tnas/search/darts.hpp"
#include "tnas/search/supernet.hpp"
