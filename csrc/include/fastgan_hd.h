// FASTGAN_HD marks per-element math shared by the CPU (.cpp) and CUDA (.cu) kernels:
// callable from host and device under nvcc, an ordinary inline function under g++.
// One definition for every header, so headers of different ops can be included together.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTGAN_HD __host__ __device__ __forceinline__
#else
#define FASTGAN_HD inline
#endif
