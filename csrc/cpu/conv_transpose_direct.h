// Direct forward for transposed convolutions with few output channels (the RGB layer,
// 64 -> 3). Included by conv_transpose.cpp inside its anonymous namespace: uses its Geom,
// PhaseTables and fast_epilogue.
//
// Why: there the GEMM formulation has only C_out*kh*kw rows (48), which MKL runs at a
// third of its rate, and the library's transposed convolution is slower still; the
// layer is small enough to compute straight from x, one sample and one output phase
// plane (rh, rw) at a time:
//   y[co, rh, rw][t, m] = sum_{ci, taps (j, l)} w[ci, co, a_j, c_l] x[ci, qh0 + t - j, q0 + m - l]
// The trick that makes every tap ONE contiguous run: each input channel is first copied
// into a zero-bordered plane whose row stride the accumulator planes share, so a tap is a
// flat loop over about T*W elements at a constant offset: no bounds checks and no
// wrap-around (border columns absorb it; accumulator columns past the row's end are
// scratch). Taps go in groups of four and the few output channels are innermost, so each
// loaded input run serves all of them.
//
// A direct backward in the same style was written and measured on the 64 -> 3 layer
// (AVX-512 EPYC): grad_x 5.7 ms (GEMM path 8.6, oneDNN 6.1-6.6), but grad_w as blocked dot
// products 10.2 ms (oneDNN 5.6-5.8, GEMM 6.6-8.2), 14 ms together against 10-12 ms for the
// other paths, so it was not kept.
#pragma once

constexpr int64_t kDirectMaxCout = 8;  // the direct forward is a candidate up to this C_out
constexpr int kTapGroup = 4;

// Where everything sits in the zero-bordered planes (computed once per call).
struct DirectLayout {
  // Zero-bordered x plane: rows of stride Wp, the input at row offset rlo, column offset clo.
  int64_t rlo = 0, clo = 0, Wp = 0, Hp = 0;
  // One output channel's phase planes (the accumulators), each T rows of stride Wp, plane
  // k at base[k] (k = rh index * #rw + rw index).
  std::vector<int64_t> base;
  int64_t per_co = 0;
  // Per plane k, its taps: (offset into the bordered x plane, a * kw + c).
  struct Tap { int64_t xoff, wo; };
  std::vector<std::vector<Tap>> taps;

  DirectLayout(const Geom& g, const PhaseTables& pt) {
    int64_t rhi = 0, chi = 0;
    for (const HPhase& hp : pt.hph)
      for (int64_t j : hp.j) {
        rlo = std::max(rlo, j - hp.qh0);                        // x row qh0 + t - j >= -rlo
        rhi = std::max(rhi, hp.qh0 + hp.T - 1 - (g.H - 1));     // ... <= H - 1 + rhi
      }
    for (const WPhase& ph : pt.wph)
      for (int64_t t = ph.first; t < ph.first + ph.count; ++t) {
        const int64_t l = pt.wtaps[t].l;
        clo = std::max(clo, l - ph.q0);
        chi = std::max(chi, ph.q0 + ph.M - 1 - (g.W - 1));
      }
    Wp = g.W + clo + chi;
    Hp = g.H + rlo + rhi;
    for (const HPhase& hp : pt.hph)
      for (const WPhase& ph : pt.wph) {
        base.push_back(per_co);
        per_co += hp.T * Wp;
        std::vector<Tap> tk;
        for (size_t jj = 0; jj < hp.j.size(); ++jj)
          for (int64_t t = ph.first; t < ph.first + ph.count; ++t) {
            const WTap& wt = pt.wtaps[t];
            tk.push_back({(hp.qh0 - hp.j[jj] + rlo) * Wp + (ph.q0 - wt.l + clo), hp.a[jj] * g.kw + wt.c});
          }
        taps.push_back(std::move(tk));
      }
  }
};

// ap[c][i] += sum_q wv[c][q] * xs[q][i] for i < len, c < C.
template <typename T, int C>
inline void direct_update(int64_t len, const T* const* xs, const T (*wv)[kTapGroup], T* const* ap) {
  const T *x0 = xs[0], *x1 = xs[1], *x2 = xs[2], *x3 = xs[3];
  T w[C][kTapGroup];
  T* a[C];
  for (int c = 0; c < C; ++c) {
    a[c] = ap[c];
    for (int q = 0; q < kTapGroup; ++q) w[c][q] = wv[c][q];
  }
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const T v0 = x0[i], v1 = x1[i], v2 = x2[i], v3 = x3[i];
    for (int c = 0; c < C; ++c) a[c][i] += w[c][0] * v0 + w[c][1] * v1 + w[c][2] * v2 + w[c][3] * v3;
  }
}

// direct_update for a runtime count n <= kDirectMaxCout (compile-time counts up to 4).
template <typename T>
inline void direct_update_n(int64_t n, int64_t len, const T* const* xs, const T (*wv)[kTapGroup], T* const* ap) {
  switch (n) {
    case 1: direct_update<T, 1>(len, xs, wv, ap); break;
    case 2: direct_update<T, 2>(len, xs, wv, ap); break;
    case 3: direct_update<T, 3>(len, xs, wv, ap); break;
    case 4: direct_update<T, 4>(len, xs, wv, ap); break;
    default:
      for (int64_t c = 0; c < n; ++c) direct_update<T, 1>(len, xs, wv + c, ap + c);
  }
}

// The group of four taps of plane `plane` starting at tap t0: pointers into the bordered
// x plane and the weight offsets; missing taps of the last group read `zeros` (a run of
// zeros at least as long as any tap's) with live = false (the caller gives them weight 0;
// reading zeros rather than real inputs keeps an infinite input from turning 0 * inf into
// a NaN the reference does not have).
template <typename T>
inline void tap_group(const DirectLayout& L, int64_t plane, size_t t0, const T* src, const T* zeros,
                      const T* (&ptr)[kTapGroup], int64_t (&wo)[kTapGroup], bool (&live)[kTapGroup]) {
  const auto& tk = L.taps[plane];
  for (int q = 0; q < kTapGroup; ++q) {
    live[q] = t0 + q < tk.size();
    ptr[q] = live[q] ? src + tk[t0 + q].xoff : zeros;
    wo[q] = live[q] ? tk[t0 + q].wo : 0;
  }
}

// Copies one [H, W] input plane into the zero-bordered plane xp (borders stay zero).
template <typename T>
inline void fill_bordered_x(const Geom& g, const DirectLayout& L, const T* xc, T* xp) {
  for (int64_t ih = 0; ih < g.H; ++ih) std::copy(xc + ih * g.W, xc + (ih + 1) * g.W, xp + (ih + L.rlo) * L.Wp + L.clo);
}

template <typename T, int ACT>
void forward_direct(const Geom& g, const PhaseTables& pt, const T* x, const T* w, const T* bias, T* y, T slope,
                    T gain, T clamp) {
  const DirectLayout L(g, pt);
  const int64_t kk = g.kh * g.kw, nw = int64_t(pt.wph.size());
  at::parallel_for(0, g.N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<T> acc(g.Cout * L.per_co), xp(L.Hp * L.Wp, T(0)), zeros(L.Hp * L.Wp, T(0));
    for (int64_t n = n0; n < n1; ++n) {
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t ci = 0; ci < g.Cin; ++ci) {
        fill_bordered_x(g, L, x + (n * g.Cin + ci) * g.HW(), xp.data());
        const T* wc = w + ci * g.Cout * kk;
        for (size_t hi = 0; hi < pt.hph.size(); ++hi)
          for (int64_t p = 0; p < nw; ++p) {
            const int64_t k = int64_t(hi) * nw + p, len = (pt.hph[hi].T - 1) * L.Wp + pt.wph[p].M;
            for (size_t t0 = 0; t0 < L.taps[k].size(); t0 += kTapGroup) {
              const T* xs[kTapGroup];
              int64_t wo[kTapGroup];
              bool live[kTapGroup];
              tap_group(L, k, t0, xp.data(), zeros.data(), xs, wo, live);
              T wv[kDirectMaxCout][kTapGroup];
              T* ap[kDirectMaxCout];
              for (int64_t co = 0; co < g.Cout; ++co) {
                for (int q = 0; q < kTapGroup; ++q) wv[co][q] = live[q] ? wc[co * kk + wo[q]] : T(0);
                ap[co] = acc.data() + co * L.per_co + L.base[k];
              }
              direct_update_n<T>(g.Cout, len, xs, wv, ap);
            }
          }
      }
      for (int64_t co = 0; co < g.Cout; ++co) {
        const T bv = bias ? bias[co] : T(0);
        T* yc = y + (n * g.Cout + co) * g.Ho * g.Wo;
        for (size_t hi = 0; hi < pt.hph.size(); ++hi)
          for (int64_t p = 0; p < nw; ++p) {
            const HPhase& hp = pt.hph[hi];
            const WPhase& ph = pt.wph[p];
            const T* ap = acc.data() + co * L.per_co + L.base[int64_t(hi) * nw + p];
            for (int64_t t = 0; t < hp.T; ++t) {
              T* yr = yc + (hp.oh0 + t * g.sh) * g.Wo + ph.ow0;
              for (int64_t m = 0; m < ph.M; ++m)
                yr[m * g.sw] = fast_epilogue<T, ACT>(ap[t * L.Wp + m] + bv, slope, gain, clamp);
            }
          }
      }
    }
  });
}
