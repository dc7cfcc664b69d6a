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
//
// Several queues (config `queues`): one such socket per queue, all in one PACKET_FANOUT_HASH
// group, so the kernel spreads the device's frames over the sockets by flow and each queue
// is polled by its own worker (DPDK's net_af_packet qpairs do the same).

#include <errno.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "args.h"
#include "functions.h"

namespace vhostfwd {

namespace {

constexpr int kPageSize = 4096;

bool PowerOfTwo(int32_t v) { return v > 0 && (v & (v - 1)) == 0; }

// Fanout flag: the group's hook skips the frames going out of the device (what
// PACKET_IGNORE_OUTGOING does for a lone socket: a socket in a group receives through the
// group's hook, not its own). Linux 6.9+; older kernels refuse it with EINVAL and the
// worker skips PACKET_OUTGOING frames itself (packet-port.ts).
#ifndef PACKET_FANOUT_FLAG_IGNORE_OUTGOING
#define PACKET_FANOUT_FLAG_IGNORE_OUTGOING 0x4000
#endif

// One socket with its rings, not bound yet (protocol 0: it receives nothing), or -1 with
// *what and *err set.
int OpenRinged(const tpacket_req& req, const char** what, int* err) {
  int fd = ::socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *what = "socket AF_PACKET";
    *err = errno;
    return -1;
  }
  const int one = 1;
  const int version = TPACKET_V2;
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
      *what = o.what;
      *err = errno;
      ::close(fd);
      return -1;
    }
  }
  return fd;
}

int SetFilter(int fd, bool dropAll) {
  const int unused = 0;  // the kernel reads an int's length of any SOL_SOCKET option
  if (!dropAll) return ::setsockopt(fd, SOL_SOCKET, SO_DETACH_FILTER, &unused, sizeof unused);
  sock_filter none = {0x06, 0, 0, 0};  // BPF_RET | BPF_K, 0: accept nothing
  sock_fprog prog = {1, &none};
  return ::setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog);
}

}  // namespace

// packetOpen(device, frameSize, frames, queues = 1) ->
//   { fd, fds, fanout, ifindex, ringBytes, frameSize, frames, txData, hdrLen }
// `queues` sockets (1..256), each with two rings (RX first, then TX) of `frames` frames of
// `frameSize` bytes each; map socket k's with mmap(fds[k], 2 * ringBytes, 0). frameSize: a
// power of two 2048..131072; frames: a power of two 8..65536. fd is fds[0]. With queues > 1
// the sockets are one PACKET_FANOUT_HASH group (fanout: getsockopt(PACKET_FANOUT) of the
// group, the same on every member; 0 for a lone socket): the kernel spreads the device's
// frames over them by flow, each flow to one socket (in order).
Napi::Value PacketOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = ArgString(info, 0, "device must be a string");
  const int32_t frame = ArgInt(info, 1, "frameSize must be an integer");
  const int32_t frames = ArgInt(info, 2, "frames must be an integer");
  const int32_t queues = info.Length() > 3 && !info[3].IsUndefined() ? ArgInt(info, 3, "queues must be an integer") : 1;
  if (!PowerOfTwo(frame) || frame < 2048 || frame > 131072) ThrowErrno(env, "PACKET_RX_RING", EINVAL, "frameSize: a power of two 2048..131072");
  if (!PowerOfTwo(frames) || frames < 8 || frames > 65536) ThrowErrno(env, "PACKET_RX_RING", EINVAL, "frames: a power of two 8..65536");
  // PACKET_FANOUT_MAX: a group holds at most 256 sockets by default
  if (queues < 1 || queues > 256) ThrowErrno(env, "PACKET_FANOUT", EINVAL, "queues: 1..256");
  if (name.empty() || name.size() >= IFNAMSIZ) ThrowErrno(env, "if_nametoindex", EINVAL, "a device name is 1..15 bytes");
  const unsigned int ifindex = ::if_nametoindex(name.c_str());
  if (ifindex == 0) ThrowErrno(env, "if_nametoindex", errno == 0 ? ENODEV : errno);
  const int block = frame > kPageSize ? frame : kPageSize;
  tpacket_req req;
  req.tp_block_size = static_cast<unsigned int>(block);
  req.tp_frame_size = static_cast<unsigned int>(frame);
  req.tp_frame_nr = static_cast<unsigned int>(frames);
  req.tp_block_nr = static_cast<unsigned int>(frames / (block / frame));
  std::vector<int> fds;
  const char* what = "";
  int err = 0;
  int fanout = 0;
  // Each step either succeeds or sets what/err; every socket made is closed on failure.
  auto fail = [&]() -> bool {
    for (int fd : fds) ::close(fd);
    fds.clear();
    return false;
  };
  auto run = [&]() -> bool {
    for (int k = 0; k < queues; k++) {
      const int fd = OpenRinged(req, &what, &err);
      if (fd < 0) return fail();
      fds.push_back(fd);
      // A group: every socket drops everything (a filter that accepts nothing) from its bind
      // until all have joined. A socket receives every frame of the device between its
      // bind() and its PACKET_FANOUT (fanout_add takes only a bound, running socket), and
      // the group's members receive them too: read twice. The filters go once all are in.
      if (queues > 1 && SetFilter(fd, true) < 0) {
        what = "SO_ATTACH_FILTER";
        err = errno;
        return fail();
      }
      sockaddr_ll sll;
      std::memset(&sll, 0, sizeof sll);
      sll.sll_family = AF_PACKET;
      sll.sll_protocol = htons(ETH_P_ALL);
      sll.sll_ifindex = static_cast<int>(ifindex);
      // protocol 0 until here: nothing is received before the rings exist
      if (::bind(fd, reinterpret_cast<sockaddr*>(&sll), sizeof sll) < 0) {
        what = "bind AF_PACKET";
        err = errno;
        return fail();
      }
      if (queues == 1) break;
      // PACKET_FANOUT_HASH: a frame's socket is its symmetric flow hash mod the members, so a
      // flow (both directions, all fragments: the kernel hashes a fragment by its addresses
      // only) stays on one socket and in order. Not FLAG_DEFRAG: it reassembles fragments
      // before the socket sees them, and a forwarder passes the frames that arrived. Not
      // FLAG_ROLLOVER: a frame for a full ring is dropped, not moved to another socket,
      // where it could overtake its flow's earlier frames.
      // The first socket asks the kernel for an id no group of this network namespace has
      // (FLAG_UNIQUEID: no clash with another process's group, which a fixed id would join
      // or be refused by); the others join that id, read back from the first.
      int arg;
      if (k == 0) {
        arg = ((PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_IGNORE_OUTGOING | PACKET_FANOUT_FLAG_UNIQUEID) << 16);
      } else {
        // the group's id, type and flags as the first socket's getsockopt gave them (a member
        // must ask for the same type and flags)
        arg = ((fanout >> 16) & 0xffff) << 16 | (fanout & 0xffff);
      }
      int r = ::setsockopt(fd, SOL_PACKET, PACKET_FANOUT, &arg, sizeof arg);
      if (r < 0 && k == 0 && errno == EINVAL) {
        // a kernel without FLAG_IGNORE_OUTGOING (before 6.9): without it
        arg = ((PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_UNIQUEID) << 16);
        r = ::setsockopt(fd, SOL_PACKET, PACKET_FANOUT, &arg, sizeof arg);
      }
      if (r < 0) {
        what = "PACKET_FANOUT";
        err = errno;
        return fail();
      }
      if (k == 0) {
        socklen_t len = sizeof fanout;
        if (::getsockopt(fd, SOL_PACKET, PACKET_FANOUT, &fanout, &len) < 0) {
          what = "getsockopt PACKET_FANOUT";
          err = errno;
          return fail();
        }
      }
    }
    if (queues > 1) {
      for (int fd : fds) {
        if (SetFilter(fd, false) < 0) {
          what = "SO_DETACH_FILTER";
          err = errno;
          return fail();
        }
      }
    }
    return true;
  };
  if (!run()) ThrowErrno(env, what, err);
  Napi::Object out = Napi::Object::New(env);
  Napi::Array list = Napi::Array::New(env, fds.size());
  for (size_t k = 0; k < fds.size(); k++) list.Set(static_cast<uint32_t>(k), Napi::Number::New(env, fds[k]));
  out.Set("fd", Napi::Number::New(env, fds[0]));
  out.Set("fds", list);
  out.Set("fanout", Napi::Number::New(env, static_cast<double>(static_cast<uint32_t>(fanout))));
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

// packetDrops(fd) -> frames the kernel dropped on this socket since the last call (getsockopt
// PACKET_STATISTICS, which resets the counts): with a TPACKET RX ring, frames that found no
// free ring frame (the worker behind, or the process stopped). -errno when it cannot be read.
Napi::Value PacketDrops(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = ArgFd(info, 0);
  tpacket_stats st;
  std::memset(&st, 0, sizeof st);
  socklen_t len = sizeof st;
  if (::getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &st, &len) < 0) return Napi::Number::New(env, -errno);
  return Napi::Number::New(env, st.tp_drops);
}

// ifIndex(name) -> if_nametoindex(name), 0 when there is no such device
Napi::Value IfIndex(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = ArgString(info, 0, "name must be a string");
  if (name.empty() || name.size() >= IFNAMSIZ) return Napi::Number::New(env, 0);
  return Napi::Number::New(env, ::if_nametoindex(name.c_str()));
}

// packetInfo(fd) -> { ifindex, version, vnetHdr, fanout } of an AF_PACKET socket (a takeover checks
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
  // the fanout group (id, type, flags), 0 outside one: the members of a port's group agree
  int fanout = 0;
  len = sizeof fanout;
  if (::getsockopt(fd, SOL_PACKET, PACKET_FANOUT, &fanout, &len) < 0) ThrowErrno(env, "getsockopt PACKET_FANOUT", errno);
  Napi::Object out = Napi::Object::New(env);
  out.Set("fanout", Napi::Number::New(env, static_cast<double>(static_cast<uint32_t>(fanout))));
  out.Set("ifindex", Napi::Number::New(env, sll.sll_ifindex));
  out.Set("version", Napi::Number::New(env, version == TPACKET_V2 ? 2 : version == TPACKET_V3 ? 3 : 1));
  out.Set("vnetHdr", Napi::Boolean::New(env, vnet != 0));
  return out;
}

}  // namespace vhostfwd
