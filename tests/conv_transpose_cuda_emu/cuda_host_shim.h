// A minimal CUDA emulation for the host, enough to compile and run the device kernels of
// csrc/cuda/conv_transpose_kernels.cuh with g++ on a machine without a GPU:
//   * every CUDA thread of a block is an OS thread; blocks run one after another;
//   * __shared__ becomes `static` (one block at a time, so one copy is enough);
//   * __syncthreads() is a std::barrier over the block's threads;
//   * nvcuda::wmma is a scalar model: each lane holds the whole 16x16 fragment, products
//     of the 16-bit inputs are formed in float and accumulated in float (what the tensor
//     cores do, up to the accumulation order); only lane 0 stores a fragment.
// It checks the kernels' index math, tiling, masking, double buffering and epilogue; it
// says nothing about speed, memory coalescing or the real hardware's rounding order.
#pragma once

#include <barrier>
#include <cstdlib>
#include <thread>
#include <type_traits>
#include <vector>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct EmuDim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline thread_local EmuDim3 threadIdx, blockIdx;
inline std::barrier<>* emu_block_barrier = nullptr;
inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }
inline void __trap() { std::abort(); }

struct alignas(16) uint4 {
  unsigned int x, y, z, w;
};
using __half = c10::Half;
using __nv_bfloat16 = c10::BFloat16;

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static constexpr int R = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int C = std::is_same_v<Use, matrix_a> ? K : N;
  T x[R * C];
};

template <class Use, int M, int N, int K, class T, class L>
void fill_fragment(fragment<Use, M, N, K, T, L>& f, T v) {
  for (auto& e : f.x) e = v;
}

template <class Use, int M, int N, int K, class T>
void load_matrix_sync(fragment<Use, M, N, K, T, row_major>& f, const T* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, row_major>;
  for (int r = 0; r < F::R; ++r)
    for (int c = 0; c < F::C; ++c) f.x[r * F::C + c] = p[r * ldm + c];
}

template <int M, int N, int K, class T>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, row_major>& a,
              const fragment<matrix_b, M, N, K, T, row_major>& b, const fragment<accumulator, M, N, K, float>& c) {
  float out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float s = c.x[i * N + j];
      for (int k = 0; k < K; ++k) s += static_cast<float>(a.x[i * K + k]) * static_cast<float>(b.x[k * N + j]);
      out[i * N + j] = s;
    }
  for (int e = 0; e < M * N; ++e) d.x[e] = out[e];
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t) {
  if (threadIdx.x % 32 != 0) return;  // one lane writes; the others hold the same values
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) p[i * ldm + j] = f.x[i * N + j];
}
}  // namespace wmma
}  // namespace nvcuda

// kernel<<<grid, threads>>>(...) as emu_launch(grid, threads, [&] { kernel(...); }).
template <class F>
void emu_launch(EmuDim3 grid, unsigned threads, F&& call) {
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        std::barrier<> bar(threads);
        emu_block_barrier = &bar;
        std::vector<std::thread> pool;
        pool.reserve(threads);
        for (unsigned t = 0; t < threads; ++t)
          pool.emplace_back([&, t] {
            threadIdx = {t, 0, 0};
            blockIdx = {x, y, z};
            call();
          });
        for (auto& th : pool) th.join();
      }
}
