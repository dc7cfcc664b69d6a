// Uplink ports (issue 22): a kernel TAP device, and the per-burst helpers that move frames
// between its fd and a worker's SharedArrayBuffer.
//
// tapOpen opens /dev/net/tun as IFF_TAP | IFF_NO_PI | IFF_VNET_HDR with a 12-byte virtio-net
// header (TUNSETVNETHDRSZ, the header of VIRTIO_F_VERSION_1 / MRG_RXBUF: the workers write and
// read that one form everywhere), non-blocking, and sets the offloads the kernel may hand us
// (TUNSETOFFLOAD). tapInfo checks that an fd (from a takeover) is such a device.
//
// tapRead / tapWrite move a burst: frame k lives in slot k of a buffer registered with
// copyRegister (so the buffer is held by this thread's copy table, and the call carries an
// id, not a SharedArrayBuffer), one read(2) / write(2) per frame (a TAP fd has no batch
// syscall), stopping at EAGAIN. Nothing is allocated. Every slot is checked against the
// registered buffer before any syscall. The uses of the copy table (its V8 backing stores)
// make this a _v8 file (v8_bridge.h).

#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "args.h"
#include "functions.h"
#include "hot_tls.h"

namespace vhostfwd {

namespace {

// The virtio-net header the workers use on a TAP (struct virtio_net_hdr_mrg_rxbuf).
constexpr int kVnetHdrLen = 12;

// The slot arguments of tapRead / tapWrite: the registered buffer's bytes for `count` slots
// of `slot` bytes, or nullptr (EINVAL / ERANGE in `err`).
uint8_t* Slots(int id, int32_t slot, int32_t count, int& err) {
  std::vector<CopyRegion>& table = CopyRegions();
  if (id < 0 || static_cast<size_t>(id) >= table.size() || table[static_cast<size_t>(id)].data == nullptr || slot <= kVnetHdrLen || count < 0) {
    err = EINVAL;
    return nullptr;
  }
  const CopyRegion& r = table[static_cast<size_t>(id)];
  if (static_cast<uint64_t>(slot) * static_cast<uint64_t>(count) > r.size) {
    err = ERANGE;
    return nullptr;
  }
  return r.data;
}

Napi::Int32Array LensArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
    ThrowType(info.Env(), what);
  }
  return info[i].As<Napi::Int32Array>();
}

}  // namespace

// tapOpen(name, offloads) -> { fd, name }
Napi::Value TapOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = ArgString(info, 0, "name must be a string");
  const int32_t offloads = ArgInt(info, 1, "offloads must be an integer");
  if (name.empty() || name.size() >= IFNAMSIZ || name.find('/') != std::string::npos) ThrowErrno(env, "TUNSETIFF", EINVAL, "a TAP name is 1..15 bytes");
  int fd = ::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) ThrowErrno(env, "open /dev/net/tun", errno);
  ifreq ifr;
  std::memset(&ifr, 0, sizeof ifr);
  std::memcpy(ifr.ifr_name, name.data(), name.size());
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  const char* failed = nullptr;
  int hdr = kVnetHdrLen;
  if (::ioctl(fd, TUNSETIFF, &ifr) < 0) {
    failed = "TUNSETIFF";
  } else if (::ioctl(fd, TUNSETVNETHDRSZ, &hdr) < 0) {
    failed = "TUNSETVNETHDRSZ";
  } else if (::ioctl(fd, TUNSETOFFLOAD, static_cast<unsigned long>(static_cast<uint32_t>(offloads))) < 0) {
    failed = "TUNSETOFFLOAD";
  }
  if (failed != nullptr) {
    const int err = errno;
    ::close(fd);
    ThrowErrno(env, failed, err);
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("fd", Napi::Number::New(env, fd));
  out.Set("name", Napi::String::New(env, ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ)));
  return out;
}

// tapInfo(fd) -> { name, vnetHdr } of a TAP fd; throws (EBADFD, EINVAL, ENOTTY) otherwise
Napi::Value TapInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = ArgFd(info, 0);
  ifreq ifr;
  std::memset(&ifr, 0, sizeof ifr);
  if (::ioctl(fd, TUNGETIFF, &ifr) < 0) ThrowErrno(env, "TUNGETIFF", errno);
  if ((ifr.ifr_flags & (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)) != (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)) {
    ThrowErrno(env, "TUNGETIFF", EINVAL, "not a TAP with IFF_NO_PI and IFF_VNET_HDR");
  }
  int hdr = 0;
  if (::ioctl(fd, TUNGETVNETHDRSZ, &hdr) < 0) ThrowErrno(env, "TUNGETVNETHDRSZ", errno);
  Napi::Object out = Napi::Object::New(env);
  out.Set("name", Napi::String::New(env, ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ)));
  out.Set("vnetHdr", Napi::Number::New(env, hdr));
  return out;
}

// tapRead(fd, id, slot, max, lens) -> frames read (0: none waiting). Frame k is read into
// slot k of registered buffer `id` and its length (header included) is lens[k]; a length over
// `slot` means the frame was cut to fit (the kernel reports the whole length). Stops at
// EAGAIN or after `max` frames; throws on any other error (the device went away: EBADFD).
Napi::Value TapRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = ArgFd(info, 0);
  const int id = ArgInt(info, 1, "id must be an integer");
  const int32_t slot = ArgInt(info, 2, "slot must be an integer");
  const int32_t max = ArgInt(info, 3, "max must be an integer");
  Napi::Int32Array lens = LensArg(info, 4, "tapRead: lens must be an Int32Array");
  if (max < 0 || static_cast<size_t>(max) > lens.ElementLength()) ThrowErrno(env, "tapRead", EINVAL);
  int err = 0;
  uint8_t* base = Slots(id, slot, max, err);
  if (base == nullptr) ThrowErrno(env, "tapRead", err);
  int32_t* out = lens.Data();
  int32_t n = 0;
  while (n < max) {
    const ssize_t r = ::read(fd, base + static_cast<size_t>(n) * static_cast<size_t>(slot), static_cast<size_t>(slot));
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      if (n > 0) break;  // the frames read are delivered; the error comes back on the next call
      ThrowErrno(env, "read", errno);
    }
    if (r == 0) break;  // end of file: not a TAP (a TAP frame carries at least its header)
    out[n++] = r > INT32_MAX ? INT32_MAX : static_cast<int32_t>(r);
  }
  return Napi::Number::New(env, n);
}

// tapWrite(fd, id, slot, count, lens) -> frames consumed. Frame k (lens[k] bytes, header
// included) is written from slot k of buffer `id`. Stops at EAGAIN (the frames from there on
// are the caller's to count as dropped); a frame the kernel refuses (a bad header: EINVAL;
// the device down: EIO) has its lens[k] set to -errno and the burst goes on.
Napi::Value TapWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = ArgFd(info, 0);
  const int id = ArgInt(info, 1, "id must be an integer");
  const int32_t slot = ArgInt(info, 2, "slot must be an integer");
  const int32_t count = ArgInt(info, 3, "count must be an integer");
  Napi::Int32Array lens = LensArg(info, 4, "tapWrite: lens must be an Int32Array");
  if (count < 0 || static_cast<size_t>(count) > lens.ElementLength()) ThrowErrno(env, "tapWrite", EINVAL);
  int err = 0;
  uint8_t* base = Slots(id, slot, count, err);
  if (base == nullptr) ThrowErrno(env, "tapWrite", err);
  int32_t* in = lens.Data();
  for (int32_t k = 0; k < count; k++) {
    if (in[k] < kVnetHdrLen || in[k] > slot) ThrowErrno(env, "tapWrite", ERANGE);
  }
  int32_t n = 0;
  while (n < count) {
    const ssize_t r = ::write(fd, base + static_cast<size_t>(n) * static_cast<size_t>(slot), static_cast<size_t>(in[n]));
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      in[n] = -errno;
    }
    n++;
  }
  return Napi::Number::New(env, n);
}

}  // namespace vhostfwd
