// Minibatch standard deviation on the CPU: forward and backward kernels for
// torch.ops.fastgan_C.minibatch_std_forward / minibatch_std_backward.
//
// Math and index layout: csrc/include/minibatch_std.h. For a (group m, channel-group f)
// pair the G members are G contiguous spans of L = c * H * W elements, so the work is
// split into items (m, f, chunk of the span). Each item walks its chunk in small tiles
// that stay in L1: pass 1 reads the G member tiles from memory once (and, forward,
// copies them into y), passes 2 and 3 re-read them from cache. So:
//   forward : x read once, y written once (plus the F stat channels);
//   backward: x read once, dy read once, dx written once (plus dy's stat channels).
// The per-item partial sums of sqrt(var + eps) go to a buffer indexed by item and are
// added in a fixed order afterwards, so results do not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <cstdint>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <cstdlib>
#include <cstring>
#include <vector>

#include "minibatch_std.h"
#include "output_pool.h"

namespace fastgan {
namespace {

using namespace mbstd;

// Positions per tile: the per-position stats (2 * kTile accumulators) live on the stack
// and the G member tiles stay in L1/L2 between passes.
constexpr int64_t kTile = 256;

struct Geometry {
  int64_t N, C, H, W, G, M, F, c, HW, L;
  int64_t chunk;    // positions of one member per work item (a multiple of kTile)
  int64_t nchunks;  // work items per (m, f)
};

Geometry make_geometry(const at::Tensor& x, int64_t G, int64_t F) {
  Geometry g{};
  g.N = x.size(0);
  g.C = x.size(1);
  g.H = x.size(2);
  g.W = x.size(3);
  g.G = G;
  g.F = F;
  g.M = g.N / G;
  g.c = g.C / F;
  g.HW = g.H * g.W;
  g.L = g.c * g.HW;
  // About 32K elements of x per work item whatever G is: large enough to amortise the
  // scheduling, small enough that (64, 256, 8, 8) still gives dozens of items.
  const int64_t target = std::max<int64_t>(kTile, (32768 / G) / kTile * kTile);
  g.chunk = std::min<int64_t>(target, (g.L + kTile - 1) / kTile * kTile);
  g.nchunks = g.L == 0 ? 0 : (g.L + g.chunk - 1) / g.chunk;
  return g;
}

// In the tile passes (group sizes above kMaxFusedG, half/bfloat16), outputs at least
// this large are written with non-temporal (streaming) stores: they
// cannot stay in cache for the next layer anyway, and streaming skips the read-for-
// ownership of every output line (one memory pass of the output's size saved).
// FASTGAN_STREAM_MIN_BYTES overrides the threshold (the tests set 0 to cover the
// streaming path on small tensors).
size_t stream_min_bytes() {
  const char* env = std::getenv("FASTGAN_STREAM_MIN_BYTES");
  if (env != nullptr && *env != '\0') return static_cast<size_t>(std::strtoull(env, nullptr, 10));
  return size_t(128) << 20;
}

// dst[0, bytes) = src[0, bytes); with AVX-512 the 64-byte-aligned body uses streaming
// stores (callers issue an sfence before the data is read elsewhere).
inline void stream_copy(const void* __restrict__ src, void* __restrict__ dst, size_t bytes) {
#if defined(__AVX512F__)
  auto* d = static_cast<char*>(dst);
  const auto* s = static_cast<const char*>(src);
  const size_t head = std::min(bytes, (64 - (reinterpret_cast<uintptr_t>(d) & 63)) & 63);
  std::memcpy(d, s, head);
  size_t i = head;
  for (; i + 64 <= bytes; i += 64) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d + i), _mm512_loadu_si512(s + i));
  }
  std::memcpy(d + i, s + i, bytes - i);
#else
  std::memcpy(dst, src, bytes);
#endif
}

inline void stream_fence() {
#if defined(__AVX512F__)
  _mm_sfence();
#endif
}

void check_args(const at::Tensor& x, int64_t G, int64_t F, const char* what) {
  TORCH_CHECK(x.dim() == 4, what, ": expected a 4-D [N, C, H, W] tensor, got ", x.dim(), "-D");
  TORCH_CHECK(x.device().is_cpu(), what, ": expected a CPU tensor, got one on ", x.device());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), what,
              ": expected a floating-point tensor, got ", x.scalar_type());
  TORCH_CHECK(G >= 1 && x.size(0) % G == 0, what, ": group size G=", G,
              " must be >= 1 and divide the batch N=", x.size(0));
  TORCH_CHECK(F >= 1 && x.size(1) % F == 0, what, ": num_channels F=", F,
              " must be >= 1 and divide the channels C=", x.size(1));
}

// ---------------------------------------------------------------- per-position math
// The G members of a position sit gs (x) / gys (y, dy) elements apart. Each loop runs
// over the contiguous positions t of one member (so it vectorises), the member loop
// outside; the per-position sums live in small arrays that stay in L1, and the second
// read of a member tile (for the centred sum) hits L1/L2, not memory.

// mean[t] and var[t] = 1/G sum_g (x_g[t] - mean[t])^2 (two-pass: exact centring).
// kCopy: also copy x into y (the forward's first C channels) during the first pass.
template <typename scalar_t, typename acc_t, bool kCopy>
inline void tile_moments(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t gs, int64_t gys,
                         int64_t G, int64_t n, acc_t inv_G, acc_t* __restrict__ mean,
                         acc_t* __restrict__ var) {
  for (int64_t g = 0; g < G; ++g) {
    const scalar_t* __restrict__ xs = x + g * gs;
    scalar_t* __restrict__ ys = kCopy ? y + g * gys : nullptr;
    if (g == 0) {
#pragma omp simd
      for (int64_t t = 0; t < n; ++t) {
        const scalar_t v = xs[t];
        if (kCopy) ys[t] = v;
        mean[t] = static_cast<acc_t>(v);
      }
    } else {
#pragma omp simd
      for (int64_t t = 0; t < n; ++t) {
        const scalar_t v = xs[t];
        if (kCopy) ys[t] = v;
        mean[t] += static_cast<acc_t>(v);
      }
    }
  }
#pragma omp simd
  for (int64_t t = 0; t < n; ++t) mean[t] *= inv_G;
  for (int64_t g = 0; g < G; ++g) {
    const scalar_t* __restrict__ xs = x + g * gs;
    if (g == 0) {
#pragma omp simd
      for (int64_t t = 0; t < n; ++t) {
        const acc_t d = static_cast<acc_t>(xs[t]) - mean[t];
        var[t] = d * d;
      }
    } else {
#pragma omp simd
      for (int64_t t = 0; t < n; ++t) {
        const acc_t d = static_cast<acc_t>(xs[t]) - mean[t];
        var[t] += d * d;
      }
    }
  }
#pragma omp simd
  for (int64_t t = 0; t < n; ++t) var[t] *= inv_G;
}

// rs[t] = 1 / sqrt(var[t] + eps) and, for the forward, the sum of sqrt(var[t] + eps).
// sqrt and division run on the slow divider unit (~1 cycle per float on AVX-512), which
// would dominate this kernel (G = 4 elements share one root); for float the AVX-512
// path uses rsqrt14 plus one Newton step (relative error ~1e-8, below float rounding
// of the inputs), with exact sqrt for the rare tiny/zero arguments where the estimate
// is not accurate. double always uses exact sqrt.
template <typename acc_t>
inline acc_t tile_rsqrt(const acc_t* __restrict__ var, acc_t eps, int64_t n, acc_t* __restrict__ rs) {
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t t = 0; t < n; ++t) {
    const acc_t sd = group_std<acc_t>(var[t], eps);
    sum += sd;
    rs[t] = acc_t(1) / sd;
  }
  return sum;
}

#if defined(__AVX512F__)
template <>
inline float tile_rsqrt<float>(const float* __restrict__ var, float eps, int64_t n, float* __restrict__ rs) {
  const __m512 veps = _mm512_set1_ps(eps), vzero = _mm512_setzero_ps();
  const __m512 half = _mm512_set1_ps(0.5f), three_halves = _mm512_set1_ps(1.5f);
  const __m512 tiny = _mm512_set1_ps(1e-30f);
  __m512 acc = _mm512_setzero_ps();
  int64_t t = 0;
  for (; t + 16 <= n; t += 16) {
    // max(0, var): on a NaN operand MAXPS returns its second one, so a NaN var stays NaN
    const __m512 v = _mm512_add_ps(_mm512_max_ps(vzero, _mm512_loadu_ps(var + t)), veps);
    __m512 r = _mm512_rsqrt14_ps(v);
    // Newton: r <- r * (1.5 - 0.5 * v * r * r)
    const __m512 hvr = _mm512_mul_ps(_mm512_mul_ps(half, v), r);
    r = _mm512_mul_ps(r, _mm512_fnmadd_ps(hvr, r, three_halves));
    __m512 sd = _mm512_mul_ps(v, r);
    const __mmask16 small = _mm512_cmp_ps_mask(v, tiny, _CMP_LT_OQ);
    if (small) {  // exact for zero/denormal/tiny arguments (e.g. eps = 0 with G = 1)
      const __m512 exact = _mm512_sqrt_ps(v);
      sd = _mm512_mask_blend_ps(small, sd, exact);
      r = _mm512_mask_blend_ps(small, r, _mm512_div_ps(_mm512_set1_ps(1.f), exact));
    }
    acc = _mm512_add_ps(acc, sd);
    _mm512_storeu_ps(rs + t, r);
  }
  float sum = _mm512_reduce_add_ps(acc);
  for (; t < n; ++t) {
    const float sd = group_std<float>(var[t], eps);
    sum += sd;
    rs[t] = 1.f / sd;
  }
  return sum;
}
#endif

// ---------------------------------------------------------------- fixed-G fast path
// For the common group sizes (G <= kMaxFusedG) the G values of a position fit in
// registers: one loop over the positions t of the tile reads each member once, writes
// it to y (forward) or writes dx (backward), and computes the centred moments from the
// registers, so nothing goes through a stack array between passes. It does not stream
// its stores: on the AVX2 EPYC VM plain stores measured faster at 128 MiB (forward
// 13 ms vs 28 ms with streaming, backward 18 ms vs 37 ms). The loop is
// vectorised over t (8 floats per AVX2 register, 16 with AVX-512); G is a template
// argument so the member loop unrolls. Same math as the tile passes above (exact
// two-pass centring, eps inside the root).
constexpr int kMaxFusedG = 8;

template <int kG, typename scalar_t, typename acc_t>
inline acc_t fused_forward_tile(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t gs,
                                int64_t gys, int64_t n, acc_t inv_G, acc_t eps) {
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t t = 0; t < n; ++t) {
    acc_t v[kG];
    acc_t mu = 0;
    for (int g = 0; g < kG; ++g) {
      const scalar_t s = x[g * gs + t];
      y[g * gys + t] = s;
      v[g] = static_cast<acc_t>(s);
      mu += v[g];
    }
    mu *= inv_G;
    acc_t var = 0;
    for (int g = 0; g < kG; ++g) {
      const acc_t d = v[g] - mu;
      var += d * d;
    }
    sum += group_std<acc_t>(var * inv_G, eps);
  }
  return sum;
}

// dx_g = dy_g + cf / std * (x_g - mu), cf = S / (L G) for this (m, f).
template <int kG, typename scalar_t, typename acc_t>
inline void fused_backward_tile(const scalar_t* __restrict__ x, const scalar_t* __restrict__ dy,
                                scalar_t* __restrict__ dx, int64_t gs, int64_t gys, int64_t n, acc_t inv_G,
                                acc_t eps, acc_t cf) {
#pragma omp simd
  for (int64_t t = 0; t < n; ++t) {
    acc_t v[kG];
    acc_t mu = 0;
    for (int g = 0; g < kG; ++g) {
      v[g] = static_cast<acc_t>(x[g * gs + t]);
      mu += v[g];
    }
    mu *= inv_G;
    acc_t var = 0;
    for (int g = 0; g < kG; ++g) {
      const acc_t d = v[g] - mu;
      var += d * d;
    }
    const acc_t r = cf / group_std<acc_t>(var * inv_G, eps);
    for (int g = 0; g < kG; ++g) {
      dx[g * gs + t] = static_cast<scalar_t>(
          grad_input<acc_t>(static_cast<acc_t>(dy[g * gys + t]), v[g], mu, r));
    }
  }
}

template <typename scalar_t, typename acc_t>
struct FusedTiles {
  acc_t (*forward)(const scalar_t*, scalar_t*, int64_t, int64_t, int64_t, acc_t, acc_t) = nullptr;
  void (*backward)(const scalar_t*, const scalar_t*, scalar_t*, int64_t, int64_t, int64_t, acc_t, acc_t,
                   acc_t) = nullptr;
};

// The fused tile functions for this G, or nullptrs where the tile passes are used: other
// group sizes, and half/bfloat16 (their conversions do not vectorise in this form).
template <typename scalar_t, typename acc_t, int kG = 1>
FusedTiles<scalar_t, acc_t> fused_tiles_for(int64_t G) {
  if constexpr (!std::is_same_v<scalar_t, acc_t> || kG > kMaxFusedG) {
    return {};
  } else {
    if (G != kG) return fused_tiles_for<scalar_t, acc_t, kG + 1>(G);
    return {&fused_forward_tile<kG, scalar_t, acc_t>, &fused_backward_tile<kG, scalar_t, acc_t>};
  }
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& x, at::Tensor& y, const Geometry& geo, double eps_d) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  const acc_t inv_G = acc_t(1) / static_cast<acc_t>(geo.G);
  const acc_t eps = static_cast<acc_t>(eps_d);
  const int64_t items = geo.M * geo.F * geo.nchunks;
  const int64_t gs = geo.M * geo.C * geo.HW, gys = geo.M * (geo.C + geo.F) * geo.HW;
  std::vector<double> partial(static_cast<size_t>(items), 0.0);
  const bool stream = y.nbytes() >= stream_min_bytes();
  const auto fused = fused_tiles_for<scalar_t, acc_t>(geo.G).forward;

  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    alignas(64) acc_t mean[kTile];
    alignas(64) acc_t var[kTile];
    alignas(64) acc_t rs[kTile];
    for (int64_t it = begin; it < end; ++it) {
      const int64_t chunk = it % geo.nchunks;
      const int64_t mf = it / geo.nchunks;
      const int64_t m = mf / geo.F, f = mf % geo.F;
      const scalar_t* xb = xp + member_offset(0, m, f, geo.M, geo.C, geo.c, geo.HW);
      scalar_t* yb = yp + member_offset(0, m, f, geo.M, geo.C + geo.F, geo.c, geo.HW);
      const int64_t j_end = std::min(geo.L, (chunk + 1) * geo.chunk);
      double total = 0.0;
      for (int64_t j = chunk * geo.chunk; j < j_end; j += kTile) {
        const int64_t n = std::min(kTile, j_end - j);
        if (fused != nullptr) {
          total += static_cast<double>(fused(xb + j, yb + j, gs, gys, n, inv_G, eps));
          continue;
        }
        if (stream) {
          // moments first, then the copy from L1 with streaming stores
          tile_moments<scalar_t, acc_t, false>(xb + j, nullptr, gs, gys, geo.G, n, inv_G, mean, var);
          for (int64_t g = 0; g < geo.G; ++g) {
            stream_copy(xb + j + g * gs, yb + j + g * gys, static_cast<size_t>(n) * sizeof(scalar_t));
          }
        } else {
          tile_moments<scalar_t, acc_t, true>(xb + j, yb + j, gs, gys, geo.G, n, inv_G, mean, var);
        }
        total += static_cast<double>(tile_rsqrt<acc_t>(var, eps, n, rs));
      }
      partial[it] = total;
    }
    if (stream) stream_fence();
  });

  // s[m, f]: the chunk partials summed in a fixed order, then broadcast over the F
  // stat channels of every member of the group.
  std::vector<scalar_t> stat(static_cast<size_t>(geo.M * geo.F));
  for (int64_t mf = 0; mf < geo.M * geo.F; ++mf) {
    double s = 0.0;
    for (int64_t ch = 0; ch < geo.nchunks; ++ch) s += partial[mf * geo.nchunks + ch];
    stat[mf] = static_cast<scalar_t>(geo.L > 0 ? s / static_cast<double>(geo.L) : 0.0);
  }
  at::parallel_for(0, geo.N * geo.F, std::max<int64_t>(1, 16384 / std::max<int64_t>(geo.HW, 1)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t nf = begin; nf < end; ++nf) {
      const int64_t n = nf / geo.F, f = nf % geo.F;
      const int64_t g = n / geo.M, m = n % geo.M;
      const scalar_t v = stat[m * geo.F + f];
      scalar_t* __restrict__ out = yp + stat_offset(g, m, f, geo.M, geo.C, geo.F, geo.HW);
      std::fill(out, out + geo.HW, v);
    }
  });
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& dy, const at::Tensor& x, at::Tensor& dx, const Geometry& geo,
                     double eps_d) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
  scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
  const acc_t inv_G = acc_t(1) / static_cast<acc_t>(geo.G);
  const acc_t eps = static_cast<acc_t>(eps_d);
  const int64_t MF = geo.M * geo.F;
  const int64_t gs = geo.M * geo.C * geo.HW, gys = geo.M * (geo.C + geo.F) * geo.HW;

  // coef[m, f] = S[m, f] / L / G, S = sum of dy's stat channel over the group's members
  // and (h, w). Summed in double, in a fixed order.
  std::vector<acc_t> coef(static_cast<size_t>(MF));
  at::parallel_for(0, MF, std::max<int64_t>(1, 16384 / std::max<int64_t>(geo.G * geo.HW, 1)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t mf = begin; mf < end; ++mf) {
      const int64_t m = mf / geo.F, f = mf % geo.F;
      double S = 0.0;
      for (int64_t g = 0; g < geo.G; ++g) {
        const scalar_t* __restrict__ s = dyp + stat_offset(g, m, f, geo.M, geo.C, geo.F, geo.HW);
        acc_t part = 0;
#pragma omp simd reduction(+ : part)
        for (int64_t p = 0; p < geo.HW; ++p) part += static_cast<acc_t>(s[p]);
        S += static_cast<double>(part);
      }
      coef[mf] = static_cast<acc_t>(geo.L > 0 ? S / static_cast<double>(geo.L) / static_cast<double>(geo.G)
                                              : 0.0);
    }
  });

  const int64_t items = MF * geo.nchunks;
  const bool stream = dx.nbytes() >= stream_min_bytes();
  const auto fused = fused_tiles_for<scalar_t, acc_t>(geo.G).backward;
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    alignas(64) acc_t mean[kTile];
    alignas(64) acc_t var[kTile];
    alignas(64) acc_t rs[kTile];
    alignas(64) scalar_t buf[kTile];
    for (int64_t it = begin; it < end; ++it) {
      const int64_t chunk = it % geo.nchunks;
      const int64_t mf = it / geo.nchunks;
      const int64_t m = mf / geo.F, f = mf % geo.F;
      const acc_t cf = coef[mf];
      const scalar_t* xb = xp + member_offset(0, m, f, geo.M, geo.C, geo.c, geo.HW);
      const scalar_t* gb = dyp + member_offset(0, m, f, geo.M, geo.C + geo.F, geo.c, geo.HW);
      scalar_t* ob = dxp + member_offset(0, m, f, geo.M, geo.C, geo.c, geo.HW);
      const int64_t j_end = std::min(geo.L, (chunk + 1) * geo.chunk);
      for (int64_t j = chunk * geo.chunk; j < j_end; j += kTile) {
        const int64_t n = std::min(kTile, j_end - j);
        const scalar_t* xt = xb + j;
        const scalar_t* gt = gb + j;
        scalar_t* ot = ob + j;
        if (fused != nullptr) {
          fused(xt, gt, ot, gs, gys, n, inv_G, eps, cf);
          continue;
        }
        tile_moments<scalar_t, acc_t, false>(xt, nullptr, gs, gys, geo.G, n, inv_G, mean, var);
        tile_rsqrt<acc_t>(var, eps, n, rs);
#pragma omp simd
        for (int64_t t = 0; t < n; ++t) rs[t] *= cf;  // r = S / (L G std): 1/G folded into coef
        for (int64_t g = 0; g < geo.G; ++g) {
          const scalar_t* __restrict__ xs = xt + g * gs;
          const scalar_t* __restrict__ gg = gt + g * gys;
          // streaming: compute into an L1 buffer, then stream it out
          scalar_t* __restrict__ os = stream ? buf : ot + g * gs;
#pragma omp simd
          for (int64_t t = 0; t < n; ++t) {
            os[t] = static_cast<scalar_t>(
                grad_input<acc_t>(static_cast<acc_t>(gg[t]), static_cast<acc_t>(xs[t]), mean[t], rs[t]));
          }
          if (stream) stream_copy(buf, ot + g * gs, static_cast<size_t>(n) * sizeof(scalar_t));
        }
      }
    }
    if (stream) stream_fence();
  });
}

at::Tensor minibatch_std_forward(const at::Tensor& x_in, int64_t G, int64_t F, double eps) {
  check_args(x_in, G, F, "fastgan_C::minibatch_std_forward");
  const at::Tensor x = x_in.contiguous();
  const Geometry geo = make_geometry(x, G, F);
  at::Tensor y = pooled_empty({geo.N, geo.C + F, geo.H, geo.W}, x.options());
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "minibatch_std_forward",
                                  [&] { forward_kernel<scalar_t>(x, y, geo, eps); });
  return y;
}

at::Tensor minibatch_std_backward(const at::Tensor& dy_in, const at::Tensor& x_in, int64_t G, int64_t F,
                                  double eps) {
  check_args(x_in, G, F, "fastgan_C::minibatch_std_backward");
  TORCH_CHECK(dy_in.dim() == 4 && dy_in.size(0) == x_in.size(0) && dy_in.size(1) == x_in.size(1) + F &&
                  dy_in.size(2) == x_in.size(2) && dy_in.size(3) == x_in.size(3),
              "fastgan_C::minibatch_std_backward: grad must have shape [N, C + F, H, W] = [",
              x_in.size(0), ", ", x_in.size(1) + F, ", ", x_in.size(2), ", ", x_in.size(3), "], got ",
              dy_in.sizes());
  TORCH_CHECK(dy_in.scalar_type() == x_in.scalar_type(), "fastgan_C::minibatch_std_backward: grad dtype ",
              dy_in.scalar_type(), " differs from x dtype ", x_in.scalar_type());
  TORCH_CHECK(dy_in.device().is_cpu(), "fastgan_C::minibatch_std_backward: grad must be a CPU tensor");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor dy = dy_in.contiguous();
  const Geometry geo = make_geometry(x, G, F);
  at::Tensor dx = pooled_empty(x.sizes(), x.options());
  if (dx.numel() == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "minibatch_std_backward",
                                  [&] { backward_kernel<scalar_t>(dy, x, dx, geo, eps); });
  return dx;
}

}  // namespace
}  // namespace fastgan

TORCH_LIBRARY_FRAGMENT(fastgan_C, m) {
  m.def("minibatch_std_forward(Tensor x, int G, int F, float eps) -> Tensor");
  m.def("minibatch_std_backward(Tensor grad, Tensor x, int G, int F, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastgan_C, CPU, m) {
  m.impl("minibatch_std_forward", &fastgan::minibatch_std_forward);
  m.impl("minibatch_std_backward", &fastgan::minibatch_std_backward);
}
