// The shape and hyper-parameters of a 2-D convolution, shared by the CPU convolution paths
// (conv.hpp, depthwise_flat.hpp) and the ops that call them (ops/conv.hpp, ops/binary.hpp).
#pragma once

#include <cstdint>

namespace tnas::cpu {

// Shape and hyper-parameters of a 2-D convolution. Input [N, C, H, W]; weight
// [K, C/groups, R, S]; output [N, K, P(), Q()].
struct Conv2dParams {
  int64_t N, C, H, W;  // input  [N, C, H, W]
  int64_t K;           // output channels; weight [K, C/groups, R, S]
  int64_t R, S;        // kernel height, width
  int64_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dil_h = 1, dil_w = 1, groups = 1;
  // Output height = (H + 2*pad_h - dil_h*(R-1) - 1)/stride_h + 1.
  int64_t P() const { return (H + 2 * pad_h - dil_h * (R - 1) - 1) / stride_h + 1; }
  // Output width = (W + 2*pad_w - dil_w*(S-1) - 1)/stride_w + 1.
  int64_t Q() const { return (W + 2 * pad_w - dil_w * (S - 1) - 1) / stride_w + 1; }
};

}  // namespace tnas::cpu
