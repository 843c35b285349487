// The model file through libtorch's own FileAdapter, each read's bytes
// added up and reported (bytes read so far, the file's size) to `report`,
// on the loading thread: the host's "loading weights 43% (1.1 of 2.5 GB)".
// torch_shim.cpp's plain load reads through it; weights_stream.cpp's
// placeholder load reads every byte it does not leave unwritten through it.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include <caffe2/serialize/file_adapter.h>

namespace shim {

// Hears (bytes read so far, the file's size), on the loading thread.
using Report = void (*)(void* context, uint64_t read, uint64_t total);

class CountingAdapter final : public caffe2::serialize::ReadAdapterInterface {
 public:
  CountingAdapter(const std::string& path, Report report, void* context) : file_(path), report_(report), context_(context) {}
  size_t size() const override { return file_.size(); }
  size_t read(uint64_t pos, void* buf, size_t n, const char* what = "") const override {
    size_t got = file_.read(pos, buf, n, what);
    uint64_t so_far = read_.fetch_add(got) + got;
    if (report_ != nullptr) report_(context_, so_far, file_.size());
    return got;
  }
  uint64_t bytes_read() const { return read_; }

 private:
  caffe2::serialize::FileAdapter file_;
  Report report_;
  void* context_;
  mutable std::atomic<uint64_t> read_{0};
};

}  // namespace shim
