// The public face of the CUDA backend (library tnas::cuda, kernels in cuda/*.cu): what a
// program that links it can ask of it directly. Ops reach the kernels through
// backend/registry.hpp; tensors reach the allocator and copies through core/. This header
// needs no CUDA headers, and is only usable in a program that links tnas::cuda (which defines
// TNAS_HAVE_CUDA).
#pragma once

#include <cstddef>

#include "tnas/backend/registry.hpp"

namespace tnas::cuda {

// The number of CUDA devices (0 without a GPU or a driver; never throws).
int device_count();
// True when Device::cuda tensors can be made (a device is present and the backend registered).
bool available();
// Waits until every kernel and copy tnas has enqueued has finished (benches, tests; never
// called inside ops).
void synchronize();
// The cudaStream_t all tnas work is enqueued on (as void*, to keep CUDA headers out), e.g. to
// capture a training step as a CUDA graph or to time it with events.
void* stream();

// Binary (XNOR) convolution with weights packed once, for inference of a fixed binary layer
// (cuda/xnor.cu; same result as the xnor_conv2d kernel-table entry, which packs w every call):
// the device bytes a packed weight of shape p needs, packing w [K, C/groups, R, S] (device
// memory) into `packed`, and the convolution of float x with it into y [N, K, P, Q].
size_t xnor_packed_weights_bytes(const backend::ConvShape& p);
void xnor_pack_weights(const backend::ConvShape& p, const float* w, void* packed);
void xnor_conv2d_packed(const backend::ConvShape& p, const float* x, const void* packed_w,
                        float* y);

}  // namespace tnas::cuda
