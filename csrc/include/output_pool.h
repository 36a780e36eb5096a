// A small caching pool for the large outputs of fastgan's CPU kernels.
//
// Why: a fresh multi-megabyte CPU tensor comes from mmap (glibc hands blocks this large
// back to the OS on free), so every call first-touches its output page by page. On the
// VMs we measure on a page fault costs microseconds: writing a fresh 16 MiB buffer took
// 0.93 ms against 0.43 ms for a reused one, and a fresh 128 MiB buffer 64 ms against
// 9 ms. A training loop calls the same layer with the same shapes every step, so
// keeping freed output blocks and handing them out again removes that cost, the way
// PyTorch's CUDA caching allocator does on the GPU.
//
// Policy: blocks of at least kMinPooledBytes are rounded up to 64 KiB and cached by
// size when their tensor dies; smaller ones go to PyTorch's CPU allocator unchanged.
// At most FASTGAN_CPU_POOL_MB (default 2048) MiB sit idle in the pool; 0 disables the
// caching (new large blocks still get the transparent-huge-page advice). fastgan_C::cpu_pool_clear() frees every idle block (fastgan.empty_cpu_cache()).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <c10/util/ArrayRef.h>

namespace fastgan {

// at::empty(sizes, options) for a CPU tensor, with the storage from the pool. The
// storage behaves like any other (resizable, shareable, freed when the last tensor dies).
at::Tensor pooled_empty(c10::IntArrayRef sizes, const c10::TensorOptions& options,
                        c10::MemoryFormat memory_format = c10::MemoryFormat::Contiguous);

}  // namespace fastgan
