// Chapter 6: the GRU time loop in C++, for gru_lib.fast.FastGRU (CPU tensors only).
//
// One direction of one layer, time-major, PyTorch's "reset-after" GRU with weights stacked r|z|n:
//   gi = x W_ih^T + b_ih             all T steps in one matrix product, before the loop
//   gh = h W_hh^T                    one matrix product per step, into a preallocated buffer
//   r = sigmoid(gi_r + gh_r + b_hr)   z = sigmoid(gi_z + gh_z + b_hz)
//   n = tanh(gi_n + r * (gh_n + b_hn))   h' = n + z * (h - n)
// The gate arithmetic of a step is one fused pass over (B, H) (forward) or (B, 3H) (backward), vectorised by
// the compiler with runtime dispatch (target_clones, fast_math.h), so the build needs no -march flag.
//
// Variable lengths: row b is valid at step t iff t < lengths[b]; padded outputs are 0 and the state of a row
// stops at its last valid step (h_n gathers it). Padding only ever follows the valid steps, so a padded row
// never becomes valid again, and the zero written to out[t] for it is never read as a valid state.
//
// Backward is BPTT by hand: per step, one fused pass computes the pre-activation gradients
// G_h[t] = [d r, d z, d(gh_n + b_hn)] and G_i[t] = [d r, d z, d(gi_n)] (each (B, 3H)) and dh_{t-1}; then the
// weight gradients of ALL steps are single large products: dW_hh = G_h^T [h0; out[:-1]], dW_ih = G_i^T X,
// dX = G_i W_ih.
//
// Matrix products. torch.mm on x86 CPUs calls MKL, which reaches about 190 GFLOP/s on 2 cores of this AMD
// EPYC on the per-step (64, 256) x (256, 768) product; oneDNN, which PyTorch also ships and which reports
// AVX-512 code here (ONEDNN_VERBOSE=1), reaches about 400 once the fixed weight is packed into its blocked
// layout (measured by `python -m gru_lib bench`, the rows torch.mm and oneDNN). So on CPU, for float32 and
// bfloat16, the products go through PyTorch's own oneDNN operators (mkldnn::_reorder_linear_weight packs a
// weight once per call, mkldnn::_linear_pointwise multiplies); with torch.backends.mkldnn disabled, in builds
// without oneDNN, and for float64 they go through ATen (at::mm) as before. Both give float32 rounding only.
#include <torch/extension.h>

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "buffers.h"
#include "fast_math.h"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace {

using gru_buffers::empty_large;
using gru_math::sigmoid_f;
using gru_math::tanh_f;

// Forward gates of rows [b0, b1) at one step. gi: (B, 3H) this step's input projections (b_ih included);
// gh: (B, 3H) = h W_hh^T (no bias); hp: previous state (B, H); out: new state (B, H), 0 for padded rows;
// bhh: b_hh (3H), zeros without bias; save (optional): (B, 4H) = [r, z, n, gh_n + b_hn] for backward.
template <typename T>
GRU_BODY void gates_forward_body(int64_t b0, int64_t b1, int64_t H, int64_t t, const int64_t* lengths, const T* __restrict__ gi,
                                 const T* __restrict__ gh, const T* __restrict__ bhh,
                                 const T* __restrict__ hp, T* __restrict__ out, T* __restrict__ save) {
  for (int64_t b = b0; b < b1; ++b) {
    T* o = out + b * H;
    if (lengths != nullptr && t >= lengths[b]) {
      std::fill(o, o + H, T(0));
      if (save != nullptr) std::fill(save + b * 4 * H, save + (b + 1) * 4 * H, T(0));
      continue;
    }
    const T* i_r = gi + b * 3 * H;
    const T* i_z = i_r + H;
    const T* i_n = i_z + H;
    const T* h_r = gh + b * 3 * H;
    const T* h_z = h_r + H;
    const T* h_n = h_z + H;
    const T* p = hp + b * H;
    if (save == nullptr) {
      for (int64_t j = 0; j < H; ++j) {
        const T br = bhh[j], bz = bhh[H + j], bn = bhh[2 * H + j];
        const T r = sigmoid_f(i_r[j] + h_r[j] + br);
        const T z = sigmoid_f(i_z[j] + h_z[j] + bz);
        const T n = tanh_f(i_n[j] + r * (h_n[j] + bn));
        o[j] = n + z * (p[j] - n);
      }
    } else {
      T* s_r = save + b * 4 * H;
      T* s_z = s_r + H;
      T* s_n = s_z + H;
      T* s_g = s_n + H;
      for (int64_t j = 0; j < H; ++j) {
        const T br = bhh[j], bz = bhh[H + j], bn = bhh[2 * H + j];
        const T r = sigmoid_f(i_r[j] + h_r[j] + br);
        const T z = sigmoid_f(i_z[j] + h_z[j] + bz);
        const T g = h_n[j] + bn;
        const T n = tanh_f(i_n[j] + r * g);
        o[j] = n + z * (p[j] - n);
        s_r[j] = r;
        s_z[j] = z;
        s_n[j] = n;
        s_g[j] = g;
      }
    }
  }
}
GRU_MULTIVERSION(gates_forward)

// Backward gates of rows [b0, b1) at one step. dh: (B, H) carried gradient w.r.t. this step's new state,
// replaced by the direct part z * dh' of the gradient w.r.t. the previous state (the W_hh part is added by
// one matrix product afterwards); dout: (B, H) gradient of this step's output; Gh, Gi: (B, 3H) written as
// [da_r, da_z, da_n * r] (gradient of gh + b_hh) and [da_r, da_z, da_n] (gradient of gi), 0 for padded rows,
// whose dh passes through.
template <typename T>
GRU_BODY void gates_backward_body(int64_t b0, int64_t b1, int64_t H, int64_t t, const int64_t* lengths,
                                  const T* __restrict__ saved, const T* __restrict__ hp,
                                  const T* __restrict__ dout, T* __restrict__ dh, T* __restrict__ Gh,
                                  T* __restrict__ Gi) {
  for (int64_t b = b0; b < b1; ++b) {
    T* gh = Gh + b * 3 * H;
    T* gi = Gi + b * 3 * H;
    if (lengths != nullptr && t >= lengths[b]) {
      std::fill(gh, gh + 3 * H, T(0));
      std::fill(gi, gi + 3 * H, T(0));
      continue;
    }
    const T* r_ = saved + b * 4 * H;
    const T* z_ = r_ + H;
    const T* n_ = z_ + H;
    const T* gn_ = n_ + H;
    const T* p = hp + b * H;
    const T* dy = dout + b * H;
    T* d = dh + b * H;
    for (int64_t j = 0; j < H; ++j) {
      const T r = r_[j], z = z_[j], n = n_[j];
      const T dhj = d[j] + dy[j];
      const T da_n = dhj * (T(1) - z) * (T(1) - n * n);
      const T da_z = dhj * (p[j] - n) * z * (T(1) - z);
      const T da_r = da_n * gn_[j] * r * (T(1) - r);
      gh[j] = gi[j] = da_r;
      gh[H + j] = gi[H + j] = da_z;
      gh[2 * H + j] = da_n * r;
      gi[2 * H + j] = da_n;
      d[j] = dhj * z;
    }
  }
}
GRU_MULTIVERSION(gates_backward)

// Rows per parallel task: about 8k elements per task, so that small steps stay on one thread.
int64_t grain(int64_t H) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(H, 1)); }

// ---- Matrix products ----

using LinearFn = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            std::string_view, c10::List<std::optional<at::Scalar>>, std::optional<std::string_view>);
using ReorderFn = at::Tensor(const at::Tensor&, std::optional<int64_t>);

// PyTorch's oneDNN operators, looked up once (absent from builds without oneDNN).
struct OneDnnOps {
  std::optional<c10::TypedOperatorHandle<LinearFn>> linear;    // X W^T, W dense (any strides) or packed
  std::optional<c10::TypedOperatorHandle<ReorderFn>> reorder;  // W -> oneDNN's blocked layout
};

const OneDnnOps& onednn_ops() {
  static const OneDnnOps ops = [] {
    OneDnnOps o;
    auto& dispatcher = c10::Dispatcher::singleton();
    auto linear = dispatcher.findSchema({"mkldnn::_linear_pointwise", ""});
    auto reorder = dispatcher.findSchema({"mkldnn::_reorder_linear_weight", ""});
    if (linear && reorder) {
      o.linear = linear->typed<LinearFn>();
      o.reorder = reorder->typed<ReorderFn>();
    }
    return o;
  }();
  return ops;
}

// a @ w^T by oneDNN; a (M, K) contiguous, w (N, K) dense with any strides, or packed.
at::Tensor onednn_linear(const at::Tensor& a, const at::Tensor& w) {
  return onednn_ops().linear->call(a.contiguous(), w, std::nullopt, "none", c10::List<std::optional<at::Scalar>>(),
                                   std::nullopt);
}

// Whether oneDNN multiplies bfloat16 on this CPU. It has no bf16 kernel for CPUs without AVX-512 (or with
// ONEDNN_MAX_CPU_ISA below it) and then refuses to create the primitive: asked once, with a 1 x 1 product.
bool onednn_bf16_works() {
  static const bool works = [] {
    try {
      const at::Tensor one = at::ones({1, 1}, at::TensorOptions().dtype(at::kBFloat16));
      onednn_linear(one, one);
      return true;
    } catch (const std::exception&) {  // c10::Error, or oneDNN's own error type
      return false;
    }
  }();
  return works;
}

// Whether products in this dtype on these tensors' device go through oneDNN (see the header comment); else
// ATen's at::mm, which multiplies bfloat16 on every CPU.
bool use_onednn(const at::Tensor& like, at::ScalarType mm_dtype) {
  return like.device().is_cpu() && (mm_dtype == at::kFloat || mm_dtype == at::kBFloat16) &&
         at::globalContext().userEnabledMkldnn() && onednn_ops().linear.has_value() &&
         (mm_dtype != at::kBFloat16 || onednn_bf16_works());
}

// a @ w^T in mm_dtype with the result in a's dtype, for one-off products; w (N, K) with any strides.
at::Tensor product_abt(const at::Tensor& a, const at::Tensor& w, at::ScalarType mm_dtype) {
  const bool low = mm_dtype != a.scalar_type();
  const at::Tensor a_mm = low ? a.to(mm_dtype) : a, w_mm = low ? w.to(mm_dtype) : w;
  at::Tensor y = use_onednn(a, mm_dtype) ? onednn_linear(a_mm, w_mm) : at::mm(a_mm, w_mm.t());
  return low ? y.to(a.scalar_type()) : y;
}

// a^T @ b (a (M, N), b (M, K), M the long axis: T*B) in mm_dtype, result (N, K) in a's dtype. oneDNN wants
// the contracted axis contiguous in its left operand, so it computes (b^T a)^T from a transposed copy of b.
at::Tensor product_atb(const at::Tensor& a, const at::Tensor& b, at::ScalarType mm_dtype) {
  if (!use_onednn(a, mm_dtype)) return product_abt(a.t(), b.t(), mm_dtype);
  const bool low = mm_dtype != a.scalar_type();
  const at::Tensor a_mm = low ? a.to(mm_dtype) : a;
  const at::Tensor bt_mm = (low ? b.to(mm_dtype) : b).t().contiguous();
  at::Tensor y = onednn_linear(bt_mm, a_mm.t()).t().contiguous();
  return low ? y.to(a.scalar_type()) : y;
}

// The per-step product a @ w^T with a fixed w (N, K): packed once for oneDNN, in mm_dtype (float32 or
// bfloat16) with the result in w's dtype.
class FixedWeightProduct {
 public:
  FixedWeightProduct(const at::Tensor& w, at::ScalarType mm_dtype, int64_t rows)
      : dtype_(w.scalar_type()), mm_dtype_(mm_dtype), onednn_(use_onednn(w, mm_dtype)) {
    const at::Tensor w_mm = w.to(mm_dtype).contiguous();
    weight_ = onednn_ ? onednn_ops().reorder->call(w_mm, rows) : w_mm.t();
  }
  at::Tensor operator()(const at::Tensor& a) const {
    const at::Tensor a_mm = mm_dtype_ != dtype_ ? a.to(mm_dtype_) : a;
    at::Tensor y = onednn_ ? onednn_linear(a_mm, weight_) : at::mm(a_mm, weight_);
    return mm_dtype_ != dtype_ ? y.to(dtype_) : y;
  }

 private:
  at::ScalarType dtype_, mm_dtype_;
  bool onednn_;
  at::Tensor weight_;  // packed (oneDNN) or w^T (ATen)
};

// The dtype of the matrix products: "" (the data's own), "bfloat16" or "float16" (autocast).
at::ScalarType mm_type(const std::string& name, at::ScalarType own) {
  if (name.empty()) return own;
  if (name == "bfloat16") return at::kBFloat16;
  if (name == "float16") return at::kHalf;
  TORCH_CHECK(false, "fast_gru: unsupported matmul dtype ", name);
}

const int64_t* lengths_ptr(const at::Tensor& lengths) {
  return lengths.defined() && lengths.numel() > 0 ? lengths.data_ptr<int64_t>() : nullptr;
}

// h_n: the state after each row's last valid step (h0 for a row of length 0).
at::Tensor final_state(const at::Tensor& out, const at::Tensor& h0, const int64_t* lengths) {
  const int64_t T = out.size(0), B = out.size(1);
  if (lengths == nullptr) return T > 0 ? out[T - 1].clone() : h0.clone();
  at::Tensor h_n = at::empty_like(h0);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t L = std::min(lengths[b], T);
    h_n[b].copy_(L > 0 ? out[L - 1][b] : h0[b]);
  }
  return h_n;
}

// Returns {output (T, B, H), h_n (B, H), saved (T, B, 4H) or undefined when not training}.
std::vector<at::Tensor> gru_forward(const at::Tensor& x_, const at::Tensor& h0_, const at::Tensor& w_ih,
                                    const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                                    const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& lengths_,
                                    bool training, const std::string& mm_name) {
  const at::ScalarType mm_dtype = mm_type(mm_name, x_.scalar_type());
  TORCH_CHECK(x_.device().is_cpu(), "fast_gru: the C++ path takes CPU tensors");
  const at::Tensor x = x_.contiguous();
  const at::Tensor h0 = h0_.contiguous();
  const int64_t T = x.size(0), B = x.size(1), D = x.size(2), H = h0.size(1);
  const at::Tensor lengths = lengths_.has_value() ? lengths_->contiguous() : at::Tensor();
  const int64_t* lens = lengths_ptr(lengths);
  const at::Tensor bhh = b_hh.has_value() ? b_hh->contiguous() : at::zeros({3 * H}, x.options());

  // All steps' input projections in one product.
  at::Tensor gi = product_abt(x.view({T * B, D}), w_ih, mm_dtype);
  if (b_ih.has_value()) gi.add_(*b_ih);
  at::Tensor out = empty_large({T, B, H}, x.options());
  at::Tensor saved = training ? empty_large({T, B, 4 * H}, x.options()) : at::Tensor();
  const FixedWeightProduct times_w_hh_t(w_hh, mm_dtype, B);  // gh = h W_hh^T

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fast_gru_forward", [&] {
    const scalar_t* bias = bhh.data_ptr<scalar_t>();
    for (int64_t t = 0; t < T; ++t) {
      const at::Tensor hp = t == 0 ? h0 : out[t - 1];
      const at::Tensor gh = times_w_hh_t(hp);
      const scalar_t* gi_t = gi.data_ptr<scalar_t>() + t * B * 3 * H;
      const scalar_t* gh_p = gh.data_ptr<scalar_t>();
      const scalar_t* hp_p = hp.data_ptr<scalar_t>();
      scalar_t* out_t = out.data_ptr<scalar_t>() + t * B * H;
      scalar_t* save_t = training ? saved.data_ptr<scalar_t>() + t * B * 4 * H : nullptr;
      at::parallel_for(0, B, grain(H), [&](int64_t b0, int64_t b1) {
        gates_forward<scalar_t>(b0, b1, H, t, lens, gi_t, gh_p, bias, hp_p, out_t, save_t);
      });
    }
  });
  return {out, final_state(out, h0, lens), saved};
}

// Returns {dx (T, B, D), dh0 (B, H), dW_ih, dW_hh, db_ih, db_hh} (bias gradients are sums of G's columns).
std::vector<at::Tensor> gru_backward(const at::Tensor& dout_, const at::Tensor& dh_n, const at::Tensor& x_,
                                     const at::Tensor& h0_, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                     const at::Tensor& out, const at::Tensor& saved,
                                     const c10::optional<at::Tensor>& lengths_, const std::string& mm_name) {
  const at::ScalarType mm_dtype = mm_type(mm_name, x_.scalar_type());
  const at::Tensor x = x_.contiguous();
  const at::Tensor h0 = h0_.contiguous();
  const at::Tensor dout = dout_.contiguous();
  const int64_t T = x.size(0), B = x.size(1), D = x.size(2), H = h0.size(1);
  const at::Tensor lengths = lengths_.has_value() ? lengths_->contiguous() : at::Tensor();
  const int64_t* lens = lengths_ptr(lengths);

  at::Tensor Gh = empty_large({T, B, 3 * H}, x.options());
  at::Tensor Gi = empty_large({T, B, 3 * H}, x.options());
  at::Tensor dh = dh_n.contiguous().clone();
  const FixedWeightProduct times_w_hh(w_hh.t(), mm_dtype, B);  // dh_{t-1} += G_h[t] W_hh

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fast_gru_backward", [&] {
    for (int64_t t = T - 1; t >= 0; --t) {
      const at::Tensor hp = t == 0 ? h0 : out[t - 1];
      const scalar_t* saved_t = saved.data_ptr<scalar_t>() + t * B * 4 * H;
      const scalar_t* hp_p = hp.data_ptr<scalar_t>();
      const scalar_t* dout_t = dout.data_ptr<scalar_t>() + t * B * H;
      scalar_t* dh_p = dh.data_ptr<scalar_t>();
      scalar_t* Gh_t = Gh.data_ptr<scalar_t>() + t * B * 3 * H;
      scalar_t* Gi_t = Gi.data_ptr<scalar_t>() + t * B * 3 * H;
      at::parallel_for(0, B, grain(H), [&](int64_t b0, int64_t b1) {
        gates_backward<scalar_t>(b0, b1, H, t, lens, saved_t, hp_p, dout_t, dh_p, Gh_t, Gi_t);
      });
      dh.add_(times_w_hh(Gh[t]));
    }
  });

  // The weight gradients of all steps as single large products. G_h (back to the pool) and the previous
  // states are released before G_i's products, so their memory can serve those products.
  at::Tensor dW_hh, db_hh;
  {
    const at::Tensor Gh2 = Gh.view({T * B, 3 * H});
    const at::Tensor H_prev = at::cat({h0.unsqueeze(0), out.narrow(0, 0, T - 1)}, 0).view({T * B, H});
    dW_hh = product_atb(Gh2, H_prev, mm_dtype);
    db_hh = Gh2.sum(0);
    Gh.reset();
  }
  const at::Tensor Gi2 = Gi.view({T * B, 3 * H});
  at::Tensor dW_ih = product_atb(Gi2, x.view({T * B, D}), mm_dtype);
  at::Tensor dx = product_abt(Gi2, w_ih.t(), mm_dtype);
  at::Tensor db_ih = Gi2.sum(0);
  return {dx.view({T, B, D}), dh, dW_ih, dW_hh, db_ih, db_hh};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("set_isa", &gru_isa::set, "the instruction set of the elementwise loops: -1 the CPU's best, 0 portable, 1 avx2, 2 avx512");
  m.def("isa", &gru_isa::level, "the instruction set the elementwise loops run now");
  m.def("release_cached_buffers", &gru_buffers::release_cached, "unmap the unused large buffers kept for reuse");
  m.def("forward", &gru_forward, "FastGRU forward scan of one direction (CPU)");
  m.def("uses_onednn", [](const std::string& dtype) {
    return use_onednn(at::empty({0}), dtype == "bfloat16" ? at::kBFloat16 : dtype == "float64" ? at::kDouble : at::kFloat);
  }, "whether products in this dtype go through oneDNN now (else ATen's at::mm)");
  m.def("backward", &gru_backward, "FastGRU backward through time of one direction (CPU)");
}
