// The emulated device's kernels and hooks (see ../emulated_device.hpp): host implementations
// of every slot of backend::Kernels and of DeviceHooks, following backend/registry.hpp.
#pragma once

#include "memory.hpp"

namespace tnas::testing {
namespace emulated_detail {
// ---- strided views -------------------------------------------------------------------------
inline int64_t numel(const backend::View& v) {
  int64_t n = 1;
  for (int i = 0; i < v.rank; ++i) n *= v.shape[i];
  return n;
}
inline void check_view(const backend::View& v, const char* kernel, const char* what) {
  TNAS_CHECK(v.rank >= 0 && v.rank <= kMaxDims, "emulated device: ", kernel, ": ", what,
             " has rank ", v.rank);
  for (int i = 0; i < v.rank; ++i)
    TNAS_CHECK(v.shape[i] >= 0, "emulated device: ", kernel, ": ", what, " has extent ", v.shape[i],
               " in axis ", i);
}
inline bool same_shape(const backend::View& a, const backend::View& b) {
  if (a.rank != b.rank) return false;
  for (int i = 0; i < a.rank; ++i)
    if (a.shape[i] != b.shape[i]) return false;
  return true;
}
// Checks that every element of the view of `base` lies in one device block.
inline void dev_view(const void* base, const backend::View& v, size_t elem, const char* kernel,
                     const char* what) {
  check_view(v, kernel, what);
  if (numel(v) == 0) return;
  int64_t lo = 0, hi = 0;
  for (int i = 0; i < v.rank; ++i) {
    const int64_t span = (v.shape[i] - 1) * v.stride[i];
    (span < 0 ? lo : hi) += span;
  }
  dev(static_cast<const char*>(base) + lo * int64_t(elem), size_t(hi - lo + 1) * elem, kernel,
      what);
}
// Calls f(i, off) for every row-major index i of `shape` (a view whose strides are unused),
// where off[j] is the element offset of that index under strides[j].
template <size_t K, class F>
void walk(const backend::View& shape, const std::array<const int64_t*, K>& strides, F&& f) {
  const int r = shape.rank;
  const int64_t n = numel(shape);
  int64_t idx[kMaxDims] = {};
  std::array<int64_t, K> off{};
  for (int64_t i = 0; i < n; ++i) {
    f(i, off);
    for (int k = r - 1; k >= 0; --k) {
      for (size_t j = 0; j < K; ++j) off[j] += strides[j][k];
      if (++idx[k] < shape.shape[k]) break;
      for (size_t j = 0; j < K; ++j) off[j] -= strides[j][k] * shape.shape[k];
      idx[k] = 0;
    }
  }
}

// ---- hooks (core/tensor.hpp) -----------------------------------------------------------------
inline void check_side(const void* p, Device d, size_t bytes, const char* what) {
  if (d == Device::cpu) {
    if (bytes) host(p, "copy", what);
  } else {
    TNAS_CHECK(d == Device::cuda, "emulated device: copy: unknown device");
    dev(p, bytes, "copy", what);
  }
}
inline void copy_now(void* dst, Device dd, const void* src, Device sd, size_t bytes) {
  DeviceAccess access;
  check_side(dst, dd, bytes, "destination");
  check_side(src, sd, bytes, "source");
  if (bytes) std::memmove(dst, src, bytes);
}
inline void copy(void* dst, Device dd, const void* src, Device sd, size_t bytes) {
  TNAS_CHECK(!open_capture() || (dd == Device::cuda && sd == Device::cuda),
             "emulated device: a copy between host and device during a graph capture: copy the "
             "inputs into device tensors before the capture and read the results after replay() "
             "(core/graph.hpp)");
  enqueue([=] { copy_now(dst, dd, src, sd, bytes); });
}
inline void fill(void* dst, Device d, DType t, double value, size_t count) {
  DeviceAccess access;
  TNAS_CHECK(d == Device::cuda, "emulated device: fill on ", d);
  dev(dst, count * size_of(t), "fill", "destination");
  dispatch(t, [&]<class T>() { std::fill_n(static_cast<T*>(dst), count, T(value)); });
}
inline void gather_view(void* dst, const void* src, DType t, const backend::View& vs) {
  DeviceAccess access;
  dev_view(src, vs, size_of(t), "gather", "source");
  dev(dst, size_t(numel(vs)) * size_of(t), "gather", "destination");
  dispatch(t, [&]<class T>() {
    T* d = static_cast<T*>(dst);
    const T* s = static_cast<const T*>(src);
    walk<1>(vs, {vs.stride}, [&](int64_t i, const std::array<int64_t, 1>& o) { d[i] = s[o[0]]; });
  });
}
inline void gather(void* dst, const void* src, DType t, const int64_t* shape,
                   const int64_t* strides, int rank) {
  TNAS_CHECK(rank >= 0 && rank <= kMaxDims, "emulated device: gather: rank ", rank);
  backend::View vs;  // the host arrays, by value
  vs.rank = rank;
  for (int i = 0; i < rank; ++i) vs.shape[i] = shape[i], vs.stride[i] = strides[i];
  enqueue([=] { gather_view(dst, src, t, vs); });
}
inline void convert(void* dst, DType dt, const void* src, DType st, size_t count) {
  DeviceAccess access;
  dev(dst, count * size_of(dt), "convert", "destination");
  dev(src, count * size_of(st), "convert", "source");
  dispatch(dt, [&]<class D>() {
    dispatch(st, [&]<class S>() {
      D* d = static_cast<D*>(dst);
      const S* s = static_cast<const S*>(src);
      for (size_t i = 0; i < count; ++i) d[i] = static_cast<D>(s[i]);
    });
  });
}
inline void accumulate(void* dst, const void* src, DType t, size_t count) {
  DeviceAccess access;
  dev(dst, count * size_of(t), "accumulate", "destination");
  dev(src, count * size_of(t), "accumulate", "source");
  dispatch(t, [&]<class T>() {
    T* d = static_cast<T*>(dst);
    const T* s = static_cast<const T*>(src);
    for (size_t i = 0; i < count; ++i) d[i] += s[i];
  });
}

// ---- elementwise and data movement ----------------------------------------------------------
using backend::BinaryOp;
using backend::UnaryOp;

// The formulas of ops/elementwise.hpp.
template <class T>
T unary_value(UnaryOp op, T v, T s) {
  switch (op) {
    case UnaryOp::relu:
      return v > T(0) ? v : T(0);
    case UnaryOp::sigmoid:
      return T(1) / (T(1) + std::exp(-v));
    case UnaryOp::tanh:
      return std::tanh(v);
    case UnaryOp::exp:
      return std::exp(v);
    case UnaryOp::log:
      return std::log(v);
    case UnaryOp::square:
      return v * v;
    case UnaryOp::sign_ste:
      return v >= T(0) ? T(1) : T(-1);
    case UnaryOp::scale:
      return v * s;
    case UnaryOp::add_scalar:
      return v + s;
  }
  TNAS_FAIL("emulated device: unary: unknown op ", int(op));
}
// d f / d x from the input x and the forward output y (the op passes the saved forward output
// as both for relu / sigmoid / tanh / exp, and the input as both for log / square / sign_ste).
template <class T>
T unary_derivative(UnaryOp op, T x, T y) {
  switch (op) {
    case UnaryOp::relu:
      return y > T(0) ? T(1) : T(0);
    case UnaryOp::sigmoid:
      return y * (T(1) - y);
    case UnaryOp::tanh:
      return T(1) - y * y;
    case UnaryOp::exp:
      return y;
    case UnaryOp::log:
      return T(1) / x;
    case UnaryOp::square:
      return T(2) * x;
    case UnaryOp::sign_ste:
      return std::abs(x) <= T(1) ? T(1) : T(0);
    case UnaryOp::add_scalar:
      return T(1);
    case UnaryOp::scale:  // its derivative is the constant, which this entry is not given
      TNAS_FAIL("emulated device: unary_backward has no rule for scale (its backward is a scale)");
  }
  TNAS_FAIL("emulated device: unary_backward: unknown op ", int(op));
}

inline void unary(UnaryOp op, DType t, const void* x, void* y, int64_t n, double s) {
  DeviceAccess access;
  dispatch(t, [&]<class T>() {
    dev_n(static_cast<const T*>(x), n, "unary", "x");
    dev_n(static_cast<T*>(y), n, "unary", "y");
    const T* px = static_cast<const T*>(x);
    T* py = static_cast<T*>(y);
    for (int64_t i = 0; i < n; ++i) py[i] = unary_value(op, px[i], T(s));
  });
}
inline void unary_backward(UnaryOp op, DType t, const void* g, const void* x, const void* y,
                           void* gx, int64_t n) {
  DeviceAccess access;
  dispatch(t, [&]<class T>() {
    dev_n(static_cast<const T*>(g), n, "unary_backward", "g");
    dev_n(static_cast<const T*>(x), n, "unary_backward", "x");
    dev_n(static_cast<const T*>(y), n, "unary_backward", "y");
    dev_n(static_cast<T*>(gx), n, "unary_backward", "gx");
    const T* pg = static_cast<const T*>(g);
    const T* px = static_cast<const T*>(x);
    const T* py = static_cast<const T*>(y);
    T* o = static_cast<T*>(gx);
    for (int64_t i = 0; i < n; ++i) o[i] = pg[i] * unary_derivative(op, px[i], py[i]);
  });
}

template <class T>
T binary_value(BinaryOp op, T a, T b) {
  switch (op) {
    case BinaryOp::add:
      return a + b;
    case BinaryOp::sub:
      return a - b;
    case BinaryOp::mul:
      return a * b;
    case BinaryOp::div:
      return a / b;
    case BinaryOp::neg_div:
      return -a / b;
  }
  TNAS_FAIL("emulated device: binary: unknown op ", int(op));
}
inline void binary(BinaryOp op, DType t, const void* a, const backend::View& va, const void* b,
                   const backend::View& vb, void* out) {
  DeviceAccess access;
  TNAS_CHECK(same_shape(va, vb), "emulated device: binary: the views of a and b have different ",
             "shapes (both must be views of the output's shape)");
  const size_t e = size_of(t);
  dev_view(a, va, e, "binary", "a");
  dev_view(b, vb, e, "binary", "b");
  dev(out, size_t(numel(va)) * e, "binary", "out");
  dispatch(t, [&]<class T>() {
    const T* pa = static_cast<const T*>(a);
    const T* pb = static_cast<const T*>(b);
    T* o = static_cast<T*>(out);  // may alias a (contiguous): element i is read before written
    walk<2>(va, {va.stride, vb.stride}, [&](int64_t i, const std::array<int64_t, 2>& off) {
      o[i] = binary_value(op, pa[off[0]], pb[off[1]]);
    });
  });
}
inline void copy_view(DType t, void* dst, const backend::View& vd, const void* src,
                      const backend::View& vs, double factor) {
  DeviceAccess access;
  TNAS_CHECK(same_shape(vd, vs), "emulated device: copy_view: the views of dst and src have ",
             "different shapes");
  dev_view(dst, vd, size_of(t), "copy_view", "dst");
  dev_view(src, vs, size_of(t), "copy_view", "src");
  dispatch(t, [&]<class T>() {
    T* d = static_cast<T*>(dst);
    const T* s = static_cast<const T*>(src);
    const T f = T(factor);
    walk<2>(vs, {vd.stride, vs.stride},
            [&](int64_t, const std::array<int64_t, 2>& off) { d[off[0]] = s[off[1]] * f; });
  });
}
inline void reduce_sum(DType t, const void* x, const backend::View& vx, unsigned mask, void* out,
                       double factor) {
  DeviceAccess access;
  dev_view(x, vx, size_of(t), "reduce_sum", "x");
  TNAS_CHECK((mask >> vx.rank) == 0, "emulated device: reduce_sum: mask ", mask,
             " has bits past rank ", vx.rank);
  backend::View vk, vr;  // kept and reduced axes, each in their original order
  for (int i = 0; i < vx.rank; ++i) {
    backend::View& v = (mask >> i) & 1u ? vr : vk;
    v.shape[v.rank] = vx.shape[i];
    v.stride[v.rank] = vx.stride[i];
    ++v.rank;
  }
  dev(out, size_t(numel(vk)) * size_of(t), "reduce_sum", "out");
  dispatch(t, [&]<class T>() {
    const T* px = static_cast<const T*>(x);
    T* o = static_cast<T*>(out);
    walk<1>(vk, {vk.stride}, [&](int64_t i, const std::array<int64_t, 1>& base) {
      double acc = 0;
      walk<1>(vr, {vr.stride},
              [&](int64_t, const std::array<int64_t, 1>& off) { acc += px[base[0] + off[0]]; });
      o[i] = T(acc * factor);
    });
  });
}

// ---- convolution and GEMM ---------------------------------------------------------------------
// ops/conv.hpp's conv_shape(), inverted.
inline cpu::Conv2dParams conv_params(const backend::ConvShape& s, const char* kernel) {
  cpu::Conv2dParams p;
  p.N = s.N, p.C = s.C, p.H = s.H, p.W = s.W, p.K = s.K, p.R = s.R, p.S = s.S;
  p.stride_h = p.stride_w = s.stride;
  p.pad_h = p.pad_w = s.pad;
  p.dil_h = p.dil_w = s.dil;
  p.groups = s.groups;
  TNAS_CHECK(s.N >= 0 && s.C >= 1 && s.H >= 1 && s.W >= 1 && s.K >= 1 && s.R >= 1 && s.S >= 1 &&
                 s.stride >= 1 && s.pad >= 0 && s.dil >= 1 && s.groups >= 1 &&
                 s.C % s.groups == 0 && s.K % s.groups == 0,
             "emulated device: ", kernel, ": bad ConvShape");
  TNAS_CHECK(p.P() == s.P && p.Q() == s.Q, "emulated device: ", kernel, ": ConvShape says ", s.P,
             "x", s.Q, " outputs, the sizes give ", p.P(), "x", p.Q());
  return p;
}
inline void check_conv(const backend::ConvShape& s, const float* x, const float* w, const float* y,
                       const char* kernel, const char* nx, const char* nw, const char* ny) {
  dev_n(x, s.N * s.C * s.H * s.W, kernel, nx);
  dev_n(w, s.K * (s.C / s.groups) * s.R * s.S, kernel, nw);
  dev_n(y, s.N * s.K * s.P * s.Q, kernel, ny);
}
// max(x, 0) of the conv input x [N, C, H, W] (ConvShape::relu_x), as a host copy.
inline std::vector<float> relu_copy(const backend::ConvShape& s, const float* x) {
  std::vector<float> r(size_t(s.N * s.C * s.H * s.W));
  for (size_t i = 0; i < r.size(); ++i) r[i] = x[i] > 0.f ? x[i] : 0.f;
  return r;
}
inline void conv2d_forward(const backend::ConvShape& s, const float* x, const float* w, float* y) {
  DeviceAccess access;
  const cpu::Conv2dParams p = conv_params(s, "conv2d_forward");
  check_conv(s, x, w, y, "conv2d_forward", "x", "w", "y");
  if (s.relu_x)
    cpu::conv2d_forward<float>(p, relu_copy(s, x).data(), w, y);
  else
    cpu::conv2d_forward<float>(p, x, w, y);
}
inline void conv2d_backward_input(const backend::ConvShape& s, const float* gy, const float* w,
                                  const float* x, float* gx) {
  DeviceAccess access;
  const cpu::Conv2dParams p = conv_params(s, "conv2d_backward_input");
  check_conv(s, gx, w, gy, "conv2d_backward_input", "gx", "w", "gy");
  cpu::conv2d_backward_input<float>(p, gy, w, gx);
  if (s.relu_x) {  // the mask needs the forward's input, of gx's shape
    dev_n(x, s.N * s.C * s.H * s.W, "conv2d_backward_input", "x");
    for (int64_t i = 0; i < s.N * s.C * s.H * s.W; ++i)
      if (!(x[i] > 0.f)) gx[i] = 0.f;
  }
}
inline void conv2d_backward_weight(const backend::ConvShape& s, const float* x, const float* gy,
                                   float* gw) {
  DeviceAccess access;
  const cpu::Conv2dParams p = conv_params(s, "conv2d_backward_weight");
  check_conv(s, x, gw, gy, "conv2d_backward_weight", "x", "gw", "gy");
  if (s.relu_x)
    cpu::conv2d_backward_weight<float>(p, relu_copy(s, x).data(), gy, gw);
  else
    cpu::conv2d_backward_weight<float>(p, x, gy, gw);
}
inline void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  DeviceAccess access;
  TNAS_CHECK(M >= 0 && N >= 0 && K >= 0, "emulated device: gemm: negative size");
  auto extent = [](int64_t rows, int64_t cols, int64_t ld) {
    return rows == 0 || cols == 0 ? 0 : (rows - 1) * ld + cols;
  };
  if (M > 0 && N > 0) {
    if (K > 0 && alpha != 0.f) {
      dev_n(A, extent(ta ? K : M, ta ? M : K, lda), "gemm", "A");
      dev_n(B, extent(tb ? N : K, tb ? K : N, ldb), "gemm", "B");
    }
    dev_n(C, extent(M, N, ldc), "gemm", "C");
  }
  cpu::gemm<float>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// ---- pooling ------------------------------------------------------------------------------
// ops/pool.hpp's pool_shape(), inverted.
inline cpu::Pool2dParams pool_params(const backend::PoolShape& s, const char* kernel) {
  cpu::Pool2dParams p;
  p.N = s.N, p.C = s.C, p.H = s.H, p.W = s.W;
  p.kh = p.kw = s.k;
  p.stride_h = p.stride_w = s.stride;
  p.pad_h = p.pad_w = s.pad;
  p.count_include_pad = s.count_include_pad;
  TNAS_CHECK(s.k >= 1 && s.stride >= 1 && s.pad >= 0 && s.H >= 1 && s.W >= 1,
             "emulated device: ", kernel, ": bad PoolShape");
  TNAS_CHECK(p.P() == s.P && p.Q() == s.Q, "emulated device: ", kernel, ": PoolShape says ", s.P,
             "x", s.Q, " outputs, the sizes give ", p.P(), "x", p.Q());
  return p;
}
inline void check_pool(const backend::PoolShape& s, const float* x, const float* y,
                       const char* kernel, const char* nx, const char* ny) {
  dev_n(x, s.N * s.C * s.H * s.W, kernel, nx);
  dev_n(y, s.N * s.C * s.P * s.Q, kernel, ny);
}
inline void max_pool2d_forward(const backend::PoolShape& s, const float* x, float* y) {
  DeviceAccess access;
  const cpu::Pool2dParams p = pool_params(s, "max_pool2d_forward");
  check_pool(s, x, y, "max_pool2d_forward", "x", "y");
  cpu::max_pool2d_forward<float>(p, x, y);
}
inline void max_pool2d_backward(const backend::PoolShape& s, const float* x, const float* gy,
                                float* gx) {
  DeviceAccess access;
  const cpu::Pool2dParams p = pool_params(s, "max_pool2d_backward");
  check_pool(s, x, gy, "max_pool2d_backward", "x", "gy");
  dev_n(gx, s.N * s.C * s.H * s.W, "max_pool2d_backward", "gx");
  cpu::max_pool2d_backward<float>(p, x, gy, gx);
}
inline void avg_pool2d_forward(const backend::PoolShape& s, const float* x, float* y) {
  DeviceAccess access;
  const cpu::Pool2dParams p = pool_params(s, "avg_pool2d_forward");
  check_pool(s, x, y, "avg_pool2d_forward", "x", "y");
  cpu::avg_pool2d_forward<float>(p, x, y);
}
inline void avg_pool2d_backward(const backend::PoolShape& s, const float* gy, float* gx) {
  DeviceAccess access;
  const cpu::Pool2dParams p = pool_params(s, "avg_pool2d_backward");
  check_pool(s, gx, gy, "avg_pool2d_backward", "gx", "gy");
  cpu::avg_pool2d_backward<float>(p, gy, gx);
}

// ---- batch norm ---------------------------------------------------------------------------
// A named float argument of a kernel; an optional one may be null (left out).
struct Arg {
  const float* p;
  const char* name;
  bool optional = false;
};
// The sizes of a batch-norm kernel and the extents of its arguments: each of `planes` holds
// N * C * HW floats, each of `channels` C floats.
inline void check_bn(const char* kernel, int64_t N, int64_t C, int64_t HW,
                     std::initializer_list<Arg> planes, std::initializer_list<Arg> channels) {
  TNAS_CHECK(N >= 1 && C >= 1 && HW >= 1, "emulated device: ", kernel, ": bad sizes N=", N,
             " C=", C, " HW=", HW);
  for (const Arg& a : planes)
    if (a.p || !a.optional) dev_n(a.p, N * C * HW, kernel, a.name);
  for (const Arg& a : channels)
    if (a.p || !a.optional) dev_n(a.p, C, kernel, a.name);
}
inline void batch_norm_forward_train(int64_t N, int64_t C, int64_t HW, const float* x,
                                     const float* gamma, const float* beta, float eps,
                                     float momentum, float* y, float* mean, float* invstd,
                                     float* running_mean, float* running_var) {
  DeviceAccess access;
  const char* k = "batch_norm_forward_train";
  TNAS_CHECK(!running_mean == !running_var, "emulated device: ", k,
             ": running_mean and running_var go together");
  check_bn(k, N, C, HW, {{x, "x"}, {y, "y"}},
           {{mean, "mean"},
            {invstd, "invstd"},
            {gamma, "gamma", true},
            {beta, "beta", true},
            {running_mean, "running_mean", true},
            {running_var, "running_var", true}});
  cpu::batch_norm_forward_train<float>(N, C, HW, x, gamma, beta, eps, y, mean, invstd);
  if (running_mean)
    cpu::batch_norm_update_running<float>(N * HW, C, mean, invstd, eps, momentum, running_mean,
                                          running_var);
}
inline void batch_norm_forward_eval(int64_t N, int64_t C, int64_t HW, const float* x,
                                    const float* gamma, const float* beta, const float* mean,
                                    const float* var, float eps, float* y) {
  DeviceAccess access;
  const char* k = "batch_norm_forward_eval";
  check_bn(k, N, C, HW, {{x, "x"}, {y, "y"}},
           {{mean, "mean"}, {var, "var"}, {gamma, "gamma", true}, {beta, "beta", true}});
  cpu::batch_norm_forward_eval<float>(N, C, HW, x, gamma, beta, mean, var, eps, y);
}
inline void batch_norm_backward(int64_t N, int64_t C, int64_t HW, const float* x, const float* gy,
                                const float* gamma, const float* mean, const float* invstd,
                                float* gx, float* dgamma, float* dbeta) {
  DeviceAccess access;
  const char* k = "batch_norm_backward";
  check_bn(k, N, C, HW, {{x, "x"}, {gy, "gy"}, {gx, "gx"}},
           {{mean, "mean"},
            {invstd, "invstd"},
            {gamma, "gamma", true},
            {dgamma, "dgamma", true},
            {dbeta, "dbeta", true}});
  cpu::batch_norm_backward<float>(N, C, HW, x, gy, gamma, mean, invstd, gx, dgamma, dbeta);
}
inline void batch_norm_backward_from_output(int64_t N, int64_t C, int64_t HW, const float* xhat,
                                            const float* gy, const float* invstd, float* gx) {
  DeviceAccess access;
  const char* k = "batch_norm_backward_from_output";
  check_bn(k, N, C, HW, {{xhat, "xhat"}, {gy, "gy"}, {gx, "gx"}}, {{invstd, "invstd"}});
  cpu::batch_norm_backward_from_output<float>(N, C, HW, xhat, gy, invstd, gx);
}
inline void batch_norm_backward_eval(int64_t N, int64_t C, int64_t HW, const float* x,
                                     const float* gy, const float* gamma, const float* mean,
                                     const float* var, float eps, float* gx, float* dgamma,
                                     float* dbeta) {
  DeviceAccess access;
  const char* k = "batch_norm_backward_eval";
  check_bn(k, N, C, HW, {{x, "x"}, {gy, "gy"}, {gx, "gx"}},
           {{mean, "mean"},
            {var, "var"},
            {gamma, "gamma", true},
            {dgamma, "dgamma", true},
            {dbeta, "dbeta", true}});
  cpu::batch_norm_backward_eval<float>(N, C, HW, x, gy, gamma, mean, var, eps, gx, dgamma, dbeta);
}

// ---- mixed-op weighted sum (backend/cpu/mixed.hpp) --------------------------------------------
inline void weighted_sum_forward(int K, const float* const* ys, const float* w, float* out,
                                 int64_t n) {
  DeviceAccess access;
  const char* k = "weighted_sum_forward";
  TNAS_CHECK(K >= 1, "emulated device: ", k, ": ", K, " candidates");
  host(ys, k, "the candidate list");
  dev_n(w, K, k, "w");
  dev_n(out, n, k, "out");
  for (int c = 0; c < K; ++c)
    if (ys[c]) dev_n(ys[c], n, k, "a candidate");
  cpu::weighted_sum_forward<float>(K, ys, w, out, n);
}
inline void weighted_sum_backward(int K, const float* const* ys, const float* w, const float* g,
                                  float* const* gys, float* gw, int64_t n) {
  DeviceAccess access;
  const char* k = "weighted_sum_backward";
  TNAS_CHECK(K >= 1, "emulated device: ", k, ": ", K, " candidates");
  host(ys, k, "the candidate list");
  host(gys, k, "the gradient list");
  dev_n(w, K, k, "w");
  dev_n(g, n, k, "g");
  if (gw) dev_n(gw, K, k, "gw");
  for (int c = 0; c < K; ++c) {
    if (gys[c]) dev_n(gys[c], n, k, "a candidate's gradient");
    if (gw && ys[c]) dev_n(ys[c], n, k, "a candidate");
  }
  cpu::weighted_sum_backward<float>(K, ys, w, g, gys, gw, n);
}

// ---- softmax and cross-entropy (ops/loss.hpp's CPU loops) -------------------------------------
inline void check_rows(int64_t rows, int64_t cols, const char* kernel) {
  TNAS_CHECK(rows >= 0 && cols >= 1, "emulated device: ", kernel, ": bad sizes ", rows, "x", cols);
}
inline void log_softmax_forward(int64_t rows, int64_t cols, const float* x, float* y) {
  DeviceAccess access;
  check_rows(rows, cols, "log_softmax_forward");
  dev_n(x, rows * cols, "log_softmax_forward", "x");
  dev_n(y, rows * cols, "log_softmax_forward", "y");
  ops::detail::log_softmax_rows(x, y, rows, cols);
}
inline void log_softmax_backward(int64_t rows, int64_t cols, const float* g, const float* y,
                                 float* gx) {
  DeviceAccess access;
  const char* k = "log_softmax_backward";
  check_rows(rows, cols, k);
  dev_n(g, rows * cols, k, "g");
  dev_n(y, rows * cols, k, "y");
  dev_n(gx, rows * cols, k, "gx");
  for (int64_t r = 0; r < rows; ++r) {
    float s = 0;
    for (int64_t c = 0; c < cols; ++c) s += g[r * cols + c];
    for (int64_t c = 0; c < cols; ++c)
      gx[r * cols + c] = g[r * cols + c] - std::exp(y[r * cols + c]) * s;
  }
}
inline void softmax_forward(int64_t rows, int64_t cols, const float* x, float* y) {
  DeviceAccess access;
  check_rows(rows, cols, "softmax_forward");
  dev_n(x, rows * cols, "softmax_forward", "x");
  dev_n(y, rows * cols, "softmax_forward", "y");
  ops::detail::log_softmax_rows(x, y, rows, cols);
  for (int64_t i = 0; i < rows * cols; ++i) y[i] = std::exp(y[i]);
}
inline void softmax_backward(int64_t rows, int64_t cols, const float* g, const float* y,
                             float* gx) {
  DeviceAccess access;
  const char* k = "softmax_backward";
  check_rows(rows, cols, k);
  dev_n(g, rows * cols, k, "g");
  dev_n(y, rows * cols, k, "y");
  dev_n(gx, rows * cols, k, "gx");
  for (int64_t r = 0; r < rows; ++r) {
    float s = 0;
    for (int64_t c = 0; c < cols; ++c) s += g[r * cols + c] * y[r * cols + c];
    for (int64_t c = 0; c < cols; ++c) gx[r * cols + c] = y[r * cols + c] * (g[r * cols + c] - s);
  }
}
// labels: device memory, class indices as floats; a row whose label is outside [0, K) (or NaN)
// gets NaN in its dlogits and makes the loss NaN.
inline void cross_entropy_forward(int64_t B, int64_t K, const float* x, const float* labels,
                                  float* loss, float* dlogits) {
  DeviceAccess access;
  const char* k = "cross_entropy_forward";
  TNAS_CHECK(B >= 1 && K >= 1, "emulated device: ", k, ": bad sizes ", B, "x", K);
  dev_n(x, B * K, k, "x");
  dev_n(labels, B, k, "labels");
  dev_n(loss, 1, k, "loss");
  dev_n(dlogits, B * K, k, "dlogits");
  std::vector<float> lp(size_t(B * K));
  ops::detail::log_softmax_rows(x, lp.data(), B, K);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  double s = 0;
  for (int64_t i = 0; i < B; ++i) {
    const float lf = labels[i];
    const bool ok = lf >= 0.f && lf < float(K);
    const int64_t lab = ok ? int64_t(lf) : 0;
    s -= ok ? double(lp[size_t(i * K + lab)]) : nan;
    for (int64_t c = 0; c < K; ++c)
      dlogits[i * K + c] =
          ok ? float((std::exp(double(lp[size_t(i * K + c)])) - (c == lab ? 1.0 : 0.0)) / double(B))
             : float(nan);
  }
  loss[0] = float(s / double(B));
}

// ---- binary (XNOR) convolution and GEMM: the CPU popcount kernels ------------------------------
inline void xnor_conv2d(const backend::ConvShape& s, const float* x, const float* w, float* y) {
  DeviceAccess access;
  (void)conv_params(s, "xnor_conv2d");
  TNAS_CHECK(!s.relu_x, "emulated device: xnor_conv2d: relu_x is for the float conv kernels");
  check_conv(s, x, w, y, "xnor_conv2d", "x", "w", "y");
  if (s.N == 0) return;
  cpu::xnor::conv2d(
      cpu::xnor::Shape{s.N, s.C, s.H, s.W, s.K, s.R, s.S, s.stride, s.pad, s.dil, s.groups}, x, w,
      y);
}
inline void xnor_gemm(int64_t M, int64_t N, int64_t K, const float* A, const float* B, float* C) {
  DeviceAccess access;
  TNAS_CHECK(M >= 0 && N >= 0 && K >= 0, "emulated device: xnor_gemm: negative size");
  dev_n(A, M * K, "xnor_gemm", "A");
  dev_n(B, N * K, "xnor_gemm", "B");
  dev_n(C, M * N, "xnor_gemm", "C");
  if (M == 0 || N == 0) return;
  if (K == 0) {  // empty sums
    std::fill_n(C, M * N, 0.f);
    return;
  }
  cpu::xnor::gemm(M, N, K, A, B, C);
}

// ---- updates over lists of tensors (optim/sgd.hpp, adam.hpp and clip.hpp) -------------------
inline void check_list(int n, const int64_t* numel, const char* kernel) {
  TNAS_CHECK(n >= 0, "emulated device: ", kernel, ": ", n, " tensors");
  if (n == 0) return;
  host(numel, kernel, "the size array");
  for (int i = 0; i < n; ++i)
    TNAS_CHECK(numel[i] >= 0, "emulated device: ", kernel, ": tensor ", i, " has ", numel[i],
               " elements");
}
inline void sgd_step(int n, const int64_t* numel, float* const* p, const float* const* g,
                     float* const* buf, const uint8_t* first, const backend::SgdStep& a,
                     const float* lr) {
  DeviceAccess access;
  const char* k = "sgd_step";
  check_list(n, numel, k);
  if (n == 0) return;
  host(p, k, "the parameter list");
  host(g, k, "the gradient list");
  host(buf, k, "the momentum buffer list");
  host(first, k, "the first-step flags");
  dev_n(lr, 1, k, "lr");
  const float damp = 1.0f - a.dampening, step = lr[0];
  for (int t = 0; t < n; ++t) {
    TNAS_CHECK((buf[t] != nullptr) == (a.momentum != 0.f), "emulated device: ", k, ": tensor ", t,
               (buf[t] ? " has a momentum buffer with momentum 0"
                       : " has no momentum buffer with momentum != 0"));
    dev_n(p[t], numel[t], k, "a parameter");
    dev_n(g[t], numel[t], k, "a gradient");
    if (buf[t]) dev_n(buf[t], numel[t], k, "a momentum buffer");
    float* pp = p[t];
    const float* pg = g[t];
    float* pb = buf[t];
    const bool fresh = first[t] != 0;
    for (int64_t i = 0; i < numel[t]; ++i) {
      float d = pg[i];
      if (a.weight_decay != 0.f) d += a.weight_decay * pp[i];
      if (pb) {
        pb[i] = fresh ? d : a.momentum * pb[i] + damp * d;
        d = a.nesterov ? d + a.momentum * pb[i] : pb[i];
      }
      pp[i] -= step * d;
    }
  }
}
inline void adam_step(int n, const int64_t* numel, float* const* p, const float* const* g,
                      float* const* m, float* const* v, const backend::AdamStep& a,
                      const float* scalars) {
  DeviceAccess access;
  const char* k = "adam_step";
  check_list(n, numel, k);
  if (n == 0) return;
  host(p, k, "the parameter list");
  host(g, k, "the gradient list");
  host(m, k, "the first-moment list");
  host(v, k, "the second-moment list");
  dev_n(scalars, 2 * int64_t(n), k, "scalars");
  const float w1 = 1.0f - a.beta1, w2 = 1.0f - a.beta2;
  for (int t = 0; t < n; ++t) {
    dev_n(p[t], numel[t], k, "a parameter");
    dev_n(g[t], numel[t], k, "a gradient");
    dev_n(m[t], numel[t], k, "a first moment");
    dev_n(v[t], numel[t], k, "a second moment");
    float* pp = p[t];
    const float* pg = g[t];
    float* pm = m[t];
    float* pv = v[t];
    const float step = scalars[2 * t], c2 = scalars[2 * t + 1];
    for (int64_t i = 0; i < numel[t]; ++i) {
      float d = pg[i];
      if (a.weight_decay != 0.f) d += a.weight_decay * pp[i];
      pm[i] = w1 < 0.5f ? pm[i] + w1 * (d - pm[i]) : d - (d - pm[i]) * (1.0f - w1);
      pv[i] = pv[i] * a.beta2 + w2 * (d * d);
      pp[i] += -step * (pm[i] / (std::sqrt(pv[i]) / c2 + a.eps));
    }
  }
}
inline void sum_squares(int n, const int64_t* numel, const float* const* x, float* out) {
  DeviceAccess access;
  const char* k = "sum_squares";
  check_list(n, numel, k);
  dev_n(out, 1, k, "out");
  double s = 0;  // one fixed order: tensor by tensor, element by element
  if (n > 0) host(x, k, "the tensor list");
  for (int t = 0; t < n; ++t) {
    dev_n(x[t], numel[t], k, "a tensor");
    for (int64_t i = 0; i < numel[t]; ++i) s += double(x[t][i]) * double(x[t][i]);
  }
  out[0] = float(s);
}
inline void clip_scale(int n, const int64_t* numel, float* const* x, const float* sumsq,
                       float max_norm) {
  DeviceAccess access;
  const char* k = "clip_scale";
  check_list(n, numel, k);
  dev_n(sumsq, 1, k, "sumsq");
  if (n > 0) host(x, k, "the tensor list");
  for (int t = 0; t < n; ++t) dev_n(x[t], numel[t], k, "a tensor");
  const float sq = sumsq[0];
  const float c = max_norm / (std::sqrt(sq) + 1e-6f);
  if (!(c < 1.0f) || !std::isfinite(sq)) return;
  for (int t = 0; t < n; ++t)
    for (int64_t i = 0; i < numel[t]; ++i) x[t][i] *= c;
}

// ---- the kernels that take host arrays: run now, or recorded with copies of the arrays -------
inline void weighted_sum_forward_q(int K, const float* const* ys, const float* w, float* out,
                                   int64_t n) {
  if (!open_capture()) return weighted_sum_forward(K, ys, w, out, n);
  auto vy = host_copy(ys, K);
  enqueue([=] { weighted_sum_forward(K, ptr(vy), w, out, n); });
}
inline void weighted_sum_backward_q(int K, const float* const* ys, const float* w, const float* g,
                                    float* const* gys, float* gw, int64_t n) {
  if (!open_capture()) return weighted_sum_backward(K, ys, w, g, gys, gw, n);
  auto vy = host_copy(ys, K);
  auto vg = host_copy(gys, K);
  enqueue([=] { weighted_sum_backward(K, ptr(vy), w, g, ptr(vg), gw, n); });
}
inline void sgd_step_q(int n, const int64_t* numel, float* const* p, const float* const* g,
                       float* const* buf, const uint8_t* first, const backend::SgdStep& a,
                       const float* lr) {
  if (!open_capture()) return sgd_step(n, numel, p, g, buf, first, a, lr);
  auto vn = host_copy(numel, n);
  auto vp = host_copy(p, n);
  auto vg = host_copy(g, n);
  auto vb = host_copy(buf, n);
  auto vf = host_copy(first, n);
  enqueue([=] { sgd_step(n, ptr(vn), ptr(vp), ptr(vg), ptr(vb), ptr(vf), a, lr); });
}
inline void adam_step_q(int n, const int64_t* numel, float* const* p, const float* const* g,
                        float* const* m, float* const* v, const backend::AdamStep& a,
                        const float* scalars) {
  if (!open_capture()) return adam_step(n, numel, p, g, m, v, a, scalars);
  auto vn = host_copy(numel, n);
  auto vp = host_copy(p, n);
  auto vg = host_copy(g, n);
  auto vm = host_copy(m, n);
  auto vv = host_copy(v, n);
  enqueue([=] { adam_step(n, ptr(vn), ptr(vp), ptr(vg), ptr(vm), ptr(vv), a, scalars); });
}
inline void sum_squares_q(int n, const int64_t* numel, const float* const* x, float* out) {
  if (!open_capture()) return sum_squares(n, numel, x, out);
  auto vn = host_copy(numel, n);
  auto vx = host_copy(x, n);
  enqueue([=] { sum_squares(n, ptr(vn), ptr(vx), out); });
}
inline void clip_scale_q(int n, const int64_t* numel, float* const* x, const float* sumsq,
                         float max_norm) {
  if (!open_capture()) return clip_scale(n, numel, x, sumsq, max_norm);
  auto vn = host_copy(numel, n);
  auto vx = host_copy(x, n);
  enqueue([=] { clip_scale(n, ptr(vn), ptr(vx), sumsq, max_norm); });
}

}  // namespace emulated_detail
}  // namespace tnas::testing
