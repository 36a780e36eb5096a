// The device kernels of the CUDA transposed convolution (csrc/cuda/conv_transpose.cu has
// the math, the host side and the registration). Kept in a header of their own, free of
// ATen tensor APIs, so that tests/cuda_emu/ can compile these exact kernels for the CPU
// with a small CUDA emulation (one OS thread per CUDA thread, std::barrier for
// __syncthreads, a scalar nvcuda::wmma) and check them against the reference without a
// GPU.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#endif

#include <cstdint>

#include "conv_transpose.h"
#include "conv_transpose_phase.h"

namespace fastgan {
namespace conv_transpose {
namespace kernels {

// Launch geometry shared by both kernels (all ints: the host checks sizes < 2^31).
struct Params {
  int N, Cin, H, W, Cout, Ho, Wo;
  int sh, sw, ph, pw, kh, kw, tmh, tmw;  // stride, padding, kernel, max taps per phase
  int act;
  float slope, gain, clamp;
  double slope_d, gain_d, clamp_d;
};

// Per-block phase geometry (blockIdx.z = phase = ph*sw + pw).
struct Phase {
  PhaseAxis a_h, a_w;
  int hw;  // n_h * n_w
  int m;   // N * hw: GEMM rows of this phase
  int ph, pw;
};

__device__ __forceinline__ Phase block_phase(const Params& p) {
  Phase f;
  f.ph = blockIdx.z / p.sw;
  f.pw = blockIdx.z % p.sw;
  f.a_h = phase_axis(f.ph, p.sh, p.ph, p.kh, p.Ho);
  f.a_w = phase_axis(f.pw, p.sw, p.pw, p.kw, p.Wo);
  f.hw = f.a_h.n * f.a_w.n;
  f.m = p.N * f.hw;
  return f;
}

// ---------------------------------------------------------------- tensor cores
constexpr int WM_BM = 64, WM_BN = 64, WM_BK = 32, WM_THREADS = 128;
constexpr int WM_APAD = WM_BK + 8;  // row pitch (elements): a multiple of 8 as wmma needs,
constexpr int WM_BPAD = WM_BN + 8;  // and skewed so rows start in different banks
constexpr int WM_CPAD = WM_BN + 4;

template <typename T> struct WmmaType;
template <> struct WmmaType<at::Half> { using type = __half; };
template <> struct WmmaType<at::BFloat16> { using type = __nv_bfloat16; };

// 8 consecutive 16-bit values (one 16-byte vector).
struct alignas(16) Vec8 { uint4 v; };

template <typename scalar_t>
__global__ void __launch_bounds__(WM_THREADS)
wmma_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ wp, const scalar_t* __restrict__ bias,
            scalar_t* __restrict__ y, Params p, bool vec_a, bool vec_b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // the host never launches this below sm_80 (bf16 wmma needs sm_80)
#else
  using namespace nvcuda;
  using wt = typename WmmaType<scalar_t>::type;
  const Phase f = block_phase(p);
  const int m0 = blockIdx.x * WM_BM;
  if (m0 >= f.m) return;  // this phase has fewer rows than the largest one
  const int n0 = blockIdx.y * WM_BN;

  __shared__ __align__(32) scalar_t As[2][WM_BM][WM_APAD];
  __shared__ __align__(32) scalar_t Bs[2][WM_BK][WM_BPAD];
  __shared__ __align__(32) float Cs[WM_BM][WM_CPAD];
  __shared__ int64_t y_row[WM_BM];  // offset of y[n, 0, oh, ow] per tile row (-1: none)

  const int tid = threadIdx.x;
  // A loads: each thread owns 2 (row, 8-channel chunk) pairs: rows tid/4 and tid/4 + 32,
  // channels (tid%4)*8 .. +7 of the K tile.
  const int a_chunk = (tid & 3) * 8;
  int a_i[2], a_j[2], a_n[2];
  bool a_ok[2];
  for (int r = 0; r < 2; ++r) {
    const int m = m0 + (tid >> 2) + 32 * r;
    a_ok[r] = m < f.m;
    const int mm = a_ok[r] ? m : 0;
    a_n[r] = mm / f.hw;
    const int rem = mm - a_n[r] * f.hw;
    a_i[r] = rem / f.a_w.n;
    a_j[r] = rem - a_i[r] * f.a_w.n;
  }
  // B loads: rows (channels) tid/8 and tid/8 + 16, columns (tid%8)*8 .. +7.
  const int b_col = n0 + (tid & 7) * 8;
  if (tid < WM_BM) {
    const int m = m0 + tid;
    int64_t off = -1;
    if (m < f.m) {
      const int n = m / f.hw, rem = m - n * f.hw, i = rem / f.a_w.n, j = rem - i * f.a_w.n;
      const int oh = f.ph + p.sh * i, ow = f.pw + p.sw * j;
      off = ((int64_t)n * p.Cout * p.Ho + oh) * p.Wo + ow;
    }
    y_row[tid] = off;
  }

  const int nck = (p.Cin + WM_BK - 1) / WM_BK;
  const int ktiles = f.a_h.T * f.a_w.T * nck;
  const int64_t tap_stride = (int64_t)p.Cin * p.Cout;
  const int64_t wp_phase = (int64_t)(f.a_h.r * p.sw + f.a_w.r) * p.tmh * p.tmw * tap_stride;

  Vec8 ra[2], rb[2];  // the next tile, staged in registers
  auto load_tile = [&](int kt) {
    const int tap = kt / nck, c0 = (kt - tap * nck) * WM_BK;
    const int t = tap / f.a_w.T, u = tap - t * f.a_w.T;
    for (int r = 0; r < 2; ++r) {
      const int ih = a_i[r] + f.a_h.q - t, iw = a_j[r] + f.a_w.q - u;
      const bool ok = a_ok[r] && ih >= 0 && ih < p.H && iw >= 0 && iw < p.W;
      const int c = c0 + a_chunk;
      const scalar_t* src = x + (((int64_t)a_n[r] * p.H + ih) * p.W + iw) * p.Cin + c;
      if (ok && vec_a && c + 8 <= p.Cin) {
        ra[r].v = *reinterpret_cast<const uint4*>(src);
      } else {
        alignas(16) scalar_t tmp[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) tmp[e] = (ok && c + e < p.Cin) ? src[e] : scalar_t(0.0f);
        ra[r].v = *reinterpret_cast<const uint4*>(tmp);
      }
    }
    for (int r = 0; r < 2; ++r) {
      const int ci = c0 + (tid >> 3) + 16 * r;
      const scalar_t* src = wp + wp_phase + (int64_t)(t * p.tmw + u) * tap_stride + (int64_t)ci * p.Cout + b_col;
      if (ci < p.Cin && vec_b && b_col + 8 <= p.Cout) {
        rb[r].v = *reinterpret_cast<const uint4*>(src);
      } else {
        alignas(16) scalar_t tmp[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) tmp[e] = (ci < p.Cin && b_col + e < p.Cout) ? src[e] : scalar_t(0.0f);
        rb[r].v = *reinterpret_cast<const uint4*>(tmp);
      }
    }
  };
  auto store_tile = [&](int buf) {
    for (int r = 0; r < 2; ++r) {
      *reinterpret_cast<uint4*>(&As[buf][(tid >> 2) + 32 * r][a_chunk]) = ra[r].v;
      *reinterpret_cast<uint4*>(&Bs[buf][(tid >> 3) + 16 * r][(tid & 7) * 8]) = rb[r].v;
    }
  };

  const int warp = tid >> 5, wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int b = 0; b < 2; ++b) wmma::fill_fragment(acc[a][b], 0.0f);

  if (ktiles > 0) {
    load_tile(0);
    store_tile(0);
  }
  __syncthreads();
  for (int kt = 0; kt < ktiles; ++kt) {
    const int buf = kt & 1;
    if (kt + 1 < ktiles) load_tile(kt + 1);  // global loads in flight during the MMAs
#pragma unroll
    for (int ks = 0; ks < WM_BK; ks += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, wt, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, wt, wmma::row_major> fb[2];
#pragma unroll
      for (int a = 0; a < 2; ++a)
        wmma::load_matrix_sync(fa[a], reinterpret_cast<const wt*>(&As[buf][wm + 16 * a][ks]), WM_APAD);
#pragma unroll
      for (int b = 0; b < 2; ++b)
        wmma::load_matrix_sync(fb[b], reinterpret_cast<const wt*>(&Bs[buf][ks][wn + 16 * b]), WM_BPAD);
#pragma unroll
      for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int b = 0; b < 2; ++b) wmma::mma_sync(acc[a][b], fa[a], fb[b], acc[a][b]);
    }
    if (kt + 1 < ktiles) store_tile(buf ^ 1);  // the other buffer: nobody reads it now
    __syncthreads();
  }

#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int b = 0; b < 2; ++b)
      wmma::store_matrix_sync(&Cs[wm + 16 * a][wn + 16 * b], acc[a][b], WM_CPAD, wmma::mem_row_major);
  __syncthreads();

  // Epilogue: consecutive threads take consecutive rows m, i.e. neighbouring output
  // columns of one phase (stride s_w apart in y), for one channel co.
  const int64_t plane = (int64_t)p.Ho * p.Wo;
  for (int e = tid; e < WM_BM * WM_BN; e += WM_THREADS) {
    const int row = e % WM_BM, col = e / WM_BM, co = n0 + col;
    const int64_t off = y_row[row];
    if (off < 0 || co >= p.Cout) continue;
    float v = Cs[row][col];
    if (bias != nullptr) v += static_cast<float>(bias[co]);
    y[off + co * plane] = static_cast<scalar_t>(epilogue<float>(v, p.act, p.slope, p.gain, p.clamp));
  }
#endif
}

// ---------------------------------------------------------------- SIMT
constexpr int SM_BM = 64, SM_BN = 64, SM_BK = 16, SM_THREADS = 256;

template <typename scalar_t>
__global__ void __launch_bounds__(SM_THREADS)
simt_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ wp, const scalar_t* __restrict__ bias,
            scalar_t* __restrict__ y, Params p) {
  using acc_t = at::opmath_type<scalar_t>;  // float for float/half/bf16, double for double
  const Phase f = block_phase(p);
  const int m0 = blockIdx.x * SM_BM;
  if (m0 >= f.m) return;
  const int n0 = blockIdx.y * SM_BN;

  __shared__ acc_t As[SM_BK][SM_BM + 1];  // transposed: a k-slice of 64 rows is contiguous
  __shared__ acc_t Bs[SM_BK][SM_BN];

  const int tid = threadIdx.x;
  // Loads: k = tid % 16 (consecutive threads read consecutive channels: channels-last x
  // and the packed weight rows are contiguous there), rows tid/16 + 16*r.
  const int lk = tid & 15;
  int a_i[4], a_j[4], a_n[4];
  bool a_ok[4];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int m = m0 + (tid >> 4) + 16 * r;
    a_ok[r] = m < f.m;
    const int mm = a_ok[r] ? m : 0;
    a_n[r] = mm / f.hw;
    const int rem = mm - a_n[r] * f.hw;
    a_i[r] = rem / f.a_w.n;
    a_j[r] = rem - a_i[r] * f.a_w.n;
  }
  const int tm = (tid >> 4) * 4, tn = (tid & 15) * 4;  // this thread's 4x4 micro-tile
  acc_t acc[4][4];
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int b = 0; b < 4; ++b) acc[a][b] = acc_t(0);

  const int nck = (p.Cin + SM_BK - 1) / SM_BK;
  const int ktiles = f.a_h.T * f.a_w.T * nck;
  const int64_t tap_stride = (int64_t)p.Cin * p.Cout;
  const int64_t wp_phase = (int64_t)(f.a_h.r * p.sw + f.a_w.r) * p.tmh * p.tmw * tap_stride;
  for (int kt = 0; kt < ktiles; ++kt) {
    const int tap = kt / nck, c0 = (kt - tap * nck) * SM_BK;
    const int t = tap / f.a_w.T, u = tap - t * f.a_w.T;
    const int c = c0 + lk;
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int ih = a_i[r] + f.a_h.q - t, iw = a_j[r] + f.a_w.q - u;
      const bool ok = a_ok[r] && c < p.Cin && ih >= 0 && ih < p.H && iw >= 0 && iw < p.W;
      As[lk][(tid >> 4) + 16 * r] =
          ok ? static_cast<acc_t>(x[(((int64_t)a_n[r] * p.H + ih) * p.W + iw) * p.Cin + c]) : acc_t(0);
    }
    // B tile [16 channels][64 co]: element e = tid + 256*r, row e / 64, column e % 64.
    const scalar_t* wt = wp + wp_phase + (int64_t)(t * p.tmw + u) * tap_stride;
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int e = tid + SM_THREADS * r, kr = e / SM_BN, col = e % SM_BN;
      const int ci = c0 + kr, co = n0 + col;
      Bs[kr][col] = (ci < p.Cin && co < p.Cout) ? static_cast<acc_t>(wt[(int64_t)ci * p.Cout + co]) : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < SM_BK; ++k) {
      acc_t av[4], bv[4];
#pragma unroll
      for (int a = 0; a < 4; ++a) av[a] = As[k][tm + a];
#pragma unroll
      for (int b = 0; b < 4; ++b) bv[b] = Bs[k][tn + b];
#pragma unroll
      for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) acc[a][b] += av[a] * bv[b];
    }
    __syncthreads();
  }

  const int64_t plane = (int64_t)p.Ho * p.Wo;
  const acc_t slope = static_cast<acc_t>(sizeof(acc_t) == 8 ? p.slope_d : p.slope);
  const acc_t gain = static_cast<acc_t>(sizeof(acc_t) == 8 ? p.gain_d : p.gain);
  const acc_t clamp = static_cast<acc_t>(sizeof(acc_t) == 8 ? p.clamp_d : p.clamp);
#pragma unroll
  for (int a = 0; a < 4; ++a) {
    const int m = m0 + tm + a;
    if (m >= f.m) continue;
    const int n = m / f.hw, rem = m - n * f.hw, i = rem / f.a_w.n, j = rem - i * f.a_w.n;
    const int64_t row = ((int64_t)n * p.Cout * p.Ho + f.ph + p.sh * i) * p.Wo + f.pw + p.sw * j;
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const int co = n0 + tn + b;
      if (co >= p.Cout) continue;
      acc_t v = acc[a][b];
      if (bias != nullptr) v += static_cast<acc_t>(bias[co]);
      y[row + co * plane] = static_cast<scalar_t>(epilogue<acc_t>(v, p.act, slope, gain, clamp));
    }
  }
}

}  // namespace kernels
}  // namespace conv_transpose
}  // namespace fastgan
