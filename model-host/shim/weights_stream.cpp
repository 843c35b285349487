// torch::jit::load reads a model's tensor records one after another into
// freshly allocated pageable memory, then (for a GPU) copies each to the
// device and waits for it: for ViT-H/14's 2.5 GB, 1.0 s where reading the
// file into a reused pinned buffer and copying it takes 0.24 s. Here:
//
// 1. The archive's tensor records ("data/N", stored uncompressed) are
//    listed with their offsets from the zip directory.
// 2. torch::jit::load runs on the CPU through an adapter that reads every
//    other part of the file but leaves each tensor record's bytes unwritten
//    (untouched memory costs nothing), noting which buffer was handed in
//    for which record: that buffer becomes the storage of the record's
//    tensors.
// 3. Every tensor in the module's slots is remade on the device over a
//    storage of its record's size; storages no record placed are moved as
//    torch::jit::load would have moved them.
// 4. The records are read by offset, a few threads at once, into those
//    storages: on a GPU through two small pinned buffers per thread, each
//    chunk copied asynchronously while the next is read.
// 5. Every chunk's two ends are read back and compared with the file.
//
// Whatever this cannot prove equivalent to torch::jit::load it refuses (the
// caller loads the plain way): a placed buffer not found as a slot
// tensor's storage, a placed storage still referenced elsewhere after the
// swap, tensors inside lists, dicts or objects, a module with __setstate__
// (it would have computed from the unwritten bytes), tensor constants on a
// GPU.

#include "weights_stream.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>

#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>

#ifdef SHIM_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <torch/cuda.h>
#endif

namespace shim {
namespace {

constexpr int kReaders = 4;
constexpr size_t kChunkBytes = size_t{16} << 20;

struct Record {
  std::string name;
  uint64_t offset;
  uint64_t size;
};

std::runtime_error refused(const std::string& why) { return std::runtime_error("streaming loader: " + why); }

// "data/17" or "archive/data/17": a tensor record of the module's state.
bool is_tensor_record(const std::string& name) {
  auto slash = name.rfind("data/");
  if (slash == std::string::npos || (slash != 0 && name[slash - 1] != '/')) return false;
  auto digits = name.substr(slash + 5);
  return !digits.empty() && std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; });
}

bool is_constant_record(const std::string& name) { return name.rfind("constants/", 0) == 0 || name.find("/constants/") != std::string::npos; }

bool is_code_record(const std::string& name) {
  return (name.rfind("code/", 0) == 0 || name.find("/code/") != std::string::npos) && name.size() > 3 && name.compare(name.size() - 3, 3, ".py") == 0;
}

bool is_pickle_record(const std::string& name) { return name.size() > 4 && name.compare(name.size() - 4, 4, ".pkl") == 0; }

std::string record_text(caffe2::serialize::PyTorchStreamReader& reader, const std::string& name) {
  auto [data, size] = reader.getRecord(name);
  return std::string(static_cast<const char*>(data.get()), size);
}

// The tensor records, or why the placeholder load must not run at all: a
// __setstate__ (TorchScript's or a C++ class's, as quantized modules'
// packed parameters have) would compute from the unwritten bytes while
// torch::jit::load runs, and could crash rather than throw.
std::vector<Record> tensor_records(caffe2::serialize::PyTorchStreamReader& reader, c10::Device device) {
  std::vector<Record> records;
  for (const auto& name : reader.getAllRecords()) {
    if (is_constant_record(name) && !device.is_cpu()) throw refused("the archive has tensor constants (" + name + ")");
    if (is_code_record(name) && record_text(reader, name).find("__setstate__") != std::string::npos)
      throw refused(name + " defines __setstate__");
    if (is_pickle_record(name) && record_text(reader, name).find("torch.classes") != std::string::npos)
      throw refused(name + " holds a C++ class (torch.classes)");
    if (!is_tensor_record(name)) continue;
    uint64_t size = reader.getRecordSize(name);
    if (size == 0) continue;
    records.push_back(Record{name, reader.getRecordOffset(name), size});
  }
  return records;
}

// The file through a CountingAdapter, except the bytes of a tensor record
// asked for whole: those are left unwritten, and the buffer noted.
class PlaceholderAdapter final : public caffe2::serialize::ReadAdapterInterface {
 public:
  PlaceholderAdapter(const std::string& same_file, const std::vector<Record>& records, Report report, void* context)
      : file_(same_file, report, context) {
    for (size_t i = 0; i < records.size(); ++i) by_offset_.emplace(records[i].offset, std::make_pair(records[i].size, i));
  }
  size_t size() const override { return file_.size(); }
  size_t read(uint64_t pos, void* buf, size_t n, const char* what = "") const override {
    auto found = by_offset_.find(pos);
    if (found != by_offset_.end() && found->second.first == n) {
      std::lock_guard<std::mutex> lock(mutex_);
      placed_[buf] = found->second.second;
      return n;
    }
    return file_.read(pos, buf, n, what);
  }
  // The record whose bytes were to go to `data` (a storage of `nbytes`).
  std::optional<size_t> placed(const void* data, size_t nbytes, const std::vector<Record>& records) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = placed_.find(data);
    if (found == placed_.end() || records[found->second].size != nbytes) return std::nullopt;
    return found->second;
  }
  std::unordered_set<size_t> placed_records() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::unordered_set<size_t> all;
    for (const auto& [_, record] : placed_) all.insert(record);
    return all;
  }
  uint64_t bytes_read() const { return file_.bytes_read(); }

 private:
  CountingAdapter file_;
  std::map<uint64_t, std::pair<uint64_t, size_t>> by_offset_;  // offset -> (size, record)
  mutable std::mutex mutex_;
  mutable std::unordered_map<const void*, size_t> placed_;
};

bool holds_tensor_or_object(const c10::IValue& v) {
  if (v.isTensor() || v.isObject()) return true;
  if (v.isList()) {
    for (const auto& item : v.toListRef())
      if (holds_tensor_or_object(item)) return true;
  } else if (v.isTuple()) {
    for (const auto& item : v.toTupleRef().elements())
      if (holds_tensor_or_object(item)) return true;
  } else if (v.isGenericDict()) {
    for (const auto& item : v.toGenericDict())
      if (holds_tensor_or_object(item.key()) || holds_tensor_or_object(item.value())) return true;
  }
  return false;
}

// The device storages the records go to, made as slot tensors are remade.
struct Targets {
  std::map<size_t, at::Tensor> bytes;  // record -> uint8 tensor of its size, on the device
  std::vector<c10::weak_intrusive_ptr<c10::StorageImpl>> placeholders;
  // Each tensor remade once: a tensor in two slots (tied weights) stays one
  // tensor, as torch::jit::load gives it.
  // Keyed by the slot's tensor, held (first) so that its address is not
  // reused meanwhile; dropped before the placeholders are checked.
  std::unordered_map<const c10::TensorImpl*, std::pair<at::Tensor, at::Tensor>> remade;
};

at::Tensor remade(const at::Tensor& t, const PlaceholderAdapter& adapter, const std::vector<Record>& records, c10::Device device,
                  Targets& targets) {
  if (t.is_quantized() || t.layout() != at::kStrided) throw refused("a tensor that is quantized or not strided");
  if (t.is_conj() || t.is_neg()) throw refused("a tensor with a lazy conjugate or negation");
  if (auto done = targets.remade.find(t.unsafeGetTensorImpl()); done != targets.remade.end()) return done->second.second;
  at::NoGradGuard no_grad;
  at::Tensor moved;
  auto record = t.has_storage() ? adapter.placed(t.storage().data(), t.storage().nbytes(), records) : std::nullopt;
  if (record) {
    auto [slot, fresh] = targets.bytes.try_emplace(*record);
    if (fresh) slot->second = at::empty({static_cast<int64_t>(records[*record].size)}, at::TensorOptions().dtype(at::kByte).device(device));
    targets.placeholders.push_back(t.storage().getWeakStorageImpl());
    moved = at::empty({0}, at::TensorOptions().dtype(t.dtype()).device(device));
    moved.set_(slot->second.storage(), t.storage_offset(), t.sizes(), t.strides());
  } else {
    moved = t.to(device);
  }
  if (t.requires_grad()) moved.set_requires_grad(true);
  targets.remade.emplace(t.unsafeGetTensorImpl(), std::make_pair(t, moved));
  return moved;
}

void remake_slots(const c10::intrusive_ptr<c10::ivalue::Object>& obj, const PlaceholderAdapter& adapter, const std::vector<Record>& records,
                  c10::Device device, Targets& targets, std::unordered_set<const void*>& seen) {
  if (!seen.insert(obj.get()).second) return;
  auto type = obj->type();
  if (type->findMethod("__setstate__") != nullptr) throw refused(type->repr_str() + " has __setstate__");
  for (size_t i = 0; i < obj->slots().size(); ++i) {
    c10::IValue v = obj->getSlot(i);
    if (v.isTensor()) {
      if (v.toTensor().defined()) obj->setSlot(i, remade(v.toTensor(), adapter, records, device, targets));
    } else if (v.isObject()) {
      if (!v.toObjectRef().type()->is_module()) throw refused("attribute " + type->getAttributeName(i) + " is an object");
      remake_slots(v.toObject(), adapter, records, device, targets, seen);
    } else if (holds_tensor_or_object(v)) {
      throw refused("attribute " + type->getAttributeName(i) + " holds tensors in a container");
    }
  }
}

// pread until `n` bytes are in, or the reason they are not.
void read_exactly(int fd, void* dst, size_t n, uint64_t offset, const std::string& path, const Record& record) {
  auto* at = static_cast<char*>(dst);
  while (n > 0) {
    ssize_t got = ::pread(fd, at, n, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) throw std::runtime_error(path + ": reading " + record.name + ": " + std::strerror(errno));
    if (got == 0)
      throw std::runtime_error(path + " is truncated: " + record.name + " ends at byte " + std::to_string(record.offset + record.size) +
                               ", past the end of the file");
    at += got;
    n -= static_cast<size_t>(got);
    offset += static_cast<uint64_t>(got);
  }
}

struct Chunk {
  size_t record;
  uint64_t within;  // offset within the record
  size_t n;
};

// Every chunk's first and last bytes, read back from the device in one
// copy and compared with the file: a copy that never landed, landed in the
// wrong place, or came from a staging buffer already refilled would show
// at a chunk's ends. A mismatch is an error (the caller then loads the
// plain way), never a model with wrong weights.
void verify(int fd, const std::string& path, const std::vector<Record>& records, const std::vector<Chunk>& chunks, Targets& targets) {
  constexpr size_t kEnd = 64;
  std::vector<at::Tensor> ends;
  std::vector<uint8_t> expected;
  ends.reserve(2 * chunks.size());
  for (const Chunk& c : chunks) {
    const Record& record = records[c.record];
    at::Tensor& target = targets.bytes.at(c.record);
    size_t k = std::min(kEnd, c.n);
    for (uint64_t at : {c.within, c.within + c.n - k}) {
      ends.push_back(target.narrow(0, static_cast<int64_t>(at), static_cast<int64_t>(k)));
      size_t had = expected.size();
      expected.resize(had + k);
      read_exactly(fd, expected.data() + had, k, record.offset + at, path, record);
    }
  }
  if (ends.empty()) return;
  at::Tensor got = at::cat(ends).cpu();
  if (static_cast<size_t>(got.numel()) != expected.size() || std::memcmp(got.data_ptr<uint8_t>(), expected.data(), expected.size()) != 0)
    throw std::runtime_error(path + ": the streamed weights do not match the file at a chunk's ends");
}

// Reads every record into its target, kReaders threads taking chunks in
// file order; the calling thread reports progress meanwhile. Returns only
// once every copy has landed, on success and on failure alike.
void fill(int fd, const std::string& path, const std::vector<Record>& records, Targets& targets, c10::Device device, Report report,
          void* context, uint64_t already_read, uint64_t file_size) {
  std::vector<Chunk> chunks;
  for (const auto& [record, _] : targets.bytes)
    for (uint64_t within = 0; within < records[record].size; within += kChunkBytes)
      chunks.push_back(Chunk{record, within, static_cast<size_t>(std::min<uint64_t>(kChunkBytes, records[record].size - within))});
  std::sort(chunks.begin(), chunks.end(), [&](const Chunk& a, const Chunk& b) {
    return records[a.record].offset + a.within < records[b.record].offset + b.within;
  });
  std::atomic<size_t> next{0};
  std::atomic<uint64_t> filled{0};
  std::atomic<bool> failed{false};
  std::mutex mutex;
  std::condition_variable finished;
  int running = 0;
  std::string error;
  auto fail = [&](const std::string& why) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!failed.exchange(true)) error = why;
  };

  auto reader = [&] {
#ifdef SHIM_WITH_CUDA
    // Device-generic guard and events (libc10_cuda's backend): nothing
    // here calls the CUDA runtime itself, as in torch_shim.cpp.
    std::optional<c10::StreamGuard> on_stream;
    at::Tensor staging[2];
    c10::Event copied[2] = {c10::Event(c10::DeviceType::CUDA), c10::Event(c10::DeviceType::CUDA)};
    int turn = 0;
#endif
    try {
#ifdef SHIM_WITH_CUDA
      if (device.is_cuda()) {
        on_stream.emplace(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index()).unwrap());
        for (auto& s : staging) s = at::empty({static_cast<int64_t>(kChunkBytes)}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
      }
#endif
      for (size_t i = next++; i < chunks.size() && !failed; i = next++) {
        const Chunk& c = chunks[i];
        const Record& record = records[c.record];
        at::Tensor& target = targets.bytes.at(c.record);
        if (device.is_cpu()) {
          read_exactly(fd, target.data_ptr<uint8_t>() + c.within, c.n, record.offset + c.within, path, record);
        } else {
#ifdef SHIM_WITH_CUDA
          // The buffer's previous copy must be done before it is reused.
          copied[turn].synchronize();
          read_exactly(fd, staging[turn].data_ptr(), c.n, record.offset + c.within, path, record);
          target.narrow(0, static_cast<int64_t>(c.within), static_cast<int64_t>(c.n))
              .copy_(staging[turn].narrow(0, 0, static_cast<int64_t>(c.n)), /*non_blocking=*/true);
          copied[turn].record(on_stream->current_stream());
          turn ^= 1;
#else
          throw std::runtime_error("streaming onto a GPU needs the shim built with CUDA");
#endif
        }
        filled += c.n;
      }
    } catch (const std::exception& e) {
      fail(e.what());
    } catch (...) {
      fail("unknown C++ exception while reading the weights");
    }
#ifdef SHIM_WITH_CUDA
    // Every copy this thread queued has landed before it says it is done,
    // whether or not it failed: the targets may be freed right after.
    for (auto& event : copied) {
      try {
        event.synchronize();
      } catch (const std::exception& e) {
        fail(e.what());
      }
    }
#endif
    std::lock_guard<std::mutex> lock(mutex);
    if (--running == 0) finished.notify_all();
  };
  std::vector<std::thread> threads;
  for (int i = 0; i < kReaders; ++i) {
    try {
      {
        std::lock_guard<std::mutex> lock(mutex);
        ++running;
      }
      threads.emplace_back(reader);
    } catch (const std::exception& e) {
      fail(std::string("starting a reader thread: ") + e.what());
      std::lock_guard<std::mutex> lock(mutex);
      --running;
      break;
    }
  }
  {
    std::unique_lock<std::mutex> lock(mutex);
    while (!finished.wait_for(lock, std::chrono::milliseconds(100), [&] { return running == 0; })) {
      lock.unlock();
      if (report != nullptr) report(context, already_read + filled, file_size);
      lock.lock();
    }
  }
  for (auto& t : threads) t.join();
  if (failed) throw std::runtime_error(error);
  verify(fd, path, records, chunks, targets);
}

// The file, open once: every read (the zip directory, the placeholder
// load, the records) is of the same file, even if the path is replaced
// meanwhile (a model update renames a new file over it).
class OpenFile {
 public:
  explicit OpenFile(const std::string& path) : fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    if (fd_ < 0) throw std::runtime_error(path + ": " + std::strerror(errno));
  }
  ~OpenFile() { ::close(fd_); }
  OpenFile(const OpenFile&) = delete;
  OpenFile& operator=(const OpenFile&) = delete;
  int fd() const { return fd_; }
  // A path naming this open file, for libtorch's readers.
  std::string same_file() const { return "/proc/self/fd/" + std::to_string(fd_); }

 private:
  int fd_;
};

}  // namespace

torch::jit::Module load_streaming(const std::string& path, c10::Device device, Report report, void* context, StreamedWeights* streamed) {
  OpenFile file(path);
  std::vector<Record> records;
  {
    caffe2::serialize::PyTorchStreamReader reader(file.same_file());
    records = tensor_records(reader, device);
  }
  auto adapter = std::make_shared<PlaceholderAdapter>(file.same_file(), records, report, context);
  torch::jit::Module module = torch::jit::load(adapter, c10::Device(c10::kCPU));
  Targets targets;
  std::unordered_set<const void*> seen;
  remake_slots(module._ivalue(), *adapter, records, device, targets, seen);
  targets.remade.clear();
  for (size_t record : adapter->placed_records())
    if (targets.bytes.count(record) == 0) throw refused(records[record].name + " is not the storage of any attribute");
  for (const auto& placeholder : targets.placeholders)
    if (!placeholder.expired()) throw refused("a tensor record is referenced outside the module's attributes");
#ifdef SHIM_WITH_CUDA
  // The targets were allocated on this thread's stream; the readers copy on
  // streams of their own, which must not overtake work queued before.
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
#endif
  fill(file.fd(), path, records, targets, device, report, context, adapter->bytes_read(), adapter->size());
  streamed->records = targets.bytes.size();
  streamed->bytes = 0;
  for (const auto& [record, _] : targets.bytes) streamed->bytes += records[record].size;
  return module;
}

}  // namespace shim
