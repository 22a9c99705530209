// Chapter 7: minGRU's blocked scan in C++, for gru_lib.scan.mingru_scan (CPU, float32 and float64).
//
// The recurrence h_t = a_t h_{t-1} + b_t with a = 1 - z, b = z g(p), z = sigmoid(k), for pre-activations
// y = [k | p] (T, N, 2H), time on dim 0, N lanes of H (N = the batch). Time is cut into blocks of C steps:
//
//   1. reduce, all blocks at once: each block's summary from a zero start, in log space (Heinsen 2023),
//        l_j = logaddexp(l_{j-1} + log a_j, log b_j),   L_j = L_{j-1} + log a_j,
//      so that the block maps a state h at its start to exp(L) h + exp(l) at its end;
//   2. carry, sequentially over the T / C blocks: the state at every block's start (any sign: it enters
//      linearly);
//   3. scan, all blocks at once: each block again from its true start state, h_j = a_j h_{j-1} + b_j, where
//      |a| <= 1 keeps every step bounded.
//
// This is "reduce, then scan": step 1 stores nothing per step, so the forward reads y twice and writes h once.
// The large results come from the reuse pool of buffers.h; dL/dh is read with whatever strides it has.
// gru_lib/scan.py's _forward is the same scan in PyTorch operations (with the log-space values of every step
// stored); it remains the path on other devices and dtypes.
//
// Backward: the adjoint of a linear recurrence is the same recurrence run backward, g_t = dL/dh_t +
// a_{t+1} g_{t+1}, blocked the same way: (1) per block, the adjoint at its first step from a zero inflow and
// the product of a over the rest of the block; (2) the inflow into every block's last step, sequentially;
// (3) per block, the true adjoint and from it dL/dk_t = g_t a_t (h_t - h_{t-1}) and dL/dp_t = g_t z_t g'(p_t).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "buffers.h"
#include "fast_math.h"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

using gru_buffers::empty_large;
using namespace gru_math;

// g(p) = p + 1/2 (p >= 0), sigmoid(p) (p < 0): positive; its log and its derivative.
template <typename T>
static inline T g_f(T p) {
  const T negative = sigmoid_f(p);
  return p >= T(0) ? p + T(0.5) : negative;
}
template <typename T>
static inline T log_g_f(T p) {  // one exp and one log: log(p + 1/2), or log sigmoid(p) = p - log(1 + exp(p))
  const T e = exp_f(-std::abs(p));
  const T log_arg = log_f(p >= T(0) ? p + T(0.5) : T(1) + e);
  return p >= T(0) ? log_arg : p - log_arg;
}
static inline double log_g_f(double p) { return p >= 0 ? std::log(p + 0.5) : -std::log1p(std::exp(-p)); }

struct Blocks {
  int64_t steps, block, count;
  int64_t start(int64_t i) const { return i * block; }
  int64_t size(int64_t i) const { return std::min(block, steps - i * block); }
};

// Work items are (block, lane row) pairs; a grain of a few rows keeps each task at thousands of elements.
int64_t grain(int64_t H) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(H, 1)); }

// Step 1 for one block and one row: log-space summary (l, L) of the block from a zero start. (Loops are written
// without data-dependent branches or conditional loads, so that they vectorise over q.)
template <typename T>
GRU_BODY void reduce_block_body(const T* __restrict__ y, int64_t t0, int64_t size, int64_t N, int64_t n, int64_t H,
                                T* __restrict__ l, T* __restrict__ L) {
  const T* k = y + (t0 * N + n) * 2 * H;
  for (int64_t q = 0; q < H; ++q) {
    const T log_z = log_sigmoid_f(k[q]);
    l[q] = log_z + log_g_f(k[H + q]);
    L[q] = log_z - k[q];
  }
  for (int64_t j = 1; j < size; ++j) {
    k = y + ((t0 + j) * N + n) * 2 * H;
    for (int64_t q = 0; q < H; ++q) {
      const T log_z = log_sigmoid_f(k[q]);
      const T log_a = log_z - k[q];
      l[q] = log_add_exp_f(l[q] + log_a, log_z + log_g_f(k[H + q]));
      L[q] += log_a;
    }
  }
}
GRU_MULTIVERSION(reduce_block)

// Step 3 for one block and one row: h_j = a_j h_{j-1} + b_j from the block's start state.
template <typename T>
GRU_BODY void scan_block_body(const T* __restrict__ y, int64_t t0, int64_t size, int64_t N, int64_t n, int64_t H,
                              const T* __restrict__ start, T* __restrict__ h) {
  const T* prev = start;
  for (int64_t j = 0; j < size; ++j) {
    const T* k = y + ((t0 + j) * N + n) * 2 * H;
    const T* p = k + H;
    T* out = h + ((t0 + j) * N + n) * H;
    for (int64_t q = 0; q < H; ++q) {
      const T z = sigmoid_f(k[q]);
      out[q] = prev[q] + z * (g_f(p[q]) - prev[q]);  // (1 - z) h + z g(p)
    }
    prev = out;
  }
}
GRU_MULTIVERSION(scan_block)

// Returns {h (T, N, H), carry (blocks, N, H): the state at every block's start}.
std::vector<at::Tensor> scan_forward(const at::Tensor& y_, const at::Tensor& h0_, int64_t block) {
  TORCH_CHECK(y_.device().is_cpu() && y_.dim() == 3 && y_.size(2) % 2 == 0,
              "mingru_scan (C++): y must be a CPU tensor (T, N, 2H)");
  const at::Tensor y = y_.contiguous();
  const at::Tensor h0 = h0_.contiguous();
  const int64_t T = y.size(0), N = y.size(1), H = y.size(2) / 2;
  const Blocks blocks{T, block, (T + block - 1) / block};
  at::Tensor h = empty_large({T, N, H}, y.options());
  at::Tensor carry = at::empty({blocks.count, N, H}, y.options());
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "mingru_scan_forward", [&] {
    const scalar_t* yp = y.data_ptr<scalar_t>();
    at::Tensor l = at::empty({blocks.count, N, H}, y.options()), L = at::empty_like(l);
    scalar_t* lp = l.data_ptr<scalar_t>();
    scalar_t* Lp = L.data_ptr<scalar_t>();
    at::parallel_for(0, blocks.count * N, grain(H), [&](int64_t w0, int64_t w1) {
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t i = w / N, n = w % N;
        reduce_block<scalar_t>(yp, blocks.start(i), blocks.size(i), N, n, H, lp + w * H, Lp + w * H);
      }
    });
    // Carry: start_{i+1} = exp(L_i) start_i + exp(l_i).
    scalar_t* cp = carry.data_ptr<scalar_t>();
    std::copy(h0.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>() + N * H, cp);
    for (int64_t i = 0; i + 1 < blocks.count; ++i) {
      const scalar_t* s = cp + i * N * H;
      scalar_t* next = cp + (i + 1) * N * H;
      for (int64_t e = 0; e < N * H; ++e) next[e] = exp_f(Lp[i * N * H + e]) * s[e] + exp_f(lp[i * N * H + e]);
    }
    scalar_t* hp = h.data_ptr<scalar_t>();
    at::parallel_for(0, blocks.count * N, grain(H), [&](int64_t w0, int64_t w1) {
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t i = w / N, n = w % N;
        scan_block<scalar_t>(yp, blocks.start(i), blocks.size(i), N, n, H, cp + w * H, hp);
      }
    });
  });
  return {h, carry};
}

// dL/dh as the caller passed it, any strides (the gradient of out.sum() is one value expanded to (T, N, H)):
// row(t, n) points at its H values, copied into the caller's scratch when they are not contiguous, so that
// no (T, N, H) copy is ever made.
template <typename T>
struct GradRows {
  const T* base;
  int64_t st, sn, sq, H;
  const T* row(int64_t t, int64_t n, T* scratch) const {
    const T* p = base + t * st + n * sn;
    if (sq == 1) return p;
    for (int64_t q = 0; q < H; ++q) scratch[q] = p[q * sq];
    return scratch;
  }
};

// Backward step 1 for one block and one row: the adjoint at the block's first step with no inflow (local),
// the product of a over steps 1..size-1 (through), and a at step 0 (a_first).
template <typename T>
GRU_BODY void adjoint_block_body(const T* __restrict__ y, const GradRows<T>& grad, int64_t t0, int64_t size,
                                 int64_t N, int64_t n, int64_t H, T* __restrict__ local, T* __restrict__ through,
                                 T* __restrict__ a_first, T* __restrict__ scratch) {
  const int64_t last = t0 + size - 1;
  const T* g_last = grad.row(last, n, scratch);
  for (int64_t q = 0; q < H; ++q) {
    local[q] = g_last[q];
    through[q] = T(1);
  }
  for (int64_t t = last; t > t0; --t) {
    const T* k = y + (t * N + n) * 2 * H;
    const T* g_prev = grad.row(t - 1, n, scratch);
    for (int64_t q = 0; q < H; ++q) {
      const T a = T(1) - sigmoid_f(k[q]);
      local[q] = g_prev[q] + a * local[q];
      through[q] *= a;
    }
  }
  const T* k0 = y + (t0 * N + n) * 2 * H;
  for (int64_t q = 0; q < H; ++q) a_first[q] = T(1) - sigmoid_f(k0[q]);
}
GRU_MULTIVERSION(adjoint_block)

// Backward step 3 for one block and one row: the adjoint from the block's inflow, and dL/dk, dL/dp.
// adj and a_next: scratch of H values each.
template <typename T>
GRU_BODY void gradient_block_body(const T* __restrict__ y, const GradRows<T>& grad, const T* __restrict__ h,
                                  const T* __restrict__ start, const T* __restrict__ inflow, int64_t t0,
                                  int64_t size, int64_t N, int64_t n, int64_t H, T* __restrict__ grad_y,
                                  T* __restrict__ adj, T* __restrict__ a_next, T* __restrict__ scratch) {
  for (int64_t q = 0; q < H; ++q) {  // the last step: its own gradient plus the inflow from the next block
    adj[q] = inflow[q];
    a_next[q] = T(1);
  }
  for (int64_t t = t0 + size - 1; t >= t0; --t) {
    const T* k = y + (t * N + n) * 2 * H;
    const T* p = k + H;
    const T* g = grad.row(t, n, scratch);
    const T* ht = h + (t * N + n) * H;
    const T* prev = t > t0 ? h + ((t - 1) * N + n) * H : start;
    T* gk = grad_y + (t * N + n) * 2 * H;
    T* gp = gk + H;
    for (int64_t q = 0; q < H; ++q) {
      const T ad = g[q] + a_next[q] * adj[q];
      const T z = sigmoid_f(k[q]);
      const T a = T(1) - z;
      gk[q] = ad * a * (ht[q] - prev[q]);
      const T s = sigmoid_f(p[q]);
      gp[q] = p[q] >= T(0) ? ad * z : ad * z * s * (T(1) - s);
      adj[q] = ad;
      a_next[q] = a;
    }
  }
}
GRU_MULTIVERSION(gradient_block)

// Returns {dL/dy (T, N, 2H), dL/dh0 (N, H)}.
std::vector<at::Tensor> scan_backward(const at::Tensor& grad_, const at::Tensor& y_, const at::Tensor& h_,
                                      const at::Tensor& carry_, int64_t block) {
  TORCH_CHECK(grad_.dim() == 3 && grad_.sizes() == h_.sizes(), "mingru_scan (C++): grad must have h's shape");
  const at::Tensor y = y_.contiguous(), h = h_.contiguous();
  const at::Tensor carry = carry_.contiguous();
  const int64_t T = y.size(0), N = y.size(1), H = y.size(2) / 2;
  const Blocks blocks{T, block, (T + block - 1) / block};
  at::Tensor grad_y = empty_large(y.sizes(), y.options());
  at::Tensor grad_h0 = at::empty({N, H}, y.options());
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "mingru_scan_backward", [&] {
    const scalar_t* yp = y.data_ptr<scalar_t>();
    const GradRows<scalar_t> gp{grad_.data_ptr<scalar_t>(), grad_.stride(0), grad_.stride(1), grad_.stride(2), H};
    at::Tensor local = at::empty({blocks.count, N, H}, y.options());
    at::Tensor through = at::empty_like(local), a_first = at::empty_like(local), inflow = at::empty_like(local);
    scalar_t *lo = local.data_ptr<scalar_t>(), *th = through.data_ptr<scalar_t>();
    scalar_t *af = a_first.data_ptr<scalar_t>(), *in = inflow.data_ptr<scalar_t>();
    at::parallel_for(0, blocks.count * N, grain(H), [&](int64_t w0, int64_t w1) {
      std::vector<scalar_t> scratch(H);
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t i = w / N, n = w % N;
        adjoint_block<scalar_t>(yp, gp, blocks.start(i), blocks.size(i), N, n, H, lo + w * H, th + w * H,
                                af + w * H, scratch.data());
      }
    });
    // Inflow into block i's last step from block i+1: a_first[i+1] (local[i+1] + through[i+1] inflow[i+1]).
    const int64_t NH = N * H, last = blocks.count - 1;
    std::fill(in + last * NH, in + (last + 1) * NH, scalar_t(0));
    for (int64_t i = last; i > 0; --i)
      for (int64_t e = 0; e < NH; ++e)
        in[(i - 1) * NH + e] = af[i * NH + e] * (lo[i * NH + e] + th[i * NH + e] * in[i * NH + e]);
    scalar_t* gh0 = grad_h0.data_ptr<scalar_t>();
    for (int64_t e = 0; e < NH; ++e) gh0[e] = af[e] * (lo[e] + th[e] * in[e]);
    const scalar_t* hp = h.data_ptr<scalar_t>();
    const scalar_t* cp = carry.data_ptr<scalar_t>();
    scalar_t* gy = grad_y.data_ptr<scalar_t>();
    at::parallel_for(0, blocks.count * N, grain(H), [&](int64_t w0, int64_t w1) {
      std::vector<scalar_t> scratch(3 * H);
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t i = w / N, n = w % N;
        gradient_block<scalar_t>(yp, gp, hp, cp + w * H, in + w * H, blocks.start(i), blocks.size(i), N, n, H,
                                 gy, scratch.data(), scratch.data() + H, scratch.data() + 2 * H);
      }
    });
  });
  return {grad_y, grad_h0};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("set_isa", &gru_isa::set, "the instruction set of the elementwise loops: -1 the CPU's best, 0 portable, 1 avx2, 2 avx512");
  m.def("isa", &gru_isa::level, "the instruction set the elementwise loops run now");
  m.def("release_cached_buffers", &gru_buffers::release_cached, "unmap the unused large buffers kept for reuse");
  m.def("forward", &scan_forward, "minGRU blocked scan, forward: (h, carry) (CPU)");
  m.def("backward", &scan_backward, "minGRU blocked scan, backward: (dL/dy, dL/dh0) (CPU)");
}
