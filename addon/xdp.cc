// AF_XDP uplink ports (issue 22): an XDP socket on one queue of a device, its UMEM and four
// rings (fill, completion, RX, TX) shared with the workers, and the XDP program that
// redirects the queue's frames to the socket. N-API only.
//
// Raw syscalls, not libxdp/libbpf (decided and recorded here and in README's AF_XDP part):
// what vhostfwd needs of them is one socket, one XSKMAP, a five-instruction program and a
// bpf_link, about 200 lines below; the per-burst work is in the workers (JS over the mapped
// rings) and the only syscall on the data path is the kick (sendto, recvfrom) that
// XDP_USE_NEED_WAKEUP asks for, which libxdp would make the same way (xsk_ring_prod__needs_wakeup
// then sendto). The libraries would save no syscall per burst and would add a build and a
// runtime dependency (libxdp's own XDP dispatcher program and its pinning in bpffs on top), so
// a fresh `npm install` would need Debian's libxdp-dev/libbpf-dev: not worth it.
// Measured (bench/xdp-kick.ts, veth, copy mode, kernel 6.18): an empty sendto kick 0.21 us,
// the fill ring's recvfrom 0.25 us, a 32-frame burst 7.4 us (231 ns a frame: copy mode builds
// and sends each frame's skb inside the kick), so the kick's cost is per frame, not per call.
//
// The UMEM is a memfd: mapped here once to register it (XDP_UMEM_REG pins the pages, then
// this mapping goes), and mapped again by the caller through the mmap/SAB bridge, so the
// workers see the very pages the kernel writes. frames frames of frameSize bytes: the first
// half belong to the fill/RX side, the second half to TX (the workers keep the free ones on a
// stack, src/workers/xsk-port.ts); every ring has frames/2 entries. Ordinary pages: huge
// pages measured +3 % at 64 B (within the rounds' noise, before the stacks made the frames
// in use few) and would take pages an operator reserves for guests (bench/NOTES.md #53).
//
// The program (hand-assembled, BPF_PROG_TYPE_XDP):
//   r2 = *(u32 *)(r1 + offsetof(struct xdp_md, rx_queue_index))
//   r1 = map fd (ld_imm64, BPF_PSEUDO_MAP_FD)
//   r3 = XDP_PASS                     (the action when the queue has no socket in the map)
//   call bpf_redirect_map
//   exit
// attached with BPF_LINK_CREATE (BPF_XDP): driver mode first, generic (SKB) mode if the
// driver has none. Closing the link's fd detaches the program, so a process that dies leaves
// nothing on the interface. The socket binds with XDP_ZEROCOPY first, XDP_COPY if the driver
// cannot, both with XDP_USE_NEED_WAKEUP.

#include <errno.h>
#include <linux/bpf.h>
#include <linux/if_link.h>
#include <linux/if_xdp.h>
#include <net/if.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "args.h"
#include "functions.h"

#ifndef AF_XDP
#define AF_XDP 44
#endif
#ifndef SOL_XDP
#define SOL_XDP 283
#endif

namespace vhostfwd {

namespace {

bool PowerOfTwo(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

long Bpf(int cmd, bpf_attr* attr) { return ::syscall(SYS_bpf, cmd, attr, sizeof *attr); }

uint64_t Ptr(const void* p) { return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)); }

// fds closed on every exit unless released
struct Fds {
  int xsk = -1, umem = -1, map = -1, prog = -1, link = -1;
  ~Fds() {
    for (int fd : {xsk, umem, map, prog, link}) {
      if (fd >= 0) ::close(fd);
    }
  }
};

struct Step {
  const char* what;
  int err;
};

// One XDP socket on (ifindex, queue) with the UMEM of `umemFd` and `entries`-entry rings,
// bound with `bindFlags`; -1 and the failed step in `failed` otherwise.
int OpenSocket(int umemFd, uint64_t umemBytes, int frameSize, uint32_t entries, unsigned ifindex, uint32_t queue, uint16_t bindFlags, Step& failed) {
  const int fd = ::socket(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    failed = {"socket AF_XDP", errno};
    return -1;
  }
  // XDP_UMEM_REG needs an address: a mapping of the memfd, gone once the pages are pinned
  void* p = ::mmap(nullptr, static_cast<size_t>(umemBytes), PROT_READ | PROT_WRITE, MAP_SHARED, umemFd, 0);
  if (p == MAP_FAILED) {
    failed = {"mmap UMEM", errno};
    ::close(fd);
    return -1;
  }
  xdp_umem_reg reg;
  std::memset(&reg, 0, sizeof reg);
  reg.addr = Ptr(p);
  reg.len = umemBytes;
  reg.chunk_size = static_cast<uint32_t>(frameSize);
  reg.headroom = 0;
  const int r = ::setsockopt(fd, SOL_XDP, XDP_UMEM_REG, &reg, sizeof reg);
  const int regErr = errno;
  ::munmap(p, static_cast<size_t>(umemBytes));
  if (r < 0) {
    failed = {"XDP_UMEM_REG", regErr};
    ::close(fd);
    return -1;
  }
  struct Opt {
    int name;
    const char* what;
  };
  const Opt rings[] = {{XDP_UMEM_FILL_RING, "XDP_UMEM_FILL_RING"}, {XDP_UMEM_COMPLETION_RING, "XDP_UMEM_COMPLETION_RING"}, {XDP_RX_RING, "XDP_RX_RING"}, {XDP_TX_RING, "XDP_TX_RING"}};
  for (const Opt& o : rings) {
    if (::setsockopt(fd, SOL_XDP, o.name, &entries, sizeof entries) < 0) {
      failed = {o.what, errno};
      ::close(fd);
      return -1;
    }
  }
  sockaddr_xdp sxdp;
  std::memset(&sxdp, 0, sizeof sxdp);
  sxdp.sxdp_family = AF_XDP;
  sxdp.sxdp_ifindex = ifindex;
  sxdp.sxdp_queue_id = queue;
  sxdp.sxdp_flags = bindFlags;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sxdp), sizeof sxdp) < 0) {
    failed = {"bind AF_XDP", errno};
    ::close(fd);
    return -1;
  }
  return fd;
}

Napi::Object RingOffsets(Napi::Env env, const xdp_ring_offset& o, uint64_t bytes) {
  Napi::Object r = Napi::Object::New(env);
  r.Set("producer", Napi::Number::New(env, static_cast<double>(o.producer)));
  r.Set("consumer", Napi::Number::New(env, static_cast<double>(o.consumer)));
  r.Set("desc", Napi::Number::New(env, static_cast<double>(o.desc)));
  r.Set("flags", Napi::Number::New(env, static_cast<double>(o.flags)));
  r.Set("bytes", Napi::Number::New(env, static_cast<double>(bytes)));
  return r;
}

}  // namespace

// xdpOpen(device, queue, frameSize, frames) -> { fd, umemFd, linkFd, umemBytes, frameSize,
// frames, entries, zeroCopy, driverMode, rx, tx, fill, comp } where each ring is { producer,
// consumer, desc, flags, bytes, pgoff }: map it with mmap(fd, bytes, pgoff); map the UMEM
// with mmap(umemFd, umemBytes, 0) and close umemFd. Close linkFd to detach the program.
Napi::Value XdpOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = ArgString(info, 0, "device must be a string");
  const int32_t queue = ArgInt(info, 1, "queue must be an integer");
  const int32_t frame = ArgInt(info, 2, "frameSize must be an integer");
  const int32_t frames = ArgInt(info, 3, "frames must be an integer");
  if (frame != 2048 && frame != 4096) ThrowErrno(env, "XDP_UMEM_REG", EINVAL, "frameSize: 2048 or 4096");
  if (!PowerOfTwo(frames) || frames < 16 || frames > 65536) ThrowErrno(env, "XDP_UMEM_REG", EINVAL, "frames: a power of two 16..65536");
  if (queue < 0 || queue > 1023) ThrowErrno(env, "bind AF_XDP", EINVAL, "queue: 0..1023");
  if (name.empty() || name.size() >= IFNAMSIZ) ThrowErrno(env, "if_nametoindex", EINVAL, "a device name is 1..15 bytes");
  const unsigned int ifindex = ::if_nametoindex(name.c_str());
  if (ifindex == 0) ThrowErrno(env, "if_nametoindex", errno == 0 ? ENODEV : errno);
  const uint64_t umemBytes = static_cast<uint64_t>(frame) * static_cast<uint64_t>(frames);
  const uint32_t entries = static_cast<uint32_t>(frames / 2);
  Fds f;
  f.umem = ::memfd_create("vhostfwd-xdp-umem", MFD_CLOEXEC);
  if (f.umem < 0) ThrowErrno(env, "memfd_create", errno);
  if (::ftruncate(f.umem, static_cast<off_t>(umemBytes)) < 0) ThrowErrno(env, "ftruncate UMEM", errno);

  // the socket: zero-copy, else copy mode (a fresh socket: a failed bind leaves the UMEM's pool half set up)
  Step failed{"", 0};
  bool zeroCopy = true;
  f.xsk = OpenSocket(f.umem, umemBytes, frame, entries, ifindex, static_cast<uint32_t>(queue), XDP_ZEROCOPY | XDP_USE_NEED_WAKEUP, failed);
  if (f.xsk < 0 && std::strcmp(failed.what, "bind AF_XDP") == 0) {
    zeroCopy = false;
    f.xsk = OpenSocket(f.umem, umemBytes, frame, entries, ifindex, static_cast<uint32_t>(queue), XDP_COPY | XDP_USE_NEED_WAKEUP, failed);
  }
  if (f.xsk < 0) ThrowErrno(env, failed.what, failed.err);
  xdp_mmap_offsets off;
  std::memset(&off, 0, sizeof off);
  socklen_t olen = sizeof off;
  if (::getsockopt(f.xsk, SOL_XDP, XDP_MMAP_OFFSETS, &off, &olen) < 0) ThrowErrno(env, "XDP_MMAP_OFFSETS", errno);
  if (olen != sizeof off) ThrowErrno(env, "XDP_MMAP_OFFSETS", EPROTO, "a kernel without the flags words (before 5.4)");
  xdp_options opts;
  std::memset(&opts, 0, sizeof opts);
  socklen_t xlen = sizeof opts;
  if (::getsockopt(f.xsk, SOL_XDP, XDP_OPTIONS, &opts, &xlen) == 0) zeroCopy = (opts.flags & XDP_OPTIONS_ZEROCOPY) != 0;

  // the XSKMAP: index queue -> the socket
  bpf_attr attr;
  std::memset(&attr, 0, sizeof attr);
  attr.map_type = BPF_MAP_TYPE_XSKMAP;
  attr.key_size = 4;
  attr.value_size = 4;
  attr.max_entries = static_cast<uint32_t>(queue) + 1;
  std::memcpy(attr.map_name, "vhostfwd_xsk", sizeof "vhostfwd_xsk");
  f.map = static_cast<int>(Bpf(BPF_MAP_CREATE, &attr));
  if (f.map < 0) ThrowErrno(env, "XDP_MAP_CREATE_FAILED", errno, "bpf BPF_MAP_CREATE XSKMAP");
  const uint32_t key = static_cast<uint32_t>(queue);
  const uint32_t value = static_cast<uint32_t>(f.xsk);
  std::memset(&attr, 0, sizeof attr);
  attr.map_fd = static_cast<uint32_t>(f.map);
  attr.key = Ptr(&key);
  attr.value = Ptr(&value);
  attr.flags = BPF_ANY;
  if (Bpf(BPF_MAP_UPDATE_ELEM, &attr) < 0) ThrowErrno(env, "XDP_MAP_UPDATE_FAILED", errno, "bpf BPF_MAP_UPDATE_ELEM: the socket into the XSKMAP");

  // the program
  bpf_insn prog[6];
  std::memset(prog, 0, sizeof prog);
  prog[0].code = BPF_LDX | BPF_MEM | BPF_W;  // r2 = ctx->rx_queue_index
  prog[0].dst_reg = BPF_REG_2;
  prog[0].src_reg = BPF_REG_1;
  prog[0].off = static_cast<int16_t>(offsetof(xdp_md, rx_queue_index));
  prog[1].code = BPF_LD | BPF_DW | BPF_IMM;  // r1 = the map (two instructions)
  prog[1].dst_reg = BPF_REG_1;
  prog[1].src_reg = BPF_PSEUDO_MAP_FD;
  prog[1].imm = f.map;
  prog[3].code = BPF_ALU64 | BPF_MOV | BPF_K;  // r3 = XDP_PASS
  prog[3].dst_reg = BPF_REG_3;
  prog[3].imm = XDP_PASS;
  prog[4].code = BPF_JMP | BPF_CALL;  // r0 = bpf_redirect_map(r1, r2, r3)
  prog[4].imm = BPF_FUNC_redirect_map;
  prog[5].code = BPF_JMP | BPF_EXIT;
  static const char license[] = "MIT";
  char verifierLog[1024];
  verifierLog[0] = 0;
  std::memset(&attr, 0, sizeof attr);
  attr.prog_type = BPF_PROG_TYPE_XDP;
  attr.insn_cnt = 6;
  attr.insns = Ptr(prog);
  attr.license = Ptr(license);
  attr.log_level = 1;
  attr.log_size = sizeof verifierLog;
  attr.log_buf = Ptr(verifierLog);
  attr.expected_attach_type = BPF_XDP;
  std::memcpy(attr.prog_name, "vhostfwd_xsk", sizeof "vhostfwd_xsk");
  f.prog = static_cast<int>(Bpf(BPF_PROG_LOAD, &attr));
  if (f.prog < 0) {
    const int err = errno;
    verifierLog[sizeof verifierLog - 1] = 0;
    ThrowErrno(env, "XDP_PROG_LOAD_FAILED", err, std::string("bpf BPF_PROG_LOAD: ") + verifierLog);
  }

  // attached as a link: driver mode, else generic
  bool driverMode = true;
  int linkErr = 0;
  for (uint32_t mode : {static_cast<uint32_t>(XDP_FLAGS_DRV_MODE), static_cast<uint32_t>(XDP_FLAGS_SKB_MODE)}) {
    std::memset(&attr, 0, sizeof attr);
    attr.link_create.prog_fd = static_cast<uint32_t>(f.prog);
    attr.link_create.target_ifindex = ifindex;
    attr.link_create.attach_type = BPF_XDP;
    attr.link_create.flags = mode;
    f.link = static_cast<int>(Bpf(BPF_LINK_CREATE, &attr));
    if (f.link >= 0) {
      driverMode = mode == XDP_FLAGS_DRV_MODE;
      break;
    }
    linkErr = errno;
    if (linkErr == EBUSY || linkErr == EEXIST) break;  // a program is there already: not ours to replace
  }
  if (f.link < 0) ThrowErrno(env, "XDP_ATTACH_FAILED", linkErr, "bpf BPF_LINK_CREATE BPF_XDP, driver then generic mode");

  Napi::Object out = Napi::Object::New(env);
  out.Set("fd", Napi::Number::New(env, f.xsk));
  out.Set("umemFd", Napi::Number::New(env, f.umem));
  out.Set("linkFd", Napi::Number::New(env, f.link));
  out.Set("ifindex", Napi::Number::New(env, ifindex));
  out.Set("umemBytes", Napi::Number::New(env, static_cast<double>(umemBytes)));
  out.Set("frameSize", Napi::Number::New(env, frame));
  out.Set("frames", Napi::Number::New(env, frames));
  out.Set("entries", Napi::Number::New(env, entries));
  out.Set("zeroCopy", Napi::Boolean::New(env, zeroCopy));
  out.Set("driverMode", Napi::Boolean::New(env, driverMode));
  const uint64_t descBytes = sizeof(xdp_desc) * entries;
  const uint64_t addrBytes = sizeof(uint64_t) * entries;
  Napi::Object rx = RingOffsets(env, off.rx, off.rx.desc + descBytes);
  rx.Set("pgoff", Napi::Number::New(env, static_cast<double>(XDP_PGOFF_RX_RING)));
  Napi::Object tx = RingOffsets(env, off.tx, off.tx.desc + descBytes);
  tx.Set("pgoff", Napi::Number::New(env, static_cast<double>(XDP_PGOFF_TX_RING)));
  Napi::Object fill = RingOffsets(env, off.fr, off.fr.desc + addrBytes);
  fill.Set("pgoff", Napi::Number::New(env, static_cast<double>(XDP_UMEM_PGOFF_FILL_RING)));
  Napi::Object comp = RingOffsets(env, off.cr, off.cr.desc + addrBytes);
  comp.Set("pgoff", Napi::Number::New(env, static_cast<double>(XDP_UMEM_PGOFF_COMPLETION_RING)));
  out.Set("rx", rx);
  out.Set("tx", tx);
  out.Set("fill", fill);
  out.Set("comp", comp);
  f.xsk = f.umem = f.link = -1;  // the caller's now; the map and program stay alive through the link
  return out;
}

// xdpKick(fd, rounds) -> 0, or -errno. sendto(MSG_DONTWAIT) until the TX ring is sent: in
// copy mode one call sends at most a batch (32 frames in the kernel), and says EAGAIN while
// frames are left, so the caller passes ceil(queued / 32) + 1 rounds. ENOBUFS/EBUSY (the
// device queue is full) end the rounds: the frames stay in the ring for the next kick.
Napi::Value XdpKick(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = ArgFd(info, 0);
  const int32_t rounds = ArgInt(info, 1, "rounds must be an integer");
  for (int32_t k = 0; k < rounds; k++) {
    ssize_t r;
    do r = ::sendto(fd, nullptr, 0, MSG_DONTWAIT, nullptr, 0);
    while (r < 0 && errno == EINTR);
    if (r >= 0) return Napi::Number::New(env, 0);
    if (errno == EAGAIN) continue;
    if (errno == ENOBUFS || errno == EBUSY) return Napi::Number::New(env, 0);
    return Napi::Number::New(env, -errno);
  }
  return Napi::Number::New(env, 0);
}

// xdpWakeRx(fd) -> 0, or -errno: recvfrom(MSG_DONTWAIT), the fill ring's wakeup (the driver
// asked for one: XDP_RING_NEED_WAKEUP on the fill ring).
Napi::Value XdpWakeRx(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = ArgFd(info, 0);
  ssize_t r;
  do r = ::recvfrom(fd, nullptr, 0, MSG_DONTWAIT, nullptr, nullptr);
  while (r < 0 && errno == EINTR);
  if (r < 0 && errno != EAGAIN) return Napi::Number::New(env, -errno);
  return Napi::Number::New(env, 0);
}

}  // namespace vhostfwd
