// Unix sockets and fd passing: listen, accept, connect, close, sendmsg / recvmsg with
// SCM_RIGHTS, and a plain read. N-API only.

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <string>

#include "args.h"
#include "functions.h"

namespace vhostfwd {

namespace {

// vhost-user carries at most 8 fds per message (VHOST_MEMORY_BASELINE_NREGIONS).
constexpr size_t kMaxFds = 8;
// SCM_MAX_FD in the kernel: sendmsgUnchecked may go up to this to play a bad peer in tests.
constexpr size_t kMaxUncheckedFds = 253;

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


}  // namespace

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

// SO_PEERCRED of a connected unix socket: who is at the other end (a takeover kills a
// failed successor by this pid, never by one the peer claims).
Napi::Value PeerCred(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) ThrowErrno(env, "getsockopt", errno);
  Napi::Object o = Napi::Object::New(env);
  o.Set("pid", Napi::Number::New(env, cred.pid));
  o.Set("uid", Napi::Number::New(env, cred.uid));
  o.Set("gid", Napi::Number::New(env, cred.gid));
  return o;
}

// sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET (a path, or "@name" in
// the abstract namespace). A takeover's successor tells systemd it is the main process now.
Napi::Value SdNotify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0, "path must be a string");
  std::string msg = ArgString(info, 1, "message must be a string");
  sockaddr_un addr;
  std::memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  if (path.size() < 2 || path.size() >= sizeof addr.sun_path || (path[0] != '/' && path[0] != '@')) ThrowErrno(env, "sendto", EINVAL, path);
  std::memcpy(addr.sun_path, path.data(), path.size());
  if (path[0] == '@') addr.sun_path[0] = '\0';
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + (path[0] == '@' ? 0 : 1));
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(env, "socket", errno);
  ssize_t n = ::sendto(fd, msg.data(), msg.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr), len);
  int e = errno;
  ::close(fd);
  if (n < 0) ThrowErrno(env, "sendto", e, path);
  return env.Undefined();
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  // On Linux the fd is released even when close reports EINTR; retrying could close
  // an fd another thread just got, so EINTR counts as success.
  if (::close(fd) < 0 && errno != EINTR) ThrowErrno(env, "close", errno);
  return env.Undefined();
}

namespace {

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


}  // namespace

Napi::Value Sendmsg(const Napi::CallbackInfo& info) { return SendImpl(info, kMaxFds); }
Napi::Value SendmsgUnchecked(const Napi::CallbackInfo& info) { return SendImpl(info, kMaxUncheckedFds); }

namespace {

Napi::Object RecvResult(Napi::Env env, double bytes, const int* fds, size_t nfds) {
  Napi::Object r = Napi::Object::New(env);
  Napi::Array a = Napi::Array::New(env, nfds);
  for (size_t i = 0; i < nfds; i++) a.Set(static_cast<uint32_t>(i), Napi::Number::New(env, fds[i]));
  r.Set("bytes", Napi::Number::New(env, bytes));
  r.Set("fds", a);
  return r;
}

}  // namespace

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

}  // namespace vhostfwd
