// Per-element epilogue math of fastgan's transposed convolution, shared by the CPU
// (csrc/cpu/conv_transpose.cpp) and CUDA (csrc/cuda/conv_transpose.cu) kernels.
//
//   pre = conv_transpose(x, w) + b
//   z   = act(pre) * gain
//   y   = clamp(z, -clamp, clamp)          (clamp < 0: no clamp)
//
// act codes (also fastgan.reference.conv_transpose.ACT_CODES):
//   0 linear, 1 relu, 2 lrelu (negative_slope), 3 tanh, 4 sigmoid
#pragma once

#include <math.h>

#include "fastgan_hd.h"

namespace fastgan {
namespace conv_transpose {

enum Act : int { kLinear = 0, kRelu = 1, kLrelu = 2, kTanh = 3, kSigmoid = 4 };

// What the backward receives as `saved` (fastgan.reference.conv_transpose.SAVE_*).
enum SaveMode : int { kSaveOutput = 0, kSavePreclamp = 1, kSavePre = 2 };

FASTGAN_HD float ct_tanh(float v) { return tanhf(v); }
FASTGAN_HD double ct_tanh(double v) { return tanh(v); }
FASTGAN_HD float ct_exp(float v) { return expf(v); }
FASTGAN_HD double ct_exp(double v) { return exp(v); }

// act(v) without gain.
template <typename T>
FASTGAN_HD T act_forward(T v, int act, T slope) {
  switch (act) {
    case kRelu: return v < T(0) ? T(0) : v;  // NaN stays NaN, as in torch.relu
    case kLrelu: return v > T(0) ? v : v * slope;
    case kTanh: return ct_tanh(v);
    case kSigmoid: return T(1) / (T(1) + ct_exp(-v));
    default: return v;
  }
}

// y from pre (bias already added).
template <typename T>
FASTGAN_HD T epilogue(T v, int act, T slope, T gain, T clamp) {
  T z = act_forward(v, act, slope) * gain;
  if (clamp >= T(0)) z = z < -clamp ? -clamp : (z > clamp ? clamp : z);
  return z;
}

// d y / d pre from t = act(pre) * gain (the unclamped output), gain included; with
// clamp >= 0 the clamp's gradient [|t| <= clamp] is applied. Valid for every act when
// gain != 0 (lrelu needs negative_slope >= 0); gain == 0 gives 0.
template <typename T>
FASTGAN_HD T act_grad_from_output(T t, int act, T slope, T gain, T clamp) {
  if (gain == T(0)) return T(0);
  if (clamp >= T(0) && !(t <= clamp && t >= -clamp)) return T(0);
  switch (act) {
    case kRelu: return (t * gain <= T(0)) ? T(0) : gain;  // NaN passes, as in threshold_backward
    case kLrelu: return (t * gain > T(0)) ? gain : slope * gain;
    case kTanh: { T s = t / gain; return (T(1) - s * s) * gain; }
    case kSigmoid: { T s = t / gain; return s * (T(1) - s) * gain; }
    default: return gain;
  }
}

// d y / d pre from the pre-activation itself (always exact; used for lrelu with a
// negative slope, where the output does not determine the branch).
template <typename T>
FASTGAN_HD T act_grad_from_pre(T v, int act, T slope, T gain, T clamp) {
  T d;
  switch (act) {
    case kRelu: d = v <= T(0) ? T(0) : T(1); break;
    case kLrelu: d = v > T(0) ? T(1) : slope; break;
    case kTanh: { T s = ct_tanh(v); d = T(1) - s * s; break; }
    case kSigmoid: { T s = T(1) / (T(1) + ct_exp(-v)); d = s * (T(1) - s); break; }
    default: d = T(1);
  }
  if (clamp >= T(0)) {
    T z = act_forward(v, act, slope) * gain;
    if (!(z <= clamp && z >= -clamp)) return T(0);
  }
  return d * gain;
}

}  // namespace conv_transpose
}  // namespace fastgan
