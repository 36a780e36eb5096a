// The CPU output pool (see csrc/include/output_pool.h for why and the policy).
#include "output_pool.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <tuple>
#include <unordered_map>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastgan {
namespace {

constexpr size_t kMinPooledBytes = size_t(1) << 20;  // below this malloc reuses memory well
constexpr size_t kRound = size_t(64) << 10;          // sizes rounded up to 64 KiB
constexpr size_t kAlign = 64;                        // the CPU allocator's alignment

size_t pool_limit_bytes() {
  const char* env = std::getenv("FASTGAN_CPU_POOL_MB");
  if (env != nullptr && *env != '\0') return static_cast<size_t>(std::strtoull(env, nullptr, 10)) << 20;
  return size_t(2048) << 20;
}

struct Block {
  void* ptr;
  size_t bytes;
};

class Pool {
 public:
  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = idle_.find(bytes);
      if (it != idle_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        idle_bytes_ -= bytes;
        ++hits_;
        return p;
      }
      ++misses_;
    }
    void* p = nullptr;
    if (posix_memalign(&p, kAlign, bytes) != 0) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    // Large blocks: transparent huge pages (where THP is in "madvise" mode) make the
    // first touch 512x fewer faults. Only the 2 MiB-aligned interior qualifies.
    constexpr uintptr_t kHuge = uintptr_t(2) << 20;
    if (bytes >= 4 * kHuge) {
      const uintptr_t b = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
      const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kHuge - 1);
      if (e > b) madvise(reinterpret_cast<void*>(b), e - b, MADV_HUGEPAGE);
    }
#endif
    return p;
  }

  void give_back(void* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (idle_bytes_ + bytes <= limit_) {
        idle_[bytes].push_back(p);
        idle_bytes_ += bytes;
        return;
      }
    }
    std::free(p);
  }

  void clear() {
    std::unordered_map<size_t, std::vector<void*>> idle;
    {
      std::lock_guard<std::mutex> lock(mu_);
      idle.swap(idle_);
      idle_bytes_ = 0;
    }
    for (auto& kv : idle)
      for (void* p : kv.second) std::free(p);
  }

  std::tuple<int64_t, int64_t, int64_t, int64_t> stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {static_cast<int64_t>(idle_bytes_), static_cast<int64_t>(limit_), hits_, misses_};
  }

 private:
  std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> idle_;
  size_t idle_bytes_ = 0;
  const size_t limit_ = pool_limit_bytes();
  int64_t hits_ = 0, misses_ = 0;
};

// Never destroyed: tensors can die during interpreter shutdown, after static destructors.
Pool& pool() {
  static Pool* p = new Pool();
  return *p;
}

void delete_block(void* ctx) {
  auto* b = static_cast<Block*>(ctx);
  pool().give_back(b->ptr, b->bytes);
  delete b;
}

class PoolAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t nbytes) override {
    // Large blocks always come through the pool's take(), which gives new ones the
    // huge-page advice; with the pool off (limit 0) give_back() frees them at once.
    if (nbytes < kMinPooledBytes) return c10::GetCPUAllocator()->allocate(nbytes);
    const size_t bytes = (nbytes + kRound - 1) / kRound * kRound;
    void* p = pool().take(bytes);
    return {p, new Block{p, bytes}, &delete_block, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }
};

PoolAllocator& pool_allocator() {
  static PoolAllocator* a = new PoolAllocator();
  return *a;
}

std::tuple<int64_t, int64_t, int64_t, int64_t> cpu_pool_stats() { return pool().stats(); }
void cpu_pool_clear() { pool().clear(); }

}  // namespace

at::Tensor pooled_empty(c10::IntArrayRef sizes, const c10::TensorOptions& options,
                        c10::MemoryFormat memory_format) {
  TORCH_CHECK(options.device().is_cpu(), "fastgan::pooled_empty: CPU tensors only, got ", options.device());
  return at::detail::empty_generic(sizes, &pool_allocator(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), memory_format);
}

}  // namespace fastgan

TORCH_LIBRARY_FRAGMENT(fastgan_C, m) {
  // (idle bytes, limit bytes, hits, misses) of the CPU output pool; and a way to empty it.
  m.def("cpu_pool_stats() -> (int, int, int, int)", &fastgan::cpu_pool_stats);
  m.def("cpu_pool_clear() -> ()", &fastgan::cpu_pool_clear);
}
