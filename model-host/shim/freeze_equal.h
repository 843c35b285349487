// at::equal while a module is frozen, settled by a fingerprint of each
// tensor where that can answer it (freeze_equal.cpp).
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace shim {

// How many at::equal calls a FreezeEqualScope saw, and how many of them a
// fingerprint answered without comparing the two tensors.
struct EqualCounts {
  uint64_t compared = 0;
  uint64_t by_fingerprint = 0;
};

// While alive, at::equal on this thread goes through FingerprintedEqual
// (for GPU tensors; CPU tensors keep libtorch's comparison, which stops at
// the first difference and needs no read-back). Not nestable.
class FreezeEqualScope {
 public:
  FreezeEqualScope();
  ~FreezeEqualScope();
  FreezeEqualScope(const FreezeEqualScope&) = delete;
  FreezeEqualScope& operator=(const FreezeEqualScope&) = delete;
  EqualCounts counts() const;
};

// at::equal(a, b), answered by the two tensors' fingerprints when both are
// finite and differ, else by at::equal itself. `any_device` takes the
// fingerprint path for CPU tensors too (the tests' way to reach it).
bool fingerprinted_equal(const at::Tensor& a, const at::Tensor& b, bool any_device);

}  // namespace shim
