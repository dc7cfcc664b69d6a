// Memory: guest memory regions mapped as SharedArrayBuffers (mmap), their early release
// (retire), the registry of live mappings (g_maps) and the SharedArrayBufferArg helper.
//
// V8 internals (see v8_bridge.h): N-API cannot make a SharedArrayBuffer, let alone one whose
// memory is a mapping that is unmapped when the last isolate holding it lets go, so this
// file builds it from a v8::BackingStore and converts it to a napi_value by hand.

#include <errno.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/statfs.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

#include "args.h"
#include "functions.h"
#include "v8_bridge.h"

namespace vhostfwd {

namespace {

// Mappings made by Mmap and not yet unmapped, with their mapped length: retire() needs the
// length (hugetlbfs rounds it up), and may not touch a mapping its deleter already unmapped.
// The deleter runs on whichever thread drops the last reference: hence the lock.
std::mutex g_maps_lock;
std::unordered_map<void*, size_t> g_maps;

void MunmapBackingStore(void* data, size_t, void* deleter_data) {
  // The length comes from deleter_data, not from V8's byte length: for hugetlbfs the
  // mapping is rounded up to the huge page size and munmap needs that exact length.
  // May run on any thread (whichever isolate drops the last reference); munmap is
  // thread-safe.
  {
    std::lock_guard<std::mutex> g(g_maps_lock);
    g_maps.erase(data);
  }
  ::munmap(data, reinterpret_cast<uintptr_t>(deleter_data));
}

}  // namespace

Napi::Value Mmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  uint64_t size = ArgU64(info, 1, "size", "mmap");
  uint64_t offset = ArgU64(info, 2, "offset", "mmap");
  if (size == 0) ThrowErrno(env, "mmap", EINVAL, "size 0");

  size_t map_len = static_cast<size_t>(size);
  struct statfs sfs;
  if (::fstatfs(fd, &sfs) == 0 && static_cast<uint64_t>(sfs.f_type) == HUGETLBFS_MAGIC && sfs.f_bsize > 0) {
    size_t huge = static_cast<size_t>(sfs.f_bsize);
    map_len = (map_len + huge - 1) / huge * huge;
  }

  void* p = ::mmap(nullptr, map_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, static_cast<off_t>(offset));
  if (p == MAP_FAILED) ThrowErrno(env, "mmap", errno);
  {
    std::lock_guard<std::mutex> g(g_maps_lock);
    g_maps[p] = map_len;
  }

  // The V8 backing store owns the mapping from here on: every isolate that receives the
  // SharedArrayBuffer (postMessage to workers) shares this one store, and the deleter
  // runs only after the last of them has collected it.
  std::unique_ptr<v8::BackingStore> store = v8::SharedArrayBuffer::NewBackingStore(
      p, static_cast<size_t>(size), MunmapBackingStore, reinterpret_cast<void*>(static_cast<uintptr_t>(map_len)));
  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  v8::Local<v8::SharedArrayBuffer> sab = v8::SharedArrayBuffer::New(isolate, std::move(store));
  // napi_value is, in Node's implementation, the Local's slot pointer
  // (v8impl::JsValueFromV8LocalValue); V8 opened a HandleScope for this callback,
  // so the Local stays valid until we return.
  return Napi::Value(env, NapiValueFromV8Local(sab));
}

// The first argument as a v8::SharedArrayBuffer, or a TypeError naming `what`. The reverse
// of Mmap's conversion: a napi_value is the Local's slot pointer.
v8::Local<v8::SharedArrayBuffer> SharedArrayBufferArg(const Napi::CallbackInfo& info, const char* what) {
  v8::Local<v8::Value> value = V8LocalFromNapiValue(info[0]);
  if (info.Length() < 1 || value.IsEmpty() || !value->IsSharedArrayBuffer()) {
    Napi::TypeError e = Napi::TypeError::New(info.Env(), std::string(what) + ": expected a SharedArrayBuffer");
    e.Set("code", Napi::String::New(info.Env(), "ERR_INVALID_ARG_TYPE"));
    throw e;
  }
  return value.As<v8::SharedArrayBuffer>();
}

// A device's guest memory must go back to the frontend's host when the device goes, not
// when every isolate that saw the SharedArrayBuffer happens to collect it: a poller worker
// allocates nothing and may not collect for hours, and a hugetlbfs region keeps its huge
// pages while mapped (a reconnecting guest then cannot get its memory back). retire()
// replaces the mapping in place with fresh anonymous memory (MAP_FIXED): the guest's pages
// are released now, a view some thread still holds reads zeros instead of faulting, and the
// deleter later unmaps the anonymous range as before. Returns false when the SAB is not a
// live mapping of ours.
Napi::Value Retire(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  void* data = SharedArrayBufferArg(info, "retire")->GetBackingStore()->Data();
  std::lock_guard<std::mutex> g(g_maps_lock);
  auto it = g_maps.find(data);
  if (it == g_maps.end()) return Napi::Boolean::New(env, false);
  void* p = ::mmap(data, it->second, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) ThrowErrno(env, "mmap", errno, "retire");
  return Napi::Boolean::New(env, true);
}

}  // namespace vhostfwd
