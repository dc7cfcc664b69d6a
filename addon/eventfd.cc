// eventfd: create, and read / write that never block (RWF_NOWAIT), whatever the fd's
// flags; isEventfd. N-API only.

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>

#include "args.h"
#include "functions.h"

namespace vhostfwd {

Napi::Value EventfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t init = ArgU64(info, 0, "initval", "eventfd");
  if (init > UINT32_MAX) ThrowErrno(env, "eventfd", EINVAL, "initval out of range");
  int fd = ::eventfd(static_cast<unsigned int>(init), EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) ThrowErrno(env, "eventfd", errno);
  return Napi::Number::New(env, fd);
}
namespace {


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

}  // namespace

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

}  // namespace vhostfwd
