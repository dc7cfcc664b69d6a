// V8 internals: the addon's one include of v8.h, and the fence around what uses it.
//
// Everything else in the addon is N-API (node-addon-api), which Node keeps ABI-stable
// across versions: the prebuilt node.napi.glibc.node is meant to load on any Node >= 20.19.
// The code declared here, and the files that include this header (names ending in _v8:
// memory_v8.cc, copy_v8.cc, log_v8.cc, plus v8_bridge.cc and the exports table in
// vhostfwd.cc), use V8's own C++ API instead, which has no such promise. This is what
// breaks on a Node upgrade, and why:
//  - napi_value <-> v8::Local<v8::Value> (NapiValueFromV8Local, V8LocalFromNapiValue) rely
//    on a napi_value being, in Node's implementation, the Local's slot pointer
//    (v8impl::JsValueFromV8LocalValue). Nothing documents it; a Node that changes it makes
//    every conversion below wrong at run time (the static_asserts only catch a size change).
//  - v8::BackingStore, v8::SharedArrayBuffer::NewBackingStore, v8::Global with weak callbacks
//    and v8::FunctionCallbackInfo change between V8 versions, i.e. between Node majors: a
//    source build can stop compiling, and a binary built against one Node's headers can fail
//    to load (a missing V8 symbol) or misbehave on another.
// After a Node upgrade: rebuild from source and run test/native*.test.ts and
// test/copy.test.ts before trusting a prebuilt binary.
//
// Why it is used anyway (each measured or impossible without it):
//  - mmap returns a real SharedArrayBuffer whose V8 backing store owns the mapping: shared by
//    every isolate it is posted to, unmapped only after the last one drops it. N-API (version 8,
//    which the addon targets) has no way to make a SharedArrayBuffer at all (memory_v8.cc;
//    what a plain external buffer would cost: addon/DECISIONS.md).
//  - the per-burst hot-path helpers are V8 function callbacks, not N-API functions: N-API's
//    argument and scope handling cost several times a V8 callback's (copyRun,
//    bench/NOTES.md #20); logRun marks a burst's dirty pages in a third of JavaScript's time
//    (bench/NOTES.md #21); their tables cache the backing stores' Data() and ByteLength()
//    (a PLT call each per job showed in the 1518-byte loop, bench/NOTES.md #10)
//    and hold the stores, so registered memory cannot be unmapped under a pending copy.

#pragma once

#include <napi.h>
#include <v8.h>

#include <cstring>

namespace vhostfwd {

// napi_value is, in Node's implementation, the Local's slot pointer
// (v8impl::JsValueFromV8LocalValue). Valid while the HandleScope that holds the Local is
// open (in a callback: until it returns).
inline napi_value NapiValueFromV8Local(v8::Local<v8::Value> value) {
  napi_value result;
  static_assert(sizeof result == sizeof value, "napi_value and v8::Local must have the same size");
  std::memcpy(static_cast<void*>(&result), &value, sizeof result);
  return result;
}

// The reverse: a napi_value is the Local's slot pointer.
inline v8::Local<v8::Value> V8LocalFromNapiValue(napi_value raw) {
  v8::Local<v8::Value> value;
  static_assert(sizeof raw == sizeof value, "napi_value and v8::Local must have the same size");
  std::memcpy(static_cast<void*>(&value), &raw, sizeof value);
  return value;
}

// The first argument as a v8::SharedArrayBuffer, or a TypeError naming `what`
// (memory_v8.cc).
v8::Local<v8::SharedArrayBuffer> SharedArrayBufferArg(const Napi::CallbackInfo& info, const char* what);

// A TypeError with code 'ERR_INVALID_ARG_TYPE', thrown from a V8 callback (v8_bridge.cc).
void ThrowV8Type(v8::Isolate* isolate, const char* what);

// Exports a V8 function callback like the N-API functions (v8_bridge.cc).
void SetV8Function(Napi::Env env, Napi::Object exports, const char* name, v8::FunctionCallback fn);

// The per-burst helpers, V8 function callbacks (copy_v8.cc, log_v8.cc).
void CopyBind(const v8::FunctionCallbackInfo<v8::Value>& info);
void CopyRun(const v8::FunctionCallbackInfo<v8::Value>& info);
void CopyPrefetch(const v8::FunctionCallbackInfo<v8::Value>& info);
void LogBind(const v8::FunctionCallbackInfo<v8::Value>& info);
void LogUnbind(const v8::FunctionCallbackInfo<v8::Value>& info);
void LogRun(const v8::FunctionCallbackInfo<v8::Value>& info);

}  // namespace vhostfwd
