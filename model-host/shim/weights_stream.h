// A TorchScript archive loaded with its tensor records read by offset,
// several at a time, straight into their place on the device
// (weights_stream.cpp).
#pragma once

#include <cstdint>
#include <string>

#include <torch/script.h>

#include "counting_adapter.h"

namespace shim {

struct StreamedWeights {
  uint64_t records = 0;
  uint64_t bytes = 0;
};

// The archive at `path`, loaded onto `device` (not yet in eval mode), as
// torch::jit::load(path, device) would, its tensor records streamed. Throws
// std::runtime_error naming what the streaming loader cannot take (the
// caller then loads the plain way) or what is wrong with the file.
torch::jit::Module load_streaming(const std::string& path, c10::Device device, Report report, void* context, StreamedWeights* streamed);

}  // namespace shim
