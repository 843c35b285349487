// CUDA streams and events for the host's pipeline, as a C surface for
// model-host/src/torch_shim/stream.rs: the feeder thread uploads batches on
// a stream of its own, and the model thread's stream waits for each upload
// on the GPU (an event), not on the CPU. The model thread reads each
// batch's answers back asynchronously and waits for them on an event, so
// that it can queue the next batch first.
//
// Only libtorch's own calls (c10::Event goes through the CUDA backend
// registered in libc10_cuda): nothing here calls the CUDA runtime, as in
// torch_shim.cpp, and the one driver call (a stream's priority, for the
// log) goes through dlsym. Errors come back as messages (shim_errors.h).

#include <memory>
#include <stdexcept>
#include <string>

#include <c10/core/Event.h>
#include <c10/core/Stream.h>

#ifdef SHIM_WITH_CUDA
#include <dlfcn.h>

#include <c10/cuda/CUDAStream.h>
#endif

#include "shim_errors.h"

using shim::error_of;
using shim::guarded;

struct ShimEvent {
  c10::Event event{c10::DeviceType::CUDA};
};

extern "C" {

#ifdef SHIM_WITH_CUDA

int shim_has_streams() { return 1; }

// Makes a stream of libtorch's pool (non-blocking: it never waits for the
// legacy default stream) the calling thread's current stream on `device`,
// for the rest of the thread's life. The feeder takes the high-priority
// pool: the low-priority one is shared in turn by the JPEG decoders, each
// graph capture and the warm-up after READY, and with enough of those the
// feeder's uploads would queue behind their work; the uploads' few small
// kernels also go ahead of the forward pass's.
char* shim_stream_own(int device, int high_priority) {
  return guarded([&] {
    c10::cuda::setCurrentCUDAStream(c10::cuda::getStreamFromPool(high_priority != 0, static_cast<c10::DeviceIndex>(device)));
  });
}

// The priority CUDA gives the calling thread's current stream on `device`
// (lower runs first), for the log. Asked of the driver, which
// any process with a CUDA context has loaded, through dlsym: this shim
// calls neither the runtime (libtorch's header would inline it) nor links
// the driver.
char* shim_stream_priority(int device, int* out) {
  return guarded([&] {
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream();
    void* driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (driver == nullptr) throw std::runtime_error("the CUDA driver is not loaded");
    using GetPriority = int (*)(cudaStream_t, int*);
    auto get = reinterpret_cast<GetPriority>(dlsym(driver, "cuStreamGetPriority"));
    int status = get == nullptr ? -1 : get(stream, out);
    dlclose(driver);
    if (status != 0) throw std::runtime_error("cuStreamGetPriority failed: " + std::to_string(status));
  });
}

// A new event, recorded on the calling thread's current stream on `device`:
// it completes when everything queued there so far has run.
char* shim_event_record(int device, ShimEvent** out) {
  return guarded([&] {
    auto e = std::make_unique<ShimEvent>();
    e->event.record(c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).unwrap());
    *out = e.release();
  });
}

// Makes the calling thread's current stream on `device` wait for the event
// before whatever is queued on it next (on the GPU; the CPU goes on).
char* shim_event_block(ShimEvent* e, int device) {
  return guarded([&] { e->event.block(c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).unwrap()); });
}

// Waits on the CPU until the event has completed.
char* shim_event_synchronize(ShimEvent* e) {
  return guarded([&] { e->event.synchronize(); });
}

#else  // built without the CUDA headers: no streams (callers copy synchronously)

int shim_has_streams() { return 0; }

char* shim_stream_own(int device, int high_priority) {
  (void)device; (void)high_priority;
  return error_of("this model-host was built without CUDA support in its shim");
}

char* shim_stream_priority(int device, int* out) {
  (void)device; (void)out;
  return error_of("this model-host was built without CUDA support in its shim");
}

char* shim_event_record(int device, ShimEvent** out) {
  (void)device; (void)out;
  return error_of("this model-host was built without CUDA support in its shim");
}

char* shim_event_block(ShimEvent* e, int device) {
  (void)e; (void)device;
  return error_of("this model-host was built without CUDA support in its shim");
}

char* shim_event_synchronize(ShimEvent* e) {
  (void)e;
  return error_of("this model-host was built without CUDA support in its shim");
}

#endif

void shim_event_free(ShimEvent* e) { delete e; }

}  // extern "C"
