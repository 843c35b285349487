// The few libtorch calls tch does not expose, as a C surface for
// model-host/src/torch_shim/: load + freeze + optimize_for_inference, a
// forward pass under c10::InferenceMode, and CUDA graphs captured from a
// module and replayed.
//
// Every function catches every C++ exception and returns it as a message
// (malloc'd, freed by shim_free_error); nothing unwinds into Rust. Handles
// are owned by the caller and freed by the matching shim_*_free. Tensors
// cross as `at::Tensor*`, the representation tch's C_tensor has: inputs
// are borrowed, outputs are new heap tensors that the caller owns.

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include <torch/script.h>
#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/headeronly/version.h>

#ifdef SHIM_WITH_CUDA
#include <dlfcn.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/cuda.h>
#endif

#include "counting_adapter.h"
#include "freeze_equal.h"
#include "shim_errors.h"
#include "weights_stream.h"

namespace {

using shim::error_of;
using shim::guarded;

std::vector<c10::IValue> ivalues(const at::Tensor* const* inputs, int count) {
  std::vector<c10::IValue> values;
  values.reserve(count);
  for (int i = 0; i < count; ++i) values.emplace_back(*inputs[i]);
  return values;
}

// "output 2" or "output \"boxes\"", for errors.
std::string output_name(const char* const* names, int i) {
  return names != nullptr ? "output \"" + std::string(names[i]) + "\"" : "output " + std::to_string(i);
}

at::Tensor tensor_of(const c10::IValue& value, const char* const* names, int i) {
  if (!value.isTensor()) throw std::runtime_error(output_name(names, i) + ": the model returned " + value.tagKind() + ", expected a tensor");
  return value.toTensor();
}

// forward()'s result as `expected` tensors in model.toml's order: one
// tensor; a tuple or list of them by position; or a dict of name -> tensor
// by `names` (the outputs' names, or nullptr when unnamed: a classifier's
// one output). Done here, not in Rust, so that a CUDA graph's outputs are
// kept in that order by its capture and each replay needs no sorting.
std::vector<at::Tensor> flatten_outputs(const c10::IValue& out, const char* const* names, int expected) {
  auto declares = " model.toml declares " + std::to_string(expected) + " output" + (expected == 1 ? "" : "s");
  if (out.isTensor()) {
    if (expected != 1) throw std::runtime_error("the model returned one tensor," + declares);
    return {out.toTensor()};
  }
  std::vector<c10::IValue> items;
  const char* what = nullptr;
  if (out.isTuple()) {
    what = "tuple";
    for (const auto& item : out.toTupleRef().elements()) items.push_back(item);
  } else if (out.isTensorList()) {
    what = "list";
    for (const auto& item : out.toTensorVector()) items.emplace_back(item);
  } else if (out.isList()) {
    what = "list";
    for (const auto& item : out.toListRef()) items.push_back(item);
  }
  std::vector<at::Tensor> tensors;
  if (what != nullptr) {
    if (static_cast<int>(items.size()) != expected)
      throw std::runtime_error(std::string("the model returned a ") + what + " of " + std::to_string(items.size()) + "," + declares);
    for (int i = 0; i < expected; ++i) tensors.push_back(tensor_of(items[i], names, i));
    return tensors;
  }
  if (out.isGenericDict() && names != nullptr) {
    auto dict = out.toGenericDict();
    for (int i = 0; i < expected; ++i) {
      auto found = dict.end();
      for (auto it = dict.begin(); it != dict.end(); ++it) {
        if (!it->key().isString()) throw std::runtime_error("the model returned a dict with a " + it->key().tagKind() + " key; keys must be output names");
        if (it->key().toStringRef() == names[i]) found = it;
      }
      if (found == dict.end()) {
        std::string have;
        for (auto it = dict.begin(); it != dict.end(); ++it) have += (have.empty() ? "\"" : ", \"") + it->key().toStringRef() + "\"";
        throw std::runtime_error("the model's dict has no \"" + std::string(names[i]) + "\" (model.toml's output); it has [" + have + "]");
      }
      tensors.push_back(tensor_of(found->value(), names, i));
    }
    return tensors;
  }
  throw std::runtime_error("the model returned a " + out.tagKind() + "; expected a tensor, a tuple or list of tensors, or a dict of name -> tensor");
}

void hand_out(const std::vector<at::Tensor>& tensors, at::Tensor** outs) {
  for (size_t i = 0; i < tensors.size(); ++i) outs[i] = new at::Tensor(tensors[i]);
}

}  // namespace

struct ShimModule {
  torch::jit::Module module;
  // Its forward passes are planned without the graph executor's
  // optimisation passes (see `Planned`): a frozen module (inlined and
  // folded already), or one served until its freeze after READY is done.
  bool plan_plainly = false;
};

// A forward pass of `m` on this thread. TorchScript's graph executor plans
// a graph on its first run; with its optimisation on (libtorch's default,
// a thread-local flag) that re-optimises the whole inlined graph (and
// compiles fusion groups on a GPU) although freezing and
// optimize_for_inference did that already: a 48-block transformer's first
// pass took 0.16 s on a CPU core against 0.016 s with it off, the steady
// passes the same (bench/executor_probe.py). An unfrozen module keeps it,
// unless it only serves until its frozen copy is ready.
struct Planned {
  explicit Planned(const ShimModule* m) : guard(!m->plan_plainly) {}
  torch::jit::GraphOptimizerEnabledGuard guard;
};

#ifdef SHIM_WITH_CUDA
struct ShimGraph {
  at::cuda::CUDAGraph graph;
  std::vector<at::Tensor> outputs;
};
#endif

extern "C" {

void shim_free_error(char* error) { std::free(error); }

int shim_has_cuda_graphs() {
#ifdef SHIM_WITH_CUDA
  return 1;
#else
  return 0;
#endif
}

// Loads `path` onto `device` (tch's device code: -1 CPU, n >= 0 cuda:n),
// in eval mode, cast to `dtype` (c10::ScalarType; -1 keeps the file's).
// `report` (may be null) hears of the bytes read so far, on this thread.
// The tensor records are streamed (weights_stream.cpp): `streamed` gets
// how many records and bytes were; where the streaming loader cannot take
// the file it is loaded the plain way, and `fallback` gets why (malloc'd,
// freed by shim_free_error; null when streamed).
char* shim_module_load(const char* path, int device, int dtype, shim::Report report, void* context, uint64_t* streamed,
                       char** fallback, ShimModule** out) {
  return guarded([&] {
    c10::Device where = device < 0 ? c10::Device(c10::kCPU) : c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device));
    std::unique_ptr<ShimModule> loaded;
    shim::StreamedWeights weights;
    *fallback = guarded([&] { loaded = std::make_unique<ShimModule>(ShimModule{shim::load_streaming(path, where, report, context, &weights)}); });
    if (*fallback != nullptr) {
      try {
        auto file = std::make_shared<shim::CountingAdapter>(path, report, context);
        loaded = std::make_unique<ShimModule>(ShimModule{torch::jit::load(file, where)});
      } catch (const c10::Error& e) {
        throw std::runtime_error(std::string(path) + ": " + e.what_without_backtrace());
      }
    }
    streamed[0] = weights.records;
    streamed[1] = weights.bytes;
    loaded->module.eval();
    if (dtype >= 0) loaded->module.to(static_cast<c10::ScalarType>(dtype));
    *out = loaded.release();
  });
}

// torch.jit.freeze of `module` (which freezing clones: `module` is left as
// it was), then (if `optimize`) torch.jit.optimize_for_inference, their
// constant comparisons settled by fingerprints where they can be
// (freeze_equal.cpp); how many there were in `counts` (2 values: compared,
// settled by fingerprint).
static torch::jit::Module frozen_of(const torch::jit::Module& module, int optimize, uint64_t* counts) {
  shim::FreezeEqualScope fingerprints;
  torch::jit::Module frozen = torch::jit::freeze(module);
  if (optimize) frozen = torch::jit::optimize_for_inference(frozen);
  counts[0] = fingerprints.counts().compared;
  counts[1] = fingerprints.counts().by_fingerprint;
  return frozen;
}

// frozen_of(m), in place. On error the module is left as it was.
char* shim_module_freeze(ShimModule* m, int optimize, uint64_t* counts) {
  return guarded([&] {
    m->module = frozen_of(m->module, optimize, counts);
    m->plan_plainly = true;
  });
}

// optimize_for_inference on a module already frozen (one loaded from the
// frozen-module cache), in place. On error the module is left as it was.
char* shim_module_optimize(ShimModule* m) {
  return guarded([&] {
    shim::FreezeEqualScope fingerprints;
    m->module = torch::jit::optimize_for_inference(m->module);
    m->plan_plainly = true;
  });
}

// frozen_of(m) as a new module `out`; `m` is left as it was and may serve
// meanwhile on other threads (freezing works on a clone that shares `m`'s
// tensors and never writes them; but the weights that freezing and
// optimisation remake, folded or transposed, are new tensors: until `m` is
// dropped those are held twice). The freeze after READY: the host serves
// `m` until `out` replaces it.
char* shim_module_frozen_copy(const ShimModule* m, int optimize, uint64_t* counts, ShimModule** out) {
  return guarded([&] {
    auto copy = std::make_unique<ShimModule>();
    copy->module = frozen_of(m->module, optimize, counts);
    copy->plan_plainly = true;
    *out = copy.release();
  });
}

// Plans `m`'s forward passes without the graph executor's optimisation,
// as a frozen module's are: for a module served only until its frozen copy
// replaces it, whose first passes would otherwise re-optimise (and on a
// GPU compile fusion groups for) a graph about to be frozen anyway.
void shim_module_plan_plainly(ShimModule* m) { m->plan_plainly = true; }

// at::equal(*a, *b) as a frozen module's constants are compared, on any
// device (the tests' way to reach the fingerprint path on a CPU).
char* shim_fingerprinted_equal(const at::Tensor* a, const at::Tensor* b, int* out) {
  return guarded([&] { *out = shim::fingerprinted_equal(*a, *b, /*any_device=*/true) ? 1 : 0; });
}

// Writes the module as a TorchScript archive to `path` (a frozen, cast
// module, before optimize_for_inference: its fused ops are not portable).
char* shim_module_save(ShimModule* m, const char* path) {
  return guarded([&] { m->module.save(path); });
}

// libtorch's version as major * 10000 + minor * 100 + patch.
int shim_torch_version() { return TORCH_VERSION_MAJOR * 10000 + TORCH_VERSION_MINOR * 100 + TORCH_VERSION_PATCH; }

// forward(inputs...) under InferenceMode; its result as `expected` new
// tensors in `outs`, in the order of `names` (see flatten_outputs).
char* shim_module_forward(ShimModule* m, const at::Tensor* const* inputs, int count, const char* const* names, int expected,
                          at::Tensor** outs) {
  return guarded([&] {
    c10::InferenceMode inference;
    Planned planned(m);
    hand_out(flatten_outputs(m->module.forward(ivalues(inputs, count)), names, expected), outs);
  });
}

// The module's method `name`(inputs...) returning one tensor, in the
// caller's grad mode (as tch's CModule::method_ts): an iterative model's
// start, step and finish. The result is a new tensor in `out`.
char* shim_module_method(ShimModule* m, const char* name, const at::Tensor* const* inputs, int count, at::Tensor** out) {
  return guarded([&] {
    Planned planned(m);
    c10::IValue result = m->module.get_method(name)(ivalues(inputs, count));
    if (!result.isTensor()) throw std::runtime_error(std::string("method ") + name + " returned " + result.tagKind() + ", expected a tensor");
    *out = new at::Tensor(result.toTensor());
  });
}

void shim_module_free(ShimModule* m) { delete m; }

// Bytes the module's parameters and buffers hold, each storage counted
// once, on whatever device they were loaded to: the model's weights there.
// Read before freezing, which turns them into constants of the graph.
char* shim_module_weight_bytes(ShimModule* m, uint64_t* out) {
  return guarded([&] {
    std::unordered_set<const void*> seen;
    uint64_t total = 0;
    auto count = [&](const at::Tensor& t) {
      if (!t.defined() || !t.has_storage()) return;
      if (seen.insert(t.storage().data()).second) total += t.storage().nbytes();
    };
    for (const at::Tensor& p : m->module.parameters(/*recurse=*/true)) count(p);
    for (const at::Tensor& b : m->module.buffers(/*recurse=*/true)) count(b);
    *out = total;
  });
}

// An uninitialised uint8 CPU tensor of `len` bytes in page-locked memory,
// from libtorch's caching host allocator: a block still read by an earlier
// asynchronous copy is not handed out again until that copy is done.
char* shim_pinned_empty(int64_t len, at::Tensor** out) {
  return guarded([&] {
    at::Tensor t = at::empty({len}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
    *out = new at::Tensor(std::move(t));
  });
}

// Captures forward(inputs...) into a CUDA graph. `inputs` are the graph's
// static inputs: each replay reads whatever they hold then. `warmups`
// eager passes on the capture stream come first (cuDNN/cuBLAS choose their
// kernels and workspaces outside the capture). The graph's output tensors
// (overwritten by each replay), flattened as shim_module_forward's, are
// returned in `outputs`.
char* shim_graph_capture(ShimModule* m, const at::Tensor* const* inputs, int count, const char* const* names, int expected,
                         int warmups, void** graph, at::Tensor** outputs) {
#ifdef SHIM_WITH_CUDA
  return guarded([&] {
    c10::InferenceMode inference;
    Planned planned(m);
    std::vector<c10::IValue> values = ivalues(inputs, count);
    if (count == 0 || !inputs[0]->is_cuda()) throw std::runtime_error("CUDA graph inputs must be CUDA tensors");
    c10::DeviceIndex device = inputs[0]->device().index();
    auto g = std::make_unique<ShimGraph>();
    // Everything queued on the current stream (the inputs' contents) first.
    torch::cuda::synchronize(device);
    c10::cuda::CUDAStream previous = c10::cuda::getCurrentCUDAStream(device);
    c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, device);
    c10::cuda::setCurrentCUDAStream(side);
    try {
      for (int i = 0; i < warmups; ++i) flatten_outputs(m->module.forward(values), names, expected);
      torch::cuda::synchronize(device);
      // Thread-local: only this thread is barred from calls that are
      // illegal during a capture. The host captures some shapes after
      // READY, while the model thread, the feeder and the JPEG decoders
      // go on serving (allocating, copying, synchronising) beside it.
      g->graph.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
      try {
        g->outputs = flatten_outputs(m->module.forward(values), names, expected);
      } catch (...) {
        try { g->graph.capture_end(); } catch (...) {}
        throw;
      }
      g->graph.capture_end();
    } catch (...) {
      c10::cuda::setCurrentCUDAStream(previous);
      throw;
    }
    c10::cuda::setCurrentCUDAStream(previous);
    torch::cuda::synchronize(device);
    hand_out(g->outputs, outputs);
    *graph = g.release();
  });
#else
  (void)m; (void)inputs; (void)count; (void)names; (void)expected; (void)warmups; (void)graph; (void)outputs;
  return error_of("this model-host was built without CUDA graph support");
#endif
}

// Queues one replay on the calling thread's current CUDA stream.
char* shim_graph_replay(void* graph) {
#ifdef SHIM_WITH_CUDA
  return guarded([&] { static_cast<ShimGraph*>(graph)->graph.replay(); });
#else
  (void)graph;
  return error_of("this model-host was built without CUDA graph support");
#endif
}

// Free and total memory of CUDA device `device`, in bytes. cudaMemGetInfo
// is looked up in the CUDA runtime libtorch already loaded (dlsym), so that
// the shim still links nothing of CUDA's own.
char* shim_cuda_mem_info(int device, uint64_t* free_bytes, uint64_t* total_bytes) {
#ifdef SHIM_WITH_CUDA
  return guarded([&] {
    using MemGetInfo = int (*)(size_t*, size_t*);
    auto mem_get_info = reinterpret_cast<MemGetInfo>(dlsym(RTLD_DEFAULT, "cudaMemGetInfo"));
    if (mem_get_info == nullptr) throw std::runtime_error("cudaMemGetInfo is not in the loaded CUDA runtime");
    // c10's device switch (in libc10_cuda), not CUDAGuard, whose inline
    // code would call the CUDA runtime directly.
    c10::DeviceIndex previous = c10::cuda::ExchangeDevice(static_cast<c10::DeviceIndex>(device));
    size_t free_now = 0, total = 0;
    int rc = mem_get_info(&free_now, &total);
    c10::cuda::ExchangeDevice(previous);
    if (rc != 0) throw std::runtime_error("cudaMemGetInfo failed with CUDA error " + std::to_string(rc));
    *free_bytes = free_now;
    *total_bytes = total;
  });
#else
  (void)device; (void)free_bytes; (void)total_bytes;
  return error_of("this model-host was built without CUDA support in its shim");
#endif
}

void shim_graph_free(void* graph) {
#ifdef SHIM_WITH_CUDA
  delete static_cast<ShimGraph*>(graph);
#else
  (void)graph;
#endif
}

}  // extern "C"
