// Minibatch standard deviation on CUDA: the CUDA implementations of
// fastgan_C::minibatch_std_forward / minibatch_std_backward (schemas in
// csrc/cpu/minibatch_std.cpp). Math and index layout: csrc/include/minibatch_std.h.
//
// For a (group m, channel-group f) pair the G members are G contiguous spans of
// L = c * H * W elements. A thread owns VEC consecutive positions of the span and loops
// over the G members with 16-byte vector loads (float4 for float32, 8 halves), so:
//   forward : _stats reads x once (one-pass shifted moments in registers), copies it to
//             y, and leaves one partial sum of sqrt(var + eps) per block; _fill adds a
//             (m, f)'s partials in a fixed order and writes the F stat channels.
//   backward: _coef sums dy's stat channels per (m, f); _dx computes the moments
//             (first read of x), then dx = dy + r (x - mu) (second read of x, which the
//             same thread just loaded, so it comes from L1/L2), reading dy once.
// Deterministic: no atomics, fixed reduction order. Everything runs on the current
// stream.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <cstdint>

#include "minibatch_std.h"

namespace fastgan {
namespace {

using namespace mbstd;

constexpr int kThreads = 256;

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Sum over the block (kThreads threads), result valid in thread 0. Fixed order.
template <typename acc_t>
__device__ acc_t block_sum(acc_t v) {
  __shared__ acc_t warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  acc_t total = acc_t(0);
  if (threadIdx.x == 0) {
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
  }
  __syncthreads();  // warp_sums may be reused by a following call
  return total;
}

// One block per (m, f, chunk of kThreads * VEC positions).
template <typename scalar_t, typename acc_t, int VEC>
__global__ void __launch_bounds__(kThreads) fwd_stats_kernel(
    const scalar_t* __restrict__ x, scalar_t* __restrict__ y, acc_t* __restrict__ partial, int64_t M,
    int64_t C, int64_t F, int64_t c, int64_t HW, int64_t G, int64_t nchunks, acc_t inv_G, acc_t eps) {
  const int64_t block = blockIdx.x;
  const int64_t mf = block / nchunks, chunk = block % nchunks;
  const int64_t m = mf / F, f = mf % F;
  const int64_t L = c * HW;
  const int64_t j = (chunk * kThreads + threadIdx.x) * VEC;
  acc_t sum_sd = acc_t(0);
  if (j < L) {  // L is a multiple of VEC (checked on the host)
    ShiftedMoments<acc_t> mom[VEC];
    for (int64_t g = 0; g < G; ++g) {
      const int64_t xo = member_offset(g, m, f, M, C, c, HW) + j;
      const int64_t yo = member_offset(g, m, f, M, C + F, c, HW) + j;
      const Pack<scalar_t, VEC> p = *reinterpret_cast<const Pack<scalar_t, VEC>*>(x + xo);
      *reinterpret_cast<Pack<scalar_t, VEC>*>(y + yo) = p;
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const acc_t v = static_cast<acc_t>(p.v[i]);
        if (g == 0) mom[i].init(v);
        mom[i].add(v);
      }
    }
#pragma unroll
    for (int i = 0; i < VEC; ++i) sum_sd += group_std<acc_t>(mom[i].var(inv_G), eps);
  }
  const acc_t total = block_sum<acc_t>(sum_sd);
  if (threadIdx.x == 0) partial[block] = total;
}

// One block per (sample n, stat channel f): s = sum of the (m, f) partials / L.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) fwd_fill_kernel(
    const acc_t* __restrict__ partial, scalar_t* __restrict__ y, int64_t M, int64_t C, int64_t F,
    int64_t HW, int64_t nchunks, acc_t inv_L) {
  __shared__ acc_t s_shared;
  const int64_t n = blockIdx.x / F, f = blockIdx.x % F;
  const int64_t m = n % M;
  acc_t v = acc_t(0);
  for (int64_t k = threadIdx.x; k < nchunks; k += kThreads) v += partial[(m * F + f) * nchunks + k];
  const acc_t total = block_sum<acc_t>(v);
  if (threadIdx.x == 0) s_shared = total * inv_L;
  __syncthreads();
  const scalar_t s = static_cast<scalar_t>(s_shared);
  scalar_t* out = y + (n * (C + F) + C + f) * HW;
  for (int64_t q = threadIdx.x; q < HW; q += kThreads) out[q] = s;
}

// One block per (m, f): coef = S / (L G), S = sum of dy over the group's stat channel.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) bwd_coef_kernel(
    const scalar_t* __restrict__ dy, acc_t* __restrict__ coef, int64_t M, int64_t C, int64_t F, int64_t HW,
    int64_t G, acc_t scale) {
  const int64_t m = blockIdx.x / F, f = blockIdx.x % F;
  acc_t v = acc_t(0);
  for (int64_t k = threadIdx.x; k < G * HW; k += kThreads) {
    const int64_t g = k / HW, q = k % HW;
    v += static_cast<acc_t>(dy[stat_offset(g, m, f, M, C, F, HW) + q]);
  }
  const acc_t total = block_sum<acc_t>(v);
  if (threadIdx.x == 0) coef[blockIdx.x] = total * scale;
}

template <typename scalar_t, typename acc_t, int VEC>
__global__ void __launch_bounds__(kThreads) bwd_dx_kernel(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ dy, scalar_t* __restrict__ dx,
    const acc_t* __restrict__ coef, int64_t M, int64_t C, int64_t F, int64_t c, int64_t HW, int64_t G,
    int64_t nchunks, acc_t inv_G, acc_t eps) {
  const int64_t block = blockIdx.x;
  const int64_t mf = block / nchunks, chunk = block % nchunks;
  const int64_t m = mf / F, f = mf % F;
  const int64_t L = c * HW;
  const int64_t j = (chunk * kThreads + threadIdx.x) * VEC;
  if (j >= L) return;
  ShiftedMoments<acc_t> mom[VEC];
  for (int64_t g = 0; g < G; ++g) {
    const Pack<scalar_t, VEC> p =
        *reinterpret_cast<const Pack<scalar_t, VEC>*>(x + member_offset(g, m, f, M, C, c, HW) + j);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const acc_t v = static_cast<acc_t>(p.v[i]);
      if (g == 0) mom[i].init(v);
      mom[i].add(v);
    }
  }
  const acc_t cf = coef[mf];  // S / (L G)
  acc_t mu[VEC], r[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    mu[i] = mom[i].mean(inv_G);
    r[i] = cf / group_std<acc_t>(mom[i].var(inv_G), eps);
  }
  for (int64_t g = 0; g < G; ++g) {
    const int64_t xo = member_offset(g, m, f, M, C, c, HW) + j;
    const int64_t yo = member_offset(g, m, f, M, C + F, c, HW) + j;
    const Pack<scalar_t, VEC> px = *reinterpret_cast<const Pack<scalar_t, VEC>*>(x + xo);
    const Pack<scalar_t, VEC> pg = *reinterpret_cast<const Pack<scalar_t, VEC>*>(dy + yo);
    Pack<scalar_t, VEC> out;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      out.v[i] = static_cast<scalar_t>(
          grad_input<acc_t>(static_cast<acc_t>(pg.v[i]), static_cast<acc_t>(px.v[i]), mu[i], r[i]));
    }
    *reinterpret_cast<Pack<scalar_t, VEC>*>(dx + xo) = out;
  }
}

// 16-byte vectors when every member span starts 16-byte aligned: the base pointers are
// aligned and HW is a multiple of the vector width (then every offset is, too).
template <typename scalar_t>
constexpr int vec_width() {
  return 16 / static_cast<int>(sizeof(scalar_t)) > 0 ? 16 / static_cast<int>(sizeof(scalar_t)) : 1;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

void check_cuda_args(const at::Tensor& x, int64_t G, int64_t F, const char* what) {
  TORCH_CHECK(x.dim() == 4, what, ": expected a 4-D [N, C, H, W] tensor, got ", x.dim(), "-D");
  TORCH_CHECK(x.is_cuda(), what, ": expected a CUDA tensor, got one on ", x.device());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), what, ": expected a floating-point tensor, got ",
              x.scalar_type());
  TORCH_CHECK(G >= 1 && x.size(0) % G == 0, what, ": group size G=", G, " must be >= 1 and divide the batch N=",
              x.size(0));
  TORCH_CHECK(F >= 1 && x.size(1) % F == 0, what, ": num_channels F=", F, " must be >= 1 and divide the channels C=",
              x.size(1));
}

template <typename scalar_t, int VEC>
void launch_forward(const at::Tensor& x, at::Tensor& y, int64_t G, int64_t F, double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const int64_t M = N / G, c = C / F, L = c * HW;
  const int64_t nchunks = (L / VEC + kThreads - 1) / kThreads;
  auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor partial = at::empty({M * F * nchunks}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  fwd_stats_kernel<scalar_t, acc_t, VEC><<<M * F * nchunks, kThreads, 0, stream>>>(
      x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(), M, C, F, c,
      HW, G, nchunks, acc_t(1) / static_cast<acc_t>(G), static_cast<acc_t>(eps));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  fwd_fill_kernel<scalar_t, acc_t><<<N * F, kThreads, 0, stream>>>(
      partial.const_data_ptr<acc_t>(), y.mutable_data_ptr<scalar_t>(), M, C, F, HW, nchunks,
      acc_t(1) / static_cast<acc_t>(L));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int VEC>
void launch_backward(const at::Tensor& dy, const at::Tensor& x, at::Tensor& dx, int64_t G, int64_t F, double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const int64_t M = N / G, c = C / F, L = c * HW;
  const int64_t nchunks = (L / VEC + kThreads - 1) / kThreads;
  auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor coef = at::empty({M * F}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  bwd_coef_kernel<scalar_t, acc_t><<<M * F, kThreads, 0, stream>>>(
      dy.const_data_ptr<scalar_t>(), coef.mutable_data_ptr<acc_t>(), M, C, F, HW, G,
      static_cast<acc_t>(1.0 / (static_cast<double>(L) * static_cast<double>(G))));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  bwd_dx_kernel<scalar_t, acc_t, VEC><<<M * F * nchunks, kThreads, 0, stream>>>(
      x.const_data_ptr<scalar_t>(), dy.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(),
      coef.const_data_ptr<acc_t>(), M, C, F, c, HW, G, nchunks, acc_t(1) / static_cast<acc_t>(G),
      static_cast<acc_t>(eps));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor minibatch_std_forward_cuda(const at::Tensor& x_in, int64_t G, int64_t F, double eps) {
  check_cuda_args(x_in, G, F, "fastgan_C::minibatch_std_forward (cuda)");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty({x.size(0), x.size(1) + F, x.size(2), x.size(3)}, x.options());
  if (y.numel() == 0) return y;
  const int64_t HW = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "minibatch_std_forward_cuda", [&] {
    constexpr int V = vec_width<scalar_t>();
    if (V > 1 && HW % V == 0 && aligned16(x.const_data_ptr()) && aligned16(y.const_data_ptr())) {
      launch_forward<scalar_t, V>(x, y, G, F, eps);
    } else {
      launch_forward<scalar_t, 1>(x, y, G, F, eps);
    }
  });
  return y;
}

at::Tensor minibatch_std_backward_cuda(const at::Tensor& dy_in, const at::Tensor& x_in, int64_t G, int64_t F,
                                       double eps) {
  check_cuda_args(x_in, G, F, "fastgan_C::minibatch_std_backward (cuda)");
  TORCH_CHECK(dy_in.dim() == 4 && dy_in.size(0) == x_in.size(0) && dy_in.size(1) == x_in.size(1) + F &&
                  dy_in.size(2) == x_in.size(2) && dy_in.size(3) == x_in.size(3),
              "fastgan_C::minibatch_std_backward (cuda): grad must have shape [N, C + F, H, W] = [", x_in.size(0),
              ", ", x_in.size(1) + F, ", ", x_in.size(2), ", ", x_in.size(3), "], got ", dy_in.sizes());
  TORCH_CHECK(dy_in.scalar_type() == x_in.scalar_type() && dy_in.device() == x_in.device(),
              "fastgan_C::minibatch_std_backward (cuda): grad must match x in dtype and device");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor dy = dy_in.contiguous();
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (dx.numel() == 0) return dx;
  const int64_t HW = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "minibatch_std_backward_cuda", [&] {
    // 2-byte types: 4 elements (8-byte accesses), not 8. With 8 lanes of float32 moments
    // and IEEE division (no fast-math) the sm_80 build spilled 20 bytes.
    constexpr int V = sizeof(scalar_t) == 2 ? 4 : vec_width<scalar_t>();
    if (V > 1 && HW % V == 0 && aligned16(x.const_data_ptr()) && aligned16(dy.const_data_ptr()) &&
        aligned16(dx.const_data_ptr())) {
      launch_backward<scalar_t, V>(dy, x, dx, G, F, eps);
    } else {
      launch_backward<scalar_t, 1>(dy, x, dx, G, F, eps);
    }
  });
  return dx;
}

}  // namespace
}  // namespace fastgan

TORCH_LIBRARY_IMPL(fastgan_C, CUDA, m) {
  m.impl("minibatch_std_forward", &fastgan::minibatch_std_forward_cuda);
  m.impl("minibatch_std_backward", &fastgan::minibatch_std_backward_cuda);
}
