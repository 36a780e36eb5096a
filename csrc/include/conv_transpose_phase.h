// Phase decomposition of the transposed convolution (groups=1, dilation=1), per spatial
// axis; used by the CUDA kernel (csrc/cuda/conv_transpose.cu). The Triton kernel
// (kernels/conv_transpose.py) evaluates the same formulas, and
// tests/test_conv_transpose_gpu_kernels.py::test_phase_math_covers_every_output_once
// checks them exhaustively over random configurations in Python.
//
//   y[oh] = sum_{kh, ih : oh = ih*s - p + kh} x[ih] * w[kh]       (one axis)
//   out   = (in - 1)*s - 2p + (k - 1) + output_padding + 1
//
// Write oh = ph + s*i with the phase ph in [0, s). Tap kh reaches oh iff oh + p - kh is a
// multiple of s, i.e. kh = r (mod s) with r = (ph + p) mod s. With q = (ph + p) div s
// (floor; ph + p >= 0, so C's truncating division is the floor):
//
//   kh = r + s*t,   t = 0 .. T-1,   T = ceil((k - r)/s)   (T = 0 when r >= k)
//   ih = i + q - t                 (the tap contributes only if 0 <= ih < in)
//   i  = 0 .. n-1,  n = ceil((out - ph)/s)                (n = 0 when ph >= out)
//
// so each of the s_h*s_w phases is a dense correlation of x with the sub-kernel
// w[:, :, r_h::s_h, r_w::s_w]: an implicit GEMM with M = N*n_h*n_w, N = C_out and
// K = C_in*T_h*T_w. Every output element belongs to exactly one (phase, i), so it is
// computed and written exactly once.
#pragma once

#include "fastgan_hd.h"

namespace fastgan {
namespace conv_transpose {

struct PhaseAxis {
  int r;  // first tap of the phase: kh = r + s*t
  int q;  // input offset: ih = i + q - t
  int T;  // number of taps of the phase along this axis
  int n;  // number of output positions of the phase along this axis
};

// All arguments >= 0 except none: ph in [0, s), s >= 1, p >= 0, k >= 1, out >= 1.
FASTGAN_HD PhaseAxis phase_axis(int ph, int s, int p, int k, int out) {
  PhaseAxis a;
  a.r = (ph + p) % s;
  a.q = (ph + p) / s;
  a.T = (k - a.r + s - 1) / s;    // k - r + s - 1 >= k >= 1 since r <= s - 1
  a.n = (out - ph + s - 1) / s;   // out - ph + s - 1 >= out >= 1 since ph <= s - 1
  return a;
}

// Taps per phase along an axis at most (the packed weight's extent): ceil(k / s).
FASTGAN_HD int max_taps(int s, int k) { return (k + s - 1) / s; }

}  // namespace conv_transpose
}  // namespace fastgan
