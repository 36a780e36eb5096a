// Gradient-norm penalty: per-sample math shared by the CPU (csrc/cpu/grad_norm.cpp) and
// CUDA (csrc/cuda/grad_norm.cu) kernels. Plain arithmetic usable on host and device.
//
// Notation (DESIGN.md 2.3): g is [N, D] contiguous (D = all non-batch dims flattened),
// c = center, go = the upstream gradient of the (scalar) penalty.
//
//   s_i      = sum_j g_ij^2                     (accumulated in float32 for half/bfloat16,
//                                                in double for float64)
//   penalty  = 1/N sum_i (sqrt(s_i) - c)^2      (c = 0: 1/N sum_i s_i)
//   dP/dg_ij = coef_i * g_ij,  coef_i = go * 2/N * (1 - c / sqrt(s_i))   if s_i > 0
//                                     = go * 2/N                          if s_i = 0
// At s_i = 0 the norm has no derivative; g_i = 0 there, so any finite coef_i gives the
// subgradient 0 (never 0 * inf = NaN): we use go * 2/N, the c = 0 value.
//
// Work split used by both kernels: each sample's D elements are cut into chunks of a
// fixed length; pass 1 writes one partial sum of squares per (sample, chunk), which are
// then added per sample in chunk order: the result does not depend on thread counts.
#pragma once

#include <cmath>
#include <cstdint>

#include "fastgan_hd.h"

namespace fastgan {
namespace gradnorm {

// (sqrt(s) - c)^2, or s itself when c == 0 (the R1/R2 case: no sqrt at all).
template <typename acc_t>
FASTGAN_HD acc_t penalty_term(acc_t sumsq, acc_t center) {
  if (center == acc_t(0)) return sumsq;
  const acc_t t = sqrt(sumsq) - center;
  return t * t;
}

// coef_i of the header comment: go * 2/N * (1 - c / sqrt(s)), finite for every s >= 0.
template <typename acc_t>
FASTGAN_HD acc_t backward_coef(acc_t grad_out, acc_t sumsq, acc_t center, acc_t two_over_n) {
  acc_t coef = grad_out * two_over_n;
  if (center != acc_t(0) && sumsq > acc_t(0)) coef *= acc_t(1) - center / sqrt(sumsq);
  return coef;
}

// Number of chunks a sample of D elements is cut into (at least 1, so D = 0 still
// writes its partial of 0).
FASTGAN_HD int64_t num_chunks(int64_t D, int64_t chunk) {
  return D <= 0 ? 1 : (D + chunk - 1) / chunk;
}

}  // namespace gradnorm
}  // namespace fastgan
