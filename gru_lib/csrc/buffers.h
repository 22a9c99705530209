// Large buffers for the C++ kernels of chapters 6 and 7 (fast_gru.cpp, mingru_scan.cpp).
//
// PyTorch's CPU allocator hands large blocks back to the system and takes fresh ones for the next call, so
// every call pays the first touch of its buffers: on Linux one page fault per 4 KiB page. For buffers that a
// kernel fills once and reads once that costs as much as the arithmetic (134 MB: 34 ms to fill fresh memory,
// 4 ms to fill memory already mapped, on the machine that built the book). empty_large therefore keeps the
// large buffers the kernels return in a small per-process pool, as PyTorch's CUDA caching allocator does: a
// buffer freed by its last tensor goes back to the pool (at most kMaxCachedBytes in all, least recently
// freed first out) and the next request of the same size takes it again, already mapped. New mappings ask
// for transparent huge pages (2 MiB) where the system allows it.
#pragma once

#include <torch/extension.h>

#include <cstddef>
#include <cstdint>
#include <list>
#include <mutex>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace gru_buffers {

constexpr size_t kHuge = size_t(2) << 20;
constexpr size_t kLargeBytes = size_t(4) << 20;        // smaller requests use at::empty
constexpr size_t kMaxCachedBytes = size_t(1) << 30;    // what the pool may hold while unused

#if defined(__linux__)
struct Mapping {
  void* base;
  size_t length;  // of the mapping
  void* data;     // 2 MiB aligned, inside it
  size_t bytes;   // usable from data (the pool's size key)
};

class Pool {
 public:
  Mapping take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = free_.begin(); it != free_.end(); ++it) {
        if (it->bytes == bytes) {
          Mapping m = *it;
          cached_ -= m.length;
          free_.erase(it);
          return m;
        }
      }
    }
    const size_t length = bytes + kHuge;
    void* base = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TORCH_CHECK(base != MAP_FAILED, "gru_lib: could not map ", length, " bytes");
    void* data = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(base) + kHuge - 1) & ~(uintptr_t(kHuge) - 1));
#if defined(MADV_HUGEPAGE)
    madvise(data, bytes, MADV_HUGEPAGE);  // advice only: a failure changes nothing
#endif
    return {base, length, data, bytes};
  }

  void release() {  // unmap everything the pool holds
    std::lock_guard<std::mutex> lock(mutex_);
    for (const Mapping& m : free_) munmap(m.base, m.length);
    free_.clear();
    cached_ = 0;
  }

  void give(const Mapping& m) {
    std::lock_guard<std::mutex> lock(mutex_);
    free_.push_front(m);
    cached_ += m.length;
    while (cached_ > kMaxCachedBytes && !free_.empty()) {  // unmap the least recently freed
      cached_ -= free_.back().length;
      munmap(free_.back().base, free_.back().length);
      free_.pop_back();
    }
  }

 private:
  std::mutex mutex_;
  std::list<Mapping> free_;
  size_t cached_ = 0;
};

inline Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: tensors may outlive static destruction at exit
  return *p;
}
#endif

inline at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options) {
#if defined(__linux__)
  size_t bytes = c10::elementSize(c10::typeMetaToScalarType(options.dtype()));
  for (int64_t s : sizes) bytes *= static_cast<size_t>(s);
  if (options.device().is_cpu() && bytes >= kLargeBytes) {
    const size_t rounded = (bytes + kHuge - 1) & ~(kHuge - 1);
    const Mapping m = pool().take(rounded);
    return at::from_blob(m.data, sizes, [m](void*) { pool().give(m); }, options);
  }
#endif
  return at::empty(sizes, options);
}

// Unmaps the buffers the pool holds (they are not in use); for measurements of peak memory.
inline void release_cached() {
#if defined(__linux__)
  pool().release();
#endif
}

}  // namespace gru_buffers
