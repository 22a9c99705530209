// Elementwise math for the C++ kernels of chapters 6 and 7 (fast_gru.cpp, mingru_scan.cpp), and the choice of
// instruction set they share with gru_infer.cpp.
//
// exp and log for float without libm calls, so that the loops that use them vectorise. GRU_MULTIVERSION(name)
// compiles a loop written once as name_body<T> for AVX-512, for AVX2 + FMA and for the compiler's baseline
// (SSE2 on x86-64, NEON on ARM), and defines name<T>(...) to call the one gru_isa::level() names: the best this
// CPU runs, or the one gru_lib.isa asks for through each module's set_isa binding (GRU_LIB_ISA). So the build
// needs no -march flag, one build serves every machine, and a machine with AVX-512 can run the other paths too.
// The double overloads call libm (tests in float64).
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GRU_X86_MULTIVERSION 1
#else
#define GRU_X86_MULTIVERSION 0
#endif

namespace gru_isa {

// As gru_lib.isa numbers them.
enum : int64_t { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

// The best instruction set this CPU runs.
inline int64_t cpu() {
#if GRU_X86_MULTIVERSION
  static const int64_t best = !__builtin_cpu_supports("fma")        ? kPortable
                              : __builtin_cpu_supports("avx512f")  ? kAvx512
                              : __builtin_cpu_supports("avx2")     ? kAvx2
                                                                   : kPortable;
  return best;
#else
  return kPortable;
#endif
}

inline std::atomic<int64_t>& requested() {  // -1: the CPU's best
  static std::atomic<int64_t> level{-1};
  return level;
}

inline int64_t level() {
  const int64_t r = requested().load(std::memory_order_relaxed);
  return r < 0 ? cpu() : r;
}

// The module's set_isa binding (pybind11 turns std::invalid_argument into ValueError).
inline void set(int64_t level) {
  if (level < -1 || level > cpu())
    throw std::invalid_argument("set_isa: this CPU cannot run instruction set " + std::to_string(level) +
                                " (it runs up to " + std::to_string(cpu()) + ")");
  requested().store(level, std::memory_order_relaxed);
}

}  // namespace gru_isa

#define GRU_BODY __attribute__((always_inline)) inline

#if GRU_X86_MULTIVERSION
#define GRU_MULTIVERSION(name)                                                                              \
  template <typename T, typename... A>                                                                      \
  __attribute__((target("avx512f,fma"))) void name##_avx512(A... a) { name##_body<T>(a...); }              \
  template <typename T, typename... A>                                                                      \
  __attribute__((target("avx2,fma"))) void name##_avx2(A... a) { name##_body<T>(a...); }                    \
  template <typename T, typename... A>                                                                      \
  void name##_baseline(A... a) { name##_body<T>(a...); }                                                    \
  template <typename T, typename... A>                                                                      \
  void name(A... a) {                                                                                       \
    switch (gru_isa::level()) {                                                                             \
      case gru_isa::kAvx512: return name##_avx512<T>(a...);                                                 \
      case gru_isa::kAvx2: return name##_avx2<T>(a...);                                                     \
      default: return name##_baseline<T>(a...);                                                             \
    }                                                                                                       \
  }
#else
#define GRU_MULTIVERSION(name)    \
  template <typename T, typename... A> \
  void name(A... a) { name##_body<T>(a...); }
#endif

namespace gru_math {

// exp: Cody-Waite range reduction and the Cephes degree-6 polynomial (relative error about 2e-7 over the
// clamped range [-87, 88]).
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

// log for normal positive floats (callers pass x >= 0.5): x = m 2^e with m in [sqrt(1/2), sqrt(2)), then the
// Cephes polynomial for log(m) (relative error about 1e-7).
static inline float log_f(float x) {
  const int32_t bits = std::bit_cast<int32_t>(x);
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126);
  float m = std::bit_cast<float>((bits & 0x007fffff) | 0x3f000000);  // in [0.5, 1)
  const bool small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return m + y + 0.693359375f * e;
}
static inline double log_f(double x) { return std::log(x); }

// log(1 + exp(-|x|)) in (0, log 2]: the correction term of logsigmoid and logaddexp.
template <typename T>
static inline T log1p_exp_neg_abs(T x) {
  return log_f(T(1) + exp_f(-std::abs(x)));
}
static inline double log1p_exp_neg_abs(double x) { return std::log1p(std::exp(-std::abs(x))); }

template <typename T>
static inline T sigmoid_f(T x) {
  return T(1) / (T(1) + exp_f(-x));
}

// log sigmoid(x) = min(x, 0) - log(1 + exp(-|x|)): finite for every finite x.
template <typename T>
static inline T log_sigmoid_f(T x) {
  return std::min(x, T(0)) - log1p_exp_neg_abs(x);
}

// log(exp(u) + exp(v)) = max(u, v) + log(1 + exp(-|u - v|)).
template <typename T>
static inline T log_add_exp_f(T u, T v) {
  return std::max(u, v) + log1p_exp_neg_abs(u - v);
}

template <typename T>
static inline T tanh_f(T x) {
  return T(1) - T(2) / (exp_f(T(2) * x) + T(1));
}
static inline double tanh_f(double x) { return std::tanh(x); }

}  // namespace gru_math
