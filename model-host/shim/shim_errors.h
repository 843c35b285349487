// How every shim function reports failure (torch_shim.cpp, jpeg_shim.cpp):
// a C++ exception never crosses into Rust; it comes back as a message,
// malloc'd here and freed by shim_free_error.
#pragma once

#include <cstdlib>
#include <cstring>
#include <exception>

#include <c10/util/Exception.h>

namespace shim {

inline char* error_of(const char* what) {
  char* copy = static_cast<char*>(std::malloc(std::strlen(what) + 1));
  if (copy != nullptr) std::strcpy(copy, what);
  return copy;
}

// Runs `body`; nullptr if it returned, else what it threw.
template <typename F>
char* guarded(F&& body) {
  try {
    body();
    return nullptr;
  } catch (const c10::Error& e) {
    return error_of(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return error_of(e.what());
  } catch (...) {
    return error_of("unknown C++ exception");
  }
}

}  // namespace shim
