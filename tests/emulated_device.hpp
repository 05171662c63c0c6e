// An emulated device for the tests: Device::cuda backed by host memory, so that the device
// dispatch path of every op (backend::Kernels, DeviceHooks, the per-device allocator) runs on
// CPU-only CI, where the real CUDA backend is never exercised.
//
// represents: install_emulated_device() sets, for Device::cuda, the allocator slot (a
//   CachingAllocator over an arena of host pages), every device_hooks() entry and every slot of
//   backend::kernels(Device::cuda), with host implementations of the contracts documented in
//   backend/registry.hpp and core/tensor.hpp: the CPU kernels of backend/cpu/*.hpp where the
//   CPU ops call them, and plain loops written from the CPU ops' own formulas where those
//   compute inline. Graph capture (core/graph.hpp) records the kernels and device-side hooks,
//   with copies of their host arguments, and a replay runs them again in order.
// requires: a program that does not link tnas::cuda (the real backend owns the same slots).
// ensures: device memory behaves as device memory, not as host memory that happens to work:
//   - outside an emulated kernel or hook the arena's pages are inaccessible (PROT_NONE), so host
//     code that reads or writes a device tensor's data directly dies with SIGSEGV at the access,
//     and says so on stderr before the test framework reports the crash (when
//     install_emulated_device() was called in that test case, after the framework's own
//     handler was set);
//   - every device pointer a kernel or hook receives must lie inside one live device block,
//     with the extent the call implies (and host arguments, such as the pointer arrays of the
//     list kernels, outside the arena), else the call throws tnas::Error naming the kernel;
//   - fresh device blocks start with every bit set (NaN as float and double), so an output
//     element a kernel leaves unwritten shows. The kernels themselves poison nothing.
// Cost: two mprotect calls per device block a kernel or hook is handed (only those blocks are
// opened, so the cost follows the call's own memory). Each is a TLB shootdown on every core
// where another thread of the process runs, so run the tests with one OpenMP thread (ctest sets
// OMP_NUM_THREADS=1; the tests' setup() also calls omp_set_num_threads(1)): idle OpenMP
// workers spinning on other cores make each call cost up to a millisecond on a busy machine.
// TNAS_EMULATED_DEVICE_PROTECT=0 in the environment leaves the pages accessible (debugging
// under tools that dislike protection changes).
#pragma once

#ifdef TNAS_HAVE_CUDA
#error "emulated_device.hpp fills the Device::cuda slots itself: do not link tnas::cuda"
#endif

#include "emulated_device/kernels.hpp"

namespace tnas::testing {

// Whether p points into the emulated device's memory.
inline bool is_emulated_device_pointer(const void* p) {
  return emulated_detail::Arena::get().contains(p);
}
// Whether device pages are inaccessible outside kernels and hooks (TNAS_EMULATED_DEVICE_PROTECT).
inline bool emulated_device_protects_memory() {
  return emulated_detail::Arena::get().protecting();
}

// Makes Device::cuda an emulated device on the host (see the top of this file). Idempotent: the
// allocator, hooks and kernels are set once; every call (re)arms the report of host accesses to
// device memory above the test framework's own crash handler, so call it at the start of each
// test case.
inline void install_emulated_device() {
  namespace E = emulated_detail;
  static std::once_flag once;
  std::call_once(once, [] {
    // Without a linked backend nothing else can have claimed the slot: allocator(Device::cuda)
    // reports "no allocator" until this sets it.
    set_allocator(Device::cuda, new CachingAllocator(E::sys_alloc, E::sys_free));

    DeviceHooks& h = device_hooks();
    h.copy = E::copy;
    h.fill = E::Enqueue<&E::fill>::call;
    h.gather = E::gather;
    h.convert = E::Enqueue<&E::convert>::call;
    h.accumulate = E::Enqueue<&E::accumulate>::call;
    h.capture_begin = E::capture_begin;
    h.capture_end = E::capture_end;
    h.graph_replay = E::graph_replay;
    h.graph_destroy = E::graph_destroy;

    // Each kernel runs now, or is recorded while a graph capture is open.
    backend::Kernels& k = backend::kernels(Device::cuda);
    k.unary = E::Enqueue<&E::unary>::call;
    k.unary_backward = E::Enqueue<&E::unary_backward>::call;
    k.binary = E::Enqueue<&E::binary>::call;
    k.copy_view = E::Enqueue<&E::copy_view>::call;
    k.reduce_sum = E::Enqueue<&E::reduce_sum>::call;
    k.conv2d_forward = E::Enqueue<&E::conv2d_forward>::call;
    k.conv2d_backward_input = E::Enqueue<&E::conv2d_backward_input>::call;
    k.conv2d_backward_weight = E::Enqueue<&E::conv2d_backward_weight>::call;
    k.gemm = E::Enqueue<&E::gemm>::call;
    k.max_pool2d_forward = E::Enqueue<&E::max_pool2d_forward>::call;
    k.max_pool2d_backward = E::Enqueue<&E::max_pool2d_backward>::call;
    k.avg_pool2d_forward = E::Enqueue<&E::avg_pool2d_forward>::call;
    k.avg_pool2d_backward = E::Enqueue<&E::avg_pool2d_backward>::call;
    k.batch_norm_forward_train = E::Enqueue<&E::batch_norm_forward_train>::call;
    k.batch_norm_forward_eval = E::Enqueue<&E::batch_norm_forward_eval>::call;
    k.batch_norm_backward = E::Enqueue<&E::batch_norm_backward>::call;
    k.batch_norm_backward_eval = E::Enqueue<&E::batch_norm_backward_eval>::call;
    k.batch_norm_backward_from_output = E::Enqueue<&E::batch_norm_backward_from_output>::call;
    k.weighted_sum_forward = E::weighted_sum_forward_q;
    k.weighted_sum_backward = E::weighted_sum_backward_q;
    k.log_softmax_forward = E::Enqueue<&E::log_softmax_forward>::call;
    k.log_softmax_backward = E::Enqueue<&E::log_softmax_backward>::call;
    k.softmax_forward = E::Enqueue<&E::softmax_forward>::call;
    k.softmax_backward = E::Enqueue<&E::softmax_backward>::call;
    k.cross_entropy_forward = E::Enqueue<&E::cross_entropy_forward>::call;
    k.xnor_conv2d = E::Enqueue<&E::xnor_conv2d>::call;
    k.xnor_gemm = E::Enqueue<&E::xnor_gemm>::call;
    k.sgd_step = E::sgd_step_q;
    k.adam_step = E::adam_step_q;
    k.sum_squares = E::sum_squares_q;
    k.clip_scale = E::clip_scale_q;

    // Every slot and hook set (both are arrays of function pointers, as asserted above).
    void* slots[backend::kKernelCount];
    std::memcpy(slots, &k, sizeof slots);
    for (size_t i = 0; i < backend::kKernelCount; ++i)
      TNAS_CHECK(slots[i], "install_emulated_device: kernel slot ", i, " is not set");
    void* hooks[E::kHookCount];
    std::memcpy(hooks, &h, sizeof hooks);
    for (size_t i = 0; i < E::kHookCount; ++i)
      TNAS_CHECK(hooks[i], "install_emulated_device: device hook ", i, " is not set");
  });
  E::arm_fault_report();
}

}  // namespace tnas::testing
