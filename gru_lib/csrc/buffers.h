// Large buffers for the C++ kernels of chapters 6 and 7 (fast_gru.cpp, mingru_scan.cpp).
//
// PyTorch's CPU allocator hands large blocks back to the system and gets fresh ones from it, so every call
// pays the first touch of its buffers: on Linux one page fault per 4 KiB page. For buffers the kernels fill
// once and read once, that costs as much as the arithmetic (134 MB: 34 ms fresh against 4 ms reused, on the
// machine the book was built on). empty_large asks for transparent huge pages (2 MiB, 512x fewer faults)
// where the system allows it (THP in "madvise" or "always" mode); elsewhere the advice is ignored.
#pragma once

#include <torch/extension.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace gru_buffers {

inline at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t huge = uintptr_t(2) << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t lo = (begin + huge - 1) & ~(huge - 1), hi = (begin + t.nbytes()) & ~(huge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);  // advice only: failure is fine
#endif
  return t;
}

}  // namespace gru_buffers
