// Minibatch standard deviation: per-element math shared by the CPU (csrc/cpu) and CUDA
// (csrc/cuda) kernels. Everything here is plain arithmetic usable on host and device.
//
// Notation (DESIGN.md 2.2): x is [N, C, H, W] contiguous, G members per group,
// M = N / G groups, F = num_channels, c = C / F, HW = H * W, L = c * HW.
// Sample n = g * M + m is member g of group m (strided groups). For a fixed (m, f) the
// c * HW values of member g are ONE contiguous span of length L starting at
// member_offset(g, m, f): every kernel works on the G spans of a (m, f) pair,
// position j in [0, L) of each span being the same (k, h, w).
//
//   mu[j]   = 1/G sum_g x_g[j]
//   var[j]  = 1/G sum_g (x_g[j] - mu[j])^2          (biased)
//   s[m,f]  = 1/L sum_j sqrt(var[j] + eps)
//   forward : y[n, :C] = x[n];  y[n, C+f, :, :] = s[m, f]
//   backward: S[m,f]  = sum_{g,h,w} dy[g*M+m, C+f, h, w]
//             dx_g[j] = dy_g[j] + S/L * (x_g[j] - mu[j]) / (G * sqrt(var[j] + eps))
//   (the path through mu vanishes since sum_g (x_g - mu) = 0).
#pragma once

#include <cmath>
#include <cstdint>

#include "fastgan_hd.h"

namespace fastgan {
namespace mbstd {

// Element offset of member g of group m, channel-group f, position 0, in a tensor with
// `channels` channels per sample (C for x and dx, C + F for y and dy).
FASTGAN_HD int64_t member_offset(int64_t g, int64_t m, int64_t f, int64_t M, int64_t channels,
                                 int64_t c, int64_t HW) {
  return ((g * M + m) * channels + f * c) * HW;
}

// Offset of the stat channel C + f of sample n = g * M + m in y / dy ([N, C + F, H, W]).
FASTGAN_HD int64_t stat_offset(int64_t g, int64_t m, int64_t f, int64_t M, int64_t C, int64_t F,
                               int64_t HW) {
  return ((g * M + m) * (C + F) + C + f) * HW;
}

// sqrt(var + eps) with eps inside the root (never sqrt(var) + eps). A negative var is
// clamped to 0 because a one-pass formula can round it slightly negative; a NaN var (NaN
// or inf in the group) stays NaN, as in the reference.
template <typename acc_t>
FASTGAN_HD acc_t group_std(acc_t var, acc_t eps) {
  return sqrt((var < acc_t(0) ? acc_t(0) : var) + eps);
}

// One-pass moments with a shift (the first member's value): numerically safe because
// |mean - shift| is at most the spread of the group, so s2 - s1^2/G loses little.
template <typename acc_t>
struct ShiftedMoments {
  acc_t shift, s1, s2;
  FASTGAN_HD void init(acc_t first) {
    shift = first;
    s1 = acc_t(0);
    s2 = acc_t(0);
  }
  FASTGAN_HD void add(acc_t v) {
    const acc_t d = v - shift;
    s1 += d;
    s2 += d * d;
  }
  FASTGAN_HD acc_t mean(acc_t inv_G) const { return shift + s1 * inv_G; }
  FASTGAN_HD acc_t var(acc_t inv_G) const {
    const acc_t m = s1 * inv_G;
    return s2 * inv_G - m * m;
  }
};

// dx = dy + r * (x - mu) with r = S / (L G std): the backward's per-element step (the
// kernels fold 1/(L G) into a per-(m, f) coefficient, so r = coef / std).
template <typename acc_t>
FASTGAN_HD acc_t grad_input(acc_t dy, acc_t x, acc_t mu, acc_t r) {
  return dy + r * (x - mu);
}

}  // namespace mbstd
}  // namespace fastgan
