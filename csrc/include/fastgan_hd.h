// FASTGAN_HD marks per-element math shared by the CPU (.cpp) and CUDA (.cu) kernels:
// callable from host and device under nvcc, a forced-inline function under g++ (these
// are one-line formulas inside vectorised loops; an out-of-line call per element, which
// GCC chose for the switch in the conv epilogue, costs several times the math).
// One definition for every header, so headers of different ops can be included together.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTGAN_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define FASTGAN_HD inline __attribute__((always_inline))
#else
#define FASTGAN_HD inline
#endif
