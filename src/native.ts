/**
 * Typed wrapper over the C++ addon (addon/, module init in addon/vhostfwd.cc).
 *
 * The addon does only what Node cannot: unix sockets with SCM_RIGHTS, mmap as a
 * real SharedArrayBuffer (and its early release, retire), memfd, eventfd that never
 * blocks, fd readiness on the libuv loop, and thread CPU affinity; plus two measured
 * hot-path helpers for the workers, a burst's bulk memcpy and its dirty-page runs
 * (bench/NOTES.md). Everything else is TypeScript.
 *
 * Errors: every failing call throws an Error whose `code` is the errno name
 * (e.g. 'ENOENT', 'EAGAIN' is never thrown: see the return conventions below)
 * and whose message names the syscall (also in `syscall`; `errno` is the negated
 * errno number, as in Node's own errors). Arguments of the wrong JS type throw a
 * TypeError with code 'ERR_INVALID_ARG_TYPE'; an fd (or other int) that is not an exact
 * int32 (NaN, 1.5, 2**40) throws a RangeError with code 'ERR_OUT_OF_RANGE' rather than
 * being coerced (NaN would become fd 0). See NativeError.
 *
 * The addon is context aware: it may be loaded in worker threads (workers use
 * eventfd and affinity calls).
 */
import path from 'node:path';

/** Result of one recvmsg on a stream socket. */
interface RecvResult {
  /** bytes read into the buffer; 0 means the peer closed (EOF); -1 means EAGAIN (nothing to read). */
  bytes: number;
  /** file descriptors received with SCM_RIGHTS (already O_CLOEXEC); the caller owns them. */
  fds: number[];
}

/** A readiness watch on a fd, driven by the libuv loop of the calling thread (uv_poll_t). */
/** One AF_XDP ring as xdpOpen describes it: byte offsets in its mapping, the mapping's size and mmap offset. */
export interface XdpRingInfo {
  producer: number;
  consumer: number;
  desc: number;
  flags: number;
  bytes: number;
  pgoff: number;
}

interface XdpOpened {
  fd: number;
  umemFd: number;
  linkFd: number;
  ifindex: number;
  umemBytes: number;
  frameSize: number;
  frames: number;
  entries: number;
  zeroCopy: boolean;
  driverMode: boolean;
  rx: XdpRingInfo;
  tx: XdpRingInfo;
  fill: XdpRingInfo;
  comp: XdpRingInfo;
}

export interface PollHandle {
  /** stop watching and release the uv handle (idempotent); does not close the fd. */
  close(): void;
}

/** What the addon's errors carry (see the module comment). */
export interface NativeError extends Error {
  /** errno name, e.g. 'ENOENT', 'EPROTO', 'EINVAL'. */
  code: string;
  /** negated errno number. */
  errno: number;
  /** the failing syscall, e.g. 'connect'. */
  syscall: string;
}

/** Result of fdStat. */
export interface FdStat {
  /** st_size in bytes. */
  size: number;
  /** st_blksize: the page size for memfd/tmpfs, the huge page size for hugetlbfs. */
  blksize: number;
  /** st_dev and st_ino: which file (two fds of one memfd give the same pair). */
  dev: number;
  ino: number;
}

/** Readiness events passed to a poll callback. */
export const POLL_READABLE = 1;
/** set when the poll itself failed or the fd reported an error / hangup. */
export const POLL_ERROR = 4;

export interface Native {
  /** socket(AF_UNIX, SOCK_STREAM|NONBLOCK|CLOEXEC), unlink a stale path, bind, listen. Returns the listening fd. */
  listen(path: string, backlog: number): number;
  /** accept4(NONBLOCK|CLOEXEC). Returns the connection fd, or -1 when no connection is pending. */
  accept(fd: number): number;
  /** socket + connect (blocking connect on a unix socket completes at once), then set NONBLOCK. Throws (ENOENT, ECONNREFUSED...) on failure. */
  connect(path: string): number;
  /** SO_PEERCRED of a connected unix socket: the peer's pid, uid and gid. */
  peerCred(fd: number): { pid: number; uid: number; gid: number };
  /** sd_notify: one datagram `message` to the unix socket `path` ($NOTIFY_SOCKET; "@name": abstract). */
  sdNotify(path: string, message: string): void;
  /** close(2). Throws EBADF on a bad fd. */
  close(fd: number): void;
  /**
   * sendmsg with up to 8 fds in one SCM_RIGHTS control message. Sends all of `data`
   * (loops on partial writes; blocking wait with poll on EAGAIN). Returns bytes sent.
   * The fds travel with the first byte, so data must not be empty when fds are given;
   * that and more than 8 fds throw EINVAL. A closed peer throws EPIPE (never SIGPIPE).
   */
  sendmsg(fd: number, data: Uint8Array, fds: readonly number[], timeoutMs?: number): number;
  /**
   * Like sendmsg but accepts up to 253 fds (the kernel's SCM_MAX_FD) instead of 8.
   * Only for tests that play a misbehaving peer; the dataplane always uses sendmsg.
   */
  sendmsgUnchecked(fd: number, data: Uint8Array, fds: readonly number[]): number;
  /**
   * recvmsg(MSG_CMSG_CLOEXEC) of at most data.byteLength bytes into `data`.
   * Throws (code 'EPROTO') when the control data was truncated (MSG_CTRUNC) or more than
   * 8 fds arrived; every fd that did arrive is closed first, so nothing leaks. The data
   * bytes of that message are consumed too: the stream is out of step, close it.
   * An empty `data` throws EINVAL (a 0-byte read would look like EOF).
   */
  recvmsg(fd: number, data: Uint8Array): RecvResult;
  /** read(2) without fds; same return convention as recvmsg's bytes (0 EOF, -1 EAGAIN). */
  read(fd: number, data: Uint8Array): number;
  /**
   * Watch fd for readability on this thread's libuv loop; cb gets POLL_* bits. The fd is
   * switched to O_NONBLOCK (libuv does that). One watch per fd per thread (EEXIST otherwise).
   * The watch stays active (and keeps the loop alive) until close() is called; if the
   * thread's environment is torn down first (worker exit), the addon closes it itself.
   * An exception thrown by cb is reported as an uncaught exception. Close the watch
   * before closing the fd (a new fd that reuses the number would be watched otherwise).
   */
  poll(fd: number, cb: (events: number) => void): PollHandle;

  /**
   * mmap(fd, size, offset) MAP_SHARED PROT_READ|PROT_WRITE, returned as a real SharedArrayBuffer
   * (V8 backing store whose deleter munmaps). The mapping lives until every isolate holding
   * the SAB drops it and it is collected: a worker can never touch unmapped memory.
   * offset must be page aligned (EINVAL otherwise). The fd is not closed (the mapping does
   * not need it). On hugetlbfs the mapping is rounded up to the huge page size internally
   * (the SAB's byteLength is still `size`), and unmapped with that rounded length.
   */
  mmap(fd: number, size: number, offset: number): SharedArrayBuffer;
  /** fstat(2) st_size and st_blksize (hugetlbfs reports its huge page size as blksize). */
  fdStat(fd: number): FdStat;
  /** memfd_create(name, MFD_CLOEXEC) + ftruncate(size). Returns the fd. */
  memfdCreate(name: string, size: number): number;

  /** eventfd(initval, EFD_NONBLOCK|EFD_CLOEXEC). */
  eventfdCreate(initval: number): number;
  /**
   * read the counter and reset it; returns 0 when it was 0. Never blocks, whatever the
   * fd's O_NONBLOCK flag (a frontend's kick fd may be blocking): RWF_NOWAIT per call.
   */
  eventfdRead(fd: number): number;
  /**
   * add value to the counter (write(2) of a u64) without ever blocking; false when the
   * counter is saturated (it is readable already: a notification is pending).
   */
  eventfdWrite(fd: number, value: number): boolean;
  /**
   * Release the memory behind a SharedArrayBuffer from mmap() now: the mapping is replaced
   * in place by anonymous memory (views still held anywhere read zeros, never fault) and the
   * deleter unmaps that later. False when sab is not a live mapping made by mmap().
   */
  retire(sab: SharedArrayBuffer): boolean;
  /** true when fd is an eventfd (readlink of /proc/self/fd/N is anon_inode:[eventfd]). */
  isEventfd(fd: number): boolean;
  /**
   * Block the calling thread in poll(2) until fd is readable or timeoutMs passes.
   * Returns true when readable; false on timeout (or when a signal interrupted the wait).
   * Negative timeoutMs waits forever. For worker threads that sleep on a kick eventfd.
   */
  waitReadable(fd: number, timeoutMs: number): boolean;
  /**
   * Block the calling thread in poll(2) on the first `count` fds of `fds` (up to 64 on the stack,
   * more in a per-thread array that grows once;
   * negative entries are ignored) until one is readable or timeoutMs passes (negative:
   * forever). Returns the index of the first readable fd, or -1 on timeout or when a
   * signal interrupted the wait. An fd with an error/hangup also counts as ready. Throws
   * EINVAL when count exceeds fds.length or 65536, EBADF when an entry is not an open fd.
   * Allocates nothing per call at a steady count: how a worker sleeps on many kick eventfds plus its wake eventfd.
   */
  waitAny(fds: Int32Array, count: number, timeoutMs: number): number;

  /** sched_setaffinity(gettid(), cpus) of the calling thread (only that thread is pinned). */
  setAffinity(cpus: readonly number[]): void;
  /** sched_getaffinity(gettid()) of the calling thread, sorted CPU numbers. */
  getAffinity(): number[];
  /** gettid(2) of the calling thread. */
  gettid(): number;

  /**
   * Bulk copy (hot-path helper): register a SharedArrayBuffer in this thread's copy table
   * (the table keeps the memory alive until copyUnregister) and get its id.
   */
  copyRegister(sab: SharedArrayBuffer): number;
  copyUnregister(id: number): void;
  /**
   * Run `count` copies described in `jobs` as [srcId, srcOff, dstId, dstOff, len] each,
   * offsets from the SAB start. Every job is bounds-checked first (RangeError code ERANGE).
   */
  copyBatch(jobs: Float64Array, count: number): void;
  /**
   * Bind a job array (same layout as copyBatch's) to this thread for copyRun; returns its
   * binding id. The array is held weakly: once it is collected its id may be reused.
   */
  copyBind(jobs: Float64Array): number;
  /**
   * Run the first `count` jobs of binding `id` (a plain V8 callback, not N-API: a fraction
   * of an N-API call's cost, bench/NOTES.md #20). Never throws: returns 0, or an errno when nothing was copied
   * (EINVAL bad id or count, ERANGE a job out of bounds); copyBatch on the same jobs then
   * throws the named error.
   */
  copyRun(id: number, count: number): number;
  /**
   * Prefetch (read) the cache line at each of the first `count` [regionId, offset] pairs of
   * binding `id` (a Float64Array bound with copyBind, two numbers a pair; a pair outside its
   * region is skipped). A V8 callback like copyRun. Returns 0, or EINVAL (bad id or count).
   */
  copyPrefetch(id: number, count: number): number;

  /**
   * Dirty-log marking (hot-path helper): bind a log view and a page-run array
   * ([first, last] guest page numbers, pairs) to this thread for logRun; returns the binding
   * id. The log's memory is held until logUnbind, the run array weakly.
   */
  logBind(log: Uint8Array, runs: Float64Array): number;
  logUnbind(id: number): void;
  /**
   * Set the log bits of the first `count` runs of binding `id` (atomic ORs where a bit is
   * missing, a plain V8 callback like copyRun). `fenced`: the caller just made a seq-cst
   * store (the barrier). Never throws: returns the pages marked, or a negative errno with no
   * bit written (-EINVAL bad id or count, -ERANGE a run that is not 0 <= first <= last
   * inside the log).
   */
  logRun(id: number, count: number, fenced: boolean): number;

  /**
   * Open (or create) the TAP device `name` (1..15 bytes) from /dev/net/tun: IFF_TAP | IFF_NO_PI |
   * IFF_VNET_HDR, a 12-byte virtio-net header (TUNSETVNETHDRSZ), O_NONBLOCK | O_CLOEXEC, and
   * TUNSETOFFLOAD(offloads) (TUN_F_* bits: what the kernel may send with a partial checksum or
   * as a GSO frame). Returns the fd and the device's name.
   */
  tapOpen(name: string, offloads: number): { fd: number; name: string };
  /** The name and vnet header size of a TAP fd; throws (ENOTTY, EBADFD, EINVAL) for anything else. */
  tapInfo(fd: number): { name: string; vnetHdr: number };
  /**
   * Read up to `max` frames from a TAP fd, frame k into slot k (`slot` bytes each) of the
   * buffer registered as `id` (copyRegister), its length (header included) into lens[k]; a
   * length over `slot` means the frame was cut (the kernel reports its whole length). Returns
   * the frames read, 0 when none waits (EAGAIN); throws on other errors (EBADFD: the device is gone).
   */
  tapRead(fd: number, id: number, slot: number, max: number, lens: Int32Array): number;
  /**
   * Write `count` frames (lens[k] bytes from slot k of buffer `id`) to a TAP fd. Returns the
   * frames consumed: it stops at EAGAIN; a frame the kernel refused has lens[k] set to -errno.
   */
  tapWrite(fd: number, id: number, slot: number, count: number, lens: Int32Array): number;

  /**
   * An AF_PACKET socket on `device` with TPACKET_V2 RX and TX rings of `frames` frames of
   * `frameSize` bytes (powers of two: 2048..131072, 8..65536), PACKET_VNET_HDR (a 10-byte
   * header before each frame), PACKET_LOSS, PACKET_QDISC_BYPASS, PACKET_IGNORE_OUTGOING, bound
   * to the device (ETH_P_ALL). Map both rings with mmap(fd, 2 * ringBytes, 0): RX first.
   * txData: where a TX frame's data starts in its slot; hdrLen: the RX frame header's size.
   * `queues` > 1 (up to 256): that many such sockets (fds; fd is fds[0]), each with its own
   * rings, in one PACKET_FANOUT_HASH group (fanout: the group's getsockopt(PACKET_FANOUT)
   * word; 0 for one socket). Throws with .syscall 'PACKET_FANOUT' when the group cannot be made.
   */
  packetOpen(device: string, frameSize: number, frames: number, queues?: number): { fd: number; fds: number[]; fanout: number; ifindex: number; ringBytes: number; frameSize: number; frames: number; txData: number; hdrLen: number };
  /** send(fd, NULL, 0, MSG_DONTWAIT): the TX ring's requested frames go out. 0, or -errno. */
  packetKick(fd: number): number;
  /** getsockopt(SO_ERROR): the socket's pending error, cleared by the read (0: none). */
  packetError(fd: number): number;
  /** An AF_PACKET socket's bound ifindex, TPACKET version, PACKET_VNET_HDR and fanout group word (0: none); throws (EPROTOTYPE, ENOTSOCK) for any other fd. */
  packetInfo(fd: number): { ifindex: number; version: number; vnetHdr: boolean; fanout: number };
  /** getsockopt(PACKET_STATISTICS) tp_drops: frames the kernel dropped on the socket since the last call (the read resets it); -errno on failure. */
  packetDrops(fd: number): number;
  /** if_nametoindex(3): 0 when there is no such device. */
  ifIndex(name: string): number;

  /**
   * An AF_XDP socket on queue `queue` of `device` (addon/xdp.cc): a UMEM of `frames` frames of
   * `frameSize` bytes (a memfd: map it with mmap(umemFd, umemBytes, 0), then close umemFd),
   * fill/completion/RX/TX rings of `entries` (frames / 2) entries each (map ring r with
   * mmap(fd, r.bytes, r.pgoff); producer, consumer, flags and desc are byte offsets in it), an
   * XSKMAP holding the socket at index queue and the redirecting XDP program attached as a
   * bpf_link (close linkFd to detach it). Bound zero-copy if the driver can, copy mode
   * otherwise (zeroCopy); the program in driver mode if it can, generic otherwise (driverMode).
   * Errors: code is the errno name, syscall the step (XDP_UMEM_REG, bind AF_XDP,
   * XDP_MAP_CREATE_FAILED, XDP_MAP_UPDATE_FAILED, XDP_PROG_LOAD_FAILED, XDP_ATTACH_FAILED, ...).
   */
  xdpOpen(device: string, queue: number, frameSize: number, frames: number): XdpOpened;
  /** sendto(MSG_DONTWAIT) up to `rounds` times while the kernel says EAGAIN: the TX ring's frames go out. 0, or -errno. */
  xdpKick(fd: number, rounds: number): number;
  /** recvfrom(MSG_DONTWAIT): the wakeup the fill ring's XDP_RING_NEED_WAKEUP asks for. 0, or -errno. */
  xdpWakeRx(fd: number): number;
}

// The addon's exports object is built by N-API one property at a time and ends up in
// dictionary mode (%HasFastProperties: false), so every `native.copyRun(...)` in a worker's
// burst was a dictionary lookup in a LoadIC (seen in the worker's profile with logging on,
// bench/NOTES.md #31).
// A copy made by spreading it into an object literal has fast properties (Object.assign
// onto {} did not, measured), and the hot callers' loads become a map check and a field load.
export const native: Native = { ...loadAddon() };

/**
 * The addon file, found by node-gyp-build from the package root: build/Release/vhostfwd.node
 * when it was built from source (a git checkout; an install that compiled it), else the
 * prebuilt binary shipped in the package, prebuilds/<platform>-<arch>/node.napi.glibc.node.
 */
function loadAddon(): Native {
  const root = path.join(__dirname, '..', '..');
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return (require('node-gyp-build') as (dir: string) => unknown)(root) as Native;
  } catch (e) {
    const first = String((e as Error).message).split('\n')[0];
    throw new Error(`vhostfwd: the C++ addon cannot be loaded (${first}): build it with \`npm rebuild vhostfwd\` (needs g++, make, python3), or \`npm install\` in a checkout`, { cause: e });
  }
}
