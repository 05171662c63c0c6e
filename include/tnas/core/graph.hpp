// DeviceGraph: device work recorded once and replayed with one call (CUDA graphs).
//
// represents: the kernels and device-side copies that a piece of host code enqueues on a
//   device (Device::cuda), captured once, then replayed any number of times with the same
//   pointers. A DARTS step is thousands of small kernels, each costing more to launch than to
//   run at search shapes; replaying them as one graph removes that cost.
// requires: the captured code copies nothing between host and device and reads nothing back
//   (the backend reports such a copy as a tnas::Error, and the capture is dropped); tensors
//   that must persist across replays (optimizer buffers, inputs) exist before capture: inputs
//   are copied into them before replay(), outputs are read from tensors made during capture,
//   after replay(). A tensor created during capture by a fill (zeros) is filled again by every
//   replay.
// ensures: memory handed out during capture belongs to the graph's private pool (see
//   CachingAllocator::begin_pool), so a replay never writes memory that another tensor holds;
//   the pool goes back to the general cache with the graph.
#pragma once

#include <utility>

#include "tnas/core/allocator.hpp"
#include "tnas/core/tensor.hpp"

namespace tnas {

class DeviceGraph {
 public:
  explicit DeviceGraph(Device d) : device_(d) {
    TNAS_CHECK(d != Device::cpu, "DeviceGraph: the CPU has no graphs (run the code directly)");
  }
  ~DeviceGraph() { reset(); }
  DeviceGraph(const DeviceGraph&) = delete;
  DeviceGraph& operator=(const DeviceGraph&) = delete;

  // Records what f() enqueues on the device. f runs once, on the host, without its device
  // work being done. On an exception from f the capture is dropped and the exception passes.
  template <class F>
  void capture(F&& f) {
    reset();
    Allocator& a = allocator(device_);  // loads the backend before its hooks are read
    DeviceHooks& h = device_hooks();
    TNAS_CHECK(h.capture_begin && h.capture_end && h.graph_replay && h.graph_destroy,
               "DeviceGraph: the ", device_, " backend of this build cannot capture graphs");
    h.capture_begin(device_);
    try {
      pool_ = a.begin_pool();  // after the capture began: on its failure no pool is left active
    } catch (...) {
      h.capture_end(device_, true);
      throw;
    }
    try {
      f();
    } catch (...) {
      h.capture_end(device_, true);
      a.end_pool();
      reset();
      throw;
    }
    a.end_pool();
    graph_ = h.capture_end(device_, false);
    TNAS_CHECK(graph_, "DeviceGraph: the capture produced no graph");
  }

  // Runs the captured work again (asynchronously, in the device's stream order).
  void replay() {
    TNAS_CHECK(graph_, "DeviceGraph::replay: nothing captured");
    device_hooks().graph_replay(graph_);
  }
  bool ready() const { return graph_ != nullptr; }
  Device device() const { return device_; }

  // Frees the graph and gives its memory back.
  void reset() {
    if (graph_) device_hooks().graph_destroy(std::exchange(graph_, nullptr));
    if (pool_) allocator(device_).release_pool(std::exchange(pool_, 0));
  }

 private:
  Device device_;
  void* graph_ = nullptr;
  int pool_ = 0;
};

}  // namespace tnas
