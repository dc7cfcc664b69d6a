// vhostfwd native addon: only the syscalls Node cannot make itself. The JS-facing
// contract (argument types, return conventions, errors) is documented in src/native.ts.
//
// Design rules:
//  - Every failure throws an Error with .code = errno name, .errno = -errno and
//    .syscall, so TypeScript can branch on codes exactly as it does for Node's own errors.
//  - "Nothing available" is a return value, never an exception (EAGAIN -> -1 / 0 / false):
//    the dataplane polls in hot loops and exceptions are expensive there.
//  - The module is loaded once per isolate (main thread and every worker), and each load
//    is independent (context-aware addon). Shared state is explicit and small: the live
//    mappings (g_maps, under a mutex: any thread may unmap), whether RWF_NOWAIT works
//    (an atomic), and each thread's hot-path tables (HOT_TLS pointers).

#include <napi.h>
#include <uv.h>
#include <v8.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <poll.h>
#include <sched.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <string>
#include <utility>
#include <vector>

namespace {

// vhost-user carries at most 8 fds per message (VHOST_MEMORY_BASELINE_NREGIONS).
constexpr size_t kMaxFds = 8;
// SCM_MAX_FD in the kernel: sendmsgUnchecked may go up to this to play a bad peer in tests.
constexpr size_t kMaxUncheckedFds = 253;
// waitAny keeps its pollfd array on the stack; a worker never watches more than this.
constexpr uint32_t kMaxWaitFds = 64;

// POLL_* bits of src/native.ts.
constexpr int kPollReadable = 1;
constexpr int kPollWritable = 2;
constexpr int kPollError = 4;

// ---------------------------------------------------------------------------
// Errors

const char* ErrnoName(int err) {
  // glibc >= 2.32; returns null for numbers it does not know.
  const char* name = strerrorname_np(err);
  return name != nullptr ? name : "EUNKNOWN";
}

[[noreturn]] void ThrowErrno(Napi::Env env, const char* syscall, int err,
                             const std::string& detail = std::string()) {
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

struct Bytes {
  uint8_t* data;
  size_t len;
};

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

// ---------------------------------------------------------------------------
// Small syscall helpers

// Blocks until fd is ready for `events`; used only where the contract says "blocking".
void WaitFor(Napi::Env env, int fd, short events, const char* syscall) {
  pollfd p{fd, events, 0};
  for (;;) {
    int r = ::poll(&p, 1, -1);
    if (r >= 0) break;
    if (errno != EINTR) ThrowErrno(env, syscall, errno);
  }
  if (p.revents & POLLNVAL) ThrowErrno(env, syscall, EBADF);
  // POLLERR / POLLHUP: the next send/write reports the real error.
}

socklen_t MakeUnixAddr(Napi::Env env, const char* syscall, const std::string& path, sockaddr_un* addr) {
  std::memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  if (path.empty() || path.find('\0') != std::string::npos) ThrowErrno(env, syscall, EINVAL, path);
  if (path.size() >= sizeof addr->sun_path) ThrowErrno(env, syscall, ENAMETOOLONG, path);
  std::memcpy(addr->sun_path, path.data(), path.size());
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
}

// ---------------------------------------------------------------------------
// Unix sockets

Napi::Value Listen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0, "path must be a string");
  int backlog = ArgInt(info, 1, "backlog must be a number");
  sockaddr_un addr;
  socklen_t len = MakeUnixAddr(env, "bind", path, &addr);

  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(env, "socket", errno);
  // A socket file left by a previous run makes bind fail with EADDRINUSE. Only sockets
  // are removed, so a typo can never delete a regular file.
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(path.c_str());
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), len) < 0) {
    int e = errno;
    ::close(fd);
    ThrowErrno(env, "bind", e, path);
  }
  if (::listen(fd, backlog) < 0) {
    int e = errno;
    ::close(fd);
    ThrowErrno(env, "listen", e, path);
  }
  return Napi::Number::New(env, fd);
}

Napi::Value Accept(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  for (;;) {
    int c = ::accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c >= 0) return Napi::Number::New(env, c);
    // ECONNABORTED: that client already left; look at the next one.
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, -1);
    ThrowErrno(env, "accept4", errno);
  }
}

Napi::Value Connect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0, "path must be a string");
  sockaddr_un addr;
  socklen_t len = MakeUnixAddr(env, "connect", path, &addr);

  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(env, "socket", errno);
  // A unix-socket connect interrupted while waiting for backlog room has committed
  // nothing, so retrying is correct (unlike TCP).
  int r;
  do {
    r = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), len);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    int e = errno;
    ::close(fd);
    ThrowErrno(env, "connect", e, path);
  }
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    int e = errno;
    ::close(fd);
    ThrowErrno(env, "fcntl", e);
  }
  return Napi::Number::New(env, fd);
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  // On Linux the fd is released even when close reports EINTR; retrying could close
  // an fd another thread just got, so EINTR counts as success.
  if (::close(fd) < 0 && errno != EINTR) ThrowErrno(env, "close", errno);
  return env.Undefined();
}

Napi::Value SendImpl(const Napi::CallbackInfo& info, size_t max_fds) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  Bytes data = ArgBytes(info, 1);
  if (!info[2].IsArray()) ThrowType(env, "fds must be an array of numbers");
  Napi::Array arr = info[2].As<Napi::Array>();
  size_t nfds = arr.Length();
  if (nfds > max_fds) ThrowErrno(env, "sendmsg", EINVAL, "too many fds: " + std::to_string(nfds));
  int fds[kMaxUncheckedFds];
  for (size_t i = 0; i < nfds; i++) {
    fds[i] = ToInt32Exact(env, arr.Get(static_cast<uint32_t>(i)), "fds must be integers");
  }
  // On a stream socket the kernel attaches ancillary data to a data byte; with no bytes
  // the fds would be silently dropped.
  if (nfds > 0 && data.len == 0) ThrowErrno(env, "sendmsg", EINVAL, "fds need at least one data byte");
  int timeout_ms = info.Length() > 3 && !info[3].IsUndefined() ? ArgInt(info, 3, "timeoutMs must be an integer") : -1;

  alignas(cmsghdr) unsigned char control[CMSG_SPACE(kMaxUncheckedFds * sizeof(int))];
  size_t sent = 0;
  bool fds_pending = nfds > 0;
  while (sent < data.len) {
    iovec iov{data.data + sent, data.len - sent};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (fds_pending) {
      std::memset(control, 0, sizeof control);
      msg.msg_control = control;
      msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
      std::memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    }
    // MSG_NOSIGNAL: a vanished peer must be an EPIPE exception, not a process-killing SIGPIPE.
    ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (timeout_ms < 0) {
          WaitFor(env, fd, POLLOUT, "sendmsg");
          continue;
        }
        // A peer that stops reading must not freeze the caller (the main thread serves
        // every interface): give up after timeout_ms with ETIMEDOUT.
        pollfd p{fd, POLLOUT, 0};
        int r;
        do r = ::poll(&p, 1, timeout_ms); while (r < 0 && errno == EINTR);
        if (r == 0) ThrowErrno(env, "sendmsg", ETIMEDOUT, "peer is not reading");
        if (r < 0) ThrowErrno(env, "sendmsg", errno);
        continue;
      }
      ThrowErrno(env, "sendmsg", errno);
    }
    // Any accepted byte carried the fds; the rest of the message goes without them.
    fds_pending = false;
    sent += static_cast<size_t>(n);
  }
  return Napi::Number::New(env, static_cast<double>(sent));
}

Napi::Value Sendmsg(const Napi::CallbackInfo& info) { return SendImpl(info, kMaxFds); }
Napi::Value SendmsgUnchecked(const Napi::CallbackInfo& info) { return SendImpl(info, kMaxUncheckedFds); }

Napi::Object RecvResult(Napi::Env env, double bytes, const int* fds, size_t nfds) {
  Napi::Object r = Napi::Object::New(env);
  Napi::Array a = Napi::Array::New(env, nfds);
  for (size_t i = 0; i < nfds; i++) a.Set(static_cast<uint32_t>(i), Napi::Number::New(env, fds[i]));
  r.Set("bytes", Napi::Number::New(env, bytes));
  r.Set("fds", a);
  return r;
}

Napi::Value Recvmsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  Bytes data = ArgBytes(info, 1);
  // A zero-length read returns 0, which the caller would take for EOF.
  if (data.len == 0) ThrowErrno(env, "recvmsg", EINVAL, "empty buffer");

  // Room for exactly kMaxFds: a peer sending more makes the kernel set MSG_CTRUNC (it
  // installs what fits and drops the rest itself), which becomes EPROTO below.
  alignas(cmsghdr) unsigned char control[CMSG_SPACE(kMaxFds * sizeof(int))];
  iovec iov{data.data, data.len};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do {
    n = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return RecvResult(env, -1, nullptr, 0);
    ThrowErrno(env, "recvmsg", errno);
  }

  int fds[kMaxFds];
  size_t nfds = 0;
  bool overflow = false;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char* p = CMSG_DATA(c);
    for (size_t i = 0; i < count; i++) {
      int f;
      std::memcpy(&f, p + i * sizeof(int), sizeof f);  // CMSG_DATA need not be int-aligned
      if (nfds < kMaxFds) {
        fds[nfds++] = f;
      } else {
        ::close(f);
        overflow = true;
      }
    }
  }
  if ((msg.msg_flags & MSG_CTRUNC) || overflow) {
    // The fds are ours now; nobody else will ever see their numbers, so close them
    // before reporting, or they leak for the life of the process.
    for (size_t i = 0; i < nfds; i++) ::close(fds[i]);
    ThrowErrno(env, "recvmsg", EPROTO,
               overflow ? "more than 8 fds in one message" : "control data truncated (MSG_CTRUNC)");
  }
  return RecvResult(env, static_cast<double>(n), fds, nfds);
}

Napi::Value Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  Bytes data = ArgBytes(info, 1);
  if (data.len == 0) ThrowErrno(env, "read", EINVAL, "empty buffer");
  ssize_t n;
  do {
    n = ::read(fd, data.data, data.len);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, -1);
    ThrowErrno(env, "read", errno);
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

// ---------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------
// Memory

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
  v8::Local<v8::Value> value = sab;
  napi_value result;
  static_assert(sizeof result == sizeof value, "napi_value and v8::Local must have the same size");
  std::memcpy(&result, &value, sizeof result);
  return Napi::Value(env, result);
}

// The first argument as a v8::SharedArrayBuffer, or a TypeError naming `what`. The reverse
// of Mmap's conversion: a napi_value is the Local's slot pointer.
v8::Local<v8::SharedArrayBuffer> SharedArrayBufferArg(const Napi::CallbackInfo& info, const char* what) {
  napi_value raw = info[0];
  v8::Local<v8::Value> value;
  static_assert(sizeof raw == sizeof value, "napi_value and v8::Local must have the same size");
  std::memcpy(static_cast<void*>(&value), &raw, sizeof value);
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

Napi::Value FdStat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  struct stat st;
  if (::fstat(fd, &st) < 0) ThrowErrno(env, "fstat", errno);
  Napi::Object r = Napi::Object::New(env);
  r.Set("size", Napi::Number::New(env, static_cast<double>(st.st_size)));
  r.Set("blksize", Napi::Number::New(env, static_cast<double>(st.st_blksize)));
  // The file's identity: QEMU sends one ADD_MEM_REG per queue pair, the repeats are
  // recognised by the same backing file (device and inode), not by the fd number.
  r.Set("dev", Napi::Number::New(env, static_cast<double>(st.st_dev)));
  r.Set("ino", Napi::Number::New(env, static_cast<double>(st.st_ino)));
  return r;
}

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = ArgString(info, 0, "name must be a string");
  uint64_t size = ArgU64(info, 1, "size", "ftruncate");
  int fd = ::memfd_create(name.c_str(), MFD_CLOEXEC);
  if (fd < 0) ThrowErrno(env, "memfd_create", errno, name);
  if (::ftruncate(fd, static_cast<off_t>(size)) < 0) {
    int e = errno;
    ::close(fd);
    ThrowErrno(env, "ftruncate", e);
  }
  return Napi::Number::New(env, fd);
}

// ---------------------------------------------------------------------------
// eventfd and blocking waits (worker threads sleep here instead of spinning)

Napi::Value EventfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t init = ArgU64(info, 0, "initval", "eventfd");
  if (init > UINT32_MAX) ThrowErrno(env, "eventfd", EINVAL, "initval out of range");
  int fd = ::eventfd(static_cast<unsigned int>(init), EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) ThrowErrno(env, "eventfd", errno);
  return Napi::Number::New(env, fd);
}

// The eventfds a worker reads and writes are the frontend's (kick and call fds arrive over
// SCM_RIGHTS), and O_NONBLOCK belongs to the open file description, which the frontend
// created: QEMU and DPDK make theirs non-blocking, a frontend written from the spec need
// not (Python's os.eventfd is blocking by default). A plain read(2) of such a kick fd with
// a zero counter blocked the worker thread for good, every later control request waited
// on that worker forever, and the switch went dead (issue 17). So every read and write
// here is non-blocking per call, whatever the file's flags: preadv2/pwritev2 with
// RWF_NOWAIT (eventfds honour it since Linux 5.12), else a zero-timeout poll(2) first.
// A process-wide fact about the kernel, set once by whichever thread finds out.
std::atomic<bool> g_nowait_unsupported{false};

ssize_t EventfdIo(int fd, uint64_t* v, bool write) {
  iovec iov{v, sizeof *v};
  ssize_t n;
  if (!g_nowait_unsupported.load(std::memory_order_relaxed)) {
    do n = write ? ::pwritev2(fd, &iov, 1, -1, RWF_NOWAIT) : ::preadv2(fd, &iov, 1, -1, RWF_NOWAIT);
    while (n < 0 && errno == EINTR);
    if (n >= 0 || (errno != EOPNOTSUPP && errno != EINVAL && errno != ENOSYS)) return n;
    g_nowait_unsupported.store(true, std::memory_order_relaxed);
  }
  pollfd p{fd, static_cast<short>(write ? POLLOUT : POLLIN), 0};
  int r;
  do r = ::poll(&p, 1, 0);
  while (r < 0 && errno == EINTR);
  if (r < 0) return -1;
  if (r == 0 || !(p.revents & (write ? POLLOUT : POLLIN))) {
    errno = EAGAIN;
    return -1;
  }
  do n = write ? ::write(fd, v, sizeof *v) : ::read(fd, v, sizeof *v);
  while (n < 0 && errno == EINTR);
  return n;
}

Napi::Value EventfdRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  uint64_t v = 0;
  ssize_t n = EventfdIo(fd, &v, false);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, 0);
    ThrowErrno(env, "read", errno);
  }
  if (n != sizeof v) ThrowErrno(env, "read", EPROTO, "short eventfd read");
  return Napi::Number::New(env, static_cast<double>(v));
}

Napi::Value EventfdWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  uint64_t v = ArgU64(info, 1, "value", "write");
  ssize_t n = EventfdIo(fd, &v, true);
  // EAGAIN: the counter is saturated (only a frontend that wrote ~2^64 into its own call
  // fd gets there): the fd is readable, a notification is pending already, nothing is lost.
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Napi::Boolean::New(env, false);
  if (n < 0) ThrowErrno(env, "write", errno);
  if (n != sizeof v) ThrowErrno(env, "write", EPROTO, "short eventfd write");
  return Napi::Boolean::New(env, true);
}

// Is fd an eventfd? Kick, call and error fds must be (a pipe, socket or file in their place
// would make the worker's 8-byte reads and writes fail or misbehave): the device refuses others.
Napi::Value IsEventfd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  if (::fcntl(fd, F_GETFD) < 0) ThrowErrno(env, "fcntl", errno);  // EBADF, not readlink's ENOENT
  char link[64];
  std::string path = "/proc/self/fd/" + std::to_string(fd);
  ssize_t n = ::readlink(path.c_str(), link, sizeof link - 1);
  if (n < 0) ThrowErrno(env, "readlink", errno, path);
  link[n] = 0;
  return Napi::Boolean::New(env, std::strcmp(link, "anon_inode:[eventfd]") == 0);
}

// poll(2) timeout: negative means forever; clamp huge values instead of wrapping.
int ArgTimeout(const Napi::CallbackInfo& info, size_t i) {
  if (!info[i].IsNumber()) ThrowType(info.Env(), "timeoutMs must be a number");
  double t = info[i].As<Napi::Number>().DoubleValue();
  if (std::isnan(t) || t < 0) return -1;
  if (t > INT32_MAX) return INT32_MAX;
  return static_cast<int>(std::ceil(t));
}

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
    ThrowErrno(env, "poll", EINVAL, "count " + std::to_string(count) + " exceeds the array or 64");
  }
  int timeout = ArgTimeout(info, 2);

  pollfd pfds[kMaxWaitFds];
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

// ---------------------------------------------------------------------------
// Threads

pid_t Tid() { return static_cast<pid_t>(::syscall(SYS_gettid)); }

Napi::Value SetAffinity(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) ThrowType(env, "cpus must be an array of numbers");
  Napi::Array arr = info[0].As<Napi::Array>();
  uint32_t n = arr.Length();
  long max_cpu = -1;
  for (uint32_t i = 0; i < n; i++) {
    int32_t c = ToInt32Exact(env, arr.Get(i), "cpus must be integers");
    if (c < 0 || c >= 65536) ThrowErrno(env, "sched_setaffinity", EINVAL, "cpu " + std::to_string(c));
    if (c > max_cpu) max_cpu = c;
  }
  // Dynamically sized so machines with more than CPU_SETSIZE (1024) cpus work too.
  int ncpu = static_cast<int>(max_cpu + 1 > 0 ? max_cpu + 1 : 1);
  cpu_set_t* set = CPU_ALLOC(ncpu);
  if (set == nullptr) ThrowErrno(env, "sched_setaffinity", ENOMEM);
  size_t setsize = CPU_ALLOC_SIZE(ncpu);
  CPU_ZERO_S(setsize, set);
  for (uint32_t i = 0; i < n; i++) {
    CPU_SET_S(static_cast<size_t>(arr.Get(i).As<Napi::Number>().Int32Value()), setsize, set);
  }
  // The tid, not 0: 0 also means "calling thread", but the tid makes explicit that
  // this pins only this worker, never the whole process.
  int r = ::sched_setaffinity(Tid(), setsize, set);
  int e = errno;
  CPU_FREE(set);
  if (r < 0) ThrowErrno(env, "sched_setaffinity", e);
  return env.Undefined();
}

Napi::Value GetAffinity(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t tid = Tid();
  // The kernel rejects (EINVAL) a mask smaller than its nr_cpu_ids: grow until it fits.
  for (int ncpu = 1024; ncpu <= (1 << 20); ncpu *= 2) {
    cpu_set_t* set = CPU_ALLOC(ncpu);
    if (set == nullptr) ThrowErrno(env, "sched_getaffinity", ENOMEM);
    size_t setsize = CPU_ALLOC_SIZE(ncpu);
    CPU_ZERO_S(setsize, set);
    if (::sched_getaffinity(tid, setsize, set) < 0) {
      int e = errno;
      CPU_FREE(set);
      if (e == EINVAL) continue;
      ThrowErrno(env, "sched_getaffinity", e);
    }
    Napi::Array out = Napi::Array::New(env);
    uint32_t k = 0;
    for (int c = 0; c < ncpu; c++) {
      if (CPU_ISSET_S(static_cast<size_t>(c), setsize, set)) out.Set(k++, Napi::Number::New(env, c));
    }
    CPU_FREE(set);
    return out;
  }
  ThrowErrno(env, "sched_getaffinity", EINVAL);
}

Napi::Value Gettid(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), Tid()); }

// ---------------------------------------------------------------------------
// Bulk copy between guest memories (a measured hot-path helper, bench/NOTES.md)
//
// A worker registers the SharedArrayBuffers it copies between and then hands over a
// whole burst of copies in one call: one N-API crossing per burst instead of a
// Buffer.copy per packet. The table holds a reference on each backing store, so a
// registered mapping cannot be unmapped under a pending copy; it is per thread because
// every worker is its own isolate.

// The per-burst helpers' tables are per thread (one isolate per worker thread). In a
// dlopen'ed object a thread_local vector costs a __tls_get_addr call and an init-guard check
// on every access (0.3-0.5 % of the worker's samples: a few per burst, bench/NOTES.md #31). So each table is a
// plain pointer with the initial-exec model, one %fs-relative load, allocated by Init and
// freed by its cleanup hook. That takes 40 bytes of the static TLS surplus glibc keeps for
// modules loaded later (a shortage would fail the addon's load with a named error).
#define HOT_TLS thread_local __attribute__((tls_model("initial-exec")))

struct CopyRegion {
  std::shared_ptr<v8::BackingStore> store;  // keeps the mapping alive while registered
  // Data() and ByteLength() cached at registration: a SharedArrayBuffer's memory never moves,
  // and calling through the PLT twice per job cost 7% of a 1518-byte loop (bench/NOTES.md #10).
  uint8_t* data = nullptr;
  uint64_t size = 0;
};
HOT_TLS int t_envs = 0;  // Node environments on this thread that loaded the addon
HOT_TLS std::vector<CopyRegion>* t_copy_regions = nullptr;
inline std::vector<CopyRegion>& CopyRegions() { return *t_copy_regions; }

Napi::Value CopyRegister(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CopyRegion region;
  region.store = SharedArrayBufferArg(info, "copyRegister")->GetBackingStore();
  region.data = static_cast<uint8_t*>(region.store->Data());
  region.size = static_cast<uint64_t>(region.store->ByteLength());
  for (size_t i = 0; i < CopyRegions().size(); i++) {
    if (!CopyRegions()[i].store) {
      CopyRegions()[i] = std::move(region);
      return Napi::Number::New(env, static_cast<double>(i));
    }
  }
  CopyRegions().push_back(std::move(region));
  return Napi::Number::New(env, static_cast<double>(CopyRegions().size() - 1));
}

Napi::Value CopyUnregister(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int id = ArgInt(info, 0, "id must be an integer");
  if (id >= 0 && static_cast<size_t>(id) < CopyRegions().size()) CopyRegions()[static_cast<size_t>(id)] = CopyRegion();
  return env.Undefined();
}

// A checked job, ready to run (RunCopyJobs checks a whole batch before it copies).
struct CopyJob {
  const uint8_t* src;
  uint8_t* dst;
  size_t len;
};
HOT_TLS std::vector<CopyJob>* t_copy_jobs = nullptr;

// jobs: n x [srcId, srcOff, dstId, dstOff, len]. Every job is checked against its stores'
// lengths before any byte moves: a bad job refuses the whole batch, nothing copied.
// Returns 0, or ERANGE.
int RunCopyJobs(const double* j, size_t n) {
  std::vector<CopyRegion>& table = CopyRegions();
  const size_t regions = table.size();
  const CopyRegion* r = table.data();
  // The checks convert with one truncating instruction and compare back (no std::floor:
  // without SSE4.1 that is a libm call per field, 6% of a 256 B loop, bench/NOTES.md #15).
  auto index = [](double v, uint64_t& out) {
    if (!(v >= 0 && v <= 9007199254740992.0)) return false;  // also rejects NaN
    const uint64_t u = static_cast<uint64_t>(v);
    if (static_cast<double>(u) != v) return false;
    out = u;
    return true;
  };
  std::vector<CopyJob>& jobs = *t_copy_jobs;
  if (jobs.size() < n) jobs.resize(n);
  CopyJob* out = jobs.data();
  for (size_t k = 0; k < n; k++) {
    const double* q = j + 5 * k;
    uint64_t sid, soff, did, doff, len;
    if (!index(q[0], sid) || !index(q[1], soff) || !index(q[2], did) || !index(q[3], doff) || !index(q[4], len) ||
        sid >= regions || did >= regions) {
      return ERANGE;
    }
    const CopyRegion& s = r[sid];
    const CopyRegion& d = r[did];
    if (s.data == nullptr || d.data == nullptr || len > s.size || soff > s.size - len || len > d.size || doff > d.size - len) {
      return ERANGE;
    }
    out[k] = CopyJob{s.data + soff, d.data + doff, static_cast<size_t>(len)};
  }
  for (size_t k = 0; k < n; k++) std::memmove(out[k].dst, out[k].src, out[k].len);
  return 0;
}

Napi::Value CopyBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
    Napi::TypeError e = Napi::TypeError::New(env, "copyBatch: expected (Float64Array, count)");
    e.Set("code", Napi::String::New(env, "ERR_INVALID_ARG_TYPE"));
    throw e;
  }
  Napi::Float64Array jobs = info[0].As<Napi::Float64Array>();
  int n = ArgInt(info, 1, "count must be an integer");
  if (n < 0 || static_cast<size_t>(n) * 5 > jobs.ElementLength()) ThrowErrno(env, "copyBatch", EINVAL);
  const int err = RunCopyJobs(jobs.Data(), static_cast<size_t>(n));
  if (err != 0) ThrowErrno(env, "copyBatch", err);
  return env.Undefined();
}

// The per-burst form, without N-API: a V8 function callback. N-API's argument and scope
// handling cost ~110 ns a call here (a call per burst, bench/NOTES.md #20); a V8 callback
// with an integer argument costs ~13 ns. The job array is bound once (copyBind), so a call
// carries two small integers, and it reports a refused batch by its return value (copyBatch
// on the same jobs then throws the named error: nothing was copied either way).

// A bound Float64Array: its backing store is held (the memory stays where it is), the array
// itself only weakly, so a job array that is collected frees its slot.
struct BoundJobs {
  v8::Global<v8::Float64Array> array;
  std::shared_ptr<v8::BackingStore> store;
  const double* data = nullptr;
  size_t length = 0;
};
HOT_TLS std::vector<std::unique_ptr<BoundJobs>>* t_bound_jobs = nullptr;
inline std::vector<std::unique_ptr<BoundJobs>>& BoundJobTable() { return *t_bound_jobs; }

void ThrowV8Type(v8::Isolate* isolate, const char* what) {
  v8::Local<v8::Value> e = v8::Exception::TypeError(v8::String::NewFromUtf8(isolate, what).ToLocalChecked());
  v8::Local<v8::Context> context = isolate->GetCurrentContext();
  e.As<v8::Object>()->Set(context, v8::String::NewFromUtf8Literal(isolate, "code"), v8::String::NewFromUtf8Literal(isolate, "ERR_INVALID_ARG_TYPE")).Check();
  isolate->ThrowException(e);
}

// copyBind(jobs: Float64Array) -> binding id
void CopyBind(const v8::FunctionCallbackInfo<v8::Value>& info) {
  v8::Isolate* isolate = info.GetIsolate();
  if (info.Length() < 1 || !info[0]->IsFloat64Array()) {
    ThrowV8Type(isolate, "copyBind: expected a Float64Array");
    return;
  }
  v8::Local<v8::Float64Array> a = info[0].As<v8::Float64Array>();
  size_t id = 0;
  while (id < BoundJobTable().size() && BoundJobTable()[id]->data != nullptr) id++;
  if (id == BoundJobTable().size()) BoundJobTable().push_back(std::make_unique<BoundJobs>());
  BoundJobs* b = BoundJobTable()[id].get();
  b->store = a->Buffer()->GetBackingStore();  // externalises an on-heap array: the data no longer moves
  b->data = reinterpret_cast<const double*>(static_cast<const uint8_t*>(b->store->Data()) + a->ByteOffset());
  b->length = a->Length();
  b->array.Reset(isolate, a);
  b->array.SetWeak(
      b,
      [](const v8::WeakCallbackInfo<BoundJobs>& w) {
        BoundJobs* gone = w.GetParameter();
        gone->array.Reset();
        gone->store.reset();
        gone->data = nullptr;
        gone->length = 0;
      },
      v8::WeakCallbackType::kParameter);
  info.GetReturnValue().Set(static_cast<uint32_t>(id));
}

// copyRun(id, n) -> 0 when the first n jobs of binding `id` ran, else an errno (EINVAL: bad
// id or count; ERANGE: a job out of its stores), nothing copied.
void CopyRun(const v8::FunctionCallbackInfo<v8::Value>& info) {
  if (info.Length() < 2 || !info[0]->IsUint32() || !info[1]->IsUint32()) {
    info.GetReturnValue().Set(EINVAL);
    return;
  }
  const uint32_t id = info[0].As<v8::Uint32>()->Value();
  const uint32_t n = info[1].As<v8::Uint32>()->Value();
  if (id >= BoundJobTable().size() || BoundJobTable()[id]->data == nullptr || static_cast<size_t>(n) * 5 > BoundJobTable()[id]->length) {
    info.GetReturnValue().Set(EINVAL);
    return;
  }
  info.GetReturnValue().Set(RunCopyJobs(BoundJobTable()[id]->data, n));
}

// ---------------------------------------------------------------------------
// Dirty-log page marking (a measured hot-path helper, bench/NOTES.md #21)
//
// A ring's burst leaves page runs [first, last] (guest page numbers, gpa >> 12) in a
// Float64Array; logRun sets their bits in the log in one call per burst. In JavaScript the
// same work (a word cache, then a load and maybe an Atomics.or per word) cost 375 ns for a
// burst of 34 runs on scattered pages, as a frontend's mbuf pool scatters them; here 128 ns,
// the call included (/tmp/lr2.js in bench/NOTES.md #21). As DPDK's vhost does, bits are set
// with an atomic OR on the byte; as in DirtyLog.flush, a byte that already holds its bits is
// only loaded (the frontend clears a word with an atomic exchange before it reads the pages,
// so a bit seen set after the barrier below will be seen by a later sync with our bytes).

struct BoundLog {
  v8::Global<v8::Float64Array> runs;        // weak: a collected run array frees the slot
  std::shared_ptr<v8::BackingStore> runStore;
  std::shared_ptr<v8::BackingStore> logStore;  // keeps the log mapping alive while bound
  const double* runData = nullptr;
  size_t runLength = 0;
  uint8_t* log = nullptr;
  uint64_t logBytes = 0;
};
HOT_TLS std::vector<std::unique_ptr<BoundLog>>* t_bound_logs = nullptr;
inline std::vector<std::unique_ptr<BoundLog>>& BoundLogTable() { return *t_bound_logs; }

void ReleaseBoundLog(BoundLog* b) {
  b->runs.Reset();
  b->runStore.reset();
  b->logStore.reset();
  b->runData = nullptr;
  b->runLength = 0;
  b->log = nullptr;
  b->logBytes = 0;
}

// logBind(log: Uint8Array, runs: Float64Array) -> binding id
void LogBind(const v8::FunctionCallbackInfo<v8::Value>& info) {
  v8::Isolate* isolate = info.GetIsolate();
  if (info.Length() < 2 || !info[0]->IsUint8Array() || !info[1]->IsFloat64Array()) {
    ThrowV8Type(isolate, "logBind: expected (Uint8Array, Float64Array)");
    return;
  }
  v8::Local<v8::Uint8Array> log = info[0].As<v8::Uint8Array>();
  v8::Local<v8::Float64Array> runs = info[1].As<v8::Float64Array>();
  size_t id = 0;
  while (id < BoundLogTable().size() && BoundLogTable()[id]->runData != nullptr) id++;
  if (id == BoundLogTable().size()) BoundLogTable().push_back(std::make_unique<BoundLog>());
  BoundLog* b = BoundLogTable()[id].get();
  b->logStore = log->Buffer()->GetBackingStore();
  b->log = static_cast<uint8_t*>(b->logStore->Data()) + log->ByteOffset();
  b->logBytes = log->ByteLength();
  b->runStore = runs->Buffer()->GetBackingStore();  // externalises an on-heap array: no longer moves
  b->runData = reinterpret_cast<const double*>(static_cast<const uint8_t*>(b->runStore->Data()) + runs->ByteOffset());
  b->runLength = runs->Length();
  b->runs.Reset(isolate, runs);
  b->runs.SetWeak(b, [](const v8::WeakCallbackInfo<BoundLog>& w) { ReleaseBoundLog(w.GetParameter()); }, v8::WeakCallbackType::kParameter);
  info.GetReturnValue().Set(static_cast<uint32_t>(id));
}

// logUnbind(id): the slot is free again, the log no longer held.
void LogUnbind(const v8::FunctionCallbackInfo<v8::Value>& info) {
  if (info.Length() < 1 || !info[0]->IsUint32()) return;
  const uint32_t id = info[0].As<v8::Uint32>()->Value();
  if (id < BoundLogTable().size()) ReleaseBoundLog(BoundLogTable()[id].get());
}

// logRun(id, n, fenced) -> pages marked (>= 0), or a negative errno with no bit written:
// -EINVAL a bad id or count, -ERANGE a run that is not 0 <= first <= last or that reaches
// past the log (DirtyLog's JavaScript path then counts and drops those pages).
// `fenced`: the caller's last act was a seq-cst store (publish() stores used->idx, an xchg
// on x86), which is then the barrier between the burst's bytes and the loads of the log.
void LogRun(const v8::FunctionCallbackInfo<v8::Value>& info) {
  if (info.Length() < 2 || !info[0]->IsUint32() || !info[1]->IsUint32()) {
    info.GetReturnValue().Set(-EINVAL);
    return;
  }
  const uint32_t id = info[0].As<v8::Uint32>()->Value();
  const uint32_t n = info[1].As<v8::Uint32>()->Value();
  if (id >= BoundLogTable().size() || BoundLogTable()[id]->runData == nullptr || static_cast<size_t>(n) * 2 > BoundLogTable()[id]->runLength) {
    info.GetReturnValue().Set(-EINVAL);
    return;
  }
  const BoundLog& b = *BoundLogTable()[id];
  const double* r = b.runData;
  const double pages = static_cast<double>(b.logBytes) * 8;
  // Checked whole before any bit moves: 0 <= first <= last < pages (NaN fails). That is all
  // safety needs: truncating a double in [0, pages) gives a byte inside the log; a fraction,
  // which the callers never make, would only mark the page it lies in.
  for (uint32_t k = 0; k < n; k++) {
    const double first = r[2 * k];
    const double last = r[2 * k + 1];
    if (!(first >= 0 && first <= last && last < pages)) {
      info.GetReturnValue().Set(-ERANGE);
      return;
    }
  }
#if defined(__x86_64__) || defined(__i386__)
  const bool fenced = info.Length() > 2 && info[2]->IsTrue();
#else
  const bool fenced = false;  // the caller's store orders nothing for our loads on weaker CPUs
#endif
  if (!fenced) __atomic_thread_fence(__ATOMIC_SEQ_CST);
  uint8_t* log = b.log;
  // OR `mask` into byte i unless it holds those bits already
  auto mark = [log](uint64_t i, uint8_t mask) {
    if ((__atomic_load_n(log + i, __ATOMIC_RELAXED) & mask) != mask) __atomic_fetch_or(log + i, mask, __ATOMIC_SEQ_CST);
  };
  uint64_t marked = 0;  // an integer sum: a double one was a 4-cycle dependency per run
  for (uint32_t k = 0; k < n; k++) {
    const uint64_t first = static_cast<uint64_t>(static_cast<int64_t>(r[2 * k]));
    const uint64_t last = static_cast<uint64_t>(static_cast<int64_t>(r[2 * k + 1]));
    marked += last - first + 1;
    const uint64_t firstByte = first >> 3;
    const uint64_t lastByte = last >> 3;
    if (firstByte == lastByte) {  // most runs: a buffer within one page, or a few in one byte
      mark(firstByte, static_cast<uint8_t>((0xffu >> (7 - (last & 7))) & (0xffu << (first & 7))));
      continue;
    }
    for (uint64_t i = firstByte; i <= lastByte; i++) {
      const unsigned lo = i == firstByte ? static_cast<unsigned>(first & 7) : 0;
      const unsigned hi = i == lastByte ? static_cast<unsigned>(last & 7) : 7;
      mark(i, static_cast<uint8_t>((0xffu >> (7 - hi)) & (0xffu << lo)));
    }
  }
  // a Smi when it fits (a double return allocates a HeapNumber: v8::Number::New in the profile)
  if (marked <= 0x7fffffff) info.GetReturnValue().Set(static_cast<int32_t>(marked));
  else info.GetReturnValue().Set(static_cast<double>(marked));
}

// Exported like the N-API functions; a napi_value is the Local's slot pointer (see Mmap).
void SetV8Function(Napi::Env env, Napi::Object exports, const char* name, v8::FunctionCallback fn) {
  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  v8::Local<v8::Function> f = v8::Function::New(isolate->GetCurrentContext(), fn).ToLocalChecked();
  f->SetName(v8::String::NewFromUtf8(isolate, name).ToLocalChecked());
  v8::Local<v8::Value> value = f;
  napi_value raw;
  static_assert(sizeof raw == sizeof value, "napi_value and v8::Local must have the same size");
  std::memcpy(static_cast<void*>(&raw), &value, sizeof raw);
  exports.Set(name, Napi::Value(env, raw));
}

// ---------------------------------------------------------------------------

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  struct Entry {
    const char* name;
    Napi::Value (*fn)(const Napi::CallbackInfo&);
  };
  static const Entry kEntries[] = {
      {"listen", Listen},
      {"accept", Accept},
      {"connect", Connect},
      {"close", Close},
      {"sendmsg", Sendmsg},
      {"sendmsgUnchecked", SendmsgUnchecked},
      {"recvmsg", Recvmsg},
      {"read", Read},
      {"poll", Poll},
      {"mmap", Mmap},
      {"fdStat", FdStat},
      {"memfdCreate", MemfdCreate},
      {"eventfdCreate", EventfdCreate},
      {"eventfdRead", EventfdRead},
      {"eventfdWrite", EventfdWrite},
      {"isEventfd", IsEventfd},
      {"retire", Retire},
      {"waitReadable", WaitReadable},
      {"waitAny", WaitAny},
      {"setAffinity", SetAffinity},
      {"getAffinity", GetAffinity},
      {"gettid", Gettid},
      {"copyRegister", CopyRegister},
      {"copyUnregister", CopyUnregister},
      {"copyBatch", CopyBatch},
  };
  for (const Entry& e : kEntries) exports.Set(e.name, Napi::Function::New(env, e.fn, e.name));
  SetV8Function(env, exports, "copyBind", CopyBind);
  SetV8Function(env, exports, "copyRun", CopyRun);
  SetV8Function(env, exports, "logBind", LogBind);
  SetV8Function(env, exports, "logUnbind", LogUnbind);
  SetV8Function(env, exports, "logRun", LogRun);
  // This thread's tables (see HOT_TLS), made by its first environment. They hold V8 backing
  // stores: released while the isolate is still alive, when its last environment goes.
  if (t_envs++ == 0) {
    t_copy_regions = new std::vector<CopyRegion>();
    t_copy_jobs = new std::vector<CopyJob>();
    t_bound_jobs = new std::vector<std::unique_ptr<BoundJobs>>();
    t_bound_logs = new std::vector<std::unique_ptr<BoundLog>>();
  }
  napi_add_env_cleanup_hook(
      env,
      [](void*) {
        if (--t_envs > 0) return;
        delete t_copy_regions;
        delete t_copy_jobs;
        delete t_bound_jobs;
        delete t_bound_logs;
        t_copy_regions = nullptr;
        t_copy_jobs = nullptr;
        t_bound_jobs = nullptr;
        t_bound_logs = nullptr;
      },
      nullptr);
  return exports;
}

}  // namespace

NODE_API_MODULE(vhostfwd, Init)
