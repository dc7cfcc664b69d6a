// AF_PACKET uplink ports (issue 22): a packet socket with TPACKET_V2 RX and TX rings that the
// workers walk in place (the rings are mapped into a SharedArrayBuffer with mmap, as guest
// memory is), and the kick that makes the kernel send the TX ring's pending frames. N-API only.
//
// TPACKET_V2, not V3: V2's frames each carry their own status word, so a worker takes a burst
// of frames, forwards them in place and hands each back as soon as its bytes are copied, with
// one store per frame. V3 hands user space whole blocks (retired when full or on a timer) and
// a block can only be returned once every frame in it is done, which would hold a burst's
// buffers across bursts and add the block timer's latency at low rates. V3's gain (variable
// frame sizes packed into blocks) matters for memory, not for correctness; recorded in
// README's AF_PACKET part.
//
// The socket: PACKET_VNET_HDR (a 10-byte virtio-net header before each frame, both rings: the
// offloads' metadata crosses as it does on a TAP), PACKET_LOSS (a frame the kernel cannot send
// is skipped, not a ring stuck in WRONG_FORMAT), PACKET_QDISC_BYPASS (TX straight to the
// driver, as DPDK's net_af_packet and VPP's host-interface do), PACKET_IGNORE_OUTGOING (the
// frames this socket or the host sends out of the device are not read back), then bound to
// the device with ETH_P_ALL once the rings exist (no frame lands outside them).

#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "args.h"
#include "functions.h"

namespace vhostfwd {

namespace {

constexpr int kPageSize = 4096;

bool PowerOfTwo(int32_t v) { return v > 0 && (v & (v - 1)) == 0; }

}  // namespace

// packetOpen(device, frameSize, frames) -> { fd, ifindex, ringBytes, frameSize, frames, hdrLen }
// Two rings (RX first, then TX) of `frames` frames of `frameSize` bytes each; map them with
// mmap(fd, 2 * ringBytes, 0). frameSize: a power of two 2048..131072; frames: a power of two
// 8..65536.
Napi::Value PacketOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = ArgString(info, 0, "device must be a string");
  const int32_t frame = ArgInt(info, 1, "frameSize must be an integer");
  const int32_t frames = ArgInt(info, 2, "frames must be an integer");
  if (!PowerOfTwo(frame) || frame < 2048 || frame > 131072) ThrowErrno(env, "PACKET_RX_RING", EINVAL, "frameSize: a power of two 2048..131072");
  if (!PowerOfTwo(frames) || frames < 8 || frames > 65536) ThrowErrno(env, "PACKET_RX_RING", EINVAL, "frames: a power of two 8..65536");
  if (name.empty() || name.size() >= IFNAMSIZ) ThrowErrno(env, "if_nametoindex", EINVAL, "a device name is 1..15 bytes");
  const unsigned int ifindex = ::if_nametoindex(name.c_str());
  if (ifindex == 0) ThrowErrno(env, "if_nametoindex", errno == 0 ? ENODEV : errno);
  // protocol 0: nothing is received until bind() below, after the rings exist
  int fd = ::socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(env, "socket AF_PACKET", errno);
  const int one = 1;
  const int version = TPACKET_V2;
  const int block = frame > kPageSize ? frame : kPageSize;
  tpacket_req req;
  req.tp_block_size = static_cast<unsigned int>(block);
  req.tp_frame_size = static_cast<unsigned int>(frame);
  req.tp_frame_nr = static_cast<unsigned int>(frames);
  req.tp_block_nr = static_cast<unsigned int>(frames / (block / frame));
  struct Opt {
    int name;
    const void* value;
    socklen_t len;
    const char* what;
  };
  const Opt opts[] = {
      {PACKET_VERSION, &version, sizeof version, "PACKET_VERSION"},
      {PACKET_VNET_HDR, &one, sizeof one, "PACKET_VNET_HDR"},
      {PACKET_LOSS, &one, sizeof one, "PACKET_LOSS"},
      {PACKET_QDISC_BYPASS, &one, sizeof one, "PACKET_QDISC_BYPASS"},
      {PACKET_IGNORE_OUTGOING, &one, sizeof one, "PACKET_IGNORE_OUTGOING"},
      {PACKET_RX_RING, &req, sizeof req, "PACKET_RX_RING"},
      {PACKET_TX_RING, &req, sizeof req, "PACKET_TX_RING"},
  };
  for (const Opt& o : opts) {
    if (::setsockopt(fd, SOL_PACKET, o.name, o.value, o.len) < 0) {
      const int err = errno;
      ::close(fd);
      ThrowErrno(env, o.what, err);
    }
  }
  sockaddr_ll sll;
  std::memset(&sll, 0, sizeof sll);
  sll.sll_family = AF_PACKET;
  sll.sll_protocol = htons(ETH_P_ALL);
  sll.sll_ifindex = static_cast<int>(ifindex);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sll), sizeof sll) < 0) {
    const int err = errno;
    ::close(fd);
    ThrowErrno(env, "bind AF_PACKET", err);
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("fd", Napi::Number::New(env, fd));
  out.Set("ifindex", Napi::Number::New(env, ifindex));
  out.Set("ringBytes", Napi::Number::New(env, static_cast<double>(req.tp_block_size) * req.tp_block_nr));
  out.Set("frameSize", Napi::Number::New(env, frame));
  out.Set("frames", Napi::Number::New(env, frames));
  // where a TX frame's data starts (tpacket_snd without PACKET_TX_HAS_OFF), and the RX header
  out.Set("txData", Napi::Number::New(env, static_cast<double>(TPACKET2_HDRLEN - sizeof(sockaddr_ll))));
  out.Set("hdrLen", Napi::Number::New(env, static_cast<double>(TPACKET_ALIGN(sizeof(tpacket2_hdr)))));
  return out;
}

// packetKick(fd) -> 0, or -errno (ENOBUFS, ENXIO: the device is down or gone). Sends the TX
// ring's frames marked TP_STATUS_SEND_REQUEST without waiting (MSG_DONTWAIT): EAGAIN is 0.
Napi::Value PacketKick(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = ArgFd(info, 0);
  ssize_t r;
  do r = ::send(fd, nullptr, 0, MSG_DONTWAIT);
  while (r < 0 && errno == EINTR);
  if (r < 0 && errno != EAGAIN) return Napi::Number::New(env, -errno);
  return Napi::Number::New(env, 0);
}

// packetError(fd) -> the socket's pending error (getsockopt SO_ERROR, which clears it), 0 if none.
// A device that went down leaves ENETDOWN there, and poll(2) reports the socket ready until
// it is read: a worker clears it before it sleeps.
Napi::Value PacketError(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = ArgFd(info, 0);
  int err = 0;
  socklen_t len = sizeof err;
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return Napi::Number::New(env, errno);
  return Napi::Number::New(env, err);
}

// ifIndex(name) -> if_nametoindex(name), 0 when there is no such device
Napi::Value IfIndex(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = ArgString(info, 0, "name must be a string");
  if (name.empty() || name.size() >= IFNAMSIZ) return Napi::Number::New(env, 0);
  return Napi::Number::New(env, ::if_nametoindex(name.c_str()));
}

// packetInfo(fd) -> { ifindex, version, vnetHdr } of an AF_PACKET socket (a takeover checks
// the fd it was handed); throws ENOTSOCK / EPROTOTYPE (not AF_PACKET) otherwise.
Napi::Value PacketInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = ArgFd(info, 0);
  int domain = 0;
  socklen_t len = sizeof domain;
  if (::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0) ThrowErrno(env, "getsockopt SO_DOMAIN", errno);
  if (domain != AF_PACKET) ThrowErrno(env, "getsockopt SO_DOMAIN", EPROTOTYPE, "not an AF_PACKET socket");
  int version = -1;
  len = sizeof version;
  if (::getsockopt(fd, SOL_PACKET, PACKET_VERSION, &version, &len) < 0) ThrowErrno(env, "getsockopt PACKET_VERSION", errno);
  int vnet = 0;
  len = sizeof vnet;
  if (::getsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &vnet, &len) < 0) ThrowErrno(env, "getsockopt PACKET_VNET_HDR", errno);
  sockaddr_ll sll;
  std::memset(&sll, 0, sizeof sll);
  socklen_t alen = sizeof sll;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&sll), &alen) < 0) ThrowErrno(env, "getsockname", errno);
  Napi::Object out = Napi::Object::New(env);
  out.Set("ifindex", Napi::Number::New(env, sll.sll_ifindex));
  out.Set("version", Napi::Number::New(env, version == TPACKET_V2 ? 2 : version == TPACKET_V3 ? 3 : 1));
  out.Set("vnetHdr", Napi::Boolean::New(env, vnet != 0));
  return out;
}

}  // namespace vhostfwd
