// Chapter 6: the GRU time loop in C++, for gru_lib.fast.FastGRU (CPU tensors only).
//
// One direction of one layer, time-major, PyTorch's "reset-after" GRU with weights stacked r|z|n:
//   gi = x W_ih^T + b_ih             all T steps in one matrix product, before the loop
//   gh = h W_hh^T                    one matrix product per step, into a preallocated buffer
//   r = sigmoid(gi_r + gh_r + b_hr)   z = sigmoid(gi_z + gh_z + b_hz)
//   n = tanh(gi_n + r * (gh_n + b_hn))   h' = n + z * (h - n)
// The gate arithmetic of a step is one fused pass over (B, H) (forward) or (B, 4H) (backward), vectorised by
// the compiler with runtime dispatch (target_clones), so the build needs no -march flag.
//
// Variable lengths: row b is valid at step t iff t < lengths[b]; padded outputs are 0 and the state of a row
// stops at its last valid step (h_n gathers it). Padding only ever follows the valid steps, so a padded row
// never becomes valid again, and the zero written to out[t] for it is never read as a valid state.
//
// Backward is BPTT by hand: per step, one fused pass computes the pre-activation gradients
// G[t] = [d r, d z, d(gh_n + b_hn), d(gi_n)] (B, 4H) and dh_{t-1}; then the weight gradients of ALL steps are
// single large products: dW_hh = G_h^T [h0; out[:-1]], dW_ih = G_i^T X, dX = G_i W_ih.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <bit>
#include <string>
#include <vector>

namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GRU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define GRU_CLONES
#endif

// exp for float without a libm call, so the loops below vectorise: Cody-Waite range reduction and the Cephes
// degree-6 polynomial (relative error about 2e-7 over the clamped range).
static inline float exp_f(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float k = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - k * 0.693359375f + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  return p * std::bit_cast<float>(bits);
}
static inline double exp_f(double x) { return std::exp(x); }

template <typename T>
static inline T sigmoid_f(T x) {
  return T(1) / (T(1) + exp_f(-x));
}
template <typename T>
static inline T tanh_f(T x) {
  return T(1) - T(2) / (exp_f(T(2) * x) + T(1));
}
static inline double tanh_f(double x) { return std::tanh(x); }

// Forward gates of rows [b0, b1) at one step. gi: (B, 3H) this step's input projections (b_ih included);
// gh: (B, 3H) = h W_hh^T (no bias); hp: previous state (B, H); out: new state (B, H), 0 for padded rows;
// bhh: b_hh (3H), zeros without bias; save (optional): (B, 4H) = [r, z, n, gh_n + b_hn] for backward.
template <typename T>
GRU_CLONES void gates_forward(int64_t b0, int64_t b1, int64_t H, int64_t t, const int64_t* lengths, const T* __restrict__ gi,
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

// Backward gates of rows [b0, b1) at one step. dh: (B, H) carried gradient w.r.t. this step's new state,
// replaced by the direct part z * dh' of the gradient w.r.t. the previous state (the W_hh part is added by
// one matrix product afterwards); dout: (B, H) gradient of this step's output; G: (B, 4H) written as
// [da_r, da_z, da_n * r, da_n] (pre-activation gradients; 0 for padded rows, whose dh passes through).
template <typename T>
GRU_CLONES void gates_backward(int64_t b0, int64_t b1, int64_t H, int64_t t, const int64_t* lengths,
                               const T* __restrict__ saved, const T* __restrict__ hp,
                               const T* __restrict__ dout, T* __restrict__ dh, T* __restrict__ G) {
  for (int64_t b = b0; b < b1; ++b) {
    T* g = G + b * 4 * H;
    if (lengths != nullptr && t >= lengths[b]) {
      std::fill(g, g + 4 * H, T(0));
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
      g[j] = da_r;
      g[H + j] = da_z;
      g[2 * H + j] = da_n * r;
      g[3 * H + j] = da_n;
      d[j] = dhj * z;
    }
  }
}

// Rows per parallel task: about 8k elements per task, so that small steps stay on one thread.
int64_t grain(int64_t H) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(H, 1)); }

// The step's matrix product out = a @ bt, in mm_dtype (float32 or bfloat16) with float32 result.
struct StepMM {
  at::Tensor bt, bt_low, a_low, out_low;
  bool low;
  StepMM(const at::Tensor& bt_, at::ScalarType mm_dtype, int64_t rows)
      : bt(bt_), low(mm_dtype != bt_.scalar_type()) {
    if (low) {
      bt_low = bt_.to(mm_dtype);
      a_low = at::empty({rows, bt_.size(0)}, bt_.options().dtype(mm_dtype));
      out_low = at::empty({rows, bt_.size(1)}, bt_.options().dtype(mm_dtype));
    }
  }
  void operator()(at::Tensor& out, const at::Tensor& a) {
    if (!low) {
      at::mm_out(out, a, bt);
    } else {
      a_low.copy_(a);
      at::mm_out(out_low, a_low, bt_low);
      out.copy_(out_low);
    }
  }
  void add(at::Tensor& out, const at::Tensor& a) {  // out += a @ bt
    if (!low) {
      out.addmm_(a, bt);
    } else {
      a_low.copy_(a);
      at::mm_out(out_low, a_low, bt_low);
      out.add_(out_low);
    }
  }
};

// a @ b for the one-off large products, in mm_dtype with the result in a's dtype.
at::Tensor big_mm(const at::Tensor& a, const at::Tensor& b, at::ScalarType mm_dtype) {
  if (mm_dtype == a.scalar_type()) return at::mm(a, b);
  return at::mm(a.to(mm_dtype), b.to(mm_dtype)).to(a.scalar_type());
}

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
  at::Tensor gi = big_mm(x.view({T * B, D}), w_ih.t(), mm_dtype);
  if (b_ih.has_value()) gi.add_(*b_ih);
  at::Tensor out = at::empty({T, B, H}, x.options());
  at::Tensor saved = training ? at::empty({T, B, 4 * H}, x.options()) : at::Tensor();
  at::Tensor gh = at::empty({B, 3 * H}, x.options());
  StepMM step_mm(w_hh.t(), mm_dtype, B);

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fast_gru_forward", [&] {
    const scalar_t* bias = bhh.data_ptr<scalar_t>();
    for (int64_t t = 0; t < T; ++t) {
      const at::Tensor hp = t == 0 ? h0 : out[t - 1];
      step_mm(gh, hp);
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

  at::Tensor G = at::empty({T, B, 4 * H}, x.options());
  at::Tensor dh = dh_n.contiguous().clone();
  StepMM step_mm(w_hh, mm_dtype, B);  // dh_{t-1} += G_h[t] @ W_hh

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fast_gru_backward", [&] {
    for (int64_t t = T - 1; t >= 0; --t) {
      const at::Tensor hp = t == 0 ? h0 : out[t - 1];
      const scalar_t* saved_t = saved.data_ptr<scalar_t>() + t * B * 4 * H;
      const scalar_t* hp_p = hp.data_ptr<scalar_t>();
      const scalar_t* dout_t = dout.data_ptr<scalar_t>() + t * B * H;
      scalar_t* dh_p = dh.data_ptr<scalar_t>();
      scalar_t* G_t = G.data_ptr<scalar_t>() + t * B * 4 * H;
      at::parallel_for(0, B, grain(H), [&](int64_t b0, int64_t b1) {
        gates_backward<scalar_t>(b0, b1, H, t, lens, saved_t, hp_p, dout_t, dh_p, G_t);
      });
      step_mm.add(dh, G[t].narrow(1, 0, 3 * H));
    }
  });

  // The weight gradients of all steps as single large products.
  const at::Tensor G2 = G.view({T * B, 4 * H});
  const at::Tensor Gh = G2.narrow(1, 0, 3 * H);                                         // d gh (r|z|n)
  const at::Tensor Gi_rz = G2.narrow(1, 0, 2 * H), Gi_n = G2.narrow(1, 3 * H, H);     // d gi
  const at::Tensor X = x.view({T * B, D});
  at::Tensor dW_hh = big_mm(Gh.narrow(0, 0, B).t(), h0, mm_dtype);
  if (T > 1) dW_hh.add_(big_mm(Gh.narrow(0, B, (T - 1) * B).t(), out.narrow(0, 0, T - 1).reshape({(T - 1) * B, H}), mm_dtype));
  at::Tensor dW_ih = at::cat({big_mm(Gi_rz.t(), X, mm_dtype), big_mm(Gi_n.t(), X, mm_dtype)}, 0);
  at::Tensor dx = big_mm(Gi_rz, w_ih.narrow(0, 0, 2 * H), mm_dtype);
  dx.add_(big_mm(Gi_n, w_ih.narrow(0, 2 * H, H), mm_dtype));
  at::Tensor db_hh = Gh.sum(0);
  at::Tensor db_ih = at::cat({Gi_rz.sum(0), Gi_n.sum(0)}, 0);
  return {dx.view({T, B, D}), dh, dW_ih, dW_hh, db_ih, db_hh};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &gru_forward, "FastGRU forward scan of one direction (CPU)");
  m.def("backward", &gru_backward, "FastGRU backward through time of one direction (CPU)");
}
