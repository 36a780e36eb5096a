// Runs the CUDA kernels of csrc/cuda/conv_transpose_kernels.cuh on the CPU through
// cuda_host_shim.h (see there), for tests/test_conv_transpose_gpu_kernels.py.
//
// usage: emulate KERNEL DTYPE N Cin H W Cout KH KW sh sw ph pw oph opw act slope gain clamp
//                has_bias DIR
//   KERNEL wmma | simt; DTYPE f32 | f64 | f16 | bf16. Reads DIR/x.bin [N,Cin,H,W],
//   DIR/w.bin [Cin,Cout,KH,KW], DIR/b.bin [Cout] (float64, NCHW, already rounded to
//   DTYPE by the caller) and writes DIR/y.bin [N,Cout,Ho,Wo] (float64). The host steps
//   mirror conv_transpose_forward_cuda in csrc/cuda/conv_transpose.cu: x to channels-last,
//   the weight packed as wp[r_h, r_w, t, u, ci, co], the output poisoned (NaN) first, the
//   same grid.
#include "cuda_host_shim.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <string>

#include "conv_transpose_kernels.cuh"

using namespace fastgan::conv_transpose;
using namespace fastgan::conv_transpose::kernels;

static std::vector<double> read_all(const std::string& path, size_t n) {
  std::vector<double> v(n);
  std::ifstream f(path, std::ios::binary);
  f.read(reinterpret_cast<char*>(v.data()), n * sizeof(double));
  if (!f) {
    std::fprintf(stderr, "cannot read %zu doubles from %s\n", n, path.c_str());
    std::exit(2);
  }
  return v;
}

template <typename T>
static int run(const std::string& kernel, int* a, double slope, double gain, double clamp, bool has_bias,
               const std::string& dir) {
  const int N = a[0], Cin = a[1], H = a[2], W = a[3], Cout = a[4], KH = a[5], KW = a[6];
  const int sh = a[7], sw = a[8], ph = a[9], pw = a[10], oph = a[11], opw = a[12], act = a[13];
  const int Ho = (H - 1) * sh - 2 * ph + KH - 1 + oph + 1, Wo = (W - 1) * sw - 2 * pw + KW - 1 + opw + 1;
  const auto xd = read_all(dir + "/x.bin", (size_t)N * Cin * H * W);
  const auto wd = read_all(dir + "/w.bin", (size_t)Cin * Cout * KH * KW);
  const auto bd = has_bias ? read_all(dir + "/b.bin", Cout) : std::vector<double>();

  std::vector<T> x((size_t)N * H * W * Cin);  // channels-last
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < Cin; ++c)
      for (int h = 0; h < H; ++h)
        for (int w = 0; w < W; ++w)
          x[(((size_t)n * H + h) * W + w) * Cin + c] = static_cast<T>(xd[(((size_t)n * Cin + c) * H + h) * W + w]);
  const int tmh = max_taps(sh, KH), tmw = max_taps(sw, KW);
  std::vector<T> wp((size_t)sh * sw * tmh * tmw * Cin * Cout, static_cast<T>(0.0));
  for (int rh = 0; rh < sh; ++rh)
    for (int rw = 0; rw < sw; ++rw)
      for (int t = 0; t < tmh; ++t)
        for (int u = 0; u < tmw; ++u)
          for (int ci = 0; ci < Cin; ++ci)
            for (int co = 0; co < Cout; ++co) {
              const int kh = rh + sh * t, kw = rw + sw * u;
              if (kh < KH && kw < KW)
                wp[((((((size_t)rh * sw + rw) * tmh + t) * tmw + u) * Cin + ci) * Cout) + co] =
                    static_cast<T>(wd[(((size_t)ci * Cout + co) * KH + kh) * KW + kw]);
            }
  std::vector<T> b(has_bias ? Cout : 0);
  for (int co = 0; co < (int)b.size(); ++co) b[co] = static_cast<T>(bd[co]);
  std::vector<T> y((size_t)N * Cout * Ho * Wo, static_cast<T>(std::numeric_limits<double>::quiet_NaN()));

  Params p;
  p.N = N; p.Cin = Cin; p.H = H; p.W = W; p.Cout = Cout; p.Ho = Ho; p.Wo = Wo;
  p.sh = sh; p.sw = sw; p.ph = ph; p.pw = pw; p.kh = KH; p.kw = KW; p.tmh = tmh; p.tmw = tmw; p.act = act;
  p.slope = (float)slope; p.gain = (float)gain; p.clamp = (float)clamp;
  p.slope_d = slope; p.gain_d = gain; p.clamp_d = clamp;
  const long m_max = (long)N * ((Ho + sh - 1) / sh) * ((Wo + sw - 1) / sw);
  const T* bptr = has_bias ? b.data() : nullptr;
  if (kernel == "wmma") {
    if constexpr (std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>) {
      const bool vec_a = Cin % 8 == 0, vec_b = Cout % 8 == 0;  // std::vector data is 16-byte aligned
      EmuDim3 grid{(unsigned)((m_max + WM_BM - 1) / WM_BM), (unsigned)((Cout + WM_BN - 1) / WM_BN),
                   (unsigned)(sh * sw)};
      emu_launch(grid, WM_THREADS, [&] { wmma_kernel<T>(x.data(), wp.data(), bptr, y.data(), p, vec_a, vec_b); });
    } else {
      std::fprintf(stderr, "the wmma kernel takes f16 or bf16\n");
      return 2;
    }
  } else {
    EmuDim3 grid{(unsigned)((m_max + SM_BM - 1) / SM_BM), (unsigned)((Cout + SM_BN - 1) / SM_BN), (unsigned)(sh * sw)};
    emu_launch(grid, SM_THREADS, [&] { simt_kernel<T>(x.data(), wp.data(), bptr, y.data(), p); });
  }
  std::vector<double> yd(y.size());
  for (size_t i = 0; i < y.size(); ++i) yd[i] = static_cast<double>(y[i]);
  std::ofstream f(dir + "/y.bin", std::ios::binary);
  f.write(reinterpret_cast<const char*>(yd.data()), yd.size() * sizeof(double));
  return f ? 0 : 2;
}

int main(int argc, char** argv) {
  if (argc != 22) {
    std::fprintf(stderr, "usage: %s KERNEL DTYPE N Cin H W Cout KH KW sh sw ph pw oph opw act slope gain clamp "
                 "has_bias DIR\n", argv[0]);
    return 2;
  }
  const std::string kernel = argv[1], dtype = argv[2];
  int a[14];
  for (int i = 0; i < 14; ++i) a[i] = std::atoi(argv[3 + i]);
  const double slope = std::atof(argv[17]), gain = std::atof(argv[18]), clamp = std::atof(argv[19]);
  const bool has_bias = std::atoi(argv[20]) != 0;
  const std::string dir = argv[21];
  if (dtype == "f32") return run<float>(kernel, a, slope, gain, clamp, has_bias, dir);
  if (dtype == "f64") return run<double>(kernel, a, slope, gain, clamp, has_bias, dir);
  if (dtype == "f16") return run<c10::Half>(kernel, a, slope, gain, clamp, has_bias, dir);
  if (dtype == "bf16") return run<c10::BFloat16>(kernel, a, slope, gain, clamp, has_bias, dir);
  std::fprintf(stderr, "unknown dtype %s\n", dtype.c_str());
  return 2;
}
