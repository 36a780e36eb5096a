// Gradient-norm penalty on the CPU: torch.ops.fastgan_C.grad_norm_forward / _backward.
//
// Math: csrc/include/grad_norm.h. The gradient g is viewed as [N, D].
//   forward : pass over g once; one partial sum of squares per (sample, chunk of kChunk
//             elements), items spread over threads with at::parallel_for (a few large
//             samples, e.g. 32 x 196608, still give every thread work); partials are
//             then added per sample in chunk order (deterministic for any thread count)
//             and the penalty is formed from the N sums. Returns (penalty, sumsq).
//   backward: dg = coef_i * g, one read of g and one write of dg, using the sums of
//             squares saved by the forward (no second reduction pass); for outputs
//             of 16 MiB and more the writes are non-temporal, so
//             dg's lines are not read from memory first (see use_streaming_stores).
// Inner loops keep many independent accumulators in a fixed-size array so the compiler
// turns them into vector FMAs; half/bfloat16 are widened to float32 for the math.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <unistd.h>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "grad_norm.h"
#include "output_pool.h"

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace fastgan {
namespace {

using namespace gradnorm;

// Elements per work item: 64 KiB of float32, large enough to amortise scheduling and
// small enough that (32, 3, 256, 256) gives 12 items per sample.
constexpr int64_t kChunk = 16384;

// Loading and storing one element in the accumulation type. half and bfloat16 are read
// as raw 16-bit words and widened with vectorisable code (c10's scalar conversions are
// not always vectorised by the compiler).
template <typename scalar_t>
struct IO {
  using acc_t = scalar_t;
  using raw_t = scalar_t;
  static inline acc_t load(raw_t v) { return v; }
  static inline raw_t store(acc_t v) { return v; }
};

template <>
struct IO<c10::BFloat16> {
  using acc_t = float;
  using raw_t = uint16_t;
  static inline float load(uint16_t b) {
    const uint32_t u = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  }
  static inline uint16_t store(float f) {  // round to nearest even, NaN stays NaN
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
  }
};

template <>
struct IO<c10::Half> {
  using acc_t = float;
  using raw_t = uint16_t;
#if defined(__FLT16_MANT_DIG__)
  // The compiler's _Float16 conversions become vcvtph2ps / vcvtps2ph with F16C.
  static inline float load(uint16_t b) {
    _Float16 h;
    std::memcpy(&h, &b, sizeof h);
    return static_cast<float>(h);
  }
  static inline uint16_t store(float f) {
    const _Float16 h = static_cast<_Float16>(f);
    uint16_t b;
    std::memcpy(&b, &h, sizeof b);
    return b;
  }
#else
  static inline float load(uint16_t b) { return static_cast<float>(c10::Half(b, c10::Half::from_bits())); }
  static inline uint16_t store(float f) { return c10::Half(f).x; }
#endif
};

// sum_j p[j]^2 over n elements with kLanes independent accumulators (vector lanes).
template <typename scalar_t>
inline typename IO<scalar_t>::acc_t span_sumsq(const typename IO<scalar_t>::raw_t* __restrict__ p,
                                               int64_t n) {
  using acc_t = typename IO<scalar_t>::acc_t;
  constexpr int kLanes = 256 / sizeof(acc_t);  // 4 zmm registers worth of accumulators
  acc_t acc[kLanes];
  for (int l = 0; l < kLanes; ++l) acc[l] = acc_t(0);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const acc_t v = IO<scalar_t>::load(p[i + l]);
      acc[l] += v * v;
    }
  }
  for (int l = 0; i < n; ++i, ++l) {
    const acc_t v = IO<scalar_t>::load(p[i]);
    acc[l] += v * v;
  }
  // Pairwise fold of the lanes.
  for (int width = kLanes / 2; width > 0; width /= 2)
    for (int l = 0; l < width; ++l) acc[l] += acc[l + width];
  return acc[0];
}

// q[j] = coef * p[j] over n elements.
template <typename scalar_t>
inline void span_scale(const typename IO<scalar_t>::raw_t* __restrict__ p,
                       typename IO<scalar_t>::raw_t* __restrict__ q, int64_t n,
                       typename IO<scalar_t>::acc_t coef) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) q[i] = IO<scalar_t>::store(coef * IO<scalar_t>::load(p[i]));
}

#if defined(__AVX__)
// The same with non-temporal (streaming) stores: the output's cache lines are not read
// before being overwritten (no read-for-ownership), which saves a quarter of the
// traffic of the backward when the output does not fit in the cache anyway.
template <typename scalar_t>
inline void span_scale_stream(const typename IO<scalar_t>::raw_t* __restrict__ p,
                              typename IO<scalar_t>::raw_t* __restrict__ q, int64_t n,
                              typename IO<scalar_t>::acc_t coef) {
  using raw_t = typename IO<scalar_t>::raw_t;
  constexpr int64_t kVec = 32 / sizeof(raw_t);  // one 32-byte store
  int64_t i = 0;
  // Scalar head up to a 32-byte aligned q (q is at least element-aligned).
  for (; i < n && (reinterpret_cast<uintptr_t>(q + i) & 31u) != 0; ++i)
    q[i] = IO<scalar_t>::store(coef * IO<scalar_t>::load(p[i]));
  for (; i + kVec <= n; i += kVec) {
    alignas(32) raw_t tile[kVec];
#pragma omp simd
    for (int64_t l = 0; l < kVec; ++l) tile[l] = IO<scalar_t>::store(coef * IO<scalar_t>::load(p[i + l]));
    _mm256_stream_si256(reinterpret_cast<__m256i*>(q + i), _mm256_load_si256(reinterpret_cast<const __m256i*>(tile)));
  }
  for (; i < n; ++i) q[i] = IO<scalar_t>::store(coef * IO<scalar_t>::load(p[i]));
}
#endif

// Streaming stores for the backward's output? On by default for outputs of 16 MiB and
// more (they cannot stay in cache next to the gradient they are computed from);
// FASTGAN_CPU_STREAM_STORES=1 / 0 forces (the tests run both paths). Measured on the
// 2-core AVX2 EPYC VM with the output pool (warm output pages), fwd+bwd:
// (32,3,256,256) 2.9-4.2 ms streaming vs 4.7 ms plain; (64,3,1024,1024) 107-112 ms vs
// 131-140 ms; while the cache-resident (64,3,64,64) is faster plain (0.41-0.56 vs 0.51).
// (An earlier measurement on an Intel Xeon VM found streaming slower at 805 MB, but it
// was taken when every call wrote a fresh, page-faulting output; not re-measured.)
bool use_streaming_stores(size_t out_bytes) {
#if defined(__AVX__)
  const char* env = std::getenv("FASTGAN_CPU_STREAM_STORES");
  if (env != nullptr && env[0] == '1') return true;
  if (env != nullptr && env[0] == '0') return false;
  return out_bytes >= (size_t(16) << 20);
#else
  (void)out_bytes;
  return false;
#endif
}

void check_grad(const at::Tensor& grad, const char* what) {
  TORCH_CHECK(grad.device().is_cpu(), what, ": expected a CPU tensor, got one on ", grad.device());
  TORCH_CHECK(grad.dim() >= 1 && grad.size(0) >= 1, what,
              ": expected a gradient of shape [N, ...] with N >= 1 samples, got shape ",
              grad.sizes());
  const auto st = grad.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              what, ": expected float32, float64, float16 or bfloat16, got ", st);
}

at::ScalarType acc_type(at::ScalarType st) {
  return st == at::kDouble ? at::kDouble : at::kFloat;
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& g, at::Tensor& penalty, at::Tensor& sumsq, double center_d) {
  using acc_t = typename IO<scalar_t>::acc_t;
  using raw_t = typename IO<scalar_t>::raw_t;
  const int64_t N = g.size(0);
  const int64_t D = g.numel() / N;
  const int64_t nchunks = num_chunks(D, kChunk);
  const auto* gp = reinterpret_cast<const raw_t*>(g.const_data_ptr());
  std::vector<acc_t> partial(static_cast<size_t>(N * nchunks));

  at::parallel_for(0, N * nchunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t it = begin; it < end; ++it) {
      const int64_t n = it / nchunks, c = it % nchunks;
      const int64_t lo = c * kChunk, hi = std::min(D, lo + kChunk);
      partial[it] = hi > lo ? span_sumsq<scalar_t>(gp + n * D + lo, hi - lo) : acc_t(0);
    }
  });

  // N is small next to N * D: the per-sample sums and the mean are formed serially,
  // in a fixed order, the mean in double.
  acc_t* sp = sumsq.mutable_data_ptr<acc_t>();
  const acc_t center = static_cast<acc_t>(center_d);
  double total = 0.0;
  for (int64_t n = 0; n < N; ++n) {
    acc_t s = acc_t(0);
    for (int64_t c = 0; c < nchunks; ++c) s += partial[n * nchunks + c];
    sp[n] = s;
    total += static_cast<double>(penalty_term<acc_t>(s, center));
  }
  *penalty.mutable_data_ptr<acc_t>() = static_cast<acc_t>(total / static_cast<double>(N));
}

template <typename scalar_t>
void backward_kernel(double grad_out, const at::Tensor& g, const at::Tensor& sumsq, at::Tensor& out,
                     double center_d) {
  using acc_t = typename IO<scalar_t>::acc_t;
  using raw_t = typename IO<scalar_t>::raw_t;
  const int64_t N = g.size(0);
  const int64_t D = g.numel() / N;
  const int64_t nchunks = num_chunks(D, kChunk);
  const auto* gp = reinterpret_cast<const raw_t*>(g.const_data_ptr());
  auto* op = reinterpret_cast<raw_t*>(out.mutable_data_ptr());
  const acc_t* sp = sumsq.const_data_ptr<acc_t>();
  const acc_t go = static_cast<acc_t>(grad_out);
  const acc_t center = static_cast<acc_t>(center_d);
  const acc_t two_over_n = static_cast<acc_t>(2.0 / static_cast<double>(N));

  const bool stream = use_streaming_stores(out.nbytes());
  at::parallel_for(0, N * nchunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t it = begin; it < end; ++it) {
      const int64_t n = it / nchunks, c = it % nchunks;
      const int64_t lo = c * kChunk, hi = std::min(D, lo + kChunk);
      if (hi <= lo) continue;
      const acc_t coef = backward_coef<acc_t>(go, sp[n], center, two_over_n);
#if defined(__AVX__)
      if (stream) {
        span_scale_stream<scalar_t>(gp + n * D + lo, op + n * D + lo, hi - lo, coef);
        continue;
      }
#endif
      span_scale<scalar_t>(gp + n * D + lo, op + n * D + lo, hi - lo, coef);
    }
#if defined(__AVX__)
    if (stream) _mm_sfence();  // order the streaming stores before the results are used
#endif
  });
}

#define FASTGAN_GRAD_NORM_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

}  // namespace

std::tuple<at::Tensor, at::Tensor> grad_norm_forward(const at::Tensor& grad, double center) {
  check_grad(grad, "grad_norm_forward");
  const at::Tensor g = grad.contiguous();
  const auto opts = g.options().dtype(acc_type(g.scalar_type()));
  at::Tensor penalty = at::empty({}, opts);
  at::Tensor sumsq = at::empty({g.size(0)}, opts);
  FASTGAN_GRAD_NORM_DISPATCH(g.scalar_type(), "grad_norm_forward", [&] {
    forward_kernel<scalar_t>(g, penalty, sumsq, center);
  });
  return {penalty, sumsq};
}

at::Tensor grad_norm_backward(const at::Tensor& grad_out, const at::Tensor& grad, const at::Tensor& sumsq,
                              double center) {
  check_grad(grad, "grad_norm_backward");
  TORCH_CHECK(grad_out.numel() == 1, "grad_norm_backward: grad_out must hold one value (the ",
              "penalty is a scalar), got shape ", grad_out.sizes());
  const auto acc = acc_type(grad.scalar_type());
  TORCH_CHECK(sumsq.dim() == 1 && sumsq.size(0) == grad.size(0) && sumsq.scalar_type() == acc &&
                  sumsq.device().is_cpu(),
              "grad_norm_backward: sumsq must be the forward's per-sample sums of squares: a CPU ",
              acc, " tensor of shape [", grad.size(0), "], got ", sumsq.scalar_type(), " of shape ",
              sumsq.sizes(), " on ", sumsq.device());
  const at::Tensor g = grad.contiguous();
  const at::Tensor s = sumsq.contiguous();
  const double go = grad_out.item<double>();
  at::Tensor out = pooled_empty(g.sizes(), g.options());
  FASTGAN_GRAD_NORM_DISPATCH(g.scalar_type(), "grad_norm_backward", [&] {
    backward_kernel<scalar_t>(go, g, s, out, center);
  });
  return out;
}

}  // namespace fastgan

TORCH_LIBRARY_FRAGMENT(fastgan_C, m) {
  // (penalty, sumsq): penalty = mean_i (||g_i|| - center)^2, sumsq_i = ||g_i||^2, both in
  // float32 for half/bfloat16 gradients (float64 for float64, else float32).
  m.def("grad_norm_forward(Tensor grad, float center) -> (Tensor, Tensor)");
  // d penalty / d grad given the forward's sumsq: one pass over grad.
  m.def("grad_norm_backward(Tensor grad_out, Tensor grad, Tensor sumsq, float center) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastgan_C, CPU, m) {
  m.impl("grad_norm_forward", &fastgan::grad_norm_forward);
  m.impl("grad_norm_backward", &fastgan::grad_norm_backward);
}
