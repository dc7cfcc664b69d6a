// Errors and arguments: how every file of the addon reads its JS arguments and reports a
// failure (the design rules in vhostfwd.cc; the JS-facing contract is in src/native.ts).
// Defined in args.cc. N-API only.
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace vhostfwd {

// The errno's name ("ENOENT"), or "EUNKNOWN".
const char* ErrnoName(int err);

// Throws an Error with .code = errno name, .errno = -errno and .syscall.
[[noreturn]] void ThrowErrno(Napi::Env env, const char* syscall, int err,
                             const std::string& detail = std::string());

// Throws a TypeError with .code = 'ERR_INVALID_ARG_TYPE'.
[[noreturn]] void ThrowType(Napi::Env env, const char* what);

int32_t ToInt32Exact(Napi::Env env, const Napi::Value& v, const char* what);
int ArgFd(const Napi::CallbackInfo& info, size_t i);
int32_t ArgInt(const Napi::CallbackInfo& info, size_t i, const char* what);
uint64_t ArgU64(const Napi::CallbackInfo& info, size_t i, const char* what, const char* syscall);
std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* what);

struct Bytes {
  uint8_t* data;
  size_t len;
};

Bytes ArgBytes(const Napi::CallbackInfo& info, size_t i);

}  // namespace vhostfwd
