// JPEG decode on the GPU with nvJPEG, for model-host/src/torch_shim/jpeg.rs:
// the host side of "decode where it is cheapest" (docs/architecture.md).
//
// libnvjpeg is opened with dlopen, never linked: a CPU-only host, or one
// without the library, runs as before and says why it decodes nothing.
// Its header only gives the types (built with SHIM_WITH_NVJPEG when the
// nvidia-nvjpeg wheel's nvjpeg.h is beside libtorch, see build.rs).
//
// Two decoders: the GPU's hardware JPEG engines (NVJPEG_BACKEND_HARDWARE,
// batched, baseline JPEGs only) when the device has them, and nvJPEG's
// default backend (Huffman on the CPU, the rest on the GPU) for what the
// hardware does not take. An image that fails fails alone: its error is
// returned in its own entry and the others are decoded.
//
// Every function catches every C++ exception and returns it as a message,
// as torch_shim.cpp does; decoded images come back as new uint8 CUDA
// tensors [height, width, 3] (RGB) that the caller owns.

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <optional>

#include <ATen/ATen.h>

#if defined(SHIM_WITH_CUDA) && defined(SHIM_WITH_NVJPEG)
#include <dlfcn.h>
#include <c10/cuda/CUDAStream.h>
#include <nvjpeg.h>
#endif

#include "shim_errors.h"

namespace {

char* jpeg_error_of(const std::string& what) { return shim::error_of(what.c_str()); }

using shim::guarded;

}  // namespace

#if defined(SHIM_WITH_CUDA) && defined(SHIM_WITH_NVJPEG)

namespace {

// The library's entry points, looked up once by name.
struct NvJpeg {
  void* library = nullptr;
  decltype(&nvjpegCreateEx) create_ex = nullptr;
  decltype(&nvjpegDestroy) destroy = nullptr;
  decltype(&nvjpegJpegStateCreate) state_create = nullptr;
  decltype(&nvjpegJpegStateDestroy) state_destroy = nullptr;
  decltype(&nvjpegGetImageInfo) image_info = nullptr;
  decltype(&nvjpegDecode) decode = nullptr;
  decltype(&nvjpegDecodeBatchedInitialize) batched_init = nullptr;
  decltype(&nvjpegDecodeBatched) batched = nullptr;
  decltype(&nvjpegJpegStreamCreate) stream_create = nullptr;
  decltype(&nvjpegJpegStreamDestroy) stream_destroy = nullptr;
  decltype(&nvjpegJpegStreamParse) stream_parse = nullptr;
  decltype(&nvjpegDecodeBatchedSupported) batched_supported = nullptr;
  int (*stream_synchronize)(cudaStream_t) = nullptr;
  int (*set_device)(int) = nullptr;
};

template <typename T>
void bind(void* library, T& slot, const char* name) {
  slot = reinterpret_cast<T>(dlsym(library, name));
  if (slot == nullptr) throw std::runtime_error(std::string("libnvjpeg has no ") + name);
}

const char* status_name(nvjpegStatus_t s) {
  switch (s) {
    case NVJPEG_STATUS_SUCCESS: return "success";
    case NVJPEG_STATUS_NOT_INITIALIZED: return "not initialized";
    case NVJPEG_STATUS_INVALID_PARAMETER: return "invalid parameter";
    case NVJPEG_STATUS_BAD_JPEG: return "bad JPEG";
    case NVJPEG_STATUS_JPEG_NOT_SUPPORTED: return "JPEG not supported";
    case NVJPEG_STATUS_ALLOCATOR_FAILURE: return "allocator failure";
    case NVJPEG_STATUS_EXECUTION_FAILED: return "execution failed";
    case NVJPEG_STATUS_ARCH_MISMATCH: return "architecture mismatch";
    case NVJPEG_STATUS_INTERNAL_ERROR: return "internal error";
    case NVJPEG_STATUS_IMPLEMENTATION_NOT_SUPPORTED: return "implementation not supported";
    case NVJPEG_STATUS_INCOMPLETE_BITSTREAM: return "incomplete bitstream";
    default: return "unknown status";
  }
}

// Whether a decode status is the file's fault (a 400 for its request)
// rather than the decoder's (memory, the device: a 500).
bool file_at_fault(nvjpegStatus_t s) {
  return s == NVJPEG_STATUS_BAD_JPEG || s == NVJPEG_STATUS_JPEG_NOT_SUPPORTED || s == NVJPEG_STATUS_INCOMPLETE_BITSTREAM;
}

void check(nvjpegStatus_t s, const char* what) {
  if (s != NVJPEG_STATUS_SUCCESS) throw std::runtime_error(std::string(what) + ": " + status_name(s));
}

// Makes `device`'s primary context current on the calling thread before
// nvJPEG runs there. cudaSetDevice itself, not c10's device switch, which
// skips the call when the device number is already the current one: on a
// thread whose CUDA work so far was served from the caching allocator's
// cache, no runtime call had made the context current, and nvJPEG's first
// decode there failed with "allocator failure" (seen on an H200, on the
// feeder thread's first JPEG). The host uses this one device on every
// thread that decodes, so nothing is switched back.
void make_current(const NvJpeg& api, int device) {
  int rc = api.set_device(device);
  if (rc != 0) throw std::runtime_error("cudaSetDevice(" + std::to_string(device) + ") failed with CUDA error " + std::to_string(rc));
}

}  // namespace

struct ShimJpeg {
  NvJpeg api;
  int device = 0;
  // The default backend: takes every JPEG nvJPEG knows.
  nvjpegHandle_t handle = nullptr;
  nvjpegJpegState_t state = nullptr;
  // The hardware engines, when the device has them (null otherwise).
  nvjpegHandle_t hw_handle = nullptr;
  nvjpegJpegState_t hw_state = nullptr;
  nvjpegJpegStream_t hw_stream = nullptr;
  int hw_batch = 0;
  // Images decoded so far by the hardware engines and by the default
  // backend (for benchmarks and the log).
  int64_t on_hardware = 0;
  int64_t on_default = 0;
  // Decodes run on a stream of their own, so that they overlap the
  // forward pass running on the model thread's stream.
  std::optional<c10::cuda::CUDAStream> stream;
  // The calling thread's current stream, while `stream` stands in for it
  // (between shim_jpeg_stream_enter and shim_jpeg_stream_leave).
  std::optional<c10::cuda::CUDAStream> previous;

  ~ShimJpeg() {
    if (hw_stream != nullptr) api.stream_destroy(hw_stream);
    if (hw_state != nullptr) api.state_destroy(hw_state);
    if (hw_handle != nullptr) api.destroy(hw_handle);
    if (state != nullptr) api.state_destroy(state);
    if (handle != nullptr) api.destroy(handle);
    // The library stays loaded: nvJPEG may keep threads of its own.
  }
};

namespace {

nvjpegImage_t destination(at::Tensor& out) {
  nvjpegImage_t image{};
  image.channel[0] = out.data_ptr<uint8_t>();
  image.pitch[0] = static_cast<size_t>(out.size(1) * 3);
  return image;
}

// Parses each image's header, checks it, and makes its output tensor.
// Returns which indices the hardware engines can take.
std::vector<int> prepare(ShimJpeg* j, int count, const uint8_t* const* data, const size_t* lens, int64_t max_pixels,
                         std::vector<at::Tensor>& outs, std::vector<std::string>& errors, std::vector<int>& kinds) {
  std::vector<int> hardware;
  for (int i = 0; i < count; ++i) {
    int components = 0;
    nvjpegChromaSubsampling_t subsampling = NVJPEG_CSS_UNKNOWN;
    int widths[NVJPEG_MAX_COMPONENT] = {0}, heights[NVJPEG_MAX_COMPONENT] = {0};
    nvjpegStatus_t s = j->api.image_info(j->handle, data[i], lens[i], &components, &subsampling, widths, heights);
    kinds[i] = 1;  // any failure before the decode is the file's
    if (s != NVJPEG_STATUS_SUCCESS) {
      errors[i] = std::string("not a JPEG nvJPEG can read (") + status_name(s) + ")";
      continue;
    }
    int64_t width = widths[0], height = heights[0];
    if (width <= 0 || height <= 0 || subsampling == NVJPEG_CSS_UNKNOWN) {
      errors[i] = "JPEG header with no usable size or colour layout";
      continue;
    }
    if (components != 1 && components != 3) {
      errors[i] = "JPEG of " + std::to_string(components) + " components (1 or 3 decode here)";
      continue;
    }
    if (width * height > max_pixels) {
      errors[i] = "JPEG of " + std::to_string(width) + "x" + std::to_string(height) + " is over the " +
                  std::to_string(max_pixels) + "-pixel limit";
      continue;
    }
    kinds[i] = 0;
    outs[i] = at::empty({height, width, 3}, at::TensorOptions().dtype(at::kByte).device(at::kCUDA, j->device));
    if (j->hw_handle == nullptr) continue;
    int unsupported = 1;
    if (j->api.stream_parse(j->hw_handle, data[i], lens[i], 0, 0, j->hw_stream) == NVJPEG_STATUS_SUCCESS &&
        j->api.batched_supported(j->hw_handle, j->hw_stream, &unsupported) == NVJPEG_STATUS_SUCCESS && unsupported == 0) {
      hardware.push_back(i);
    }
  }
  return hardware;
}

// The hardware engines on `indices` at once; a failed batch's status
// (the caller then decodes them one by one to find the bad one).
nvjpegStatus_t decode_on_hardware(ShimJpeg* j, const std::vector<int>& indices, const uint8_t* const* data, const size_t* lens,
                                  std::vector<at::Tensor>& outs) {
  int n = static_cast<int>(indices.size());
  if (n != j->hw_batch) {
    nvjpegStatus_t s = j->api.batched_init(j->hw_handle, j->hw_state, n, 1, NVJPEG_OUTPUT_RGBI);
    if (s != NVJPEG_STATUS_SUCCESS) return s;
    j->hw_batch = n;
  }
  std::vector<const unsigned char*> bytes;
  std::vector<size_t> lengths;
  std::vector<nvjpegImage_t> images;
  for (int i : indices) {
    bytes.push_back(data[i]);
    lengths.push_back(lens[i]);
    images.push_back(destination(outs[i]));
  }
  cudaStream_t stream = j->stream->stream();
  nvjpegStatus_t s = j->api.batched(j->hw_handle, j->hw_state, bytes.data(), lengths.data(), images.data(), stream);
  if (s != NVJPEG_STATUS_SUCCESS) j->hw_batch = 0;  // a failed batch needs a fresh initialisation
  return s;
}

}  // namespace

extern "C" {

int shim_has_nvjpeg() { return 1; }

// Opens `library` (a path or a name for dlopen) and makes the decoders
// for CUDA device `device`. `*hardware` says whether the hardware
// engines are in use.
char* shim_jpeg_open(const char* library, int device, ShimJpeg** out, int* hardware) {
  return guarded([&] {
    void* lib = dlopen(library, RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      const char* why = dlerror();
      throw std::runtime_error(std::string("cannot load ") + library + ": " + (why != nullptr ? why : "dlopen failed"));
    }
    auto j = std::make_unique<ShimJpeg>();
    NvJpeg& a = j->api;
    a.library = lib;
    bind(lib, a.create_ex, "nvjpegCreateEx");
    bind(lib, a.destroy, "nvjpegDestroy");
    bind(lib, a.state_create, "nvjpegJpegStateCreate");
    bind(lib, a.state_destroy, "nvjpegJpegStateDestroy");
    bind(lib, a.image_info, "nvjpegGetImageInfo");
    bind(lib, a.decode, "nvjpegDecode");
    bind(lib, a.batched_init, "nvjpegDecodeBatchedInitialize");
    bind(lib, a.batched, "nvjpegDecodeBatched");
    bind(lib, a.stream_create, "nvjpegJpegStreamCreate");
    bind(lib, a.stream_destroy, "nvjpegJpegStreamDestroy");
    bind(lib, a.stream_parse, "nvjpegJpegStreamParse");
    bind(lib, a.batched_supported, "nvjpegDecodeBatchedSupported");
    // From the CUDA runtime libtorch loaded, as shim_cuda_mem_info does.
    a.stream_synchronize = reinterpret_cast<int (*)(cudaStream_t)>(dlsym(RTLD_DEFAULT, "cudaStreamSynchronize"));
    if (a.stream_synchronize == nullptr) throw std::runtime_error("cudaStreamSynchronize is not in the loaded CUDA runtime");
    a.set_device = reinterpret_cast<int (*)(int)>(dlsym(RTLD_DEFAULT, "cudaSetDevice"));
    if (a.set_device == nullptr) throw std::runtime_error("cudaSetDevice is not in the loaded CUDA runtime");
    j->device = device;
    make_current(a, device);
    check(a.create_ex(NVJPEG_BACKEND_DEFAULT, nullptr, nullptr, 0, &j->handle), "nvjpegCreateEx(default)");
    check(a.state_create(j->handle, &j->state), "nvjpegJpegStateCreate");
    if (a.create_ex(NVJPEG_BACKEND_HARDWARE, nullptr, nullptr, 0, &j->hw_handle) == NVJPEG_STATUS_SUCCESS) {
      check(a.state_create(j->hw_handle, &j->hw_state), "nvjpegJpegStateCreate(hardware)");
      check(a.stream_create(j->hw_handle, &j->hw_stream), "nvjpegJpegStreamCreate");
    } else {
      j->hw_handle = nullptr;
    }
    j->stream = c10::cuda::getStreamFromPool(false, static_cast<c10::DeviceIndex>(device));
    *hardware = j->hw_handle != nullptr ? 1 : 0;
    *out = j.release();
  });
}

// Decodes `count` JPEGs (host memory) into new [height, width, 3] uint8
// CUDA tensors, queued on the decoder's stream: call it between
// shim_jpeg_stream_enter and shim_jpeg_stream_leave (after which they are
// complete), with `data` alive until the leave. Per image: outs[i] is set, or
// errors[i] is a message (malloc'd, freed with shim_free_error) saying why
// that image could not be decoded, and kinds[i] whose fault: 1 the
// file's, 2 the decoder's. The return value is an error for the whole
// call (nothing then is set).
char* shim_jpeg_decode(ShimJpeg* j, int count, const uint8_t* const* data, const size_t* lens, int64_t max_pixels,
                       at::Tensor** outs, char** errors, int* kinds) {
  return guarded([&] {
    std::vector<at::Tensor> decoded(count);
    std::vector<std::string> failed(count);
    std::vector<int> fault(count, 0);
    make_current(j->api, j->device);
    {
      std::vector<int> hardware = prepare(j, count, data, lens, max_pixels, decoded, failed, fault);
      std::vector<bool> done(count, false);
      std::string hw_failed;
      if (!hardware.empty()) {
        nvjpegStatus_t s = decode_on_hardware(j, hardware, data, lens, decoded);
        if (s == NVJPEG_STATUS_SUCCESS) {
          for (int i : hardware) done[i] = true;
          j->on_hardware += static_cast<int64_t>(hardware.size());
        } else {
          hw_failed = std::string("; the hardware batch failed first: ") + status_name(s);
        }
      }
      cudaStream_t stream = j->stream->stream();
      bool on_default = false;
      for (int i = 0; i < count; ++i) {
        if (done[i] || !failed[i].empty()) continue;
        on_default = true;
        nvjpegImage_t image = destination(decoded[i]);
        nvjpegStatus_t s = j->api.decode(j->handle, j->state, data[i], lens[i], NVJPEG_OUTPUT_RGBI, &image, stream);
        if (s != NVJPEG_STATUS_SUCCESS) {
          failed[i] = std::string("nvJPEG could not decode it (") + status_name(s) + ")" + hw_failed;
          fault[i] = file_at_fault(s) ? 1 : 2;
        } else {
          j->on_default += 1;
        }
      }
      // The default backend reuses its state's buffers image after image;
      // the hardware batch needs no wait here (the caller's leave waits).
      if (on_default) {
        int rc = j->api.stream_synchronize(stream);
        if (rc != 0) throw std::runtime_error("the decode stream failed with CUDA error " + std::to_string(rc));
      }
    }
    for (int i = 0; i < count; ++i) {
      outs[i] = nullptr;
      errors[i] = nullptr;
      kinds[i] = 0;
      if (!failed[i].empty()) {
        errors[i] = jpeg_error_of(failed[i]);
        kinds[i] = fault[i] == 0 ? 2 : fault[i];
      } else {
        outs[i] = new at::Tensor(std::move(decoded[i]));
      }
    }
  });
}

// Makes the decoder's stream the calling thread's current CUDA stream, so
// that the decode's outputs are allocated there and the libtorch work on
// them that follows (orientation, resize) runs there too, beside the
// model's stream.
char* shim_jpeg_stream_enter(ShimJpeg* j) {
  return guarded([&] {
    make_current(j->api, j->device);
    j->previous = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(j->device));
    c10::cuda::setCurrentCUDAStream(*j->stream);
  });
}

// Gives the calling thread its stream back, then waits for everything
// queued on the decoder's: the decoded tensors are complete after this.
char* shim_jpeg_stream_leave(ShimJpeg* j) {
  return guarded([&] {
    if (j->previous) {
      c10::cuda::setCurrentCUDAStream(*j->previous);
      j->previous.reset();
    }
    int rc = j->api.stream_synchronize(j->stream->stream());
    if (rc != 0) throw std::runtime_error("the decode stream failed with CUDA error " + std::to_string(rc));
  });
}

void shim_jpeg_free(ShimJpeg* j) { delete j; }

void shim_jpeg_counts(ShimJpeg* j, int64_t* on_hardware, int64_t* on_default) {
  *on_hardware = j->on_hardware;
  *on_default = j->on_default;
}

}  // extern "C"

#else  // no nvJPEG in this build

struct ShimJpeg {};

extern "C" {

int shim_has_nvjpeg() { return 0; }

char* shim_jpeg_open(const char* library, int device, ShimJpeg** out, int* hardware) {
  (void)library; (void)device; (void)out; (void)hardware;
  return jpeg_error_of("this model-host was built without nvJPEG (no CUDA or no nvjpeg.h beside libtorch)");
}

char* shim_jpeg_decode(ShimJpeg* j, int count, const uint8_t* const* data, const size_t* lens, int64_t max_pixels,
                       at::Tensor** outs, char** errors, int* kinds) {
  (void)j; (void)count; (void)data; (void)lens; (void)max_pixels; (void)outs; (void)errors; (void)kinds;
  return jpeg_error_of("this model-host was built without nvJPEG");
}

char* shim_jpeg_stream_enter(ShimJpeg* j) {
  (void)j;
  return jpeg_error_of("this model-host was built without nvJPEG");
}

char* shim_jpeg_stream_leave(ShimJpeg* j) {
  (void)j;
  return jpeg_error_of("this model-host was built without nvJPEG");
}

void shim_jpeg_free(ShimJpeg* j) { (void)j; }

void shim_jpeg_counts(ShimJpeg* j, int64_t* on_hardware, int64_t* on_default) {
  (void)j;
  *on_hardware = 0;
  *on_default = 0;
}

}  // extern "C"

#endif
