// poll: fd readiness on the calling thread's libuv loop
//
// Lifetime: a PollWatch is shared by two owners, and freed when both let go:
//  - the uv side: from uv_poll_init until the uv_close callback;
//  - the JS side: the close() function object, until its finalizer runs (so a close()
//    called at any time, even after the handle is gone, finds valid memory).
// Closing is started by close() from JS or, if JS never calls it, by an async
// environment-cleanup hook when the thread's environment is torn down (a worker that
// exits would otherwise abort in uv_loop_close on our still-open handle). The JS
// callback reference and the async context are released at that moment, where a V8
// context is entered; the uv close callback only removes the hook and frees.
//
// waitReadable / waitAny: blocking waits with a timeout (worker threads sleep here instead
// of spinning). N-API only.

#include <errno.h>
#include <poll.h>
#include <uv.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "args.h"
#include "functions.h"

namespace vhostfwd {

namespace {

// waitAny's pollfd array: on the stack up to this many fds (a worker with a few rings), in
// a per-thread vector that grows once beyond it (128 queue pairs of several interfaces).
constexpr uint32_t kStackWaitFds = 64;
// poll(2) itself takes up to RLIMIT_NOFILE; a count past this is a caller's bug.
constexpr uint64_t kMaxWaitFds = 65536;

// POLL_* bits of src/native.ts.
constexpr int kPollReadable = 1;
constexpr int kPollWritable = 2;
constexpr int kPollError = 4;

struct PollWatch {
  uv_poll_t handle;
  napi_env env = nullptr;
  napi_ref callback = nullptr;
  napi_async_context async = nullptr;
  napi_async_cleanup_hook_handle cleanup = nullptr;
  bool closing = false;
  int owners = 2;
};

void ReleaseOwner(PollWatch* w) {
  if (--w->owners == 0) delete w;
}

void OnPollClosed(uv_handle_t* h) {
  PollWatch* w = static_cast<PollWatch*>(h->data);
  // Tells node a teardown waiting on this hook may proceed.
  if (w->cleanup != nullptr) napi_remove_async_cleanup_hook(w->cleanup);
  w->cleanup = nullptr;
  ReleaseOwner(w);
}

void StartClose(PollWatch* w) {
  if (w->closing) return;
  w->closing = true;
  uv_poll_stop(&w->handle);
  uv_close(reinterpret_cast<uv_handle_t*>(&w->handle), OnPollClosed);
  if (w->callback != nullptr) napi_delete_reference(w->env, w->callback);
  w->callback = nullptr;
  if (w->async != nullptr) napi_async_destroy(w->env, w->async);
  w->async = nullptr;
}

void OnEnvCleanup(napi_async_cleanup_hook_handle, void* arg) {
  StartClose(static_cast<PollWatch*>(arg));
}

void OnPollEvent(uv_poll_t* h, int status, int events) {
  PollWatch* w = static_cast<PollWatch*>(h->data);
  if (w->closing || w->callback == nullptr) return;
  int bits = 0;
  if (status < 0) {
    bits = kPollError;
  } else {
    if (events & UV_READABLE) bits |= kPollReadable;
    if (events & UV_WRITABLE) bits |= kPollWritable;
    if (events & UV_DISCONNECT) bits |= kPollError;
  }
  napi_env env = w->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value fn = nullptr, recv = nullptr, arg = nullptr;
  if (napi_get_reference_value(env, w->callback, &fn) == napi_ok && fn != nullptr &&
      napi_get_global(env, &recv) == napi_ok && napi_create_int32(env, bits, &arg) == napi_ok) {
    // napi_make_callback (not napi_call_function) so microtasks run after the callback
    // and async_hooks / AsyncLocalStorage see a proper async scope.
    if (napi_make_callback(env, w->async, recv, fn, 1, &arg, nullptr) == napi_pending_exception) {
      // No JS frame below us can catch it: report it as uncaught, like any other
      // event-loop callback that throws.
      napi_value err;
      if (napi_get_and_clear_last_exception(env, &err) == napi_ok) napi_fatal_exception(env, err);
    }
  }
  napi_close_handle_scope(env, scope);
}

Napi::Value PollClose(const Napi::CallbackInfo& info) {
  StartClose(static_cast<PollWatch*>(info.Data()));
  return info.Env().Undefined();
}

void PollCloseFinalize(Napi::Env, PollWatch* w) { ReleaseOwner(w); }

}  // namespace

Napi::Value Poll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  if (!info[1].IsFunction()) ThrowType(env, "cb must be a function");

  uv_loop_t* loop = nullptr;
  NAPI_THROW_IF_FAILED(env, napi_get_uv_event_loop(env, &loop), Napi::Value());

  PollWatch* w = new PollWatch();
  w->env = env;
  w->handle.data = w;
  int r = uv_poll_init(loop, &w->handle, fd);
  if (r < 0) {
    delete w;  // uv_poll_init failed before registering the handle: nothing to close
    ThrowErrno(env, "uv_poll_init", -r);
  }
  r = uv_poll_start(&w->handle, UV_READABLE | UV_DISCONNECT, OnPollEvent);
  if (r < 0) {
    // The handle is registered with the loop now and must go through uv_close.
    w->owners = 1;
    w->closing = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&w->handle), OnPollClosed);
    ThrowErrno(env, "uv_poll_start", -r);
  }
  napi_create_reference(env, info[1], 1, &w->callback);
  napi_async_init(env, nullptr, Napi::String::New(env, "vhostfwd.poll"), &w->async);
  napi_add_async_cleanup_hook(env, OnEnvCleanup, w, &w->cleanup);

  Napi::Object handle = Napi::Object::New(env);
  Napi::Function close = Napi::Function::New(env, PollClose, "close", w);
  close.AddFinalizer(PollCloseFinalize, w);
  handle.Set("close", close);
  return handle;
}

namespace {

// poll(2) timeout: negative means forever; clamp huge values instead of wrapping.
int ArgTimeout(const Napi::CallbackInfo& info, size_t i) {
  if (!info[i].IsNumber()) ThrowType(info.Env(), "timeoutMs must be a number");
  double t = info[i].As<Napi::Number>().DoubleValue();
  if (std::isnan(t) || t < 0) return -1;
  if (t > INT32_MAX) return INT32_MAX;
  return static_cast<int>(std::ceil(t));
}

}  // namespace

Napi::Value WaitReadable(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  int timeout = ArgTimeout(info, 1);
  pollfd p{fd, POLLIN, 0};
  int r = ::poll(&p, 1, timeout);
  if (r < 0) {
    // A signal is just an early wake-up; callers loop anyway.
    if (errno == EINTR) return Napi::Boolean::New(env, false);
    ThrowErrno(env, "poll", errno);
  }
  if (p.revents & POLLNVAL) ThrowErrno(env, "poll", EBADF);
  return Napi::Boolean::New(env, r > 0);
}

Napi::Value WaitAny(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray() ||
      info[0].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
    ThrowType(env, "fds must be an Int32Array");
  }
  napi_typedarray_type type;
  size_t length = 0;
  void* data = nullptr;
  NAPI_THROW_IF_FAILED(env, napi_get_typedarray_info(env, info[0], &type, &length, &data, nullptr, nullptr),
                       Napi::Value());
  uint64_t count = ArgU64(info, 1, "count", "poll");
  if (count > length || count > kMaxWaitFds) {
    ThrowErrno(env, "poll", EINVAL, "count " + std::to_string(count) + " exceeds the array or " + std::to_string(kMaxWaitFds));
  }
  int timeout = ArgTimeout(info, 2);

  pollfd stack_pfds[kStackWaitFds];
  thread_local std::vector<pollfd> heap_pfds;
  pollfd* pfds = stack_pfds;
  if (count > kStackWaitFds) {
    if (heap_pfds.size() < count) heap_pfds.resize(count);
    pfds = heap_pfds.data();
  }
  const int32_t* src = static_cast<const int32_t*>(data);
  for (uint64_t i = 0; i < count; i++) {
    // poll(2) ignores negative fds, which is exactly the "slot unused" convention.
    pfds[i].fd = src[i] < 0 ? -1 : src[i];
    pfds[i].events = POLLIN;
    pfds[i].revents = 0;
  }
  int r = ::poll(pfds, static_cast<nfds_t>(count), timeout);
  if (r < 0) {
    if (errno == EINTR) return Napi::Number::New(env, -1);
    ThrowErrno(env, "poll", errno);
  }
  for (uint64_t i = 0; i < count; i++) {
    if (pfds[i].revents & POLLNVAL) ThrowErrno(env, "poll", EBADF, "fd " + std::to_string(pfds[i].fd));
    if (pfds[i].revents != 0) return Napi::Number::New(env, static_cast<double>(i));
  }
  return Napi::Number::New(env, -1);
}

}  // namespace vhostfwd
