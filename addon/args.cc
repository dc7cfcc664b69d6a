// Errors and arguments (declared in args.h). N-API only.

#include "args.h"

#include <errno.h>
#include <string.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

namespace vhostfwd {

// ---------------------------------------------------------------------------
// Errors

const char* ErrnoName(int err) {
  // glibc >= 2.32; returns null for numbers it does not know.
  const char* name = strerrorname_np(err);
  return name != nullptr ? name : "EUNKNOWN";
}

[[noreturn]] void ThrowErrno(Napi::Env env, const char* syscall, int err,
                             const std::string& detail) {
  // strerrordesc_np, unlike strerror, never formats into a shared static buffer:
  // safe with workers calling in parallel.
  const char* desc = strerrordesc_np(err);
  std::string msg = std::string(syscall) + " " + ErrnoName(err) + ": " +
                    (desc != nullptr ? desc : "unknown error");
  if (!detail.empty()) msg += " (" + detail + ")";
  Napi::Error e = Napi::Error::New(env, msg);
  e.Value().Set("code", ErrnoName(err));
  e.Value().Set("errno", -err);
  e.Value().Set("syscall", syscall);
  throw e;
}

// ---------------------------------------------------------------------------
// Arguments

[[noreturn]] void ThrowType(Napi::Env env, const char* what) {
  Napi::TypeError e = Napi::TypeError::New(env, what);
  e.Value().Set("code", "ERR_INVALID_ARG_TYPE");
  throw e;
}

// Int32Value() maps NaN, 1.5 or 2**40 to some other int (NaN -> 0): for an fd that would
// silently act on stdin. Anything that is not an exact int32 is refused instead.
int32_t ToInt32Exact(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsNumber()) ThrowType(env, what);
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= INT32_MIN && d <= INT32_MAX) || std::floor(d) != d) {
    Napi::RangeError e = Napi::RangeError::New(env, std::string(what) + ", got " + std::to_string(d));
    e.Value().Set("code", "ERR_OUT_OF_RANGE");
    throw e;
  }
  return static_cast<int32_t>(d);
}

int ArgFd(const Napi::CallbackInfo& info, size_t i) {
  return ToInt32Exact(info.Env(), info[i], "fd must be an integer");
}

int32_t ArgInt(const Napi::CallbackInfo& info, size_t i, const char* what) {
  return ToInt32Exact(info.Env(), info[i], what);
}

// A non-negative integral number that fits a double exactly (sizes, offsets, counters).
// Out-of-range values are the caller's EINVAL, reported against the syscall they feed.
uint64_t ArgU64(const Napi::CallbackInfo& info, size_t i, const char* what, const char* syscall) {
  if (!info[i].IsNumber()) ThrowType(info.Env(), what);
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d > 9007199254740991.0 || std::floor(d) != d) {
    ThrowErrno(info.Env(), syscall, EINVAL, std::string(what) + " out of range");
  }
  return static_cast<uint64_t>(d);
}

std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (!info[i].IsString()) ThrowType(info.Env(), what);
  return info[i].As<Napi::String>().Utf8Value();
}



// Any ArrayBufferView, including views over a SharedArrayBuffer. The raw N-API call is
// used on purpose: Napi::TypedArray::ArrayBuffer() rejects SharedArrayBuffer backing.
Bytes ArgBytes(const Napi::CallbackInfo& info, size_t i) {
  napi_env env = info.Env();
  napi_value v = info[i];
  if (info[i].IsTypedArray()) {
    napi_typedarray_type type;
    size_t length = 0;
    void* data = nullptr;
    NAPI_THROW_IF_FAILED(env, napi_get_typedarray_info(env, v, &type, &length, &data, nullptr, nullptr),
                         Bytes());
    size_t elem = info[i].As<Napi::TypedArray>().ElementSize();
    return Bytes{static_cast<uint8_t*>(data), length * elem};
  }
  if (info[i].IsDataView()) {
    size_t length = 0;
    void* data = nullptr;
    NAPI_THROW_IF_FAILED(env, napi_get_dataview_info(env, v, &length, &data, nullptr, nullptr), Bytes());
    return Bytes{static_cast<uint8_t*>(data), length};
  }
  ThrowType(info.Env(), "data must be a Uint8Array (or another ArrayBufferView)");
}

}  // namespace vhostfwd
