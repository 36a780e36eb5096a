// Transposed convolution with a fused epilogue, CPU (groups = 1, dilation = 1).
//
//   y[n,co,oh,ow] = epi( b[co] + sum_{ci,a,c} x[n,ci,ih,iw] w[ci,co,a,c] ),
//                   oh = ih*sh - ph + a,  ow = iw*sw - pw + c
//
// Forward: one matrix product per chunk of samples
//     cols[(co,a,c), (n,ih,iw)] = W^T[(co,a,c), ci] . X[ci, (n,ih,iw)]
// (all useful multiply-adds, no zero insertion), then a phase-decomposed gather: output
// phase (rh, rw) = ((oh+ph) mod sh, (ow+pw) mod sw) only reads taps a = rh + j*sh,
// c = rw + l*sw, and for a fixed tap the input column iw = (ow+pw)/sw - l walks
// contiguously along the phase's outputs, so the gather adds contiguous rows. Every
// output element is written exactly once, with bias, activation, gain and clamp applied
// in that same write. The work is cut into chunks of samples (or of output channels when
// the batch's pixels are fewer than the weight's columns) so cols stays in cache; with
// enough chunks they run in parallel, one thread each. A 1x1 input without padding (the
// nz projection) is a single GEMM whose result already is the output.
//
// Backward (grad_pre = grad_y * act'(.) * gain * clamp mask, recovered from the saved
// output, see csrc/include/conv_transpose.h):
//     G[(co,a,c), (n,ih,iw)] = grad_pre[n, co, ih*sh-ph+a, iw*sw-pw+c]   (im2col)
//     grad_x[ci, (n,ih,iw)]  = W[ci, (co,a,c)] . G
//     grad_w[ci, (co,a,c)]  += X[ci, (n,ih,iw)] . G^T
//     grad_b[co]             = sum grad_pre[:, co]
// (grad_pre and grad_b in one fused pass.) Each direction's products can also run on
// the library's (oneDNN) convolutions, NHWC or NCHW, with our epilogue or grad_pre pass
// around them; which path is fastest depends on the machine as much as on the layer, so
// large layers time the candidates on their first call and keep the fastest (choose_path,
// csrc/include/path_tuner.h). Tunables for experiments: FASTGAN_CT_FWD, FASTGAN_CT_BWD,
// FASTGAN_CT_TUNE, FASTGAN_CT_TUNE_MIN_MFLOP, FASTGAN_CT_CHUNK_KB, FASTGAN_CT_PAR,
// FASTGAN_CT_GATHER.
// float16 / bfloat16 run in float32 (accumulation and epilogue), rounded once at the end.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "conv_transpose.h"
#include "output_pool.h"
#include "path_tuner.h"

// Let GCC if-convert the epilogue's float selects (relu, clamp, ...) into vector
// min/max/blend: without this, -ftrapping-math keeps them as branches and the loops
// stay scalar. Nothing here relies on floating-point traps.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

namespace fastgan {
namespace conv_transpose {
namespace {

// exp for float, vectorisable (no libm call): 2^k * p(r), r = x - k ln2, |r| <= ln2/2,
// degree-6 Taylor polynomial; relative error ~2e-7 (a few ulp), saturating outside
// [-87, 88]. Used for tanh/sigmoid in the float epilogue; double uses libm.
inline float fast_expf(float x) {
  x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
  const float kf = x * 1.44269504088896341f;
  const float k = float(int32_t(kf + (kf >= 0.f ? 0.5f : -0.5f)));  // round half away (vectorises)
  const float r = (x - k * 0.693145751953125f) - k * 1.428606765330187045e-06f;
  float p = 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t bits = (int32_t(k) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

template <typename T, int ACT>
__attribute__((always_inline)) inline T fast_epilogue(T v, T slope, T gain, T clamp) {
  return epilogue<T>(v, ACT, slope, gain, clamp);
}
template <>
inline float fast_epilogue<float, kTanh>(float v, float slope, float gain, float clamp) {
  // tanh(v) = sign(v) (1 - e) / (1 + e), e = exp(-2|v|) in (0, 1]: no overflow
  const float e = fast_expf(-2.f * (v < 0.f ? -v : v));
  float t = (1.f - e) / (1.f + e);
  t = v < 0.f ? -t : t;
  float z = t * gain;
  if (clamp >= 0.f) z = z < -clamp ? -clamp : (z > clamp ? clamp : z);
  return z;
}
template <>
inline float fast_epilogue<float, kSigmoid>(float v, float slope, float gain, float clamp) {
  float z = gain / (1.f + fast_expf(-v));
  if (clamp >= 0.f) z = z < -clamp ? -clamp : (z > clamp ? clamp : z);
  return z;
}

// f(std::integral_constant<int, ACT>{}) for the runtime activation code: the one switch
// for every loop that is compiled per activation.
template <typename F>
inline void with_act(int64_t act, F&& f) {
  switch (act) {
    case kRelu: f(std::integral_constant<int, kRelu>{}); break;
    case kLrelu: f(std::integral_constant<int, kLrelu>{}); break;
    case kTanh: f(std::integral_constant<int, kTanh>{}); break;
    case kSigmoid: f(std::integral_constant<int, kSigmoid>{}); break;
    default: f(std::integral_constant<int, kLinear>{}); break;
  }
}

// A tuning override FASTGAN_CT_*=a|b, read once per process by the caller's static:
// 0 for `a`, 1 for `b`, -1 when unset (or anything else).
int forced_choice(const char* env, const char* a, const char* b) {
  const char* e = std::getenv(env);
  if (e && std::string(e) == a) return 0;
  if (e && std::string(e) == b) return 1;
  return -1;
}

struct Geom {
  int64_t N, Cin, Cout, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw;
  bool plain;  // 1x1 input, no padding: the product is the output
  int64_t HW() const { return H * W; }
  int64_t Cokk() const { return Cout * kh * kw; }
};

Geom make_geom(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride, at::IntArrayRef padding,
               at::IntArrayRef output_padding, const char* fn) {
  TORCH_CHECK(x.dim() == 4, fn, ": expected a 4-D input [N, C_in, H, W], got ", x.sizes());
  TORCH_CHECK(w.dim() == 4, fn, ": expected a 4-D weight [C_in, C_out, kH, kW], got ", w.sizes());
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && output_padding.size() == 2, fn,
              ": stride, padding and output_padding must have 2 entries each");
  TORCH_CHECK(x.size(1) == w.size(0), fn, ": weight of size ", w.sizes(), " expects input with ", w.size(0),
              " channels, got input of size ", x.sizes());
  Geom g;
  g.N = x.size(0); g.Cin = x.size(1); g.H = x.size(2); g.W = x.size(3);
  g.Cout = w.size(1); g.kh = w.size(2); g.kw = w.size(3);
  g.sh = stride[0]; g.sw = stride[1]; g.ph = padding[0]; g.pw = padding[1];
  TORCH_CHECK(g.sh > 0 && g.sw > 0, fn, ": stride must be positive, got ", stride);
  TORCH_CHECK(g.ph >= 0 && g.pw >= 0, fn, ": padding must be non-negative, got ", padding);
  TORCH_CHECK(output_padding[0] >= 0 && output_padding[1] >= 0 && output_padding[0] < g.sh &&
                  output_padding[1] < g.sw,
              fn, ": output_padding must be smaller than stride (dilation is 1), got output_padding ",
              output_padding, " and stride ", stride);
  g.Ho = (g.H - 1) * g.sh - 2 * g.ph + g.kh + output_padding[0];
  g.Wo = (g.W - 1) * g.sw - 2 * g.pw + g.kw + output_padding[1];
  TORCH_CHECK(g.Ho > 0 && g.Wo > 0, fn, ": the output would be empty (", g.Ho, " x ", g.Wo, ")");
  g.plain = g.H == 1 && g.W == 1 && g.ph == 0 && g.pw == 0 && output_padding[0] == 0 && output_padding[1] == 0;
  return g;
}

// Items per chunk, at most `max_per`, so that the chunks split evenly over the threads:
// chunks run one per thread in order (at::parallel_for hands each thread a contiguous
// range), so 7 chunks of 10 samples on 2 threads gave one core 40 samples and the other
// 24. Rounding the chunk count up to a multiple of the thread count (8 chunks of 8)
// keeps every core busy until the end.
int64_t balanced_chunk(int64_t total, int64_t max_per, int64_t threads) {
  max_per = std::max<int64_t>(1, std::min(total, max_per));
  int64_t nchunks = (total + max_per - 1) / max_per;
  if (threads > 1 && nchunks >= threads) nchunks = (nchunks + threads - 1) / threads * threads;
  return std::max<int64_t>(1, (total + nchunks - 1) / nchunks);
}

// Samples per chunk: keep the cols block around `budget` bytes (env FASTGAN_CT_CHUNK_KB
// overrides, for tuning), at least one sample, balanced over the threads.
int64_t chunk_samples(const Geom& g, int64_t elem) {
  int64_t budget = 2 << 20;
  if (const char* env = std::getenv("FASTGAN_CT_CHUNK_KB")) budget = std::max<int64_t>(1, std::atoll(env)) << 10;
  int64_t per = g.Cokk() * g.HW() * elem;
  return balanced_chunk(g.N, budget / std::max<int64_t>(per, 1), at::get_num_threads());
}

// x [N, Cin, H, W] -> X [Cin, N*H*W] (channel-major, so the whole batch is one GEMM).
at::Tensor channel_major(const at::Tensor& x) {
  return x.permute({1, 0, 2, 3}).contiguous().view({x.size(1), -1});
}

// The phase decomposition as index tables (computed once per call, so the inner loops
// are plain contiguous adds). Output row oh reads the kernel rows a = rh + j*sh with
// input row ih = (oh+ph)/sh - j; output column phase rw (columns ow0, ow0+sw, ...)
// reads the kernel columns c = rw + l*sw, where output m of the phase reads input
// column q0 + m - l (valid for m in [mlo, mhi)).
struct HTap { int64_t a, ih; };
struct WTap { int64_t c, l, mlo, mhi; };
struct WPhase { int64_t ow0, M, q0, first, count; };

struct HPhase { int64_t oh0, T, qh0; std::vector<int64_t> a, j; };

struct PhaseTables {
  std::vector<int64_t> hfirst, hcount;  // per oh, into htaps
  std::vector<HTap> htaps;
  std::vector<WPhase> wph;               // per rw with outputs
  std::vector<WTap> wtaps;
  std::vector<HPhase> hph;               // per rh with outputs (rows oh0 + t*sh, qh = qh0 + t)
  std::vector<int64_t> row_phase, row_t; // per oh: index into hph, and t
  bool planes;                           // every column phase has exactly W outputs
  explicit PhaseTables(const Geom& g) {
    row_phase.assign(g.Ho, 0); row_t.assign(g.Ho, 0);
    for (int64_t rh = 0; rh < g.sh; ++rh) {
      const int64_t oh0 = ((rh - g.ph) % g.sh + g.sh) % g.sh;
      if (oh0 >= g.Ho) continue;
      HPhase hp{oh0, (g.Ho - oh0 + g.sh - 1) / g.sh, (oh0 + g.ph) / g.sh, {}, {}};
      for (int64_t a = rh; a < g.kh; a += g.sh) { hp.a.push_back(a); hp.j.push_back((a - rh) / g.sh); }
      for (int64_t t = 0; t < hp.T; ++t) { row_phase[oh0 + t * g.sh] = int64_t(hph.size()); row_t[oh0 + t * g.sh] = t; }
      hph.push_back(hp);
    }
    for (int64_t oh = 0; oh < g.Ho; ++oh) {
      const int64_t th = oh + g.ph, rh = th % g.sh, qh = th / g.sh;
      hfirst.push_back(int64_t(htaps.size()));
      for (int64_t a = rh; a < g.kh; a += g.sh) {
        const int64_t ih = qh - (a - rh) / g.sh;
        if (ih >= 0 && ih < g.H) htaps.push_back({a, ih});
      }
      hcount.push_back(int64_t(htaps.size()) - hfirst.back());
    }
    for (int64_t rw = 0; rw < g.sw; ++rw) {
      const int64_t ow0 = ((rw - g.pw) % g.sw + g.sw) % g.sw;
      if (ow0 >= g.Wo) continue;
      WPhase ph{ow0, (g.Wo - ow0 + g.sw - 1) / g.sw, (ow0 + g.pw) / g.sw, int64_t(wtaps.size()), 0};
      for (int64_t c = rw; c < g.kw; c += g.sw) {
        const int64_t l = (c - rw) / g.sw;
        const int64_t mlo = std::max<int64_t>(0, l - ph.q0), mhi = std::min<int64_t>(ph.M, g.W + l - ph.q0);
        if (mlo < mhi) wtaps.push_back({c, l, mlo, mhi});
      }
      ph.count = int64_t(wtaps.size()) - ph.first;
      wph.push_back(ph);
    }
    planes = g.W >= 4;
    for (const WPhase& ph : wph) planes = planes && ph.M == g.W;
  }
};

// The same gather, phase plane by phase plane: when a column phase has exactly W
// outputs (k = 2s, p = s/2 and friends: all GAN upsampling layers), a tap's
// contribution to plane (rh, rw) is one contiguous run of the cols row (a flat loop over
// whole rows); the few positions whose input column falls outside [0, W) are saved
// before and restored after, so the result is bit-identical to the row-by-row gather.
template <typename T, int ACT>
void gather_epilogue_planes(const Geom& g, const PhaseTables& pt, const T* cols, int64_t ts, int64_t ss,
                            const T* bias, T* y, int64_t n0, int64_t nb, int64_t co0, int64_t cb, T slope, T gain, T clamp) {
  const int64_t W = g.W;
  at::parallel_for(0, nb * cb, 1, [&](int64_t begin, int64_t end) {
    const int64_t nwp = int64_t(pt.wph.size()), nhp = int64_t(pt.hph.size());
    std::vector<T> planes(nhp * nwp * (g.H + g.kh + 1) * W), row(g.Wo), saved(2 * (g.H + g.kh + 1) * W + 16);
    std::vector<int64_t> plane_off(nhp * nwp);
    {
      int64_t off = 0;
      for (int64_t h = 0; h < nhp; ++h)
        for (int64_t v = 0; v < nwp; ++v) { plane_off[h * nwp + v] = off; off += pt.hph[h].T * W; }
    }
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t co = co0 + idx / nb, nl = idx % nb;
      const T bv = bias ? bias[co] : T(0);
      const T* cbase = cols + (co - co0) * g.kh * g.kw * ts + nl * ss;
      for (int64_t h = 0; h < nhp; ++h) {
        const HPhase& hp = pt.hph[h];
        for (int64_t v = 0; v < nwp; ++v) {
          const WPhase& wp = pt.wph[v];
          T* P = planes.data() + plane_off[h * nwp + v];
          const int64_t n = hp.T * W;
          for (int64_t i = 0; i < n; ++i) P[i] = bv;
          for (size_t ia = 0; ia < hp.a.size(); ++ia) {
            const int64_t a = hp.a[ia], j = hp.j[ia];
            const int64_t tlo = std::max<int64_t>(0, j - hp.qh0), thi = std::min<int64_t>(hp.T, g.H + j - hp.qh0);
            if (tlo >= thi) continue;
            for (int64_t k = 0; k < wp.count; ++k) {
              const WTap& wt = pt.wtaps[wp.first + k];
              // P[t*W + m] += src[t*W + m] for t in [tlo, thi), m in [mlo, mhi)
              const T* src = cbase + (a * g.kw + wt.c) * ts + (hp.qh0 - j) * W + (wp.q0 - wt.l);
              const int64_t f0 = tlo * W + wt.mlo, f1 = (thi - 1) * W + wt.mhi;
              int64_t ns = 0;
              for (int64_t t = tlo; t < thi; ++t) {  // save the wrapped-around positions
                for (int64_t m = 0; m < wt.mlo; ++m) if (t * W + m >= f0 && t * W + m < f1) saved[ns++] = P[t * W + m];
                for (int64_t m = wt.mhi; m < W; ++m) if (t * W + m >= f0 && t * W + m < f1) saved[ns++] = P[t * W + m];
              }
#pragma omp simd
              for (int64_t f = f0; f < f1; ++f) P[f] += src[f];
              ns = 0;
              for (int64_t t = tlo; t < thi; ++t) {
                for (int64_t m = 0; m < wt.mlo; ++m) if (t * W + m >= f0 && t * W + m < f1) P[t * W + m] = saved[ns++];
                for (int64_t m = wt.mhi; m < W; ++m) if (t * W + m >= f0 && t * W + m < f1) P[t * W + m] = saved[ns++];
              }
            }
          }
        }
      }
      T* yplane = y + ((n0 + nl) * g.Cout + co) * g.Ho * g.Wo;
      for (int64_t oh = 0; oh < g.Ho; ++oh) {
        const int64_t h = pt.row_phase[oh], t = pt.row_t[oh];
        for (int64_t v = 0; v < nwp; ++v) {
          const T* P = planes.data() + plane_off[h * nwp + v] + t * W;
          T* r = row.data() + pt.wph[v].ow0;
          const int64_t sw = g.sw;
          for (int64_t m = 0; m < W; ++m) r[m * sw] = P[m];
        }
        T* yrow = yplane + oh * g.Wo;
        const T* r = row.data();
#pragma omp simd
        for (int64_t i = 0; i < g.Wo; ++i) yrow[i] = fast_epilogue<T, ACT>(r[i], slope, gain, clamp);
      }
    }
  });
}

// Gather + epilogue for samples [n0, n0+nb) from cols: element (tap, nl, ih, iw) at
// cols[tap*ts + nl*ss + ih*W + iw] (ts, ss: tap and sample strides of the layout).
template <typename T, int ACT>
void gather_epilogue(const Geom& g, const PhaseTables& pt, const T* cols, int64_t ts, int64_t ss, const T* bias,
                     T* y, int64_t n0, int64_t nb, int64_t co0, int64_t cb, T slope, T gain, T clamp) {
  // co-major order: the kh*kw cols rows of one output channel stay in cache across samples
  at::parallel_for(0, nb * cb, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> row(g.Wo), acc(g.W + g.kw + 2);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t co = co0 + idx / nb, nl = idx % nb;
      const T bv = bias ? bias[co] : T(0);
      const T* cbase = cols + (co - co0) * g.kh * g.kw * ts + nl * ss;
      T* yrow_base = y + ((n0 + nl) * g.Cout + co) * g.Ho * g.Wo;
      for (int64_t oh = 0; oh < g.Ho; ++oh) {
        const HTap* ht = pt.htaps.data() + pt.hfirst[oh];
        const int64_t nh = pt.hcount[oh];
        for (const WPhase& ph : pt.wph) {
          T* a_ = g.sw == 1 ? row.data() : acc.data();
          const int64_t M = ph.M;
          for (int64_t m = 0; m < M; ++m) a_[m] = bv;
          for (int64_t i = 0; i < nh; ++i) {
            const T* rbase = cbase + ht[i].a * g.kw * ts + ht[i].ih * g.W + ph.q0;
            const WTap* wt = pt.wtaps.data() + ph.first;
            for (int64_t j = 0; j < ph.count; ++j) {
              const T* src = rbase + wt[j].c * ts - wt[j].l;
              const int64_t mhi = wt[j].mhi;
#pragma omp simd
              for (int64_t m = wt[j].mlo; m < mhi; ++m) a_[m] += src[m];
            }
          }
          if (g.sw != 1) {
            T* r = row.data() + ph.ow0;
            for (int64_t m = 0; m < M; ++m) r[m * g.sw] = a_[m];
          }
        }
        T* yrow = yrow_base + oh * g.Wo;
        const T* r = row.data();
        if (ACT == kLinear && clamp < T(0)) {
#pragma omp simd
          for (int64_t i = 0; i < g.Wo; ++i) yrow[i] = r[i] * gain;
        } else {
#pragma omp simd
          for (int64_t i = 0; i < g.Wo; ++i) yrow[i] = fast_epilogue<T, ACT>(r[i], slope, gain, clamp);
        }
      }
    }
  });
}

template <typename T, int ACT>
void gather(const Geom& g, const PhaseTables& pt, const T* cols, int64_t ts, int64_t ss, const T* bias, T* y,
            int64_t n0, int64_t nb, int64_t co0, int64_t cb, T slope, T gain, T clamp) {
  // FASTGAN_CT_GATHER=rows forces the row-by-row gather (tests, tuning)
  static const int mode = forced_choice("FASTGAN_CT_GATHER", "planes", "rows") == 1 ? 1 : 0;
  if (pt.planes && mode == 0) gather_epilogue_planes<T, ACT>(g, pt, cols, ts, ss, bias, y, n0, nb, co0, cb, slope, gain, clamp);
  else gather_epilogue<T, ACT>(g, pt, cols, ts, ss, bias, y, n0, nb, co0, cb, slope, gain, clamp);
}

// In-place epilogue on y viewed as [N, Cout, P] (P = Ho*Wo).
template <typename T, int ACT>
void epilogue_inplace(const Geom& g, T* y, const T* bias, T slope, T gain, T clamp) {
  const int64_t P = g.Ho * g.Wo;
  at::parallel_for(0, g.N * g.Cout, 16, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const T bv = bias ? bias[idx % g.Cout] : T(0);
      T* p = y + idx * P;
#pragma omp simd
      for (int64_t i = 0; i < P; ++i) p[i] = fast_epilogue<T, ACT>(p[i] + bv, slope, gain, clamp);
    }
  });
}

// The direct forward for few output channels (forward_direct).
#include "conv_transpose_direct.h"

template <typename T>
void dispatch_gather(int64_t act, const Geom& g, const PhaseTables& pt, const T* cp, int64_t ts, int64_t ss,
                     const T* bias, T* yp, int64_t n0, int64_t nb, int64_t co0, int64_t cb, T slope, T gain,
                     T clamp) {
  with_act(act, [&](auto a) {
    gather<T, decltype(a)::value>(g, pt, cp, ts, ss, bias, yp, n0, nb, co0, cb, slope, gain, clamp);
  });
}

// Chunk over output channels instead of samples when the whole batch's pixels are
// fewer than the weight's columns (small images, many channels: DCGAN's 4x4 -> 8x8):
// then the weight is read once and the small channel-major input is what gets re-read,
// and in the backward each block of grad_w is written once instead of accumulated.
bool channel_chunks(const Geom& g) { return g.N * g.HW() < g.Cokk(); }

int64_t chunk_channels(const Geom& g, int64_t elem) {
  int64_t budget = 2 << 20;
  if (const char* env = std::getenv("FASTGAN_CT_CHUNK_KB")) budget = std::max<int64_t>(1, std::atoll(env)) << 10;
  const int64_t per = g.kh * g.kw * g.N * g.HW() * elem;
  return balanced_chunk(g.Cout, budget / std::max<int64_t>(per, 1), at::get_num_threads());
}

// Backward GEMMs vs the library: measured on the 2-core Xeon this was tuned on, oneDNN's
// convolution backward beats im2col + GEMM for mid-sized layers (channel product up to
// 256x128, inputs of at least 8x8, at least 16 output channels: DCGAN's 8->16 and 16->32),
// while the GEMM path wins for small images (4x4), few output channels (RGB) and wide
// layers (512x512). The rule for small layers and FASTGAN_CT_TUNE=0 (see choose_path).
bool use_library_backward(const Geom& g) {
  if (g.plain) return false;
  return g.Cin * g.Cout <= 256 * 128 && g.HW() >= 64 && g.Cout >= 16;
}

// Forward GEMM + gather vs the library: on the 2-core AVX2 EPYC VM oneDNN's own
// transposed convolution (its JIT kernels, bias fused) beat MKL sgemm + our gather for
// the wide mid-sized layers (DCGAN 512->256 4->8: 41 vs 60 ms, 256->128 8->16: 42 vs
// 73 ms, 128->64 16->32: 44 vs 63 ms; StyleGAN 512->512 16->32: 81 vs 95 ms, batch 64,
// epilogue included), while ours wins for the 1x1 projection (plain GEMM) and for few
// output channels (64->3: 12 vs 24 ms). So those layers run oneDNN's forward (on
// channels-last copies, see the bridge below) and apply bias, activation, gain and clamp
// while transposing its output back to NCHW: one pass over y, which the eager layer's
// activation pays too. The rule for small layers and FASTGAN_CT_TUNE=0 (see choose_path).
bool use_library_forward(const Geom& g) {
  if (g.plain) return false;
  return g.Cout >= 16 && g.Cin >= 16 && g.N * g.HW() >= 256;
}

// Per-sample products (no channel-major copy of x) when one sample's H*W is a wide
// enough GEMM; otherwise the whole chunk is one GEMM on the channel-major copy.
bool per_sample(const Geom& g) { return g.HW() >= 256; }

// ---------------------------------------------------------------- channels-last bridge
// oneDNN's JIT convolutions run natively on NHWC; given NCHW tensors it reorders them
// internally, and on the AVX2 EPYC VM the NHWC calls measured much faster (DCGAN
// 128->64 16->32 forward 28 ms vs 60 ms; grad_x as conv2d 27 vs 47 ms). PyTorch's own
// layout conversion is a generic strided copy (5x slower than a clone here), so the
// library paths convert with the blocked transposes below, and the forward's NHWC ->
// NCHW transpose applies the epilogue in the same pass.

// dst[c * R + r] = src[r * Cc + c] for one [R, Cc] plane, rows [r0, r1) (a tile that
// stays in L1). float with AVX2: 8x8 register transposes; otherwise element by element.
#if defined(__AVX2__)
inline void transpose8x8(const float* s, int64_t ls, float* d, int64_t ld) {
  const __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + ls), r2 = _mm256_loadu_ps(s + 2 * ls),
               r3 = _mm256_loadu_ps(s + 3 * ls), r4 = _mm256_loadu_ps(s + 4 * ls),
               r5 = _mm256_loadu_ps(s + 5 * ls), r6 = _mm256_loadu_ps(s + 6 * ls),
               r7 = _mm256_loadu_ps(s + 7 * ls);
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_storeu_ps(d + ld, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_storeu_ps(d + 2 * ld, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_storeu_ps(d + 3 * ld, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_storeu_ps(d + 4 * ld, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_storeu_ps(d + 5 * ld, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_storeu_ps(d + 6 * ld, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_storeu_ps(d + 7 * ld, _mm256_permute2f128_ps(u3, u7, 0x31));
}
#endif

template <typename T>
inline void transpose_rows(const T* src, T* dst, int64_t R, int64_t Cc, int64_t r0, int64_t r1) {
  int64_t c0 = 0;
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    if (r1 - r0 == 8) {
      for (; c0 + 8 <= Cc; c0 += 8) transpose8x8(src + r0 * Cc + c0, Cc, dst + c0 * R + r0, R);
    }
  }
#endif
  for (int64_t c = c0; c < Cc; ++c)
    for (int64_t r = r0; r < r1; ++r) dst[c * R + r] = src[r * Cc + c];
}

// src viewed as [N, R, Cc], dst as [N, Cc, R]: dst[n, c, r] = src[n, r, c], then
// row_op(dst row c, from r0, count) on each freshly written row segment while in cache.
template <typename T, typename RowOp>
void transpose_planes(const T* src, T* dst, int64_t N, int64_t R, int64_t Cc, RowOp row_op) {
  constexpr int64_t kB = 64;  // rows per tile: 64 x Cc floats of src, Cc x 64 of dst
  const int64_t rb = (R + kB - 1) / kB;
  at::parallel_for(0, N * rb, 1, [&](int64_t begin, int64_t end) {
    for (int64_t it = begin; it < end; ++it) {
      const int64_t n = it / rb, r0 = (it % rb) * kB, r1 = std::min(R, r0 + kB);
      const T* s = src + n * R * Cc;
      T* d = dst + n * R * Cc;
      for (int64_t r = r0; r < r1; r += 8) transpose_rows<T>(s, d, R, Cc, r, std::min(r1, r + 8));
      for (int64_t c = 0; c < Cc; ++c) row_op(d + c * R + r0, c, r1 - r0);
    }
  });
}

// NCHW -> NHWC copy (the storage of a channels_last tensor).
at::Tensor to_channels_last(const at::Tensor& t) {
  at::Tensor out = pooled_empty(t.sizes(), t.options(), at::MemoryFormat::ChannelsLast);
  const int64_t N = t.size(0), C = t.size(1), P = t.size(2) * t.size(3);
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "to_channels_last", [&] {
    transpose_planes<scalar_t>(t.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), N, C, P,
                               [](scalar_t*, int64_t, int64_t) {});
  });
  return out;
}

// NHWC (a channels_last tensor) -> contiguous NCHW, applying y = epi(v + bias) on the way.
template <typename T, int ACT>
void from_channels_last_into(const at::Tensor& src, at::Tensor& dst, const T* bias, T slope, T gain, T clamp) {
  const int64_t N = src.size(0), C = src.size(1), P = src.size(2) * src.size(3);
  const bool identity = ACT == kLinear && bias == nullptr && gain == T(1) && clamp < T(0);
  transpose_planes<T>(src.const_data_ptr<T>(), dst.mutable_data_ptr<T>(), N, P, C,
                      [&](T* row, int64_t c, int64_t n) {
    if (identity) return;
    const T bv = bias ? bias[c] : T(0);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) row[i] = fast_epilogue<T, ACT>(row[i] + bv, slope, gain, clamp);
  });
}

at::Tensor channels_last_to_nchw(const at::Tensor& src) {
  if (src.is_contiguous()) return src;
  at::Tensor src_cl = src.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor out = pooled_empty(src.sizes(), src.options());
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "channels_last_to_nchw", [&] {
    from_channels_last_into<scalar_t, kLinear>(src_cl, out, nullptr, scalar_t(0), scalar_t(1), scalar_t(-1));
  });
  return out;
}

template <typename T>
void forward_impl(const Geom& g, const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                  at::Tensor& y, int64_t act, double slope_, double gain_, double clamp_) {
  const T slope = T(slope_), gain = T(gain_), clamp = T(clamp_);
  const int64_t HW = g.HW();
  const T* bias = b.has_value() ? b->data_ptr<T>() : nullptr;
  if (g.plain) {
    at::Tensor ym = y.view({g.N, g.Cokk()});
    at::mm_out(ym, x.view({g.N, g.Cin}), w.view({g.Cin, g.Cokk()}));
    T* yp = y.data_ptr<T>();
    with_act(act, [&](auto a) { epilogue_inplace<T, decltype(a)::value>(g, yp, bias, slope, gain, clamp); });
    return;
  }
  const PhaseTables pt(g);
  const int64_t kk = g.kh * g.kw;
  // Chunks run in parallel, one thread each (single-threaded GEMM + gather, so a chunk's
  // cols block stays in that core's cache and there is one parallel region per call)
  // when there are enough chunks to share; otherwise chunk by chunk with the GEMM and
  // the gather each parallel inside. FASTGAN_CT_PAR=inner forces the latter.
  static const bool force_inner = forced_choice("FASTGAN_CT_PAR", "chunks", "inner") == 1;
  const int64_t threads = at::get_num_threads();
  if (channel_chunks(g)) {
    at::Tensor X = channel_major(x);                                 // [Cin, N*HW]
    at::Tensor Wt = w.reshape({g.Cin, g.Cokk()}).t();
    int64_t cb_max = chunk_channels(g, sizeof(T));
    const int64_t nchunks = (g.Cout + cb_max - 1) / cb_max;
    auto body = [&](int64_t c0, int64_t c1) {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      at::Tensor cols = at::empty({cb_max * kk, g.N * HW}, x.options());
      for (int64_t ci = c0; ci < c1; ++ci) {
        const int64_t co0 = ci * cb_max, cb = std::min(cb_max, g.Cout - co0);
        at::Tensor c = cols.narrow(0, 0, cb * kk);
        at::mm_out(c, Wt.narrow(0, co0 * kk, cb * kk), X);
        dispatch_gather<T>(act, g, pt, c.data_ptr<T>(), g.N * HW, HW, bias, y.data_ptr<T>(), 0, g.N, co0, cb,
                           slope, gain, clamp);
      }
    };
    if (threads > 1 && nchunks >= 2 * threads && !force_inner) at::parallel_for(0, nchunks, 1, body);
    else body(0, nchunks);
    return;
  }
  const bool ps = per_sample(g);
  at::Tensor X = ps ? x : channel_major(x);                         // [Cin, N*HW] when batched
  at::Tensor Wt = w.reshape({g.Cin, g.Cokk()}).t();                 // [Cokk, Cin] (view)
  const int64_t nb_max = chunk_samples(g, sizeof(T));
  const int64_t nchunks = (g.N + nb_max - 1) / nb_max;
  auto body = [&](int64_t c0, int64_t c1) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor cols = at::empty({nb_max * g.Cokk() * HW}, x.options());
    for (int64_t ci = c0; ci < c1; ++ci) {
      const int64_t n0 = ci * nb_max, nb = std::min(nb_max, g.N - n0);
      int64_t ts, ss;
      if (ps) {
        at::Tensor c = cols.narrow(0, 0, nb * g.Cokk() * HW).view({nb, g.Cokk(), HW});
        for (int64_t nl = 0; nl < nb; ++nl) {
          at::Tensor cn = c[nl];
          at::mm_out(cn, Wt, x[n0 + nl].view({g.Cin, HW}));
        }
        ts = HW; ss = g.Cokk() * HW;
      } else {
        at::Tensor c = cols.narrow(0, 0, nb * g.Cokk() * HW).view({g.Cokk(), nb * HW});
        at::mm_out(c, Wt, X.narrow(1, n0 * HW, nb * HW));
        ts = nb * HW; ss = HW;
      }
      dispatch_gather<T>(act, g, pt, cols.data_ptr<T>(), ts, ss, bias, y.data_ptr<T>(), n0, nb, 0, g.Cout, slope,
                         gain, clamp);
    }
  };
  if (threads > 1 && nchunks >= 2 * threads && !force_inner) at::parallel_for(0, nchunks, 1, body);
  else body(0, nchunks);
}

// ---------------------------------------------------------------- path choice
// Each direction's products run one of three ways: our GEMM path above ("gemm"), the
// library's (oneDNN) convolution on channels-last copies ("dnn", see the bridge), or the
// library's convolution on the NCHW tensors as given ("nchw": exactly the eager layer's
// calls, with our fused epilogue or grad_pre pass around them); the forward of a layer
// with few output channels has a fourth, forward_direct ("direct", conv_transpose_direct.h).
// Which is fastest
// depends on the machine as much as on the layer (path_tuner.h), so for every layer large
// enough to matter the first call times the candidates and keeps the fastest; small
// layers, and every layer with FASTGAN_CT_TUNE=0, use the fixed rules
// use_library_forward/backward. FASTGAN_CT_FWD = gemm|dnn|nchw|direct and FASTGAN_CT_BWD =
// gemm|dnn|nchw force a path where it applies (read at every call, so tests can force
// each in turn).
enum Path { kGemm = 0, kLibNhwc = 1, kLibNchw = 2, kDirect = 3 };
const std::vector<std::string>& path_names() {
  static const std::vector<std::string> names{"gemm", "dnn", "nchw", "direct"};
  return names;
}

int forced_path(const char* env) {
  const char* e = std::getenv(env);
  if (!e) return -1;
  const auto& names = path_names();
  for (size_t i = 0; i < names.size(); ++i)
    if (names[i] == e) return int(i);
  return -1;
}

// FASTGAN_CT_TUNE=0 turns timing off; FASTGAN_CT_TUNE_MIN_MFLOP sets the smallest layer
// (2 N C_in C_out H W kh kw, in MFLOP) that is timed: below the default 50 MFLOP (well
// under a millisecond here) a wrong choice costs little and the rules decide.
// Atomics: conv_transpose_tuning_reset may change them while other threads run layers.
struct TuneConfig {
  std::atomic<bool> on{true};
  std::atomic<double> min_flop{50e6};
  TuneConfig() { load_env(); }
  void load_env() {
    const char* t = std::getenv("FASTGAN_CT_TUNE");
    on = !(t && std::string(t) == "0");
    const char* m = std::getenv("FASTGAN_CT_TUNE_MIN_MFLOP");
    min_flop = m ? std::atof(m) * 1e6 : 50e6;
  }
};
TuneConfig& tune_config() {
  static TuneConfig c;
  return c;
}

// How often each path ran, per direction (fwd, bwd) x path: lets tests check that a
// forced path is the one that ran.
std::array<std::atomic<int64_t>, 8>& path_runs() {
  static std::array<std::atomic<int64_t>, 8> runs{};
  return runs;
}

PathTuner& tuner() {
  static PathTuner t;
  return t;
}

std::string tune_key(const char* dir, const Geom& g, at::ScalarType st, int64_t extra) {
  char buf[256];
  std::snprintf(buf, sizeof(buf), "%s %s N=%ld Cin=%ld Cout=%ld in=%ldx%ld out=%ldx%ld k=%ldx%ld s=%ldx%ld p=%ldx%ld "
                "threads=%d x%ld", dir, c10::toString(st), long(g.N), long(g.Cin), long(g.Cout), long(g.H),
                long(g.W), long(g.Ho), long(g.Wo), long(g.kh), long(g.kw), long(g.sh), long(g.sw), long(g.ph),
                long(g.pw), at::get_num_threads(), long(extra));
  return buf;
}

// A forced path that applies wins; otherwise, with tuning on and a layer of at least
// min_flop, the recorded choice or (first call) the fastest by timing; otherwise the fixed
// rule. run(path) computes the direction's outputs by that path; the caller runs the
// returned path for its result.
template <typename Run>
int choose_path(int forced, int candidates, const Geom& g, const std::string& key, int rule, Run&& run) {
  if (forced >= 0 && forced < candidates) return forced;
  const TuneConfig& cfg = tune_config();
  const double flop = 2.0 * g.N * g.Cin * g.Cout * g.HW() * g.kh * g.kw;
  if (!cfg.on.load() || flop < cfg.min_flop.load()) return rule;
  const int known = tuner().find(key);
  if (known >= 0) return known;
  const std::vector<std::string> names(path_names().begin(), path_names().begin() + candidates);
  return tuner().tune(key, names, std::function<void(int)>(run));
}

std::vector<int64_t> output_padding_of(const Geom& g) {
  return {g.Ho - ((g.H - 1) * g.sh - 2 * g.ph + g.kh), g.Wo - ((g.W - 1) * g.sw - 2 * g.pw + g.kw)};
}

// y = epi(conv_transpose(x, w) + b) by the given path.
template <typename T>
at::Tensor forward_path(int path, const Geom& g, const at::Tensor& x, const at::Tensor& w,
                        const c10::optional<at::Tensor>& b, int64_t act, double slope_, double gain_, double clamp_) {
  at::Tensor y;
  if (path == kGemm) {
    y = pooled_empty({g.N, g.Cout, g.Ho, g.Wo}, x.options());
    forward_impl<T>(g, x, w, b, y, act, slope_, gain_, clamp_);
    return y;
  }
  const T slope = T(slope_), gain = T(gain_), clamp = T(clamp_);
  const T* bias = b.has_value() ? b->const_data_ptr<T>() : nullptr;
  if (path == kDirect) {
    y = pooled_empty({g.N, g.Cout, g.Ho, g.Wo}, x.options());
    const PhaseTables pt(g);
    with_act(act, [&](auto a) {
      forward_direct<T, decltype(a)::value>(g, pt, x.const_data_ptr<T>(), w.const_data_ptr<T>(), bias,
                                            y.mutable_data_ptr<T>(), slope, gain, clamp);
    });
    return y;
  }
  // The library call is an implementation detail of this op: no autocast inside it.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  if (path == kLibNchw) {
    y = at::conv_transpose2d(x, w, at::Tensor(), {g.sh, g.sw}, {g.ph, g.pw}, output_padding_of(g)).contiguous();
    T* yp = y.mutable_data_ptr<T>();
    with_act(act, [&](auto a) { epilogue_inplace<T, decltype(a)::value>(g, yp, bias, slope, gain, clamp); });
    return y;
  }
  // NHWC in, NHWC out of oneDNN; the bias, activation, gain and clamp are applied while
  // transposing back to NCHW (one pass over y, as the eager activation pays).
  at::Tensor yl = at::conv_transpose2d(to_channels_last(x), w.contiguous(at::MemoryFormat::ChannelsLast),
                                       at::Tensor(), {g.sh, g.sw}, {g.ph, g.pw}, output_padding_of(g));
  yl = yl.contiguous(at::MemoryFormat::ChannelsLast);  // a no-op unless the library chose NCHW
  y = pooled_empty({g.N, g.Cout, g.Ho, g.Wo}, x.options());
  with_act(act, [&](auto a) { from_channels_last_into<T, decltype(a)::value>(yl, y, bias, slope, gain, clamp); });
  return y;
}

template <typename T>
at::Tensor forward_chosen(const Geom& g, const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                          int64_t act, double slope, double gain, double clamp) {
  const int forced = forced_path("FASTGAN_CT_FWD");
  if (g.plain) {
    ++path_runs()[kGemm];
    return forward_path<T>(kGemm, g, x, w, b, act, slope, gain, clamp);
  }
  auto run = [&](int path) { forward_path<T>(path, g, x, w, b, act, slope, gain, clamp); };
  // The direct kernel is a candidate only for few output channels (conv_transpose_direct.h).
  const int candidates = g.Cout <= kDirectMaxCout ? 4 : 3;
  int path = choose_path(forced, candidates, g, tune_key("fwd", g, x.scalar_type(), act),
                         use_library_forward(g) ? kLibNhwc : kGemm, run);
  // The direct kernel also multiplies the weights by zero borders: an infinite weight would
  // make NaN there where the math has no term at all, so such weights take the GEMM path.
  if (path == kDirect && !at::isfinite(w).all().item<bool>()) path = kGemm;
  ++path_runs()[path];
  return forward_path<T>(path, g, x, w, b, act, slope, gain, clamp);
}

bool low_precision(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

void check_common(const at::Tensor& x, const at::Tensor& w, const char* fn) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), fn, ": expected CPU tensors");
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), fn, ": input and weight dtypes differ (", x.scalar_type(),
              " vs ", w.scalar_type(), ")");
  auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, fn,
              ": supports float32, float64, float16 and bfloat16, got ", st);
}

at::Tensor conv_transpose_forward_cpu(const at::Tensor& x_, const at::Tensor& w_, const c10::optional<at::Tensor>& b_,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef output_padding, int64_t act, double negative_slope,
                                      double gain, double clamp) {
  const char* fn = "fastgan_C::conv_transpose_forward";
  check_common(x_, w_, fn);
  TORCH_CHECK(act >= 0 && act <= 4, fn, ": act code must be 0..4 (linear, relu, lrelu, tanh, sigmoid), got ", act);
  Geom g = make_geom(x_, w_, stride, padding, output_padding, fn);
  const bool lp = low_precision(x_);
  const auto ct = lp ? at::kFloat : x_.scalar_type();
  // detached: parallel workers do not inherit the dispatcher's below-autograd state
  at::Tensor x = x_.detach().to(ct).contiguous(), w = w_.detach().to(ct).contiguous();
  c10::optional<at::Tensor> b;
  if (b_.has_value() && b_->defined()) {
    TORCH_CHECK(b_->dim() == 1 && b_->size(0) == g.Cout, fn, ": bias must have shape [", g.Cout, "], got ",
                b_->sizes());
    b = b_->detach().to(ct).contiguous();
  }
  if (g.N == 0) {
    at::Tensor y = at::empty({g.N, g.Cout, g.Ho, g.Wo}, x.options());
    return lp ? y.to(x_.scalar_type()) : y;
  }
  at::Tensor y = ct == at::kDouble ? forward_chosen<double>(g, x, w, b, act, negative_slope, gain, clamp)
                                   : forward_chosen<float>(g, x, w, b, act, negative_slope, gain, clamp);
  return lp ? y.to(x_.scalar_type()) : y;
}

// grad_pre = grad_y * dy/dpre (fused), and grad_b[co] = sum over (n, oh, ow).
template <typename T>
void grad_pre_impl(const Geom& g, const T* gy, const T* t, int64_t mode, T* gp, T* gb, int act, T slope, T gain,
                   T clamp) {
  const int64_t P = g.Ho * g.Wo;
  const T cl = mode == kSavePreclamp ? clamp : T(-1);
  at::parallel_for(0, g.Cout, 1, [&](int64_t begin, int64_t end) {
    for (int64_t co = begin; co < end; ++co) {
      T sum = 0;
      for (int64_t n = 0; n < g.N; ++n) {
        const int64_t off = (n * g.Cout + co) * P;
        const T* gyp = gy + off; const T* tp = t + off; T* o = gp + off;
        if (mode == kSavePre) {
          for (int64_t i = 0; i < P; ++i) { T v = gyp[i] * act_grad_from_pre<T>(tp[i], act, slope, gain, clamp); o[i] = v; sum += v; }
        } else if (act == kRelu && cl < T(0)) {
          const T gg = gain;
#pragma omp simd reduction(+ : sum)
          for (int64_t i = 0; i < P; ++i) { T v = (tp[i] * gg > T(0)) ? gyp[i] * gg : T(0); o[i] = v; sum += v; }
        } else if (act == kTanh && cl < T(0) && gain != T(0)) {
          const T inv = T(1) / gain;
#pragma omp simd reduction(+ : sum)
          for (int64_t i = 0; i < P; ++i) { T s = tp[i] * inv; T v = gyp[i] * (T(1) - s * s) * gain; o[i] = v; sum += v; }
        } else {
#pragma omp simd reduction(+ : sum)
          for (int64_t i = 0; i < P; ++i) { T v = gyp[i] * act_grad_from_output<T>(tp[i], act, slope, gain, cl); o[i] = v; sum += v; }
        }
      }
      if (gb) gb[co] = sum;
    }
  });
}

// G from grad_pre for samples [n0, n0+nb): element (row, nl, ih, iw) at
// G[row*ts + nl*ss + ih*W + iw].
template <typename T>
void im2col_grad(const Geom& g, const T* gp, T* G, int64_t ts, int64_t ss, int64_t n0, int64_t nb, int64_t r0 = 0,
                 int64_t nr = -1) {
  if (nr < 0) nr = g.Cokk();
  at::parallel_for(r0, r0 + nr, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t co = r / (g.kh * g.kw), a = (r / g.kw) % g.kh, c = r % g.kw;
      // valid iw: 0 <= iw*sw - pw + c < Wo
      int64_t iw_lo = 0;
      while (iw_lo < g.W && iw_lo * g.sw - g.pw + c < 0) ++iw_lo;
      int64_t iw_hi = iw_lo;
      while (iw_hi < g.W && iw_hi * g.sw - g.pw + c < g.Wo) ++iw_hi;
      for (int64_t nl = 0; nl < nb; ++nl) {
        const T* src = gp + ((n0 + nl) * g.Cout + co) * g.Ho * g.Wo;
        T* dst = G + (r - r0) * ts + nl * ss;
        for (int64_t ih = 0; ih < g.H; ++ih) {
          const int64_t oh = ih * g.sh - g.ph + a;
          T* d = dst + ih * g.W;
          if (oh < 0 || oh >= g.Ho) {
            for (int64_t iw = 0; iw < g.W; ++iw) d[iw] = T(0);
            continue;
          }
          const T* s = src + oh * g.Wo - g.pw + c;
          for (int64_t iw = 0; iw < iw_lo; ++iw) d[iw] = T(0);
          if (g.sw == 1) {
#pragma omp simd
            for (int64_t iw = iw_lo; iw < iw_hi; ++iw) d[iw] = s[iw];
          } else {
            const int64_t sw = g.sw;
#pragma omp simd
            for (int64_t iw = iw_lo; iw < iw_hi; ++iw) d[iw] = s[iw * sw];
          }
          for (int64_t iw = iw_hi; iw < g.W; ++iw) d[iw] = T(0);
        }
      }
    }
  });
}

// grad_x and grad_w from grad_pre by our GEMM path: im2col of grad_pre, then products
// with W and X (see the top of this file). Writes into gx and gw.
template <typename T>
void backward_gemm(const Geom& g, const at::Tensor& gp, const at::Tensor& x, const at::Tensor& w, bool need_x,
                   bool need_w, at::Tensor& gx, at::Tensor& gw) {
  const int64_t HW = g.HW();
  // As in the forward: chunks in parallel (one thread each, per-thread accumulators
  // summed at the end) when there are enough of them, else chunk by chunk.
  static const bool force_inner = forced_choice("FASTGAN_CT_PAR", "chunks", "inner") == 1;
  const int64_t threads = at::get_num_threads();
  at::Tensor Wm = w.reshape({g.Cin, g.Cokk()});
  if (channel_chunks(g)) {
    const int64_t kk = g.kh * g.kw;
    at::Tensor X = need_w ? channel_major(x) : at::Tensor();
    at::Tensor gwm = need_w ? gw.view({g.Cin, g.Cokk()}) : at::Tensor();
    const int64_t cb_max = chunk_channels(g, sizeof(T));
    const int64_t nchunks = (g.Cout + cb_max - 1) / cb_max;
    const bool par = threads > 1 && nchunks >= 2 * threads && !force_inner;
    // grad_x accumulates over channel blocks: one accumulator per thread
    at::Tensor gxacc = need_x ? at::zeros({par ? threads : 1, g.Cin, g.N * HW}, x.options()) : at::Tensor();
    auto body = [&](int64_t c0, int64_t c1) {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      at::Tensor Gbuf = at::empty({cb_max * kk, g.N * HW}, x.options());
      at::Tensor gwtmp = need_w ? at::empty({g.Cin, cb_max * kk}, x.options()) : at::Tensor();
      at::Tensor gxm = need_x ? gxacc[par ? at::get_thread_num() : 0] : at::Tensor();
      for (int64_t ci = c0; ci < c1; ++ci) {
        const int64_t co0 = ci * cb_max, cb = std::min(cb_max, g.Cout - co0);
        at::Tensor G = Gbuf.narrow(0, 0, cb * kk);
        im2col_grad<T>(g, gp.data_ptr<T>(), G.data_ptr<T>(), g.N * HW, HW, 0, g.N, co0 * kk, cb * kk);
        if (need_x) gxm.addmm_(Wm.narrow(1, co0 * kk, cb * kk), G);
        if (need_w) {
          at::Tensor o = gwtmp.narrow(1, 0, cb * kk);
          at::mm_out(o, X, G.t());
          gwm.narrow(1, co0 * kk, cb * kk).copy_(o);
        }
      }
    };
    if (par) at::parallel_for(0, nchunks, 1, body);
    else body(0, nchunks);
    if (need_x) gx.copy_(gxacc.sum(0).view({g.Cin, g.N, g.H, g.W}).permute({1, 0, 2, 3}));
    return;
  }
  const bool ps = per_sample(g);
  at::Tensor X = (need_w && !ps) ? channel_major(x) : at::Tensor();
  const int64_t nb_max = chunk_samples(g, sizeof(T));
  const int64_t nchunks = (g.N + nb_max - 1) / nb_max;
  const bool par = threads > 1 && nchunks >= 2 * threads && !force_inner;
  // grad_w accumulates over samples: one accumulator per thread
  at::Tensor gwacc = need_w ? at::zeros({par ? threads : 1, g.Cin, g.Cokk()}, x.options()) : at::Tensor();
  auto body = [&](int64_t c0, int64_t c1) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor Gbuf = at::empty({nb_max * g.Cokk() * HW}, x.options());
    at::Tensor gxbuf = (need_x && !ps) ? at::empty({g.Cin, nb_max * HW}, x.options()) : at::Tensor();
    at::Tensor gwm = need_w ? gwacc[par ? at::get_thread_num() : 0] : at::Tensor();
    for (int64_t ci = c0; ci < c1; ++ci) {
      const int64_t n0 = ci * nb_max, nb = std::min(nb_max, g.N - n0);
      if (ps) {
        at::Tensor G = Gbuf.narrow(0, 0, nb * g.Cokk() * HW).view({nb, g.Cokk(), HW});
        im2col_grad<T>(g, gp.data_ptr<T>(), G.data_ptr<T>(), HW, g.Cokk() * HW, n0, nb);
        for (int64_t nl = 0; nl < nb; ++nl) {
          if (need_x) {
            at::Tensor o = gx[n0 + nl].view({g.Cin, HW});
            at::mm_out(o, Wm, G[nl]);
          }
          if (need_w) gwm.addmm_(x[n0 + nl].view({g.Cin, HW}), G[nl].t());
        }
      } else {
        at::Tensor G = Gbuf.narrow(0, 0, nb * g.Cokk() * HW).view({g.Cokk(), nb * HW});
        im2col_grad<T>(g, gp.data_ptr<T>(), G.data_ptr<T>(), nb * HW, HW, n0, nb);
        if (need_x) {
          at::Tensor o = gxbuf.narrow(1, 0, nb * HW);
          at::mm_out(o, Wm, G);
          gx.narrow(0, n0, nb).copy_(o.view({g.Cin, nb, g.H, g.W}).permute({1, 0, 2, 3}));
        }
        if (need_w) gwm.addmm_(X.narrow(1, n0 * HW, nb * HW), G.t());
      }
    }
  };
  if (par) at::parallel_for(0, nchunks, 1, body);
  else body(0, nchunks);
  if (need_w) gw.view({g.Cin, g.Cokk()}).copy_(par ? gwacc.sum(0) : gwacc[0]);
}

// grad_x and grad_w from grad_pre by the given path (fresh outputs each time, so the
// tuner can run the paths one after another).
template <typename T>
void backward_path(int path, const Geom& g, const at::Tensor& gp, const at::Tensor& x, const at::Tensor& w,
                   bool need_x, bool need_w, at::Tensor& gx, at::Tensor& gw) {
  if (path == kGemm) {
    if (need_x) gx = pooled_empty(x.sizes(), x.options());
    if (need_w) gw = at::empty_like(w);
    backward_gemm<T>(g, gp, x, w, need_x, need_w, gx, gw);
    return;
  }
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  if (path == kLibNchw) {
    // The eager layer's own call: both gradients from one convolution backward.
    auto r = at::convolution_backward(gp, x, w, c10::nullopt, {g.sh, g.sw}, {g.ph, g.pw}, {1, 1}, true,
                                      output_padding_of(g), 1, {need_x, need_w, false});
    if (need_x) gx = std::get<0>(r).contiguous();
    if (need_w) gw = std::get<1>(r).contiguous();
    return;
  }
  // grad_x is the strided convolution conv2d(grad_pre, w) (w read as [C_in, C_out, kh, kw]
  // = [out, in, kh, kw]), run NHWC (see the channels-last bridge); grad_w by the
  // library's weight gradient on the NCHW tensors, which measured faster than NHWC.
  if (need_x) {
    at::Tensor gxl = at::conv2d(to_channels_last(gp), w.contiguous(at::MemoryFormat::ChannelsLast), {},
                                {g.sh, g.sw}, {g.ph, g.pw});
    gx = channels_last_to_nchw(gxl);
  }
  if (need_w) {
    auto r = at::convolution_backward(gp, x, w, c10::nullopt, {g.sh, g.sw}, {g.ph, g.pw}, {1, 1}, true,
                                      output_padding_of(g), 1, {false, true, false});
    gw = std::get<1>(r).contiguous();
  }
}

// grad_pre and grad_b in one fused pass, then grad_x and grad_w by the chosen path
// (rebinding the caller's gx and gw).
template <typename T>
void backward_impl(const Geom& g, const at::Tensor& gy, const at::Tensor& x, const at::Tensor& w, const at::Tensor& t,
                   int64_t mode, int64_t act, double slope, double gain, double clamp, bool need_x, bool need_w,
                   bool need_b, at::Tensor& gx, at::Tensor& gw, at::Tensor& gb) {
  at::Tensor gp = pooled_empty(gy.sizes(), gy.options());
  grad_pre_impl<T>(g, gy.data_ptr<T>(), t.data_ptr<T>(), mode, gp.data_ptr<T>(), need_b ? gb.data_ptr<T>() : nullptr,
                   int(act), T(slope), T(gain), T(clamp));
  if (!need_x && !need_w) return;
  if (g.plain) {
    // y = X[N, Cin] . W[Cin, Cokk]: grad_x = gp . W^T, grad_w = X^T . gp
    at::Tensor gpm = gp.view({g.N, g.Cokk()});
    at::Tensor Wm = w.view({g.Cin, g.Cokk()});
    if (need_x) { at::Tensor o = gx.view({g.N, g.Cin}); at::mm_out(o, gpm, Wm.t()); }
    if (need_w) { at::Tensor o = gw.view({g.Cin, g.Cokk()}); at::mm_out(o, x.view({g.N, g.Cin}).t(), gpm); }
    return;
  }
  const int forced = forced_path("FASTGAN_CT_BWD");
  auto run = [&](int path) { backward_path<T>(path, g, gp, x, w, need_x, need_w, gx, gw); };
  const std::string key = tune_key("bwd", g, x.scalar_type(), int64_t(need_x) + 2 * int64_t(need_w));
  const int path = choose_path(forced, 3, g, key, use_library_backward(g) ? kLibNhwc : kGemm, run);
  ++path_runs()[4 + path];
  run(path);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_transpose_backward_cpu(
    const at::Tensor& gy_, const at::Tensor& x_, const at::Tensor& w_, const at::Tensor& saved_, int64_t mode,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t act,
    double negative_slope, double gain, double clamp, bool has_bias, std::array<bool, 3> output_mask_) {
  const char* fn = "fastgan_C::conv_transpose_backward";
  check_common(x_, w_, fn);
  TORCH_CHECK(mode >= 0 && mode <= 2, fn, ": mode must be 0 (output), 1 (pre-clamp) or 2 (pre-activation)");
  Geom g = make_geom(x_, w_, stride, padding, output_padding, fn);
  TORCH_CHECK(gy_.sizes() == at::IntArrayRef({g.N, g.Cout, g.Ho, g.Wo}), fn, ": grad_y has shape ", gy_.sizes(),
              ", expected [", g.N, ", ", g.Cout, ", ", g.Ho, ", ", g.Wo, "]");
  TORCH_CHECK(saved_.sizes() == gy_.sizes(), fn, ": saved tensor has shape ", saved_.sizes(), ", expected ",
              gy_.sizes());
  const bool need_x = output_mask_[0], need_w = output_mask_[1], need_b = output_mask_[2] && has_bias;
  const bool lp = low_precision(x_);
  const auto ct = lp ? at::kFloat : x_.scalar_type();
  at::Tensor gy = gy_.detach().to(ct).contiguous(), x = x_.detach().to(ct).contiguous(),
             w = w_.detach().to(ct).contiguous(), t = saved_.detach().to(ct).contiguous();
  at::Tensor gx = need_x ? pooled_empty(x.sizes(), x.options()) : at::empty({0}, x.options());
  at::Tensor gw = need_w ? at::empty_like(w) : at::empty({0}, x.options());
  at::Tensor gb = need_b ? at::empty({g.Cout}, x.options()) : at::empty({0}, x.options());
  if (g.N == 0) {
    if (need_x) gx.zero_();
    if (need_w) gw.zero_();
    if (need_b) gb.zero_();
  } else if (ct == at::kDouble) {
    backward_impl<double>(g, gy, x, w, t, mode, act, negative_slope, gain, clamp, need_x, need_w, need_b, gx, gw, gb);
  } else {
    backward_impl<float>(g, gy, x, w, t, mode, act, negative_slope, gain, clamp, need_x, need_w, need_b, gx, gw, gb);
  }
  if (lp) {
    auto st = x_.scalar_type();
    return {gx.to(st), gw.to(st), gb.to(st)};
  }
  return {gx, gw, gb};
}

std::string conv_transpose_tuning_report() { return tuner().report(); }

void conv_transpose_tuning_reset(double min_mflop) {
  tuner().clear();
  tune_config().load_env();
  if (min_mflop >= 0) tune_config().min_flop = min_mflop * 1e6;
}

std::vector<int64_t> conv_transpose_path_runs() {
  std::vector<int64_t> out;
  for (const auto& r : path_runs()) out.push_back(r.load());
  return out;
}

}  // namespace
}  // namespace conv_transpose
}  // namespace fastgan

TORCH_LIBRARY_FRAGMENT(fastgan_C, m) {
  // act: 0 linear, 1 relu, 2 lrelu, 3 tanh, 4 sigmoid; clamp < 0: no clamp.
  m.def(
      "conv_transpose_forward(Tensor x, Tensor w, Tensor? b, int[] stride, int[] padding, int[] output_padding, "
      "int act, float negative_slope, float gain, float clamp) -> Tensor");
  // saved: y (mode 0), the unclamped output (mode 1) or the pre-activation (mode 2).
  m.def(
      "conv_transpose_backward(Tensor grad_y, Tensor x, Tensor w, Tensor saved, int mode, int[] stride, "
      "int[] padding, int[] output_padding, int act, float negative_slope, float gain, float clamp, "
      "bool has_bias, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // The per-layer path choices (see choose_path): a report, and a reset that forgets them
  // and sets the smallest layer, in MFLOP, that gets timed (min_mflop < 0: the default).
  m.def("conv_transpose_tuning_report() -> str", &fastgan::conv_transpose::conv_transpose_tuning_report);
  m.def("conv_transpose_tuning_reset(float min_mflop) -> ()", &fastgan::conv_transpose::conv_transpose_tuning_reset);
  // How often each path ran: [fwd gemm, dnn, nchw, direct, bwd gemm, dnn, nchw, direct].
  m.def("conv_transpose_path_runs() -> int[]", &fastgan::conv_transpose::conv_transpose_path_runs);
}

TORCH_LIBRARY_IMPL(fastgan_C, CPU, m) {
  m.impl("conv_transpose_forward", &fastgan::conv_transpose::conv_transpose_forward_cpu);
  m.impl("conv_transpose_backward", &fastgan::conv_transpose::conv_transpose_backward_cpu);
}
