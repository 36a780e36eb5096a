// Gradient-norm penalty on CUDA: the CUDA implementations of
// torch.ops.fastgan_C.grad_norm_forward / grad_norm_backward (schemas in
// csrc/cpu/grad_norm.cpp). Math: csrc/include/grad_norm.h. g is viewed as [N, D].
//
//   sumsq_kernel     one block per (sample, chunk): partial sum of squares of the chunk
//                    (16-byte vector loads when g is aligned and D is a multiple of the
//                    vector width), a fixed-order block reduction, one partial written;
//   finalize_kernel  one block: per-sample sums of the partials in chunk order, the
//                    penalty from them (deterministic: no atomics anywhere);
//   scale_kernel     the backward: dg = coef_i * g, one read and one write of g.
// Everything runs on the current stream; no host synchronisation (grad_out is read on
// the device).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "grad_norm.h"

namespace fastgan {
namespace {

using namespace gradnorm;

constexpr int kThreads = 256;
constexpr int64_t kChunkUnit = kThreads * 8;  // a multiple of every vector width
constexpr int64_t kTargetBlocks = 2048;       // several waves on a 132-SM GPU
constexpr int64_t kMaxChunk = kChunkUnit * 32;

template <typename scalar_t>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

// VEC elements loaded or stored as one 16-byte access.
template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Pack {
  scalar_t v[VEC];
};

// Sum over the block in a fixed order (warp shuffles, then the warp sums by warp 0).
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v, acc_t* warp_sums) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : acc_t(0);
  if (warp == 0)
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;  // valid in thread 0
}

template <typename scalar_t, typename acc_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    sumsq_kernel(const scalar_t* __restrict__ g, acc_t* __restrict__ partial, int64_t D, int64_t chunk,
                 int64_t nchunks) {
  __shared__ acc_t warp_sums[kThreads / 32];
  const int64_t item = blockIdx.x;
  const int64_t n = item / nchunks, c = item % nchunks;
  const scalar_t* __restrict__ base = g + n * D;
  const int64_t lo = c * chunk, hi = lo + chunk < D ? lo + chunk : D;
  acc_t acc = acc_t(0);
  // With VEC > 1 the host guarantees D % VEC == 0 and an aligned g, so every access
  // below is a whole aligned pack (chunk is a multiple of VEC).
  for (int64_t i = lo + threadIdx.x * VEC; i < hi; i += kThreads * VEC) {
    const Pack<scalar_t, VEC> p = *reinterpret_cast<const Pack<scalar_t, VEC>*>(base + i);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const acc_t v = static_cast<acc_t>(p.v[k]);
      acc += v * v;
    }
  }
  acc = block_sum<acc_t>(acc, warp_sums);
  if (threadIdx.x == 0) partial[item] = acc;
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    finalize_kernel(const acc_t* __restrict__ partial, acc_t* __restrict__ sumsq, acc_t* __restrict__ penalty,
                    int64_t N, int64_t nchunks, acc_t center) {
  __shared__ acc_t warp_sums[kThreads / 32];
  acc_t total = acc_t(0);
  for (int64_t n = threadIdx.x; n < N; n += kThreads) {
    acc_t s = acc_t(0);
    for (int64_t c = 0; c < nchunks; ++c) s += partial[n * nchunks + c];
    sumsq[n] = s;
    total += penalty_term<acc_t>(s, center);
  }
  total = block_sum<acc_t>(total, warp_sums);
  if (threadIdx.x == 0) *penalty = total / static_cast<acc_t>(N);
}

template <typename scalar_t, typename acc_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    scale_kernel(const scalar_t* __restrict__ g, scalar_t* __restrict__ out, const acc_t* __restrict__ sumsq,
                 const acc_t* __restrict__ grad_out, int64_t D, int64_t chunk, int64_t nchunks, acc_t center,
                 acc_t two_over_n) {
  const int64_t item = blockIdx.x;
  const int64_t n = item / nchunks, c = item % nchunks;
  const acc_t coef = backward_coef<acc_t>(*grad_out, sumsq[n], center, two_over_n);
  const int64_t lo = c * chunk, hi = lo + chunk < D ? lo + chunk : D;
  const scalar_t* __restrict__ src = g + n * D;
  scalar_t* __restrict__ dst = out + n * D;
  for (int64_t i = lo + threadIdx.x * VEC; i < hi; i += kThreads * VEC) {
    const Pack<scalar_t, VEC> p = *reinterpret_cast<const Pack<scalar_t, VEC>*>(src + i);
    Pack<scalar_t, VEC> q;
#pragma unroll
    for (int k = 0; k < VEC; ++k) q.v[k] = static_cast<scalar_t>(coef * static_cast<acc_t>(p.v[k]));
    *reinterpret_cast<Pack<scalar_t, VEC>*>(dst + i) = q;
  }
}

struct Plan {
  int64_t N, D, chunk, nchunks;
};

Plan make_plan(const at::Tensor& g) {
  Plan p{};
  p.N = g.size(0);
  p.D = g.numel() / p.N;
  const int64_t per_sample = std::max<int64_t>(1, (kTargetBlocks + p.N - 1) / p.N);
  const int64_t want = (std::max<int64_t>(p.D, 1) + per_sample - 1) / per_sample;
  p.chunk = std::min(kMaxChunk, std::max(kChunkUnit, (want + kChunkUnit - 1) / kChunkUnit * kChunkUnit));
  p.nchunks = num_chunks(p.D, p.chunk);
  TORCH_CHECK(p.N * p.nchunks <= INT32_MAX, "grad_norm (cuda): too many samples: N=", p.N);
  return p;
}

// 16-byte accesses need every sample start aligned: base pointers aligned, D a multiple.
template <typename scalar_t>
bool can_vectorize(int64_t D, const void* a, const void* b = nullptr) {
  constexpr int64_t vec = 16 / sizeof(scalar_t);
  auto aligned = [](const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return D % vec == 0 && aligned(a) && aligned(b);
}

void check_grad(const at::Tensor& grad, const char* what) {
  TORCH_CHECK(grad.is_cuda(), what, ": expected a CUDA tensor, got one on ", grad.device());
  TORCH_CHECK(grad.dim() >= 1 && grad.size(0) >= 1, what,
              ": expected a gradient of shape [N, ...] with N >= 1 samples, got shape ", grad.sizes());
  const auto st = grad.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, what,
              ": expected float32, float64, float16 or bfloat16, got ", st);
}

at::ScalarType acc_scalar_type(at::ScalarType st) { return st == at::kDouble ? at::kDouble : at::kFloat; }

#define FASTGAN_GRAD_NORM_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

}  // namespace

std::tuple<at::Tensor, at::Tensor> grad_norm_forward_cuda(const at::Tensor& grad, double center) {
  check_grad(grad, "grad_norm_forward");
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor g = grad.contiguous();
  const Plan p = make_plan(g);
  const auto opts = g.options().dtype(acc_scalar_type(g.scalar_type()));
  at::Tensor penalty = at::empty({}, opts);
  at::Tensor sumsq = at::empty({p.N}, opts);
  at::Tensor partial = at::empty({p.N * p.nchunks}, opts);
  auto stream = c10::cuda::getCurrentCUDAStream();
  FASTGAN_GRAD_NORM_DISPATCH(g.scalar_type(), "grad_norm_forward_cuda", [&] {
    using acc_t = typename Acc<scalar_t>::type;
    constexpr int VEC = 16 / sizeof(scalar_t);
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    acc_t* pp = partial.mutable_data_ptr<acc_t>();
    const dim3 blocks(static_cast<unsigned>(p.N * p.nchunks));
    if (can_vectorize<scalar_t>(p.D, gp)) {
      sumsq_kernel<scalar_t, acc_t, VEC><<<blocks, kThreads, 0, stream>>>(gp, pp, p.D, p.chunk, p.nchunks);
    } else {
      sumsq_kernel<scalar_t, acc_t, 1><<<blocks, kThreads, 0, stream>>>(gp, pp, p.D, p.chunk, p.nchunks);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    finalize_kernel<acc_t><<<1, kThreads, 0, stream>>>(pp, sumsq.mutable_data_ptr<acc_t>(),
                                                      penalty.mutable_data_ptr<acc_t>(), p.N, p.nchunks,
                                                      static_cast<acc_t>(center));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {penalty, sumsq};
}

at::Tensor grad_norm_backward_cuda(const at::Tensor& grad_out, const at::Tensor& grad, const at::Tensor& sumsq,
                                   double center) {
  check_grad(grad, "grad_norm_backward");
  const c10::cuda::CUDAGuard guard(grad.device());
  const auto acc = acc_scalar_type(grad.scalar_type());
  TORCH_CHECK(grad_out.numel() == 1 && grad_out.device() == grad.device(),
              "grad_norm_backward: grad_out must be one value on ", grad.device(), ", got shape ",
              grad_out.sizes(), " on ", grad_out.device());
  TORCH_CHECK(sumsq.dim() == 1 && sumsq.size(0) == grad.size(0) && sumsq.scalar_type() == acc &&
                  sumsq.device() == grad.device(),
              "grad_norm_backward: sumsq must be the forward's per-sample sums of squares: a ", acc,
              " tensor of shape [", grad.size(0), "] on ", grad.device(), ", got ", sumsq.scalar_type(),
              " of shape ", sumsq.sizes(), " on ", sumsq.device());
  const at::Tensor g = grad.contiguous();
  const at::Tensor s = sumsq.contiguous();
  const at::Tensor go = grad_out.to(acc).reshape({1}).contiguous();
  at::Tensor out = at::empty(g.sizes(), g.options());
  if (g.numel() == 0) return out;
  const Plan p = make_plan(g);
  auto stream = c10::cuda::getCurrentCUDAStream();
  FASTGAN_GRAD_NORM_DISPATCH(g.scalar_type(), "grad_norm_backward_cuda", [&] {
    using acc_t = typename Acc<scalar_t>::type;
    constexpr int VEC = 16 / sizeof(scalar_t);
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const acc_t* sp = s.const_data_ptr<acc_t>();
    const acc_t* gop = go.const_data_ptr<acc_t>();
    const acc_t c = static_cast<acc_t>(center);
    const acc_t two_over_n = static_cast<acc_t>(2.0 / static_cast<double>(p.N));
    const dim3 blocks(static_cast<unsigned>(p.N * p.nchunks));
    if (can_vectorize<scalar_t>(p.D, gp, op)) {
      scale_kernel<scalar_t, acc_t, VEC>
          <<<blocks, kThreads, 0, stream>>>(gp, op, sp, gop, p.D, p.chunk, p.nchunks, c, two_over_n);
    } else {
      scale_kernel<scalar_t, acc_t, 1>
          <<<blocks, kThreads, 0, stream>>>(gp, op, sp, gop, p.D, p.chunk, p.nchunks, c, two_over_n);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace fastgan

TORCH_LIBRARY_IMPL(fastgan_C, CUDA, m) {
  m.impl("grad_norm_forward", &fastgan::grad_norm_forward_cuda);
  m.impl("grad_norm_backward", &fastgan::grad_norm_backward_cuda);
}
