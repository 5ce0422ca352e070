// 3x3, stride-1, SAME convolutions of NHWC images with HWIO kernels by oneDNN, as XLA FFI
// handlers for the CPU: the forward pass, the input gradient and the kernel gradient (by a
// convolution primitive, or by matrix products: ExecuteGemm).
// Built and registered by ifes_jax/onednn_conv.py; see there for why.
#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <initializer_list>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

enum Kind { kForward = 0, kInputGrad = 1, kKernelGrad = 2, kKernelGradGemm = 3 };

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// One convolution's oneDNN primitive, and the reorder between our HWIO kernel and the
// layout oneDNN chose for it (empty when they are the same).
struct Plan {
  dnnl::primitive conv;
  memory::desc kernel, blocked_kernel;
  dnnl::reorder kernel_reorder;
  bool reorder = false;
};

// kind, batch, height, width, C_in, C_out, bfloat16, ReLU after the forward pass
using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, bool, bool>;

Plan MakePlan(const Key& key) {
  auto [kind, n, h, w, cin, cout, bf16, relu] = key;
  auto dt = bf16 ? memory::data_type::bf16 : memory::data_type::f32;
  memory::desc image({n, cin, h, w}, dt, memory::format_tag::nhwc);
  memory::desc output({n, cout, h, w}, dt, memory::format_tag::nhwc);
  memory::desc any_kernel({cout, cin, 3, 3}, dt, memory::format_tag::any);
  memory::desc bias({cout}, dt, memory::format_tag::a);
  const memory::dims stride{1, 1}, pad{1, 1};
  const auto training = dnnl::prop_kind::forward_training;
  const auto direct = dnnl::algorithm::convolution_direct;
  Plan plan;
  plan.kernel = memory::desc({cout, cin, 3, 3}, dt, memory::format_tag::hwio);
  if (kind == kForward) {
    dnnl::primitive_attr attr;
    if (relu) {
      dnnl::post_ops ops;
      ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
      attr.set_post_ops(ops);
    }
    dnnl::convolution_forward::primitive_desc pd(Engine(), training, direct, image, any_kernel,
                                                 bias, output, stride, pad, pad, attr);
    plan.conv = dnnl::convolution_forward(pd);
    plan.blocked_kernel = pd.weights_desc();
  } else {
    dnnl::convolution_forward::primitive_desc hint(Engine(), training, direct, image,
                                                   any_kernel, bias, output, stride, pad, pad);
    if (kind == kInputGrad) {
      dnnl::convolution_backward_data::primitive_desc pd(Engine(), direct, image, any_kernel,
                                                         output, stride, pad, pad, hint);
      plan.conv = dnnl::convolution_backward_data(pd);
      plan.blocked_kernel = pd.weights_desc();
    } else {
      dnnl::convolution_backward_weights::primitive_desc pd(
          Engine(), direct, image, any_kernel, bias, output, stride, pad, pad, hint);
      plan.conv = dnnl::convolution_backward_weights(pd);
      plan.blocked_kernel = pd.diff_weights_desc();
    }
  }
  plan.reorder = plan.blocked_kernel != plan.kernel;
  if (plan.reorder) {
    plan.kernel_reorder =
        kind == kKernelGrad
            ? dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), plan.blocked_kernel,
                                                          Engine(), plan.kernel))
            : dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), plan.kernel, Engine(),
                                                          plan.blocked_kernel));
  }
  return plan;
}

// Plans are built once per shape (building one costs more than running a small conv). Only the
// worker thread below builds and reads them.
const Plan& GetPlan(const Key& key) {
  static std::map<Key, Plan> plans;
  auto it = plans.find(key);
  if (it == plans.end()) it = plans.emplace(key, MakePlan(key)).first;
  return it->second;
}

// The kernel gradient as nine matrix products per band of image rows, one per kernel tap:
//   dk[ky, kx] += X_(ky,kx)ᵀ · dY   (C_in × P) · (P × C_out),
// where dY is a band of the output gradient's rows, each padded to W+2 pixels (two zeros
// right) and flattened to P rows of C_out, and X_(ky,kx) the same band of input rows with one
// row above and below and one zero pixel left and right, flattened the same way and shifted by
// ky·(W+2) + kx rows: row p of dY and row p of X_(ky,kx) are then the output pixel and the input
// pixel that tap pairs, and the padding pairs zeros with whatever lies across the image's
// border. The bias gradient is onesᵀ · dY. oneDNN 3.2's matmul runs these products faster than
// its kernel-gradient convolution for wide float32 layers (docs/benchmarks.md). Bands of about
// `band_bytes` of padded rows (at least one row) bound the copies' memory whatever the image size.

struct GemmProducts {
  dnnl::matmul tap, bias;  // both accumulate into their output
};

struct GemmPlan {
  int64_t band_rows;
  std::map<int64_t, GemmProducts> by_rows;  // the full band's and the last band's products
};

GemmProducts MakeGemmProducts(int64_t rows, int64_t w, int64_t cin, int64_t cout) {
  const auto f32 = memory::data_type::f32;
  const int64_t p = rows * (w + 2) - 2;  // the last row's two padding pixels pair nothing
  dnnl::post_ops accumulate;
  accumulate.append_sum(1.f);
  dnnl::primitive_attr attr;
  attr.set_post_ops(accumulate);
  memory::desc gradient({p, cout}, f32, memory::format_tag::ab);
  memory::desc shifted_image({cin, p}, f32, {1, cin});  // X_(ky,kx)ᵀ, read in place
  GemmProducts g;
  g.tap = dnnl::matmul(dnnl::matmul::primitive_desc(
      Engine(), shifted_image, gradient, memory::desc({cin, cout}, f32, memory::format_tag::ab),
      attr));
  g.bias = dnnl::matmul(dnnl::matmul::primitive_desc(
      Engine(), memory::desc({1, p}, f32, memory::format_tag::ab), gradient,
      memory::desc({1, cout}, f32, memory::format_tag::ab), attr));
  return g;
}

const GemmPlan& GetGemmPlan(const Key& key, int64_t band_bytes) {
  static std::map<std::pair<Key, int64_t>, GemmPlan> plans;
  auto it = plans.find({key, band_bytes});
  if (it == plans.end()) {
    auto [kind, n, h, w, cin, cout, bf16, relu] = key;
    const int64_t row_bytes = (w + 2) * (cin + cout) * static_cast<int64_t>(sizeof(float));
    GemmPlan plan;
    plan.band_rows = std::clamp<int64_t>(band_bytes / row_bytes - 2, 1, h);
    for (int64_t rows : {plan.band_rows, h % plan.band_rows})
      if (rows > 0 && !plan.by_rows.count(rows))
        plan.by_rows.emplace(rows, MakeGemmProducts(rows, w, cin, cout));
    it = plans.emplace(std::make_pair(key, band_bytes), std::move(plan)).first;
  }
  return it->second;
}

void ExecuteGemm(const Key& key, int64_t band_bytes, const float* x, const float* dy, float* dk,
                 float* db) {
  auto [kind, n, h, w, cin, cout, bf16, relu] = key;
  const GemmPlan& plan = GetGemmPlan(key, band_bytes);
  const int64_t wp = w + 2;
  // the padded band, kept from call to call (only the worker thread runs this): allocating
  // it per call page-faults it in anew every time
  static std::vector<float> image_band, gradient_band, ones;
  const size_t rows_max = plan.band_rows;
  image_band.resize(std::max(image_band.size(), (rows_max + 2) * wp * cin));
  gradient_band.resize(std::max(gradient_band.size(), rows_max * wp * cout));
  ones.resize(std::max(ones.size(), rows_max * wp), 1.f);
  std::fill(dk, dk + 9 * cin * cout, 0.f);
  std::fill(db, db + cout, 0.f);
  dnnl::stream stream(Engine());
  const auto f32 = memory::data_type::f32;
  for (int64_t image = 0; image < n; ++image) {
    for (int64_t top = 0; top < h; top += plan.band_rows) {
      const int64_t rows = std::min(plan.band_rows, h - top);
      for (int64_t r = 0; r < rows + 2; ++r) {  // input rows top-1 .. top+rows, zero outside
        float* out = image_band.data() + r * wp * cin;
        const int64_t source = top - 1 + r;
        if (source < 0 || source >= h) {
          std::fill(out, out + wp * cin, 0.f);
          continue;
        }
        std::fill(out, out + cin, 0.f);
        std::copy_n(x + ((image * h + source) * w) * cin, w * cin, out + cin);
        std::fill(out + (w + 1) * cin, out + wp * cin, 0.f);
      }
      for (int64_t r = 0; r < rows; ++r) {
        float* out = gradient_band.data() + r * wp * cout;
        std::copy_n(dy + ((image * h + top + r) * w) * cout, w * cout, out);
        std::fill(out + w * cout, out + wp * cout, 0.f);
      }
      const GemmProducts& g = plan.by_rows.at(rows);
      const int64_t p = rows * wp - 2;
      memory gradient({{p, cout}, f32, memory::format_tag::ab}, Engine(), gradient_band.data());
      for (int64_t ky = 0; ky < 3; ++ky) {
        for (int64_t kx = 0; kx < 3; ++kx) {
          memory shifted({{cin, p}, f32, {1, cin}}, Engine(),
                         image_band.data() + (ky * wp + kx) * cin);
          memory tap({{cin, cout}, f32, memory::format_tag::ab}, Engine(),
                     dk + (ky * 3 + kx) * cin * cout);
          g.tap.execute(stream, {{DNNL_ARG_SRC, shifted}, {DNNL_ARG_WEIGHTS, gradient},
                                 {DNNL_ARG_DST, tap}});
        }
      }
      memory ones_row({{1, p}, f32, memory::format_tag::ab}, Engine(), ones.data());
      memory bias({{1, cout}, f32, memory::format_tag::ab}, Engine(), db);
      g.bias.execute(stream, {{DNNL_ARG_SRC, ones_row}, {DNNL_ARG_WEIGHTS, gradient},
                              {DNNL_ARG_DST, bias}});
      stream.wait();  // the next band overwrites the buffers
    }
  }
}

// Runs every convolution on one long-lived thread, one at a time. oneDNN runs a convolution on
// all cores, as an OpenMP team led by the thread that calls it. XLA calls the handlers from
// whichever of its threads is free, and would start independent ones (a layer's two gradients)
// at once: every calling thread would lead its own team, whose idle threads spin on the cores
// the next team needs (measured: small convolutions 2-10x slower), and concurrent teams
// oversubscribe the cores, where the kernel gradient's spin barriers stall for minutes.
class Worker {
 public:
  static Worker& Get() {
    static Worker* worker = new Worker();  // never destroyed: its thread outlives main()
    return *worker;
  }
  void Run(std::function<void()> task) {
    std::packaged_task<void()> job(std::move(task));
    auto done = job.get_future();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      jobs_.push_back(std::move(job));
    }
    ready_.notify_one();
    done.get();
  }

 private:
  Worker() : thread_([this] { Loop(); }) { thread_.detach(); }
  void Loop() {
    for (;;) {
      std::unique_lock<std::mutex> lock(mutex_);
      ready_.wait(lock, [this] { return !jobs_.empty(); });
      auto job = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      job();
    }
  }
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::packaged_task<void()>> jobs_;
  std::thread thread_;
};

bool IsBf16(ffi::AnyBuffer a) { return a.element_type() == ffi::DataType::BF16; }

ffi::Error Check(std::initializer_list<ffi::AnyBuffer> buffers) {
  auto t = buffers.begin()->element_type();
  for (auto b : buffers)
    if (b.element_type() != t || (t != ffi::DataType::F32 && t != ffi::DataType::BF16))
      return ffi::Error::InvalidArgument("oneDNN conv: operands must all be float32 or bfloat16");
  return ffi::Error::Success();
}

// The buffers of one call: NHWC image (C_in channels) and output (C_out channels), HWIO kernel,
// bias (C_out); in the gradient kinds these are the gradients, except the image of the kernel
// gradient and the kernel of the input gradient.
struct Buffers {
  void *image, *kernel, *bias, *output;
  int64_t band_bytes = 0;  // the kernel gradient by products' band size (ExecuteGemm)
};

// Runs `kind` on `b`: the forward pass (writes the output), the input gradient (writes the
// image's) or the kernel gradient (writes the kernel's and the bias').
void Execute(const Key& key, const Buffers& b) {
  auto [kind, n, h, w, cin, cout, bf16, relu] = key;
  if (kind == kKernelGradGemm) {
    ExecuteGemm(key, b.band_bytes, static_cast<const float*>(b.image),
                static_cast<const float*>(b.output),
                static_cast<float*>(b.kernel), static_cast<float*>(b.bias));
    return;
  }
  const Plan& plan = GetPlan(key);
  auto dt = bf16 ? memory::data_type::bf16 : memory::data_type::f32;
  memory image({{n, cin, h, w}, dt, memory::format_tag::nhwc}, Engine(), b.image);
  memory output({{n, cout, h, w}, dt, memory::format_tag::nhwc}, Engine(), b.output);
  memory kernel(plan.kernel, Engine(), b.kernel);
  memory conv_kernel = plan.reorder ? memory(plan.blocked_kernel, Engine()) : kernel;
  dnnl::stream stream(Engine());
  if (kind == kKernelGrad) {
    memory bias({{cout}, dt, memory::format_tag::a}, Engine(), b.bias);
    plan.conv.execute(stream, {{DNNL_ARG_SRC, image}, {DNNL_ARG_DIFF_WEIGHTS, conv_kernel},
                               {DNNL_ARG_DIFF_BIAS, bias}, {DNNL_ARG_DIFF_DST, output}});
    if (plan.reorder) plan.kernel_reorder.execute(stream, conv_kernel, kernel);
  } else {
    if (plan.reorder) plan.kernel_reorder.execute(stream, kernel, conv_kernel);
    if (kind == kForward) {
      memory bias({{cout}, dt, memory::format_tag::a}, Engine(), b.bias);
      plan.conv.execute(stream, {{DNNL_ARG_SRC, image}, {DNNL_ARG_WEIGHTS, conv_kernel},
                                 {DNNL_ARG_BIAS, bias}, {DNNL_ARG_DST, output}});
    } else {
      plan.conv.execute(stream, {{DNNL_ARG_DIFF_SRC, image}, {DNNL_ARG_WEIGHTS, conv_kernel},
                                 {DNNL_ARG_DIFF_DST, output}});
    }
  }
  stream.wait();
}

ffi::Error Run(const Key& key, const Buffers& buffers) {
  std::string failure;
  Worker::Get().Run([&] {
    try {
      Execute(key, buffers);
    } catch (const dnnl::error& e) {
      failure = std::string("oneDNN conv: ") + e.what();
    }
  });
  return failure.empty() ? ffi::Error::Success() : ffi::Error::Internal(failure);
}

// y = conv(x, k) + b, then ReLU if `relu`
ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer k, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> y,
                   bool relu) {
  if (auto e = Check({x, k, b}); e.failure()) return e;
  auto d = x.dimensions();
  return Run(Key{kForward, d[0], d[1], d[2], d[3], k.dimensions()[3], IsBf16(x), relu},
             Buffers{x.untyped_data(), k.untyped_data(), b.untyped_data(), y->untyped_data()});
}

// dx = ∂L/∂x of conv(x, k) + b, from dy = ∂L/∂(conv(x, k) + b)
ffi::Error InputGrad(ffi::AnyBuffer dy, ffi::AnyBuffer k, ffi::Result<ffi::AnyBuffer> dx) {
  if (auto e = Check({dy, k}); e.failure()) return e;
  auto d = dy.dimensions();
  return Run(Key{kInputGrad, d[0], d[1], d[2], k.dimensions()[2], d[3], IsBf16(dy), false},
             Buffers{dx->untyped_data(), k.untyped_data(), nullptr, dy.untyped_data()});
}

// dk, db = ∂L/∂k, ∂L/∂b of conv(x, k) + b, from x and dy; by matrix products over bands of
// about `band_bytes` if `band_bytes` > 0 (float32 only), else by oneDNN's kernel-gradient
// convolution
ffi::Error KernelGrad(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dk,
                      ffi::Result<ffi::AnyBuffer> db, int64_t band_bytes) {
  const bool gemm = band_bytes > 0;
  if (auto e = Check({x, dy}); e.failure()) return e;
  if (gemm && IsBf16(x))
    return ffi::Error::InvalidArgument("oneDNN conv: the kernel gradient by products is float32 only");
  auto d = x.dimensions();
  return Run(Key{gemm ? kKernelGradGemm : kKernelGrad, d[0], d[1], d[2], d[3], dy.dimensions()[3],
                 IsBf16(x), false},
             Buffers{x.untyped_data(), dk->untyped_data(), db->untyped_data(), dy.untyped_data(),
                     band_bytes});
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(IfesConvForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<bool>("relu"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(IfesConvInputGrad, InputGrad,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(IfesConvKernelGrad, KernelGrad,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("band_bytes"));
