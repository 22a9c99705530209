// Inference-only GRU forward on the CPU (gru_lib.inference), float32, no autograd.
//
// One direction of one layer, time-major, PyTorch's "reset-after" GRU with weights stacked r|z|n:
//   gi = x W_ih^T + b_ih + [b_hr, b_hz, 0]      all T steps in one at::addmm, before the loop
//   per step, for each block of 16 hidden units j (and each row b):
//     [a_r, a_z, a_n] = h W_hh[{r,z,n} rows j]^T  hand-written product, weights streamed from L2
//     r = sigmoid(gi_r + a_r)   z = sigmoid(gi_z + a_z)   n = tanh(gi_n + r * (a_n + b_hn))
//     h' = n + z * (h - n)                        fused with the product, written straight into out[t]
//
// Packed weight (gru_lib.inference.pack_weights): (NB, H, 3, 16), NB = ceil(H / 16); element [jb, k, g, i] =
// W_hh[g * H + jb * 16 + i, k] (zero for jb * 16 + i >= H). One block's product reads one contiguous run of
// H * 48 floats, so a thread's share of the weight streams from its core's L2 in address order.
//
// Threads: one persistent OpenMP region per call. "cols" mode splits the NB blocks across threads; every step
// needs the whole previous state, so the threads meet at one barrier per step. "rows" mode splits the batch
// rows (independent sequences) across threads: no synchronisation at all, each thread reads all of W_hh per
// step. gru_lib.inference chooses by rows per thread. The barrier is SpinBarrier (one shared counter, ~0.3 us
// per step on two cores here against ~0.4 us for OpenMP's), which yields the core after 20 us of spinning.
// gi and out[t] come from buffers.h's pool (no page faults on repeated calls).
//
// Vector code, one path per instruction set, chosen by the caller (gru_lib.isa: the best this CPU runs, or
// GRU_LIB_ISA) and checked against the CPU here (gru_isa::cpu, fast_math.h):
//   avx512    AVX-512 intrinsics in functions compiled with __attribute__((target)); exp follows
//             fast_math.h's exp_f (Cephes polynomial, relative error ~2e-7) and 1 / d is rcp14 plus one Newton
//             step;
//   avx2      gru_infer_vec.h compiled under #pragma GCC target("avx2,fma"): GCC vector extensions, 8 floats a
//             vector, the same arithmetic with a division;
//   portable  the same header compiled for the baseline (SSE2 on x86-64, NEON on aarch64): no intrinsics.
// The build keeps native.py's portable flags (no -march), so one build serves every CPU. Results match nn.GRU
// to float32 rounding on every path (tests: 1e-5; measured max |diff| ~3e-7).
//
// Variable lengths: row b is valid at step t iff t < lengths[b]; padded outputs are 0 and h_n is the state
// after each row's last valid step (h0 for length 0). A padded row's state is never read as a valid state
// again (padding only follows the valid steps), so its (discarded) product may use the zeros in out[t - 1].
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "buffers.h"
#include "fast_math.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define GRU_HAVE_X86_PATHS 1
#define AVX512_FN __attribute__((target("avx512f,fma")))
#define AVX512_INLINE __attribute__((target("avx512f,fma"), always_inline)) inline
#else
#define GRU_HAVE_X86_PATHS 0
#endif

namespace {

constexpr int64_t kBlock = 16;           // hidden units per block (one 512-bit vector of floats)
constexpr int64_t kPanel = 3 * kBlock;   // floats per (block, k): r | z | n
constexpr int64_t kMaxTile = 8;          // rows per register tile (3 * 8 accumulators)

struct Problem {
  int64_t T, B, H, NB;
  const float* gi;            // (T, B, 3H), b_ih and b_hr, b_hz folded in
  const float* wp;            // (NB, H, 3, 16)
  const float* bhn;           // (NB * 16): b_hn, zero padded
  const float* h0;            // (B, H)
  float* out;                 // (T, B, H)
  const int64_t* lengths;     // (B,) or nullptr
  int64_t prefetch;           // software prefetch distance in k (0: none)

  const float* prev(int64_t t) const { return t == 0 ? h0 : out + (t - 1) * B * H; }
  bool padded(int64_t t, int64_t b) const { return lengths != nullptr && t >= lengths[b]; }
};

// ---- AVX-512 path ----
#if GRU_HAVE_X86_PATHS

// The gate functions work on N vectors at once, one stage of the computation for all N before the next:
// each stage is a long dependency chain per vector (exp alone is ~15 dependent operations), so written
// vector by vector the chains of a tile's rows overlap poorly and the gates cost as much as a third of the
// product; staged, N independent operations are in flight at every step.

// exp: fast_math.h's exp_f (clamp to [-87, 88], Cody-Waite reduction, Cephes degree-6 polynomial).
template <int N>
AVX512_INLINE void exp_n(__m512* x) {
  __m512 k[N], p[N];
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i) {
    x[i] = _mm512_min_ps(_mm512_max_ps(x[i], _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    k[i] = _mm512_roundscale_ps(_mm512_mul_ps(x[i], _mm512_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i) {
    x[i] = _mm512_fnmadd_ps(k[i], _mm512_set1_ps(0.693359375f), x[i]);
    x[i] = _mm512_fmadd_ps(k[i], _mm512_set1_ps(2.12194440e-4f), x[i]);
  }
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i) p[i] = _mm512_fmadd_ps(_mm512_set1_ps(1.9875691500e-4f), x[i], _mm512_set1_ps(1.3981999507e-3f));
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i) p[i] = _mm512_fmadd_ps(p[i], x[i], _mm512_set1_ps(8.3334519073e-3f));
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i) p[i] = _mm512_fmadd_ps(p[i], x[i], _mm512_set1_ps(4.1665795894e-2f));
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i) p[i] = _mm512_fmadd_ps(p[i], x[i], _mm512_set1_ps(1.6666665459e-1f));
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i) p[i] = _mm512_fmadd_ps(p[i], x[i], _mm512_set1_ps(5.0000001201e-1f));
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i)
    p[i] = _mm512_fmadd_ps(p[i], _mm512_mul_ps(x[i], x[i]), _mm512_add_ps(x[i], _mm512_set1_ps(1.0f)));
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i) x[i] = _mm512_scalef_ps(p[i], k[i]);  // p * 2^k
}

// 1 / (1 + x) for x >= 0: the 14-bit estimate and one Newton step (relative error ~1e-7), instead of a
// division (512-bit divisions issue one per ~16 cycles: at B = 64 that is ~10% of a step).
template <int N>
AVX512_INLINE void recip_one_plus_n(__m512* x) {
  __m512 r[N];
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i) {
    x[i] = _mm512_add_ps(x[i], _mm512_set1_ps(1.0f));
    r[i] = _mm512_rcp14_ps(x[i]);
  }
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i) x[i] = _mm512_mul_ps(r[i], _mm512_fnmadd_ps(x[i], r[i], _mm512_set1_ps(2.0f)));
}

template <int N>
AVX512_INLINE void sigmoid_n(__m512* x) {  // 1 / (1 + exp(-x))
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i) x[i] = _mm512_sub_ps(_mm512_setzero_ps(), x[i]);
  exp_n<N>(x);
  recip_one_plus_n<N>(x);
}

template <int N>
AVX512_INLINE void tanh_n(__m512* x) {  // 1 - 2 / (exp(2x) + 1)
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i) x[i] = _mm512_add_ps(x[i], x[i]);
  exp_n<N>(x);
  recip_one_plus_n<N>(x);
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i) x[i] = _mm512_fnmadd_ps(_mm512_set1_ps(2.0f), x[i], _mm512_set1_ps(1.0f));
}

// Rows [b0, b0 + BT) of block jb at step t. KU independent accumulator sets over k (summed at the end) keep
// enough FMAs in flight when BT is small.
template <int BT, int KU>
AVX512_FN void tile_avx512(const Problem& P, int64_t t, int64_t jb, int64_t b0) {
  const int64_t H = P.H;
  const float* hp = P.prev(t) + b0 * H;
  const float* w = P.wp + jb * H * kPanel;
  __m512 acc[KU][BT][3];
  for (int u = 0; u < KU; ++u)
    for (int b = 0; b < BT; ++b)
      for (int g = 0; g < 3; ++g) acc[u][b][g] = _mm512_setzero_ps();
  // The gates read this tile's gi (computed for all steps before the loop, so in L3 or memory by now) and
  // write out[t]: fetch those lines now, while the product runs, not after it (stalls of ~100 ns each).
  const int64_t j0 = jb * kBlock;
  for (int b = 0; b < BT; ++b) {
    const float* g = P.gi + (t * P.B + b0 + b) * 3 * H + j0;
    for (int q = 0; q < 3; ++q) {
      _mm_prefetch(reinterpret_cast<const char*>(g + q * H), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(g + q * H + kBlock - 1), _MM_HINT_T0);  // H % 16 != 0
    }
    float* o = P.out + (t * P.B + b0 + b) * H + j0;
    __builtin_prefetch(o, 1, 3);
    __builtin_prefetch(o + kBlock - 1, 1, 3);
  }
  const int64_t pf = P.prefetch * kPanel;
  int64_t k = 0;
  for (; k + KU <= H; k += KU) {
    for (int u = 0; u < KU; ++u) {
      const float* wk = w + (k + u) * kPanel;
      if (pf != 0) {  // prefetching past the block's end is harmless (prefetches do not fault)
        _mm_prefetch(reinterpret_cast<const char*>(wk + pf), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(wk + pf + 16), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(wk + pf + 32), _MM_HINT_T0);
      }
      const __m512 w0 = _mm512_load_ps(wk), w1 = _mm512_load_ps(wk + 16), w2 = _mm512_load_ps(wk + 32);
      for (int b = 0; b < BT; ++b) {
        const __m512 hb = _mm512_set1_ps(hp[b * H + k + u]);
        acc[u][b][0] = _mm512_fmadd_ps(w0, hb, acc[u][b][0]);
        acc[u][b][1] = _mm512_fmadd_ps(w1, hb, acc[u][b][1]);
        acc[u][b][2] = _mm512_fmadd_ps(w2, hb, acc[u][b][2]);
      }
    }
  }
  for (; k < H; ++k) {
    const float* wk = w + k * kPanel;
    const __m512 w0 = _mm512_load_ps(wk), w1 = _mm512_load_ps(wk + 16), w2 = _mm512_load_ps(wk + 32);
    for (int b = 0; b < BT; ++b) {
      const __m512 hb = _mm512_set1_ps(hp[b * H + k]);
      acc[0][b][0] = _mm512_fmadd_ps(w0, hb, acc[0][b][0]);
      acc[0][b][1] = _mm512_fmadd_ps(w1, hb, acc[0][b][1]);
      acc[0][b][2] = _mm512_fmadd_ps(w2, hb, acc[0][b][2]);
    }
  }
  for (int u = 1; u < KU; ++u)
    for (int b = 0; b < BT; ++b)
      for (int g = 0; g < 3; ++g) acc[0][b][g] = _mm512_add_ps(acc[0][b][g], acc[u][b][g]);

  const __mmask16 m = static_cast<__mmask16>((1u << std::min<int64_t>(kBlock, H - j0)) - 1u);
  const __m512 bn = _mm512_loadu_ps(P.bhn + j0);
  const float* gi = P.gi + (t * P.B + b0) * 3 * H + j0;  // row b's gates at gi + b * 3H + {0, H, 2H}
  __m512 rz[2 * BT], n[BT];  // r for every row, then z for every row
#pragma GCC unroll 16
  for (int b = 0; b < BT; ++b) {
    rz[b] = _mm512_add_ps(acc[0][b][0], _mm512_maskz_loadu_ps(m, gi + b * 3 * H));
    rz[BT + b] = _mm512_add_ps(acc[0][b][1], _mm512_maskz_loadu_ps(m, gi + b * 3 * H + H));
  }
  sigmoid_n<2 * BT>(rz);
#pragma GCC unroll 16
  for (int b = 0; b < BT; ++b)
    n[b] = _mm512_fmadd_ps(rz[b], _mm512_add_ps(acc[0][b][2], bn), _mm512_maskz_loadu_ps(m, gi + b * 3 * H + 2 * H));
  tanh_n<BT>(n);
#pragma GCC unroll 16
  for (int b = 0; b < BT; ++b) {
    const int64_t row = b0 + b;
    const __m512 h = _mm512_maskz_loadu_ps(m, hp + b * H + j0);
    const __m512 next = P.padded(t, row) ? _mm512_setzero_ps() : _mm512_fmadd_ps(rz[BT + b], _mm512_sub_ps(h, n[b]), n[b]);
    _mm512_mask_storeu_ps(P.out + (t * P.B + row) * H + j0, m, next);
  }
}

void rows_block_avx512(const Problem& P, int64_t t, int64_t jb, int64_t b0, int64_t b1) {
  const int64_t rows = b1 - b0;
  const int64_t tiles = (rows + kMaxTile - 1) / kMaxTile;
  for (int64_t i = 0; i < tiles; ++i) {  // near-equal tiles: 9 rows -> 5 + 4, not 8 + 1
    const int64_t s = b0 + rows * i / tiles, e = b0 + rows * (i + 1) / tiles;
    switch (e - s) {
      case 1: tile_avx512<1, 4>(P, t, jb, s); break;
      case 2: tile_avx512<2, 2>(P, t, jb, s); break;
      case 3: tile_avx512<3, 2>(P, t, jb, s); break;
      case 4: tile_avx512<4, 1>(P, t, jb, s); break;
      case 5: tile_avx512<5, 1>(P, t, jb, s); break;
      case 6: tile_avx512<6, 1>(P, t, jb, s); break;
      case 7: tile_avx512<7, 1>(P, t, jb, s); break;
      default: tile_avx512<8, 1>(P, t, jb, s); break;
    }
  }
}

#endif  // GRU_HAVE_X86_PATHS

// ---- AVX2 and portable paths: one source (gru_infer_vec.h), compiled for each ----

using RowsBlockFn = void (*)(const Problem&, int64_t, int64_t, int64_t, int64_t);

}  // namespace

#if GRU_HAVE_X86_PATHS
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#pragma GCC optimize("fp-contract=fast")  // a * b + c as one FMA
#define GRU_VEC_NS gru_infer_avx2
#include "gru_infer_vec.h"
#undef GRU_VEC_NS
#pragma GCC pop_options
#endif

#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")
#define GRU_VEC_NS gru_infer_portable
#include "gru_infer_vec.h"
#undef GRU_VEC_NS
#pragma GCC pop_options

namespace {

constexpr const char* kIsaNames[] = {"portable", "avx2", "avx512"};  // gru_isa's numbers (fast_math.h)

RowsBlockFn rows_block_fn(int64_t isa) {
  TORCH_CHECK(isa >= gru_isa::kPortable && isa <= gru_isa::cpu(), "gru_infer: this CPU cannot run instruction set ",
              isa, " (it runs up to ", kIsaNames[gru_isa::cpu()], ")");
#if GRU_HAVE_X86_PATHS
  if (isa == gru_isa::kAvx512) return rows_block_avx512;
  if (isa == gru_isa::kAvx2) return gru_infer_avx2::rows_block;
#endif
  return gru_infer_portable::rows_block;
}

// ---- The time loop ----

// Part i of n of [0, total): near-equal contiguous ranges.
std::pair<int64_t, int64_t> share(int64_t total, int64_t n, int64_t i) {
  return {total * i / n, total * (i + 1) / n};
}

void thread_count_and_id(int64_t& n, int64_t& id) {
#if defined(_OPENMP)
  n = omp_get_num_threads();
  id = omp_get_thread_num();
#else
  n = 1;
  id = 0;
#endif
}

// A generation-counting spin barrier for the threads of one parallel region: each step's wait is a few
// cache-line transfers. A waiter that has spun for kSpin yields its core between polls, so on a busy machine
// a preempted partner gets the core back instead of being starved by the spinner.
class SpinBarrier {
 public:
  explicit SpinBarrier(int64_t n) : n_(n) {}
  void wait() {
    const int64_t gen = gen_.load(std::memory_order_relaxed);  // cannot move before this thread arrives
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      count_.store(0, std::memory_order_relaxed);
      gen_.fetch_add(1, std::memory_order_release);
      return;
    }
    const auto start = std::chrono::steady_clock::now();
    for (int64_t spins = 1; gen_.load(std::memory_order_acquire) == gen; ++spins) {
      if (spins % 64 != 0 || std::chrono::steady_clock::now() - start < kSpin) {
        pause();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  static void pause() {
#if GRU_HAVE_X86_PATHS
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  }
  static constexpr std::chrono::microseconds kSpin{20};
  const int64_t n_;
  alignas(64) std::atomic<int64_t> count_{0};
  alignas(64) std::atomic<int64_t> gen_{0};
};

// Every thread runs its rows through all steps; no synchronisation.
void scan_rows(const Problem& P, RowsBlockFn fn, int64_t threads) {
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    int64_t n, id;
    thread_count_and_id(n, id);
    const auto [b0, b1] = share(P.B, n, id);
    if (b1 > b0) {
      for (int64_t t = 0; t < P.T; ++t)
        for (int64_t jb = 0; jb < P.NB; ++jb) fn(P, t, jb, b0, b1);
    }
  }
}

// Every thread computes its blocks of hidden units for all rows, then waits for the others: one barrier
// per step (the next step reads the whole state).
// spin: SpinBarrier, else OpenMP's barrier.
void scan_cols(const Problem& P, RowsBlockFn fn, int64_t threads, bool spin) {
  SpinBarrier barrier(threads);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    int64_t n, id;
    thread_count_and_id(n, id);
    const bool spin_here = spin && n == threads;  // a smaller team (nested region): OpenMP's barrier
    const auto [j0, j1] = share(P.NB, n, id);
    for (int64_t t = 0; t < P.T; ++t) {
      for (int64_t jb = j0; jb < j1; ++jb) fn(P, t, jb, 0, P.B);
      if (spin_here) {
        barrier.wait();
      } else {
#pragma omp barrier
      }
    }
  }
}

// gi = x W_ih^T + b_ih + [b_hr, b_hz, 0], (T * B, 3H).
// Into a pooled buffer (buffers.h): a fresh one of T * B * 3H floats would pay a page fault per 4 KiB.
at::Tensor input_projection(const at::Tensor& x2d, const at::Tensor& w_ih, const c10::optional<at::Tensor>& b_ih,
                            const c10::optional<at::Tensor>& b_hh, int64_t H) {
  const bool has_ih = b_ih.has_value() && b_ih->defined();
  const bool has_hh = b_hh.has_value() && b_hh->defined();
  at::Tensor gi = gru_buffers::empty_large({x2d.size(0), 3 * H}, x2d.options());
  if (!has_ih && !has_hh) return at::mm_out(gi, x2d, w_ih.t());
  at::Tensor bias = has_ih ? b_ih->clone() : at::zeros({3 * H}, x2d.options());
  if (has_hh) bias.narrow(0, 0, 2 * H).add_(b_hh->narrow(0, 0, 2 * H));
  return at::addmm_out(gi, bias, x2d, w_ih.t());
}

// h_n: the state after each row's last valid step (h0 for a row of length 0).
at::Tensor final_state(const at::Tensor& out, const at::Tensor& h0, const int64_t* lengths) {
  const int64_t T = out.size(0), B = out.size(1), H = out.size(2);
  if (lengths == nullptr) return T > 0 ? out[T - 1].clone() : h0.clone();
  at::Tensor h_n = at::empty_like(h0);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t L = std::min(lengths[b], T);
    const float* src = L > 0 ? out.data_ptr<float>() + ((L - 1) * B + b) * H : h0.data_ptr<float>() + b * H;
    std::memcpy(h_n.data_ptr<float>() + b * H, src, sizeof(float) * H);
  }
  return h_n;
}

// mode: "rows" or "cols" (see the header comment; one thread always runs "rows"); threads <= 0:
// at::get_num_threads(); isa: the path (gru_isa's number; refused above gru_isa::cpu()); options: {prefetch distance in k (0: none), spin barrier (1) or OpenMP's (0)}.
std::vector<at::Tensor> gru_infer_forward(const at::Tensor& x_, const at::Tensor& h0_, const at::Tensor& w_ih,
                                          const at::Tensor& packed, const c10::optional<at::Tensor>& b_ih,
                                          const c10::optional<at::Tensor>& b_hh,
                                          const c10::optional<at::Tensor>& lengths_, const std::string& mode,
                                          int64_t threads, int64_t isa, std::vector<int64_t> options) {
  TORCH_CHECK(x_.device().is_cpu() && x_.scalar_type() == at::kFloat, "gru_infer: x must be a float32 CPU tensor");
  TORCH_CHECK(mode == "rows" || mode == "cols", "gru_infer: mode must be 'rows' or 'cols', got ", mode);
  const RowsBlockFn fn = rows_block_fn(isa);
  const int64_t T = x_.size(0), B = x_.size(1), D = x_.size(2), H = h0_.size(1);
  const int64_t NB = (H + kBlock - 1) / kBlock;
  TORCH_CHECK(packed.dim() == 4 && packed.size(0) == NB && packed.size(1) == H && packed.size(2) == 3 &&
                  packed.size(3) == kBlock && packed.is_contiguous(),
              "gru_infer: packed weight must be pack_weights(w_hh) of shape (", NB, ", ", H, ", 3, 16)");
  const at::Tensor h0 = h0_.contiguous();
  const at::Tensor lengths = lengths_.has_value() ? lengths_->contiguous() : at::Tensor();
  const int64_t* lens = lengths.defined() && lengths.numel() > 0 ? lengths.data_ptr<int64_t>() : nullptr;
  at::Tensor bhn = at::zeros({NB * kBlock}, x_.options());
  if (b_hh.has_value() && b_hh->defined()) bhn.narrow(0, 0, H).copy_(b_hh->narrow(0, 2 * H, H));

  options.resize(2, 0);
  at::NoGradGuard no_grad;  // inference only: the products below never record autograd history
  at::Tensor out = gru_buffers::empty_large({T, B, H}, x_.options());
  if (T > 0 && B > 0) {
    const at::Tensor gi = input_projection(x_.reshape({T * B, D}), w_ih, b_ih, b_hh, H).contiguous();
    const Problem P{T, B, H, NB, gi.data_ptr<float>(), packed.data_ptr<float>(), bhn.data_ptr<float>(),
                    h0.data_ptr<float>(), out.data_ptr<float>(), lens, options[0]};
    const int64_t wanted = threads > 0 ? threads : at::get_num_threads();
    const int64_t col_threads = std::max<int64_t>(1, std::min(wanted, NB));
    if (mode == "rows" || col_threads == 1) {
      scan_rows(P, fn, std::max<int64_t>(1, std::min(wanted, B)));
    } else {
      scan_cols(P, fn, col_threads, options[1] != 0);
    }
  }
  return {out, final_state(out, h0, lens)};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &gru_infer_forward, "inference GRU scan of one direction, float32 CPU");
  m.def("release_cached_buffers", &gru_buffers::release_cached, "unmap the unused large buffers kept for reuse");
  m.def("cpu_isa", &gru_isa::cpu, "the best instruction set this CPU runs: 0 portable, 1 avx2, 2 avx512");
}
