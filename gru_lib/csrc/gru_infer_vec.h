// The inference kernel's step (gru_infer.cpp) in GCC vector extensions, 8 floats per vector, for every CPU
// without AVX-512. gru_infer.cpp includes this file twice: under `#pragma GCC target("avx2,fma")` as the AVX2
// path, and with the compiler's baseline (SSE2 on x86-64, NEON on aarch64) as the portable path. The same
// source then gives both, with no intrinsics: the compiler maps each 8-float vector to one AVX2 register, or
// to two SSE/NEON registers. No include guard: it is meant to be included once per instruction set, each time
// with GRU_VEC_NS naming the namespace of that copy. It needs Problem, kBlock and kPanel from gru_infer.cpp.
//
// A block of 16 hidden units (the packed layout's, gru_lib.inference.pack_weights) is two halves of 8. A tile
// is BT rows x HV halves: BT * 3 * HV accumulators (12 at most, plus the weights and one broadcast state
// value: 16 AVX2 registers). Small batches take both halves at once with KU independent accumulator sets
// over k, so enough FMAs are in flight; larger ones run half by half, tiles of up to 4 rows, so a half of the
// block's weights (H * 24 floats: 24 KiB at H = 256) stays in L1 while every tile of rows reads it.
// exp is fast_math.h's exp_f (2^k built from k's bits), 1 / d a division: results within float32 rounding
// of nn.GRU (tests: 1e-5).

namespace GRU_VEC_NS {

typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));
constexpr int kLanes = 8;

// Every lane s: one broadcast (vf{} + s would add 0.0 first, an extra instruction: -0.0 + 0.0 is +0.0).
static inline vf splat(float s) { return vf{s, s, s, s, s, s, s, s}; }

// n (0..8) floats from p; the rest 0. A whole vector is one unaligned load; a tail, element by element.
static inline vf load(const float* p, int64_t n) {
  vf v{};
  if (n == kLanes) {
    std::memcpy(&v, p, sizeof(vf));
  } else {
    for (int64_t i = 0; i < n; ++i) v[i] = p[i];
  }
  return v;
}

static inline void store(float* p, vf v, int64_t n) {
  if (n == kLanes) {
    std::memcpy(p, &v, sizeof(vf));
  } else {
    for (int64_t i = 0; i < n; ++i) p[i] = v[i];
  }
}

// exp on N vectors, stage by stage (independent chains overlap): clamp to [-87, 88], k = round(x / ln 2) by
// the 1.5 * 2^23 trick, Cody-Waite reduction, Cephes degree-6 polynomial, times 2^k from k's exponent bits.
template <int N>
static inline void exp_n(vf* x) {
  const vf lo = splat(-87.0f), hi = splat(88.0f), magic = splat(12582912.0f);
  vf k[N];
#pragma GCC unroll 64
  for (int i = 0; i < N; ++i) {
    x[i] = x[i] < lo ? lo : x[i];
    x[i] = x[i] > hi ? hi : x[i];
    k[i] = (x[i] * 1.44269504088896341f + magic) - magic;
    x[i] = x[i] - k[i] * 0.693359375f + k[i] * 2.12194440e-4f;
  }
#pragma GCC unroll 64
  for (int i = 0; i < N; ++i) {
    vf p = x[i] * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * x[i] + 8.3334519073e-3f;
    p = p * x[i] + 4.1665795894e-2f;
    p = p * x[i] + 1.6666665459e-1f;
    p = p * x[i] + 5.0000001201e-1f;
    p = p * (x[i] * x[i]) + (x[i] + 1.0f);
    const vi bits = (__builtin_convertvector(k[i], vi) + 127) << 23;
    x[i] = p * (vf)bits;  // a vector cast keeps the bits
  }
}

template <int N>
static inline void sigmoid_n(vf* x) {  // 1 / (1 + exp(-x))
#pragma GCC unroll 64
  for (int i = 0; i < N; ++i) x[i] = -x[i];
  exp_n<N>(x);
#pragma GCC unroll 64
  for (int i = 0; i < N; ++i) x[i] = 1.0f / (x[i] + 1.0f);
}

template <int N>
static inline void tanh_n(vf* x) {  // 1 - 2 / (exp(2x) + 1)
#pragma GCC unroll 64
  for (int i = 0; i < N; ++i) x[i] = x[i] + x[i];
  exp_n<N>(x);
#pragma GCC unroll 64
  for (int i = 0; i < N; ++i) x[i] = 1.0f - 2.0f / (x[i] + 1.0f);
}

// acc += h[:, k] * W_hh[the tile's units, k] for the tile's BT rows: the weights of step k (wk) as 3 * HV
// vectors, each row's state value broadcast. Every loop has a compile-time trip count and is unrolled, so the
// accumulators stay in registers.
template <int BT, int HV>
__attribute__((always_inline)) static inline void accumulate(vf (&acc)[BT][3][HV], const float* wk,
                                                             const float* hp, int64_t H, int64_t k) {
  vf wv[3][HV];
#pragma GCC unroll 64
  for (int g = 0; g < 3; ++g)
#pragma GCC unroll 64
    for (int v = 0; v < HV; ++v) std::memcpy(&wv[g][v], wk + g * kBlock + v * kLanes, sizeof(vf));
#pragma GCC unroll 64
  for (int b = 0; b < BT; ++b) {
    const vf hb = splat(hp[b * H + k]);
#pragma GCC unroll 64
    for (int g = 0; g < 3; ++g)
#pragma GCC unroll 64
      for (int v = 0; v < HV; ++v) acc[b][g][v] += wv[g][v] * hb;
  }
}

// Rows [b0, b0 + BT) of halves [hv0, hv0 + HV) of block jb at step t.
template <int BT, int HV, int KU>
static void tile(const Problem& P, int64_t t, int64_t jb, int hv0, int64_t b0) {
  const int64_t H = P.H;
  const float* hp = P.prev(t) + b0 * H;
  const float* w = P.wp + jb * H * kPanel + hv0 * kLanes;  // gate g, half v of step k: w + k * kPanel + g * 16 + v * 8
  vf acc[KU][BT][3][HV] = {};  // KU independent sets over k, summed below
  int64_t k = 0;
  for (; k + KU <= H; k += KU)
#pragma GCC unroll 64
    for (int u = 0; u < KU; ++u) accumulate<BT, HV>(acc[u], w + (k + u) * kPanel, hp, H, k + u);
  for (; k < H; ++k) accumulate<BT, HV>(acc[0], w + k * kPanel, hp, H, k);
#pragma GCC unroll 64
  for (int u = 1; u < KU; ++u)
#pragma GCC unroll 64
    for (int b = 0; b < BT; ++b)
#pragma GCC unroll 64
      for (int g = 0; g < 3; ++g)
#pragma GCC unroll 64
        for (int v = 0; v < HV; ++v) acc[0][b][g][v] += acc[u][b][g][v];

  const int64_t j0 = jb * kBlock + hv0 * kLanes;
  int64_t width[HV];  // valid units of each half (0 for a half made of padding only)
  for (int v = 0; v < HV; ++v) width[v] = std::clamp<int64_t>(H - j0 - v * kLanes, 0, kLanes);
  vf rz[2 * BT * HV], n[BT * HV];  // r of every (row, half), then z of every (row, half)
  for (int b = 0; b < BT; ++b) {
    const float* gi = P.gi + (t * P.B + b0 + b) * 3 * H + j0;
    for (int v = 0; v < HV; ++v) {
      rz[b * HV + v] = acc[0][b][0][v] + load(gi + v * kLanes, width[v]);
      rz[(BT + b) * HV + v] = acc[0][b][1][v] + load(gi + H + v * kLanes, width[v]);
    }
  }
  sigmoid_n<2 * BT * HV>(rz);
  for (int b = 0; b < BT; ++b) {
    const float* gi = P.gi + (t * P.B + b0 + b) * 3 * H + j0;
    for (int v = 0; v < HV; ++v)
      n[b * HV + v] = load(gi + 2 * H + v * kLanes, width[v]) +
                      rz[b * HV + v] * (acc[0][b][2][v] + load(P.bhn + j0 + v * kLanes, width[v]));
  }
  tanh_n<BT * HV>(n);
  for (int b = 0; b < BT; ++b) {
    const int64_t row = b0 + b;
    for (int v = 0; v < HV; ++v) {
      if (width[v] == 0) continue;
      const vf h = load(hp + b * H + j0 + v * kLanes, width[v]);
      const vf nb = n[b * HV + v];
      const vf next = P.padded(t, row) ? vf{} : nb + rz[(BT + b) * HV + v] * (h - nb);
      store(P.out + (t * P.B + row) * H + j0 + v * kLanes, next, width[v]);
    }
  }
}

// Rows [b0, b1) of block jb at step t (gru_infer.cpp's RowsBlockFn).
static void rows_block(const Problem& P, int64_t t, int64_t jb, int64_t b0, int64_t b1) {
  const int64_t rows = b1 - b0;
  if (rows == 1) return tile<1, 2, 2>(P, t, jb, 0, b0);
  if (rows == 2) return tile<2, 2, 1>(P, t, jb, 0, b0);
  constexpr int64_t kMaxRows = 4;
  const int64_t tiles = (rows + kMaxRows - 1) / kMaxRows;
  for (int hv = 0; hv < 2; ++hv) {
    if (jb * kBlock + hv * kLanes >= P.H) break;  // the block's second half is padding only
    for (int64_t i = 0; i < tiles; ++i) {  // near-equal tiles: 5 rows -> 3 + 2, not 4 + 1
      const int64_t s = b0 + rows * i / tiles, e = b0 + rows * (i + 1) / tiles;
      switch (e - s) {
        case 1: tile<1, 1, 4>(P, t, jb, hv, s); break;
        case 2: tile<2, 1, 2>(P, t, jb, hv, s); break;
        case 3: tile<3, 1, 1>(P, t, jb, hv, s); break;
        default: tile<4, 1, 1>(P, t, jb, hv, s); break;
      }
    }
  }
}

}  // namespace GRU_VEC_NS
