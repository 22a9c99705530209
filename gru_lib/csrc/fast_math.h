// Elementwise math for the C++ kernels of chapters 6 and 7 (fast_gru.cpp, mingru_scan.cpp).
//
// exp and log for float without libm calls, so that the loops that use them vectorise; GRU_CLONES compiles a
// function for AVX-512, AVX2 and baseline x86-64 and picks one at run time (target_clones), so the build needs
// no -march flag and one build serves every x86-64 machine. The double overloads call libm (tests in float64).
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GRU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define GRU_CLONES
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
