// Transposed convolution with fused epilogue on CUDA: the CUDA implementation of
// torch.ops.fastgan_C.conv_transpose_forward (schema in csrc/cpu/conv_transpose.cpp):
//
//   y = clamp(act(conv_transpose2d(x, w) + b) * gain, -clamp, clamp)   (clamp < 0: none)
//
// groups = 1, dilation = 1, any stride / padding / output_padding / kernel size.
// Phase decomposition (csrc/include/conv_transpose_phase.h): the s_h*s_w output phases
// are dense correlations of x with sub-kernels, each an implicit GEMM
//
//   M = N*n_h*n_w rows (n, i, j),  N = C_out,  K = T_h*T_w taps (t, u) x C_in channels
//   A[m, (t, u, ci)]  = x[n, ci, i + q_h - t, j + q_w - u]   (0 outside the input)
//   B[(t, u, ci), co] = wp[r_h, r_w, t, u, ci, co] = w[ci, co, r_h + s_h*t, r_w + s_w*u]
//
// One launch covers all phases (blockIdx.z = phase); the epilogue (bias, activation,
// gain, clamp: csrc/include/conv_transpose.h) is applied to the float/double accumulator
// and every output element is stored exactly once at y[n, co, ph + s_h*i, pw + s_w*j].
// x is read channels-last (a K tile of one row is contiguous); the host converts it and
// packs the weight (small) with ATen ops on the current stream.
//
// Kernels (csrc/cuda/conv_transpose_kernels.cuh):
//   wmma_kernel  float16 / bfloat16 on sm_80+: nvcuda::wmma 16x16x16 tensor-core tiles
//                with float accumulation; 64x64x32 block tile, 4 warps of 32x32, shared
//                tiles double-buffered through registers (the next tile's global loads
//                are issued before the current tile's MMAs).
//   simt_kernel  float32 / float64 (and half types below sm_80): 64x64x16 block tile,
//                256 threads with 4x4 register micro-tiles, accumulation in float/double.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "conv_transpose.h"
#include "conv_transpose_kernels.cuh"
#include "conv_transpose_phase.h"

namespace fastgan {
namespace conv_transpose {
namespace {

using namespace kernels;

// ---------------------------------------------------------------- host
// A template (not code inside the dispatch lambda) so that `if constexpr` really drops the
// tensor-core branch for float/double instead of instantiating wmma_kernel<float>.
template <typename scalar_t>
void launch(const at::Tensor& x, const at::Tensor& wp, const c10::optional<at::Tensor>& b, at::Tensor& y,
            const Params& p, int64_t m_max, int phases, bool tensor_cores, cudaStream_t stream) {
  const scalar_t* bptr = b ? b->data_ptr<scalar_t>() : nullptr;
  constexpr bool half_type = std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, at::BFloat16>;
  if constexpr (half_type) {
    if (tensor_cores) {
      // 16-byte vector loads need 8-element alignment of every row start and pointer.
      const bool vec_a = p.Cin % 8 == 0 && reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0;
      const bool vec_b = p.Cout % 8 == 0 && reinterpret_cast<uintptr_t>(wp.data_ptr()) % 16 == 0;
      const dim3 grid((unsigned)((m_max + WM_BM - 1) / WM_BM), (unsigned)((p.Cout + WM_BN - 1) / WM_BN), phases);
      wmma_kernel<scalar_t><<<grid, WM_THREADS, 0, stream>>>(x.data_ptr<scalar_t>(), wp.data_ptr<scalar_t>(), bptr,
                                                             y.data_ptr<scalar_t>(), p, vec_a, vec_b);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
  }
  const dim3 grid((unsigned)((m_max + SM_BM - 1) / SM_BM), (unsigned)((p.Cout + SM_BN - 1) / SM_BN), phases);
  simt_kernel<scalar_t><<<grid, SM_THREADS, 0, stream>>>(x.data_ptr<scalar_t>(), wp.data_ptr<scalar_t>(), bptr,
                                                         y.data_ptr<scalar_t>(), p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::array<int64_t, 2> pair_arg(at::IntArrayRef v, const char* name, const char* fn) {
  TORCH_CHECK(v.size() == 1 || v.size() == 2, fn, ": ", name, " must have 1 or 2 values, got ", v.size());
  return {v[0], v.size() == 2 ? v[1] : v[0]};
}

at::Tensor conv_transpose_forward_cuda(const at::Tensor& x_, const at::Tensor& w_, const c10::optional<at::Tensor>& b_,
                                       at::IntArrayRef stride, at::IntArrayRef padding,
                                       at::IntArrayRef output_padding, int64_t act, double negative_slope,
                                       double gain, double clamp) {
  const char* fn = "fastgan_C::conv_transpose_forward (CUDA)";
  TORCH_CHECK(x_.is_cuda() && w_.is_cuda(), fn, ": x and w must be CUDA tensors, got ", x_.device(), " and ",
              w_.device());
  TORCH_CHECK(x_.device() == w_.device(), fn, ": x is on ", x_.device(), " but w is on ", w_.device());
  TORCH_CHECK(x_.dim() == 4 && w_.dim() == 4, fn, ": x must be [N, C_in, H, W] and w [C_in, C_out, kh, kw], got ",
              x_.sizes(), " and ", w_.sizes());
  const auto st = x_.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, fn,
              ": supports float32, float64, float16 and bfloat16, got ", st);
  TORCH_CHECK(w_.scalar_type() == st, fn, ": w has dtype ", w_.scalar_type(), " but x has ", st);
  TORCH_CHECK(x_.size(1) == w_.size(0), fn, ": x has ", x_.size(1), " channels but w expects ", w_.size(0),
              " (groups = 1)");
  TORCH_CHECK(act >= 0 && act <= 4, fn, ": act code must be 0..4 (linear, relu, lrelu, tanh, sigmoid), got ", act);
  const auto s = pair_arg(stride, "stride", fn), pd = pair_arg(padding, "padding", fn),
             op = pair_arg(output_padding, "output_padding", fn);
  TORCH_CHECK(s[0] >= 1 && s[1] >= 1 && pd[0] >= 0 && pd[1] >= 0 && op[0] >= 0 && op[1] >= 0, fn,
              ": needs stride >= 1, padding >= 0, output_padding >= 0, got ", stride, ", ", padding, ", ",
              output_padding);
  TORCH_CHECK(op[0] < s[0] && op[1] < s[1], fn, ": output_padding must be smaller than stride, got ",
              output_padding, " and ", stride);
  const int64_t N = x_.size(0), Cin = x_.size(1), H = x_.size(2), W = x_.size(3);
  const int64_t Cout = w_.size(1), KH = w_.size(2), KW = w_.size(3);
  const int64_t Ho = (H - 1) * s[0] - 2 * pd[0] + KH - 1 + op[0] + 1;
  const int64_t Wo = (W - 1) * s[1] - 2 * pd[1] + KW - 1 + op[1] + 1;
  TORCH_CHECK(Ho >= 1 && Wo >= 1, fn, ": the output size would be ", Ho, "x", Wo, " (input ", H, "x", W,
              ", kernel ", KH, "x", KW, ", stride ", stride, ", padding ", padding, ")");
  const int64_t kMax = std::numeric_limits<int32_t>::max();
  TORCH_CHECK(x_.numel() < kMax && N * Cout * Ho * Wo < kMax && w_.numel() * 4 < kMax && Ho * s[0] < kMax, fn,
              ": tensors of 2^31 or more elements are not supported");
  c10::optional<at::Tensor> b;
  if (b_.has_value() && b_->defined()) {
    TORCH_CHECK(b_->dim() == 1 && b_->size(0) == Cout && b_->device() == x_.device(), fn,
                ": bias must have shape [", Cout, "] on ", x_.device(), ", got ", b_->sizes(), " on ", b_->device());
    b = b_->to(st).contiguous();
  }

  c10::cuda::CUDAGuard guard(x_.device());
  at::Tensor y = at::empty({N, Cout, Ho, Wo}, x_.options().memory_format(at::MemoryFormat::Contiguous));
  if (N == 0 || Cout == 0) return y;

  // x channels-last; wp[r_h, r_w, t, u, ci, co] = w[ci, co, r_h + s_h*t, r_w + s_w*u].
  const at::Tensor x = x_.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t tmh = max_taps((int)s[0], (int)KH), tmw = max_taps((int)s[1], (int)KW);
  const at::Tensor wp = at::constant_pad_nd(w_, {0, tmw * s[1] - KW, 0, tmh * s[0] - KH}, 0)
                            .reshape({Cin, Cout, tmh, s[0], tmw, s[1]})
                            .permute({3, 5, 2, 4, 0, 1})
                            .contiguous();

  Params p;
  p.N = (int)N; p.Cin = (int)Cin; p.H = (int)H; p.W = (int)W; p.Cout = (int)Cout; p.Ho = (int)Ho; p.Wo = (int)Wo;
  p.sh = (int)s[0]; p.sw = (int)s[1]; p.ph = (int)pd[0]; p.pw = (int)pd[1]; p.kh = (int)KH; p.kw = (int)KW;
  p.tmh = (int)tmh; p.tmw = (int)tmw; p.act = (int)act;
  p.slope = (float)negative_slope; p.gain = (float)gain; p.clamp = (float)clamp;
  p.slope_d = negative_slope; p.gain_d = gain; p.clamp_d = clamp;

  // Phase (0, 0) has the most rows: ceil(Ho / s_h) * ceil(Wo / s_w) per image.
  const int64_t m_max = N * ((Ho + s[0] - 1) / s[0]) * ((Wo + s[1] - 1) / s[1]);
  const int phases = (int)(s[0] * s[1]);
  TORCH_CHECK(phases <= 65535, fn, ": stride ", stride, " gives more than 65535 phases");
  // c10::cuda::getCurrentCUDAStream is at::cuda::getCurrentCUDAStream (ATen's alias),
  // without ATen/cuda/CUDAContext.h's cuBLAS/cuSPARSE headers.
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  int major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, x.device().index()));
  const bool tensor_cores = major >= 8;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, st, "fastgan_conv_transpose_forward_cuda", [&] {
    launch<scalar_t>(x, wp, b, y, p, m_max, phases, tensor_cores, stream);
  });
  return y;
}

}  // namespace
}  // namespace conv_transpose
}  // namespace fastgan

TORCH_LIBRARY_IMPL(fastgan_C, CUDA, m) {
  m.impl("conv_transpose_forward", &fastgan::conv_transpose::conv_transpose_forward_cuda);
}
