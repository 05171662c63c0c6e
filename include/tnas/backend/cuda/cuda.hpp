// The public face of the CUDA backend (library tnas::cuda, kernels in cuda/*.cu): what a
// program that links it can ask of it directly. Ops reach the kernels through
// backend/registry.hpp; tensors reach the allocator and copies through core/. This header
// needs no CUDA headers, and is only usable in a program that links tnas::cuda (which defines
// TNAS_HAVE_CUDA).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

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

// Which code computes a Device::cuda float convolution (forward and both gradients):
//  - automatic (the default): tnas's kernels where they are written for the shape (depthwise
//    3x3 / 5x5 with stride 1-2 and dilation 1-2; pointwise 1x1 through cuBLAS), cuDNN for every
//    other shape (dense and grouped KxK, strided 1x1, other depthwise sizes) where the build has
//    it (has_cudnn()), tnas's direct kernels where it does not;
//  - native: tnas's kernels for every shape;
//  - cudnn: cuDNN for every shape (the yardstick; a build with cuDNN only).
// cuDNN runs in exact float32 (FMA math, never TF32), with the fastest deterministic algorithm
// its heuristics offer that needs at most 256 MiB of workspace (so results repeat bit for bit,
// as tnas's kernels do); a shape for which it has none stays on tnas's kernels. Its algorithm
// choice is made once per shape, on the host, without touching the device, so a step that
// uses it can still be captured as a CUDA graph.
enum class ConvEngine : uint8_t { automatic, native, cudnn };
// "auto", "native", "cudnn"; anything else is a tnas::Error that lists them.
ConvEngine parse_conv_engine(std::string_view name);
const char* to_string(ConvEngine e);
// True when this build of tnas::cuda has cuDNN (CMake option TNAS_CUDNN, on where cuDNN 9 is
// found).
bool has_cudnn();
// The engine in use: the last set_conv_engine(), else the environment's TNAS_CUDA_CONV
// (auto | native | cudnn), else automatic. An unknown TNAS_CUDA_CONV is a tnas::Error.
ConvEngine conv_engine();
// ConvEngine::cudnn in a build without cuDNN is a tnas::Error. Takes effect for the next
// convolution; a CUDA graph captured before keeps the kernels it captured.
void set_conv_engine(ConvEngine e);

// Binary (XNOR) convolution with weights packed once, for inference of a fixed binary layer
// (cuda/xnor.cu; same result as the xnor_conv2d kernel-table entry, which packs w every call):
// the device bytes a packed weight of shape p needs, packing w [K, C/groups, R, S] (device
// memory) into `packed`, and the convolution of float x with it into y [N, K, P, Q]. `packed`
// must be 16-byte aligned (a tensor's own storage is; a tnas::Error says when it is not).
size_t xnor_packed_weights_bytes(const backend::ConvShape& p);
void xnor_pack_weights(const backend::ConvShape& p, const float* w, void* packed);
void xnor_conv2d_packed(const backend::ConvShape& p, const float* x, const void* packed_w,
                        float* y);

}  // namespace tnas::cuda
