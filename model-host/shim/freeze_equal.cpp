// torch::jit::freeze (and optimize_for_inference after it) pools constants
// and eliminates common subexpressions: both compare every pair of
// same-typed tensor constants with at::equal (torch/csrc/jit/ir/
// node_hashing.cpp hashes all tensor constants alike). On a GPU each
// comparison is an eq kernel, a reduction and a read-back that waits for
// the GPU: ViT-H/14's freeze makes 28,225 of them (its 192 vectors of 1280
// floats are one type), over a second of a 2.4 s freeze, and many seconds
// while another model keeps the GPU busy.
//
// Here each tensor's fingerprint is computed once, with one read-back: the
// sum, wrapping in 64-bit integers, of its elements' bit patterns (with -0
// made +0). Integer addition does not depend on order, so equal tensors
// always have equal fingerprints whatever their strides; different
// fingerprints prove the tensors differ. Anything else (fingerprints
// equal, a dtype with no bit pattern to sum, different dtypes or sizes)
// goes to at::equal: every answer is libtorch's own.
//
// The scope is thread-local: at::equal is routed to FingerprintedEqual by
// including a dispatch key in this thread's dispatch set; every other
// operator falls through it. c10 reserves TESTING_ONLY_GenericMode for
// exactly this (a mode switched on and off per thread); nothing else in
// libtorch registers under it.

#include "freeze_equal.h"

#include <mutex>
#include <optional>
#include <unordered_map>

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

namespace shim {
namespace {

constexpr auto kModeKey = c10::DispatchKey::TESTING_ONLY_GenericMode;

struct Fingerprint {
  // The map's key, weakly: a tensor the passes replace is freed as it
  // would be, and an address reused by a new tensor is not mistaken for it.
  c10::weak_intrusive_ptr<c10::TensorImpl> of;
  int64_t version;
  std::optional<int64_t> sum;
};

// Above this many elements libtorch compares: the fingerprint's temporary
// (the tensor plus 0) must not be what runs the device out of memory.
constexpr int64_t kMaxFingerprinted = int64_t{1} << 26;

struct ScopeState {
  std::unordered_map<const c10::TensorImpl*, Fingerprint> fingerprints;
  EqualCounts counts;
};

thread_local ScopeState* active = nullptr;

// The integer type whose bit pattern a dtype's elements are summed as, or
// none where there is no such sum (complex, quantized, float8, ...).
std::optional<at::ScalarType> bits_of(at::ScalarType dtype) {
  switch (dtype) {
    case at::kHalf:
    case at::kBFloat16:
      return at::kShort;
    case at::kFloat:
      return at::kInt;
    case at::kDouble:
      return at::kLong;
    case at::kByte:
    case at::kChar:
    case at::kShort:
    case at::kInt:
    case at::kLong:
    case at::kBool:
      return dtype;
    default:
      return std::nullopt;
  }
}

std::optional<int64_t> compute(const at::Tensor& t) {
  auto bits = bits_of(t.scalar_type());
  if (!bits || t.layout() != at::kStrided || t.is_quantized() || t.numel() == 0 || t.numel() > kMaxFingerprinted) return std::nullopt;
  at::NoGradGuard no_grad;
  at::Tensor values = t;
  // x + 0 turns -0 into +0 (equal to each other, different bits); a NaN
  // stays a NaN, and a tensor holding one is equal to nothing anyway.
  if (t.is_floating_point()) values = (t + 0).view(*bits);
  return values.sum(at::kLong).item<int64_t>();
}

std::optional<int64_t> fingerprint(ScopeState& state, const at::Tensor& t) {
  int64_t version = t.is_inference() ? 0 : t._version();
  auto found = state.fingerprints.find(t.unsafeGetTensorImpl());
  if (found != state.fingerprints.end() && !found->second.of.expired() && found->second.version == version) return found->second.sum;
  auto sum = compute(t);
  state.fingerprints.insert_or_assign(t.unsafeGetTensorImpl(), Fingerprint{c10::weak_intrusive_ptr<c10::TensorImpl>(t.getIntrusivePtr()), version, sum});
  return sum;
}

// Worth a fingerprint: the same dtype, device and sizes, and not two views
// of the same bytes (at::equal answers those without reading them).
bool comparable(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.device() != b.device() || !a.sizes().equals(b.sizes())) return false;
  bool same_bytes = a.is_alias_of(b) && a.storage_offset() == b.storage_offset() && a.strides().equals(b.strides());
  return !same_bytes;
}

bool settled_apart(ScopeState& state, const at::Tensor& a, const at::Tensor& b) {
  if (!comparable(a, b)) return false;
  auto fa = fingerprint(state, a);
  auto fb = fingerprint(state, b);
  return fa && fb && *fa != *fb;
}

bool equal_in_scope(const at::Tensor& a, const at::Tensor& b) {
  c10::impl::ExcludeDispatchKeyGuard plain(kModeKey);
  ScopeState* state = active;
  if (state == nullptr) return a.equal(b);
  state->counts.compared++;
  if (!a.is_cpu() && !b.is_cpu() && settled_apart(*state, a, b)) {
    state->counts.by_fingerprint++;
    return false;
  }
  return a.equal(b);
}

// Each registration once (a second fallback for the key would throw), and
// leaked on purpose: a registration lasts as long as its Library.
void register_once() {
  static std::once_flag fallback, equal;
  std::call_once(fallback, [] {
    auto* every_op = new torch::Library(torch::Library::IMPL, "_", kModeKey, __FILE__, __LINE__);
    every_op->fallback(torch::CppFunction::makeFallthrough());
  });
  std::call_once(equal, [] {
    auto* aten = new torch::Library(torch::Library::IMPL, "aten", kModeKey, __FILE__, __LINE__);
    aten->impl("equal", TORCH_FN(equal_in_scope));
  });
}

}  // namespace

FreezeEqualScope::FreezeEqualScope() {
  register_once();
  TORCH_CHECK(active == nullptr, "FreezeEqualScope is not nestable");
  active = new ScopeState();
  c10::impl::tls_set_dispatch_key_included(kModeKey, true);
}

FreezeEqualScope::~FreezeEqualScope() {
  c10::impl::tls_set_dispatch_key_included(kModeKey, false);
  delete active;
  active = nullptr;
}

EqualCounts FreezeEqualScope::counts() const { return active->counts; }

bool fingerprinted_equal(const at::Tensor& a, const at::Tensor& b, bool any_device) {
  ScopeState state;
  if ((any_device || (!a.is_cpu() && !b.is_cpu())) && settled_apart(state, a, b)) return false;
  return a.equal(b);
}

}  // namespace shim
