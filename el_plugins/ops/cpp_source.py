"""The C++ source of the ``cpp`` backend's row computation (:mod:`.cpp_rows` compiles it at first use and caches
the library; kept here as a string so that it travels with the Python package).

One row at a time, the row in cache, the algorithm of the Triton kernel (:mod:`.triton_rows`), four passes over
the row of which only the first reads memory and only the last writes the gradient there:

    pass 1  m = max_k x_k and sum_k x_k                              (reads the logits)
    pass 2  e_k = exp(x_k - m) into the row's gradient buffer, S' = sum_{k != y} e_k
            S = S' + e^(x_y - m), lse = m + log S; 1 - p_y = S' / S (precise near p_y = 1),
            log p_y = log1p(-(1 - p_y)) where p_y > 1/2, else x_y - lse
    pass 3  (a dense bonus) sum_k b(p_k), sum_{k != y} p_k b'(p_k), p_k = e_k / S, from p where p <= LARGE_P
            (the log bonus: log prod_k (1 - p_k), one log per block); the few entries above it from their
            precise log p (1 - p from the other classes' sum where p > 1/2), in double
    pass 4  dL/dz_k = scale ((1 - G) p_k - q_o + q'_o p_k b'(p_k)), the target's entry written without the
            cancellation of g_y against p_y G, as the other backends do

With log-probability input x is log p itself: no pass 1 maximum, e_k = p_k = exp(x_k), and dL/dx_k = scale
(-q_o + q'_o p_k b'(p_k)). The formulas are those of el_plugins.core (the bonus family, its slopes, the target
weights); this file holds its own transcription of them, tested against them (tests/test_cpu_kernel.py).

float32, float16 and bfloat16 inputs compute in float32 (sums of blocks of float32 lanes carried in double),
float64 in float64 (the elementwise functions from libm); the scalar terms of a row (its target, its large
entries, the row sums) are in double. Ignored rows are never read: their values and gradient are zero. The
gradient buffer may be the input itself (float32/float64 logits only): x is last read before it is written.
Rows go to threads in blocks taken from a shared counter, so that a thread descheduled on a busy machine does
not hold the others up.
"""

SOURCE = r"""
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <thread>
#include <vector>

namespace {

// ------------------------------------------------------------------ vectors (GCC/Clang vector extensions)
template <typename T> struct Vec;
template <> struct Vec<float> {
  typedef float v __attribute__((vector_size(64)));
  typedef int32_t i __attribute__((vector_size(64)));
  typedef int32_t index;
  static constexpr int N = 16;
};
template <> struct Vec<double> {
  typedef double v __attribute__((vector_size(64)));
  typedef int64_t i __attribute__((vector_size(64)));
  typedef int64_t index;
  static constexpr int N = 8;
};

struct Half { uint16_t bits; };      // float16
struct BFloat16 { uint16_t bits; };  // bfloat16

inline float to_float(Half h) { _Float16 f; std::memcpy(&f, &h.bits, 2); return (float)f; }
inline float to_float(BFloat16 b) { uint32_t u = (uint32_t)b.bits << 16; float f; std::memcpy(&f, &u, 4); return f; }
inline float to_float(float f) { return f; }
inline double to_float(double d) { return d; }

template <typename T> inline typename Vec<T>::v splat(T a) {
  typename Vec<T>::v r;
  for (int i = 0; i < Vec<T>::N; ++i) r[i] = a;
  return r;
}

template <typename T> inline typename Vec<T>::v iota() {
  typename Vec<T>::v r;
  for (int i = 0; i < Vec<T>::N; ++i) r[i] = (T)i;
  return r;
}

template <typename T> inline typename Vec<T>::i lane_index() {
  typename Vec<T>::i r;
  for (int i = 0; i < Vec<T>::N; ++i) r[i] = i;
  return r;
}

// N values of x from k on as the compute type T (count < N: the rest is ``pad``)
template <typename T, typename In> struct Load {
  static inline typename Vec<T>::v full(const In* x) {
    typename Vec<T>::v r;
    std::memcpy(&r, x, sizeof r);
    return r;
  }
};
// float16 <-> float32 by integer operations on the lanes (GCC 12 converts vectors of _Float16 lane by lane)
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));

inline Vec<float>::v half_to_float(u16x16 h16) {
  u32x16 h = __builtin_convertvector(h16, u32x16);
  u32x16 sign = (h & 0x8000u) << 16, em = h & 0x7fffu;
  u32x16 normal = (em << 13) + 0x38000000u;                          // the exponent's bias 15 -> 127
  normal = em >= 0x7c00u ? normal + 0x38000000u : normal;            // inf, NaN: exponent 255
  Vec<float>::v sub = __builtin_convertvector(em, Vec<float>::v) * 5.9604644775390625e-08f;  // em * 2^-24
  u32x16 sub_bits;
  std::memcpy(&sub_bits, &sub, sizeof sub_bits);
  u32x16 bits = (em < 0x400u ? sub_bits : normal) | sign;
  Vec<float>::v r;
  std::memcpy(&r, &bits, sizeof r);
  return r;
}

inline u16x16 float_to_half(Vec<float>::v f) {  // rounded to nearest even; NaN -> 0x7e00 (sign kept), as torch
  u32x16 u;
  std::memcpy(&u, &f, sizeof u);
  u32x16 sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  u32x16 normal = (a - 0x38000000u + 0xfffu + ((a >> 13) & 1u)) >> 13;
  Vec<float>::v small;  // below 2^-14: |f| + 1/2 rounds |f| to a multiple of 2^-24, the subnormal's unit
  std::memcpy(&small, &a, sizeof small);
  small += 0.5f;
  u32x16 sub;
  std::memcpy(&sub, &small, sizeof sub);
  sub -= 0x3f000000u;
  u32x16 r = a >= 0x38800000u ? normal : sub;
  r = a >= 0x47800000u ? (a > 0x7f800000u ? (u32x16){} + 0x7e00u : (u32x16){} + 0x7c00u) : r;
  return __builtin_convertvector(r | sign, u16x16);
}

template <> struct Load<float, Half> {
  static inline Vec<float>::v full(const Half* x) {
    u16x16 a;
    std::memcpy(&a, x, sizeof a);
    return half_to_float(a);
  }
};
template <> struct Load<float, BFloat16> {
  static inline Vec<float>::v full(const BFloat16* x) {
    typedef uint16_t h __attribute__((vector_size(32)));
    h a;
    std::memcpy(&a, x, sizeof a);
    Vec<float>::i wide = __builtin_convertvector(a, Vec<float>::i) << 16;
    Vec<float>::v r;
    std::memcpy(&r, &wide, sizeof r);
    return r;
  }
};

template <typename T, typename In> inline typename Vec<T>::v load(const In* x, int64_t count, T pad) {
  if (count >= Vec<T>::N) return Load<T, In>::full(x);
  typename Vec<T>::v r = splat<T>(pad);
  for (int64_t i = 0; i < count; ++i) r[i] = (T)to_float(x[i]);
  return r;
}

template <typename T> inline void store(T* out, typename Vec<T>::v a, int64_t count) {
  if (count >= Vec<T>::N) { std::memcpy(out, &a, sizeof a); return; }
  for (int64_t i = 0; i < count; ++i) out[i] = a[i];
}

template <typename In> struct Store {  // float32/float64: as they are
  static inline void full(In* out, typename Vec<In>::v a) { std::memcpy(out, &a, sizeof a); }
  static inline In one(double a) { return (In)a; }
};
template <> struct Store<Half> {  // rounded to nearest even, as torch rounds
  static inline void full(Half* out, Vec<float>::v a) {
    u16x16 r = float_to_half(a);
    std::memcpy(out, &r, sizeof r);
  }
  static inline Half one(double a) { _Float16 f = (_Float16)(float)a; Half h; std::memcpy(&h.bits, &f, 2); return h; }
};
template <> struct Store<BFloat16> {  // rounded to nearest even (NaN: 0x7fc0), as torch rounds
  typedef uint32_t u __attribute__((vector_size(64)));
  static inline void full(BFloat16* out, Vec<float>::v a) {
    u bits;
    std::memcpy(&bits, &a, sizeof bits);
    u rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    rounded = (bits & 0x7fffffffu) > 0x7f800000u ? (u){} + 0x7fc0u : rounded;
    typedef uint16_t h __attribute__((vector_size(32)));
    h r = __builtin_convertvector(rounded, h);
    std::memcpy(out, &r, sizeof r);
  }
  static inline BFloat16 one(double a) {
    float f = (float)a;
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    BFloat16 b;
    b.bits = (bits & 0x7fffffffu) > 0x7f800000u ? 0x7fc0 : (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
    return b;
  }
};

template <typename In, typename T> inline void store_as(In* out, typename Vec<T>::v a, int64_t count) {
  if (count >= Vec<T>::N) { Store<In>::full(out, a); return; }
  for (int64_t i = 0; i < count; ++i) out[i] = Store<In>::one((double)a[i]);
}

template <typename T> inline double hsum(typename Vec<T>::v a) {
  double s = 0.0;
  for (int i = 0; i < Vec<T>::N; ++i) s += (double)a[i];
  return s;
}

template <typename T> inline double hprod(typename Vec<T>::v a) {
  double s = 1.0;
  for (int i = 0; i < Vec<T>::N; ++i) s *= (double)a[i];
  return s;
}

template <typename T> inline T hmax(typename Vec<T>::v a) {
  T m = a[0];
  for (int i = 1; i < Vec<T>::N; ++i) m = (a[i] > m || a[i] != a[i]) ? a[i] : m;  // NaN wins
  return m;
}

// ------------------------------------------------------------------ elementwise functions
// float32: exp by range reduction to |r| <= ln2 / 2 and its Taylor series to r^7 (truncation below 1e-8,
// relative); log by m in [sqrt(1/2), sqrt(2)) and 2 atanh(s), s = (m - 1) / (m + 1), to s^9 (below 3e-10);
// sin on [0, pi / 2] by its Taylor series to x^13 (below 1e-9). float64: libm, lane by lane.
template <typename T> struct Math;

template <> struct Math<float> {
  typedef Vec<float>::v v;
  typedef Vec<float>::i vi;
  static inline v exp(v x) {  // 0 below -87.3 (and for -inf), inf above 88.7, NaN for NaN
    v xc = x < -88.0f ? splat<float>(-88.0f) : x;
    xc = xc > 88.0f ? splat<float>(88.0f) : xc;
    v n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
    v r = xc - n * 0.693359375f;
    r = r - n * -2.12194440054690583e-4f;  // ln 2 - 0.693359375
    v p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720
                  + r * (1.0f / 5040)))))));
    vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
    v two_n;
    std::memcpy(&two_n, &bits, sizeof two_n);
    v y = p * two_n;
    y = x < -87.33f ? splat<float>(0.0f) : y;
    return x > 88.72f ? splat<float>(__builtin_inff()) : y;
  }
  static inline v log(v x) {  // x > 0; -inf at 0; values below FLT_MIN taken as FLT_MIN
    v xc = x < 1.17549435e-38f ? splat<float>(1.17549435e-38f) : x;
    vi bits;
    std::memcpy(&bits, &xc, sizeof bits);
    vi e = ((bits >> 23) & 0xff) - 127;
    vi mant = (bits & 0x007fffff) | 0x3f800000;
    v m;
    std::memcpy(&m, &mant, sizeof m);
    vi big = m > 1.41421356237f;  // -1 where m is moved to [sqrt(1/2), 1)
    m = big ? m * 0.5f : m;
    e = e - big;
    v s = (m - 1.0f) / (m + 1.0f);
    v s2 = s * s;
    v p = 2.0f * s * (1.0f + s2 * (1.0f / 3 + s2 * (1.0f / 5 + s2 * (1.0f / 7 + s2 * (1.0f / 9)))));
    v ef = __builtin_convertvector(e, v);
    v y = ef * 0.693359375f + (p + ef * -2.12194440054690583e-4f);
    return x == 0.0f ? splat<float>(-__builtin_inff()) : y;
  }
  static inline v sin(v x) {  // 0 <= x <= pi / 2
    v x2 = x * x;
    return x * (1.0f - x2 / 6.0f * (1.0f - x2 / 20.0f * (1.0f - x2 / 42.0f * (1.0f - x2 / 72.0f * (1.0f - x2 / 110.0f
                * (1.0f - x2 / 156.0f))))));
  }
};

template <> struct Math<double> {
  typedef Vec<double>::v v;
  static inline v exp(v x) { for (int i = 0; i < 8; ++i) x[i] = std::exp(x[i]); return x; }
  static inline v log(v x) { for (int i = 0; i < 8; ++i) x[i] = std::log(x[i]); return x; }
  static inline v sin(v x) { for (int i = 0; i < 8; ++i) x[i] = std::sin(x[i]); return x; }
};

// ------------------------------------------------------------------ settings
enum { LOG = 0, POWER = 1, COSINE = 2 };
constexpr int64_t BLOCK = 1024;  // columns per block of float lanes before their sums are carried in double
constexpr double PI = 3.14159265358979323846;

struct Params {
  double nll_target, nll_other, bonus_target, bonus_other;
  double gamma, start, value_at_start, log_end, log_one_minus_log_end, large_p, clamp, small_p, scale;
  int64_t n_rows, n_cols, x_stride, grad_stride, kind, has_start, tail, log_probs, compute_grad, dense,
          int_gamma, in_dtype, n_threads, rows_per_task, grad_over_input, mode, columns;
};

enum { VALUES_AND_GRADIENT = 0, VALUES_AND_STATE = 1, GRADIENT_FROM_STATE = 2, VALUES_AND_INPUT_DTYPE_GRADIENT = 3 };
constexpr int STATE = 8;  // doubles per row kept between the two calls of the deferred gradient

// b(p) and p b'(p) from log p, in double (el_plugins.core.bonus_from_log_prob and bonus_slope_times_p)
inline void bonus_and_slope(const Params& P, double log_p, double& b, double& s) {
  double p = std::exp(log_p);
  double one_minus_p = -std::expm1(log_p);
  if (P.kind == LOG) {
    double c = std::max(one_minus_p, P.clamp);
    b = std::log(c);
    s = one_minus_p >= P.clamp ? -p / c : 0.0;
  } else if (P.kind == POWER) {
    double pg = std::exp(P.gamma * log_p);
    b = -pg;
    s = -P.gamma * pg;
  } else {
    bool small = p <= P.small_p;
    double a = small ? p : one_minus_p;
    double half = std::sin(a * (PI / 2));
    b = small ? -2.0 * half * half : 2.0 * half * half - 2.0;
    s = -PI * p * std::sin(PI * a);
  }
  if (P.has_start) {
    if (p >= P.start) {
      b -= P.value_at_start;
    } else {
      b = 0.0;
      s = 0.0;
    }
  }
  if (P.tail && p > P.log_end) {
    b = (p - P.log_end) / (P.log_end - 1.0) + P.log_one_minus_log_end;
    s = -p / (1.0 - P.log_end);
  }
}

// p^gamma for 0 <= p <= 1/2 (the small entries)
template <typename T> inline typename Vec<T>::v power(const Params& P, typename Vec<T>::v p) {
  switch (P.int_gamma) {
    case 1: return p;
    case 2: return p * p;
    case 3: return p * p * p;
    case 4: { typename Vec<T>::v q = p * p; return q * q; }
    default: return Math<T>::exp((T)P.gamma * Math<T>::log(p));
  }
}

// b(p) (when wanted) and p b'(p) of the small entries, 0 outside ``on``; the log bonus's b is left to its product
template <typename T, int KIND>
inline void small_terms(const Params& P, typename Vec<T>::v p, typename Vec<T>::i on, typename Vec<T>::v& b,
                        typename Vec<T>::v& s) {
  typedef typename Vec<T>::v v;
  const v zero = splat<T>(0);
  if (KIND == LOG) {
    s = on ? -p / (1 - p) : zero;
  } else if (KIND == POWER) {
    v pg = power<T>(P, p);
    b = on ? -pg - (T)P.value_at_start : zero;
    s = on ? (T)(-P.gamma) * pg : zero;
  } else {
    v half = Math<T>::sin(p * (T)(PI / 2));
    b = on ? (T)(-2) * half * half - (T)P.value_at_start : zero;
    s = on ? (T)(-PI) * p * Math<T>::sin(p * (T)PI) : zero;
  }
}

template <typename T> struct Large { int64_t k; double slope; T p; };

// ------------------------------------------------------------------ the passes over one row
// pass 1: max (logits) and sum (with smoothing)
template <typename T, typename In>
inline void max_and_sum(const In* x, int64_t n, bool want_max, bool want_sum, T& max_out, double& sum_out) {
  typedef typename Vec<T>::v v;
  constexpr int N = Vec<T>::N;
  v vmax = splat<T>(-__builtin_inf());
  double sum = 0.0;
  for (int64_t b0 = 0; b0 < n; b0 += BLOCK) {
    int64_t b1 = std::min(n, b0 + BLOCK);
    v vsum = splat<T>(0);
    for (int64_t k = b0; k < b1; k += N) {
      v a = load<T, In>(x + k, b1 - k, want_max ? (T)-__builtin_inf() : (T)0);
      if (want_max) vmax = (a > vmax || a != a) ? a : vmax;
      if (want_sum) vsum += b1 - k >= N ? a : (iota<T>() < (T)(b1 - k) ? a : splat<T>(0));
    }
    if (want_sum) sum += hsum<T>(vsum);
    if (!want_sum && !want_max) break;
  }
  max_out = hmax<T>(vmax);
  sum_out = sum;
}

// pass 2: e_k = exp(x_k - shift) into e; returns sum_{k != y} e_k
template <typename T, typename In>
inline double exps(const In* x, int64_t n, T shift, int64_t y, T* e) {
  typedef typename Vec<T>::v v;
  constexpr int N = Vec<T>::N;
  typedef typename Vec<T>::i vi;
  typedef typename Vec<T>::index index;
  const vi lanes = lane_index<T>();
  double sum = 0.0;
  for (int64_t b0 = 0; b0 < n; b0 += BLOCK) {
    int64_t b1 = std::min(n, b0 + BLOCK);
    v vsum = splat<T>(0);
    for (int64_t k = b0; k < b1; k += N) {
      v ek = Math<T>::exp(load<T, In>(x + k, b1 - k, (T)-__builtin_inf()) - shift);
      store<T>(e + k, ek, b1 - k);
      vsum += (lanes + (index)k) == (index)y ? splat<T>(0) : ek;
    }
    sum += hsum<T>(vsum);
  }
  return sum;
}

// pass 3: over k != y with p_k = e_k inv_s <= large_p: sum_k b(p_k), sum_k p_k b'(p_k); whether any other
// entry is above large_p
template <typename T, int KIND>
inline void dense_sums(const Params& P, const T* e, int64_t n, int64_t y, T inv_s, double& sum_b, double& sum_s,
                       bool& any_large) {
  typedef typename Vec<T>::v v;
  typedef typename Vec<T>::i vi;
  constexpr int N = Vec<T>::N;
  typedef typename Vec<T>::index index;
  const vi lanes = lane_index<T>();
  const v zero = splat<T>(0), one = splat<T>(1);
  const T large_p = (T)P.large_p, start = (T)P.start;
  vi large{};
  double prod = 1.0, count = 0.0;
  sum_b = 0.0;
  sum_s = 0.0;
  for (int64_t b0 = 0; b0 < n; b0 += BLOCK) {
    int64_t b1 = std::min(n, b0 + BLOCK);
    v acc_b = zero, acc_s = zero, acc_prod = one, acc_count = zero;
    for (int64_t k = b0; k < b1; k += N) {
      v p = load<T, T>(e + k, b1 - k, (T)0) * inv_s;
      vi others = (lanes + (index)k) != (index)y;
      vi on = others & (p <= large_p);
      large |= others & (p > large_p);
      if (P.has_start) on &= p >= start;
      v b, s;
      small_terms<T, KIND>(P, p, on, b, s);
      acc_s += s;
      if (KIND == LOG) {
        acc_prod *= on ? one - p : one;
        if (P.has_start) acc_count += on ? one : zero;
      } else {
        acc_b += b;
      }
    }
    sum_s += hsum<T>(acc_s);
    if (KIND == LOG) {
      prod *= hprod<T>(acc_prod);  // >= 1/4 over the whole row: each factor >= 1/2, the p's sum to <= 1
      count += hsum<T>(acc_count);
    } else {
      sum_b += hsum<T>(acc_b);
    }
  }
  if (KIND == LOG) sum_b = std::log(prod) - count * P.value_at_start;
  bool any = false;
  for (int i = 0; i < N; ++i) any = any || large[i];
  any_large = any;
}

// pass 4: g_k = a p_k + c + bo p_k b'(p_k) (the small entries' slopes; the target and the large entries are
// written afterwards)
template <typename T, int KIND>
inline void gradient(const Params& P, T* e, int64_t n, T inv_s, T a, T c, T bo, bool dense) {
  typedef typename Vec<T>::v v;
  typedef typename Vec<T>::i vi;
  constexpr int N = Vec<T>::N;
  const T large_p = (T)P.large_p, start = (T)P.start;
  for (int64_t k = 0; k < n; k += N) {
    v p = load<T, T>(e + k, n - k, (T)0) * inv_s;
    v g = p * a + c;
    if (dense) {
      vi on = p <= large_p;
      if (P.has_start) on &= p >= start;
      v b, s;
      small_terms<T, KIND>(P, p, on, b, s);
      g += bo * s;
    }
    store<T>(e + k, g, n - k);
  }
}

template <typename T> struct RowOut { T* loss; T* nll; T* bonus; T* log_p; T* correct; };

// one row: its values into out[row], its gradient (times scale) into g (which also holds the exps meanwhile)
template <typename T, typename In, int KIND>
void one_row(const Params& P, const In* x, T* g, int64_t y, double scale, const RowOut<T>& out, int64_t row,
             std::vector<Large<T>>& large, double* state) {
  const int64_t n = P.n_cols;
  const bool logp = P.log_probs, smooth = P.nll_other != 0.0;
  T m = 0;
  double sum_x = 0.0;
  max_and_sum<T, In>(x, n, !logp, smooth, m, sum_x);
  if (logp) m = 0;
  const double x_y = (double)to_float(x[y]);
  bool correct = !logp && x_y == (double)m;  // the target is the first largest logit (torch's argmax)
  for (int64_t k = 0; correct && k < y; ++k) correct = (T)to_float(x[k]) != m;
  out.correct[row] = correct ? (T)1 : (T)0;
  const double s_other = exps<T, In>(x, n, m, y, g);  // x is not read after this (g may be x)
  double s_all = 1.0, log_s = 0.0, lse = 0.0, one_minus_p_y, log_p_y;
  if (!logp) {
    s_all = s_other + std::exp(x_y - (double)m);
    log_s = std::log(s_all);
    lse = (double)m + log_s;
    one_minus_p_y = s_other / s_all;
    log_p_y = one_minus_p_y < 0.5 ? std::log1p(-one_minus_p_y) : (x_y - (double)m) - log_s;
  } else {
    log_p_y = x_y;
    one_minus_p_y = -std::expm1(x_y);
  }
  const T inv_s = (T)(1.0 / s_all);
  double b_y, s_y;
  bonus_and_slope(P, log_p_y, b_y, s_y);
  double sum_b = 0.0, sum_s = 0.0;
  large.clear();
  if (P.dense) {
    bool any_large = false;
    dense_sums<T, KIND>(P, g, n, y, inv_s, sum_b, sum_s, any_large);
    if (any_large) {  // the other entries with p > large_p (at most 1 / large_p of them), from a precise log p
      const T large_p = (T)P.large_p;
      for (int64_t k = 0; k < n; ++k) {
        T p = g[k] * inv_s;
        if (k == y || !(p > large_p)) continue;
        double log_p;
        if (logp) {
          log_p = (double)to_float(x[k]);
        } else if ((double)p > 0.5) {  // 1 - p_k = sum of the others' e / S
          double others = 0.0;
          for (int64_t j = 0; j < n; ++j) others += j == k ? 0.0 : (double)g[j];
          others += -(double)g[y] + std::exp(x_y - (double)m);  // the target's e in double, as in S
          log_p = std::log1p(-others / s_all);
        } else if (!P.grad_over_input) {
          log_p = ((double)to_float(x[k]) - (double)m) - log_s;
        } else {
          log_p = std::log((double)g[k]) - log_s;
        }
        double b, s;
        bonus_and_slope(P, log_p, b, s);
        sum_b += b;
        sum_s += s;
        large.push_back({k, s, p});
      }
    }
    sum_b += b_y;
  }
  const double sum_log_p = smooth ? sum_x - (double)n * lse : 0.0;
  const double bonus = P.bonus_target * b_y + P.bonus_other * sum_b;
  out.loss[row] = (T)(-P.nll_target * log_p_y - P.nll_other * sum_log_p + bonus);
  out.nll[row] = (T)(-log_p_y);
  out.bonus[row] = (T)bonus;
  out.log_p[row] = (T)log_p_y;
  if (!P.compute_grad && !state) return;
  const double q_y = P.nll_target + P.nll_other;
  const double g_y = (P.bonus_target + P.bonus_other) * s_y, g_o = P.bonus_other * sum_s, total_g = g_y + g_o;
  const double a = logp ? 0.0 : 1.0 - total_g;
  const double grad_y = logp ? g_y - q_y
                             : (1.0 - q_y) - one_minus_p_y + g_y * one_minus_p_y - std::exp(log_p_y) * g_o;
  if (state) {
    const double kept[STATE] = {(double)m, (double)inv_s, log_s, s_all, logp ? 0.0 : std::exp(x_y - (double)m), a,
                                grad_y, 0.0};
    std::memcpy(state, kept, sizeof kept);
  }
  if (!P.compute_grad) return;
  gradient<T, KIND>(P, g, n, inv_s, (T)(a * scale), (T)(-P.nll_other * scale), (T)(P.bonus_other * scale),
                    P.dense);
  for (const Large<T>& l : large)
    g[l.k] = (T)(scale * (a * (double)l.p - P.nll_other + P.bonus_other * l.slope));
  g[y] = (T)(grad_y * scale);
}

// the deferred gradient of one row, from the state its forward call kept: scale dL/dx written in the input's
// dtype, each entry rounded once (x read again; the target and the other entries above large_p written last)
template <typename T, typename In, int KIND>
void gradient_row(const Params& P, const In* x, In* out, int64_t y, double scale, const double* state) {
  typedef typename Vec<T>::v v;
  typedef typename Vec<T>::i vi;
  typedef typename Vec<T>::index index;
  constexpr int N = Vec<T>::N;
  const int64_t n = P.n_cols;
  const bool logp = P.log_probs;
  const T m = (T)state[0], inv_s = (T)state[1];
  const double log_s = state[2], s_all = state[3], e_y = state[4], a = state[5], grad_y = state[6];
  const T as = (T)(a * scale), cs = (T)(-P.nll_other * scale), bs = (T)(P.bonus_other * scale);
  const T large_p = (T)P.large_p, start = (T)P.start;
  const vi lanes = lane_index<T>();
  vi large{};
  for (int64_t k = 0; k < n; k += N) {
    v p = Math<T>::exp(load<T, In>(x + k, n - k, (T)-__builtin_inf()) - m) * inv_s;
    v g = p * as + cs;
    if (P.dense) {
      vi on = p <= large_p;
      large |= ((lanes + (index)k) != (index)y) & (p > large_p);
      if (P.has_start) on &= p >= start;
      v b, s;
      small_terms<T, KIND>(P, p, on, b, s);
      g += bs * s;
    }
    store_as<In, T>(out + k, g, n - k);
  }
  bool any = false;
  for (int i = 0; i < N; ++i) any = any || large[i];
  if (any) {  // as in one_row: the entries above large_p from a precise log p
    for (int64_t k0 = 0; k0 < n; k0 += N) {
      v p = Math<T>::exp(load<T, In>(x + k0, n - k0, (T)-__builtin_inf()) - m) * inv_s;
      for (int64_t k = k0; k < std::min(n, k0 + N); ++k) {
        if (k == y || !(p[k - k0] > large_p)) continue;
        double log_p;
        if (logp) {
          log_p = (double)to_float(x[k]);
        } else if ((double)p[k - k0] > 0.5) {
          double others = 0.0;
          for (int64_t j0 = 0; j0 < n; j0 += N) {
            v e = Math<T>::exp(load<T, In>(x + j0, n - j0, (T)-__builtin_inf()) - m);
            for (int64_t j = j0; j < std::min(n, j0 + N); ++j)
              others += j == k ? 0.0 : j == y ? e_y : (double)e[j - j0];
          }
          log_p = std::log1p(-others / s_all);
        } else {
          log_p = ((double)to_float(x[k]) - (double)m) - log_s;
        }
        double b, s;
        bonus_and_slope(P, log_p, b, s);
        out[k] = Store<In>::one(scale * (a * (double)p[k - k0] - P.nll_other + P.bonus_other * s));
      }
    }
  }
  out[y] = Store<In>::one(grad_y * scale);
}


// Rows r0 .. r0 + lanes - 1 of a chunk stored by columns (element (r, k) at x[k * ld + r]: what the fused output
// layer's product W x^T writes), computed together, one row per lane of the vectors, in one_row's passes; the
// gradient written over them. Logits of the compute dtype only (VALUES_AND_GRADIENT, grad = x).
template <typename T, int KIND>
void column_group(const Params& P, T* x, int64_t ld, int64_t r0, int lanes, const int64_t* target,
                  const uint8_t* keep, const T* row_scale, const RowOut<T>& out, std::vector<Large<T>>& large_list) {
  typedef typename Vec<T>::v v;
  typedef typename Vec<T>::i vi;
  typedef typename Vec<T>::index index;
  constexpr int N = Vec<T>::N;
  const int64_t n = P.n_cols;
  const bool smooth = P.nll_other != 0.0;
  const T ninf = (T)-__builtin_inf();
  auto at = [&](int64_t k) { return x + k * ld + r0; };
  int64_t y[N];
  bool kept[N];
  vi yv{};
  for (int l = 0; l < N; ++l) {
    kept[l] = l < lanes && (!keep || keep[r0 + l]);
    y[l] = kept[l] ? target[r0 + l] : 0;
    yv[l] = (index)y[l];
  }
  // pass 1: max, its first column, sum
  v vmax = splat<T>(ninf);
  vi arg{};
  double sum_x[N] = {};
  for (int64_t b0 = 0; b0 < n; b0 += BLOCK) {
    const int64_t b1 = std::min(n, b0 + BLOCK);
    v vsum = splat<T>(0);
    for (int64_t k = b0; k < b1; ++k) {
      v a = load<T, T>(at(k), lanes, ninf);
      vi bigger = a > vmax;
      vmax = bigger ? a : vmax;
      arg = bigger ? (vi){} + (index)k : arg;
      vsum += a;
    }
    if (smooth)
      for (int l = 0; l < lanes; ++l) sum_x[l] += (double)vsum[l];
  }
  double x_y[N] = {};
  for (int l = 0; l < lanes; ++l) {
    x_y[l] = (double)at(y[l])[l];
    out.correct[r0 + l] = kept[l] && arg[l] == yv[l] && x_y[l] == (double)vmax[l] ? (T)1 : (T)0;
  }
  // pass 2: e = exp(x - m) over x, sum_{k != y} e
  double s_other[N] = {};
  for (int64_t b0 = 0; b0 < n; b0 += BLOCK) {
    const int64_t b1 = std::min(n, b0 + BLOCK);
    v vsum = splat<T>(0);
    for (int64_t k = b0; k < b1; ++k) {
      v e = Math<T>::exp(load<T, T>(at(k), lanes, ninf) - vmax);
      store<T>(at(k), e, lanes);
      vsum += yv == (index)k ? splat<T>(0) : e;
    }
    for (int l = 0; l < lanes; ++l) s_other[l] += (double)vsum[l];
  }
  double s_all[N], log_s[N], lse[N], u[N], log_p_y[N], b_y[N], s_y[N], e_y[N];
  v inv_s = splat<T>(0);
  for (int l = 0; l < lanes; ++l) {
    const double m = (double)vmax[l];
    e_y[l] = std::exp(x_y[l] - m);
    s_all[l] = s_other[l] + e_y[l];
    log_s[l] = std::log(s_all[l]);
    lse[l] = m + log_s[l];
    u[l] = s_other[l] / s_all[l];
    log_p_y[l] = u[l] < 0.5 ? std::log1p(-u[l]) : (x_y[l] - m) - log_s[l];
    inv_s[l] = (T)(1.0 / s_all[l]);
    bonus_and_slope(P, log_p_y[l], b_y[l], s_y[l]);
  }
  // pass 3: the dense bonus's sums; the large entries of each lane from their precise log p
  double sum_b[N] = {}, sum_s[N] = {};
  large_list.clear();
  int64_t large_begin[N + 1] = {};
  if (P.dense) {
    const v zero = splat<T>(0), one = splat<T>(1);
    const T large_p = (T)P.large_p, start = (T)P.start;
    vi large{};
    double prod[N], count[N] = {};
    for (int l = 0; l < N; ++l) prod[l] = 1.0;
    for (int64_t b0 = 0; b0 < n; b0 += BLOCK) {
      const int64_t b1 = std::min(n, b0 + BLOCK);
      v acc_b = zero, acc_s = zero, acc_prod = one, acc_count = zero;
      for (int64_t k = b0; k < b1; ++k) {
        v p = load<T, T>(at(k), lanes, (T)0) * inv_s;
        vi others = yv != (index)k;
        vi on = others & (p <= large_p);
        large |= others & (p > large_p);
        if (P.has_start) on &= p >= start;
        v b, sl;
        small_terms<T, KIND>(P, p, on, b, sl);
        acc_s += sl;
        if (KIND == LOG) {
          acc_prod *= on ? one - p : one;
          if (P.has_start) acc_count += on ? one : zero;
        } else {
          acc_b += b;
        }
      }
      for (int l = 0; l < lanes; ++l) {
        sum_s[l] += (double)acc_s[l];
        if (KIND == LOG) {
          prod[l] *= (double)acc_prod[l];
          count[l] += (double)acc_count[l];
        } else {
          sum_b[l] += (double)acc_b[l];
        }
      }
    }
    for (int l = 0; l < lanes; ++l) {
      if (KIND == LOG) sum_b[l] = std::log(prod[l]) - count[l] * P.value_at_start;
      large_begin[l] = (int64_t)large_list.size();
      if (large[l]) {
        for (int64_t k = 0; k < n; ++k) {
          const T p = at(k)[l] * inv_s[l];
          if (k == y[l] || !(p > large_p)) continue;
          double log_p;
          if ((double)p > 0.5) {
            double others = 0.0;
            for (int64_t j = 0; j < n; ++j) others += j == k ? 0.0 : j == y[l] ? e_y[l] : (double)at(j)[l];
            log_p = std::log1p(-others / s_all[l]);
          } else {
            log_p = std::log((double)at(k)[l]) - log_s[l];
          }
          double b, sl;
          bonus_and_slope(P, log_p, b, sl);
          sum_b[l] += b;
          sum_s[l] += sl;
          large_list.push_back({k, sl, p});
        }
      }
      sum_b[l] += b_y[l];
    }
  }
  for (int l = lanes; l <= N; ++l) large_begin[l] = (int64_t)large_list.size();
  if (!P.dense)
    for (int l = 0; l <= N; ++l) large_begin[l] = 0;
  // the values; pass 4's coefficients per lane
  v a_v = splat<T>(0), c_v = splat<T>(0), bo_v = splat<T>(0);
  double a[N] = {}, grad_y[N] = {}, scale[N] = {};
  for (int l = 0; l < lanes; ++l) {
    const int64_t row = r0 + l;
    if (!kept[l]) {
      out.loss[row] = out.nll[row] = out.bonus[row] = out.log_p[row] = (T)0;
      continue;
    }
    const double sum_log_p = smooth ? sum_x[l] - (double)n * lse[l] : 0.0;
    const double bonus = P.bonus_target * b_y[l] + P.bonus_other * sum_b[l];
    out.loss[row] = (T)(-P.nll_target * log_p_y[l] - P.nll_other * sum_log_p + bonus);
    out.nll[row] = (T)(-log_p_y[l]);
    out.bonus[row] = (T)bonus;
    out.log_p[row] = (T)log_p_y[l];
    const double q_y = P.nll_target + P.nll_other;
    const double g_y = (P.bonus_target + P.bonus_other) * s_y[l], g_o = P.bonus_other * sum_s[l];
    a[l] = 1.0 - (g_y + g_o);
    grad_y[l] = (1.0 - q_y) - u[l] + g_y * u[l] - std::exp(log_p_y[l]) * g_o;
    scale[l] = row_scale ? (double)row_scale[row] : P.scale;
    a_v[l] = (T)(a[l] * scale[l]);
    c_v[l] = (T)(-P.nll_other * scale[l]);
    bo_v[l] = (T)(P.bonus_other * scale[l]);
  }
  // pass 4: the gradient over the exps (ignored lanes: 0)
  const T large_p = (T)P.large_p, start = (T)P.start;
  for (int64_t k = 0; k < n; ++k) {
    v p = load<T, T>(at(k), lanes, (T)0) * inv_s;
    v g = p * a_v + c_v;
    if (P.dense) {
      vi on = p <= large_p;
      if (P.has_start) on &= p >= start;
      v b, sl;
      small_terms<T, KIND>(P, p, on, b, sl);
      g += bo_v * sl;
    }
    store<T>(at(k), g, lanes);
  }
  for (int l = 0; l < lanes; ++l) {
    if (!kept[l]) {
      for (int64_t k = 0; k < n; ++k) at(k)[l] = (T)0;
      continue;
    }
    for (int64_t i = large_begin[l]; i < large_begin[l + 1]; ++i) {
      const Large<T>& e = large_list[i];
      at(e.k)[l] = (T)(scale[l] * (a[l] * (double)e.p - P.nll_other + P.bonus_other * e.slope));
    }
    at(y[l])[l] = (T)(grad_y[l] * scale[l]);
  }
}

template <typename T, typename In, int KIND>
void rows(const Params& P, const In* x, void* grad, const int64_t* target, const uint8_t* keep, const T* row_scale,
          T* out, double* state) {
  const int64_t n_rows = P.n_rows, n = P.n_cols;
  const RowOut<T> ro{out, out + n_rows, out + 2 * n_rows, out + 3 * n_rows, out + 4 * n_rows};
  std::atomic<int64_t> next(0);
  const int64_t step = std::max<int64_t>(1, P.rows_per_task);
  auto work = [&]() {
    std::vector<Large<T>> large;
    if (P.columns) {  // groups of Vec<T>::N rows of a chunk stored by columns (T == In, the gradient over x)
      for (;;) {
        int64_t g0 = next.fetch_add(Vec<T>::N);
        if (g0 >= n_rows) break;
        column_group<T, KIND>(P, (T*)x, P.x_stride, g0, (int)std::min<int64_t>(Vec<T>::N, n_rows - g0), target,
                              keep, row_scale, ro, large);
      }
      return;
    }
    const bool narrow = P.mode == VALUES_AND_INPUT_DTYPE_GRADIENT;  // the gradient in x's dtype, via scratch
    std::vector<T> scratch((P.compute_grad && !narrow) || P.mode == GRADIENT_FROM_STATE ? 0 : n);
    for (;;) {
      int64_t r0 = next.fetch_add(step);
      if (r0 >= n_rows) break;
      for (int64_t r = r0; r < std::min(n_rows, r0 + step); ++r) {
        const double scale = row_scale ? (double)row_scale[r] : P.scale;
        if (P.mode == GRADIENT_FROM_STATE) {
          In* g = (In*)grad + r * P.grad_stride;
          if (keep && !keep[r]) std::memset((void*)g, 0, sizeof(In) * n);
          else gradient_row<T, In, KIND>(P, x + r * P.x_stride, g, target[r], scale, state + r * STATE);
          continue;
        }
        T* g = P.compute_grad && !narrow ? (T*)grad + r * P.grad_stride : scratch.data();
        if (keep && !keep[r]) {
          ro.loss[r] = ro.nll[r] = ro.bonus[r] = ro.log_p[r] = ro.correct[r] = (T)0;
          if (P.compute_grad) std::memset(narrow ? (void*)((In*)grad + r * P.grad_stride) : (void*)g, 0,
                                          (narrow ? sizeof(In) : sizeof(T)) * n);
          if (state) std::memset(state + r * STATE, 0, sizeof(double) * STATE);
          continue;
        }
        one_row<T, In, KIND>(P, x + r * P.x_stride, g, target[r], scale, ro, r, large,
                             P.mode == VALUES_AND_STATE && state ? state + r * STATE : nullptr);
        if (narrow && P.compute_grad) {  // rounded once into x's dtype (x itself may be the destination: read)
          In* out_row = (In*)grad + r * P.grad_stride;
          for (int64_t k = 0; k < n; k += Vec<T>::N)
            store_as<In, T>(out_row + k, load<T, T>(g + k, n - k, (T)0), n - k);
        }
      }
    }
  };
  const int64_t per_task = P.columns ? Vec<T>::N : step;
  int64_t tasks = (n_rows + per_task - 1) / per_task;
  int64_t threads = std::max<int64_t>(1, std::min(P.n_threads, tasks));
  std::vector<std::thread> pool;
  for (int64_t i = 1; i < threads; ++i) {
    try {
      pool.emplace_back(work);
    } catch (...) {
      break;  // no more threads: the ones running (and this one) take the rows
    }
  }
  work();
  for (std::thread& t : pool) t.join();
}

template <typename T, typename In>
void rows_of(const Params& P, const void* x, void* grad, const int64_t* target, const uint8_t* keep,
             const void* row_scale, void* out, double* state) {
  const In* xi = (const In*)x;
  T* o = (T*)out;
  const T* rs = (const T*)row_scale;
  if (P.kind == LOG) rows<T, In, LOG>(P, xi, grad, target, keep, rs, o, state);
  else if (P.kind == POWER) rows<T, In, POWER>(P, xi, grad, target, keep, rs, o, state);
  else rows<T, In, COSINE>(P, xi, grad, target, keep, rs, o, state);
}

}  // namespace

extern "C" int el_cpu_rows_version() { return 4; }

namespace {
template <typename H>
void convert(const H* in, float* widened, const float* narrow_in, H* narrowed, int64_t n) {
  for (int64_t k = 0; k < n; k += 16) {
    store<float>(widened + k, load<float, H>(in + k, n - k, 0.0f), n - k);
    store_as<H, float>(narrowed + k, load<float, float>(narrow_in + k, n - k, 0.0f), n - k);
  }
}
}  // namespace

// the conversions the passes use (tests/test_cpu_kernel.py): n float16 (in_dtype 2) or bfloat16 (3) values widened
// to float32, and n float32 values rounded to that dtype, 16 at a time and the rest one by one
extern "C" int el_cpu_convert(int64_t in_dtype, const void* in, float* widened, const float* narrow_in,
                              void* narrowed, int64_t n) {
  if (in_dtype == 2) convert<Half>((const Half*)in, widened, narrow_in, (Half*)narrowed, n);
  else if (in_dtype == 3) convert<BFloat16>((const BFloat16*)in, widened, narrow_in, (BFloat16*)narrowed, n);
  else return 1;
  return 0;
}

// in_dtype: 0 float32, 1 float64, 2 float16, 3 bfloat16. out: (5, n_rows) of the compute dtype: the loss, -log p_y,
// the bonus, log p_y, and 1 where the target is the first largest logit (logits only) else 0.
// mode: VALUES_AND_GRADIENT (grad: the compute dtype), VALUES_AND_INPUT_DTYPE_GRADIENT (grad: the input's dtype,
// each entry rounded once; it may be x itself),
// VALUES_AND_STATE (state: STATE doubles per row), GRADIENT_FROM_STATE (grad: the input's dtype; out unused).
// Returns 0, or 1 on an error (no exception crosses).
extern "C" int el_cpu_rows(const double* dp, const int64_t* ip, const void* x, void* grad, const int64_t* target,
                           const uint8_t* keep, const void* row_scale, void* out, double* state) {
  try {
    const Params Q{dp[0], dp[1], dp[2], dp[3], dp[4], dp[5], dp[6], dp[7], dp[8], dp[9], dp[10], dp[11], dp[12],
                   ip[0], ip[1], ip[2], ip[3], ip[4], ip[5], ip[6], ip[7], ip[8], ip[9], ip[10], ip[11], ip[12],
                   ip[13], ip[14], ip[15], ip[16]};
    const Params& P = Q;
    if (P.columns && (P.in_dtype > 1 || P.mode != VALUES_AND_GRADIENT || P.log_probs || !P.compute_grad ||
                      x != grad))
      return 1;  // rows stored by columns: logits of the compute dtype, the gradient written over them
    switch (P.in_dtype) {
      case 0: rows_of<float, float>(P, x, grad, target, keep, row_scale, out, state); break;
      case 1: rows_of<double, double>(P, x, grad, target, keep, row_scale, out, state); break;
      case 2: rows_of<float, Half>(P, x, grad, target, keep, row_scale, out, state); break;
      case 3: rows_of<float, BFloat16>(P, x, grad, target, keep, row_scale, out, state); break;
      default: return 1;
    }
    return 0;
  } catch (...) {
    return 1;
  }
}
"""
