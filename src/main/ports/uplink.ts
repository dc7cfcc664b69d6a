/**
 * Uplink ports, the control side (issue 22): a kernel TAP device (IFF_TAP | IFF_NO_PI |
 * IFF_VNET_HDR, 12-byte header, non-blocking) or an AF_PACKET socket on a device (TPACKET_V2
 * RX and TX rings, mapped here into a SharedArrayBuffer as guest memory is), opened by the
 * addon, and their two rings handed to the workers like a guest's: index 1 (frames from the
 * device) polled by the worker the placement names for "name:0", index 0 (frames towards
 * it) a destination for every worker. The data side: src/workers/tap-port.ts, packet-port.ts.
 *
 * An AF_PACKET port with `queues` > 1 is that many packet sockets in one PACKET_FANOUT group
 * (addon/packet.cc), numbered as a multi-queue guest's rings are: socket q's RX ring is ring
 * 2q + 1, polled by the worker placed for "name:q", its TX ring is ring 2q, a destination
 * the workers pick among by flow hash or source queue (steering), as for a guest's RX queues.
 *
 * The device is the operator's to configure (addresses, up, MTU, namespace); vhostfwd only
 * holds it open. A port that cannot be opened fails start() with an UplinkOpenError naming
 * the device and the cause, as a vhost-user socket that cannot be made does. Ports come
 * from the config, the state file or the control API (Forwarder.addUplink, removeInterface).
 */
import { F } from '../../protocol/constants';
import { CTRL_INTS, CTRL_LAST_AVAIL, CTRL_MAX_FRAME, QueueFeatures, STATS_SLOTS, ST_DROP_NO_BUF, VringDesc, XskDesc, XskRing } from '../../shared/types';
import { native, XdpRingInfo } from '../../native';
import { safeClose } from '../connection';
import { Dataplane, newDeviceId } from '../device';
import { log } from '../log';
import { newXskPool } from '../../workers/xsk-port';

/** linux/if_tun.h: what TUNSETOFFLOAD lets the kernel hand us */
const TUN_F_CSUM = 0x01;
const TUN_F_TSO4 = 0x02;
const TUN_F_TSO6 = 0x04;
const TUN_F_TSO_ECN = 0x08;

const bit = (n: number): number => 2 ** n;
/** frames from the kernel with offloads on: a partial checksum, TCP GSO (ECN too) */
const FROM_KERNEL = bit(F.VIRTIO_NET_F_CSUM) | bit(F.VIRTIO_NET_F_HOST_TSO4) | bit(F.VIRTIO_NET_F_HOST_TSO6) | bit(F.VIRTIO_NET_F_HOST_ECN);
/**
 * frames towards the kernel with offloads on: what tun's virtio_net_hdr_to_skb takes and the
 * stack then handles itself. UFO is left to the software path (offload.ts fragments it).
 */
const TO_KERNEL = bit(F.VIRTIO_NET_F_GUEST_CSUM) | bit(F.VIRTIO_NET_F_GUEST_TSO4) | bit(F.VIRTIO_NET_F_GUEST_TSO6) | bit(F.VIRTIO_NET_F_GUEST_ECN);

export class UplinkOpenError extends Error {
  /** the errno name of the cause ('' when it had none), e.g. ENODEV */
  readonly code: string;
  /** the config key the cause is about (the control API's error field): the device's, or af_xdp's queue */
  readonly field: 'name' | 'device' | 'queue';

  constructor(readonly iface: string, kind: UplinkKind, readonly device: string, cause: NodeJS.ErrnoException) {
    const code = cause.code ?? '';
    const why: Record<string, string> = {
      ENOENT: '/dev/net/tun does not exist (modprobe tun)',
      EACCES: 'permission denied (CAP_NET_ADMIN is needed to create a TAP)',
      EPERM: 'not permitted (CAP_NET_ADMIN is needed to create a TAP)',
      EBUSY: 'the device is held by another process (or is not a TAP with a virtio-net header)',
      EINVAL: kind === 'tap' ? 'the name is taken by a device that is not a TAP of this kind' : 'invalid ring geometry',
      ENODEV: 'no such network device',
    };
    if (kind === 'af_packet') Object.assign(why, { EPERM: 'not permitted (CAP_NET_RAW is needed for a packet socket)', EACCES: 'permission denied (CAP_NET_RAW)' });
    if (kind === 'af_packet' && cause.syscall === 'PACKET_FANOUT') {
      // queues > 1: the sockets' fanout group (addon/packet.cc asks the kernel for an unused id)
      Object.assign(why, {
        EINVAL: `the packet sockets cannot form a fanout group for the queues (${cause.message}; the kernel needs PACKET_FANOUT_FLAG_UNIQUEID, Linux 4.3+)`,
        EBUSY: 'the fanout group for the queues is taken (another socket group holds its id)',
        EALREADY: 'a packet socket is in another fanout group already',
        ENOSPC: 'the fanout group is full (too many queues)',
        ENOMEM: 'no free fanout group id is left in this network namespace',
      });
    }
    if (kind === 'af_xdp') {
      // the step that failed names the error (addon/xdp.cc): XDP_ATTACH_FAILED, XDP_PROG_LOAD_FAILED, ...
      Object.assign(why, {
        EPERM: 'not permitted (CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF or CAP_SYS_ADMIN are needed, and RLIMIT_MEMLOCK room for the UMEM on old kernels)',
        EACCES: 'permission denied (CAP_NET_RAW, CAP_BPF)',
        EINVAL: cause.syscall === 'bind AF_XDP' ? 'the device has no such queue' : cause.message,
        EBUSY: cause.syscall === 'XDP_ATTACH_FAILED' ? 'an XDP program is attached to the device already (not ours to replace)' : 'the queue is bound to another XDP socket',
        EEXIST: 'an XDP program is attached to the device already (not ours to replace)',
        EAFNOSUPPORT: 'the kernel has no AF_XDP (CONFIG_XDP_SOCKETS)',
      });
    }
    const what = kind === 'tap' ? 'TAP' : kind === 'af_xdp' ? 'an AF_XDP socket on' : 'an AF_PACKET socket on';
    super(`interface ${iface}: cannot open ${what} ${device}: ${why[code] ?? cause.message}${code ? ` (${cause.syscall ?? 'open'} ${code})` : ''}`);
    this.name = 'UplinkOpenError';
    this.code = code;
    // a TAP's device is named by its `name` key; a queue the device lacks by `queue`
    this.field = kind === 'tap' ? 'name' : kind === 'af_xdp' && code === 'EINVAL' && cause.syscall === 'bind AF_XDP' ? 'queue' : 'device';
  }
}

/** The TPACKET_V2 ring geometry the workers need (native.packetOpen's). */
export interface PacketGeometry {
  ringBytes: number;
  frameSize: number;
  frames: number;
  txData: number;
  hdrLen: number;
}

/**
 * A takeover's record of an uplink port: its fd (the index in the message) and, for AF_PACKET,
 * its rings' geometry. Its counters and ring heads travel with the positions.
 */
export interface UplinkSnapshot {
  name: string;
  fd: number;
  packet?: PacketGeometry;
  /** AF_PACKET with queues > 1: the other queues' sockets (queue 1 first), indices as `fd` */
  queueFds?: number[];
}

export type UplinkKind = 'tap' | 'af_packet' | 'af_xdp';

/** TPACKET_V2: the RX frame header's size (struct tpacket2_hdr, aligned) and where a TX frame's data starts */
const PACKET_HDR_LEN = 32;
const PACKET_TX_DATA = 32;

export interface UplinkOptions {
  kind: UplinkKind;
  /** the port's name (pairs, stats) */
  name: string;
  /** the network device: the TAP's name, or the device the packet socket binds to */
  device: string;
  /** AF_PACKET: ring frames of this many bytes (a power of two), and frames per ring */
  frameSize: number;
  frames: number;
  /** AF_XDP: the device queue */
  queue: number;
  /** AF_PACKET: queue pairs, one packet socket each (a fanout group when > 1); 1 for the others */
  queues: number;
  /** offloads both ways (TUNSETOFFLOAD; the header handed over): default true */
  offloads: boolean;
  /** frames towards the kernel over mtu + 18 are dropped as too big; null: no limit */
  mtu: number | null;
}

export class UplinkPort {
  readonly id = newDeviceId();
  /** the TAP fd, the AF_XDP socket, queue 0's packet socket; -1 when closed */
  fd = -1;
  /** AF_PACKET: every queue's socket (fds[0] is fd); empty when closed */
  private fds: number[] = [];
  /**
   * ring 2q: towards the kernel; ring 2q + 1: from it (the guest's RX / TX naming), for each
   * queue q (one queue but on a multi-queue AF_PACKET port)
   */
  readonly ringStats: SharedArrayBuffer[];
  /** each ring handed to the workers */
  private readonly started: boolean[];
  /** why a worker gave the port up (the device went away), null while it runs */
  failed: string | null = null;

  /** AF_PACKET: the geometry of every queue's rings (null for a TAP) */
  private packet: PacketGeometry | null = null;
  /** AF_PACKET: each queue's RX and TX rings, mapped */
  private maps: SharedArrayBuffer[] = [];
  /** AF_XDP: the UMEM and rings (the socket is `fd`) and the bpf_link that holds the program on the device */
  private xsk: XskDesc | null = null;
  private linkFd = -1;
  /**
   * each ring's control words, kept for the port's life: an AF_PACKET ring's head lives there
   * (CTRL_LAST_AVAIL) across a stop and a start, a move to another worker and a takeover
   */
  private readonly ringCtrl: SharedArrayBuffer[];

  constructor(readonly opts: UplinkOptions, readonly port: number, private readonly dp: Dataplane) {
    const rings = 2 * this.queues;
    this.ringStats = Array.from({ length: rings }, () => new SharedArrayBuffer(STATS_SLOTS * 8));
    this.ringCtrl = Array.from({ length: rings }, () => new SharedArrayBuffer(CTRL_INTS * 4));
    this.started = new Array<boolean>(rings).fill(false);
    if (opts.mtu !== null) for (let i = 0; i < rings; i += 2) new Int32Array(this.ringCtrl[i])[CTRL_MAX_FRAME] = opts.mtu + 18;
  }

  /** queue pairs: an AF_PACKET port's sockets, else 1 */
  get queues(): number {
    return this.opts.kind === 'af_packet' ? Math.max(1, this.opts.queues) : 1;
  }

  get kind(): UplinkKind {
    return this.opts.kind;
  }

  get name(): string {
    return this.opts.name;
  }

  get running(): boolean {
    return this.started.some((s) => s);
  }

  /**
   * Hand the rings of direction `dir` to the workers (0: towards the device, 1: from it:
   * ring 2q + dir of every queue q), those not running.
   */
  async startRing(dir: 0 | 1): Promise<void> {
    if (this.fd < 0) return;
    const starts: Promise<void>[] = [];
    for (let i = dir; i < this.started.length; i += 2) {
      if (this.started[i]) continue;
      this.started[i] = true;
      starts.push(this.dp.startRing(this.ring(i), [], null));
    }
    await Promise.all(starts);
  }

  /** Take the rings of direction `dir` from the workers (at a burst boundary), those running. */
  async stopRing(dir: 0 | 1): Promise<void> {
    const stops: Promise<void>[] = [];
    for (let i = dir; i < this.started.length; i += 2) {
      if (!this.started[i]) continue;
      this.started[i] = false;
      stops.push(this.dp.stopRing(this.id, i));
    }
    await Promise.all(stops);
  }

  /**
   * Takeover, new side: the previous process's TAP fd, checked (a TAP of this name with a
   * 12-byte header), or its packet sockets (queue 0's and `more`, the other queues'); the
   * rings start later (startRing), once the previous process stopped them.
   */
  adoptFd(fd: number, geometry?: PacketGeometry, more: readonly number[] = []): void {
    if (this.kind === 'tap') {
      const info = native.tapInfo(fd);
      if (info.name !== this.opts.device || info.vnetHdr !== 12) throw new Error(`interface ${this.name}: the fd handed over is TAP ${info.name} with a ${info.vnetHdr}-byte header`);
    } else {
      // the packet sockets, one per queue: bound to this device, TPACKET_V2 with virtio-net
      // headers, and rings of the geometry this config asks for (the mappings are made from
      // it); several: all in one fanout group (the kernel spreads the frames over them)
      const all = [fd, ...more];
      if (all.length !== this.queues) throw new Error(`interface ${this.name}: ${all.length} packet sockets handed over, the config asks for queues: ${this.queues}`);
      const ifindex = native.ifIndex(this.opts.device);
      const infos = all.map((f) => native.packetInfo(f));
      for (const info of infos) {
        if (info.version !== 2 || !info.vnetHdr || info.ifindex !== ifindex) throw new Error(`interface ${this.name}: the fd handed over is not a TPACKET_V2 socket with virtio-net headers on ${this.opts.device} (ifindex ${info.ifindex}, version ${info.version})`);
      }
      if (all.length > 1 && (infos[0].fanout === 0 || infos.some((i) => i.fanout !== infos[0].fanout))) throw new Error(`interface ${this.name}: the packet sockets handed over are not one fanout group (${infos.map((i) => i.fanout).join(', ')})`);
      const g = geometry;
      if (!g || g.frameSize !== this.opts.frameSize || g.frames !== this.opts.frames || g.ringBytes !== g.frames * g.frameSize || g.txData !== PACKET_TX_DATA || g.hdrLen !== PACKET_HDR_LEN) {
        throw new Error(`interface ${this.name}: the rings handed over are not ${this.opts.frames} frames of ${this.opts.frameSize} bytes: ${JSON.stringify(g ?? null)}`);
      }
      this.packet = { ringBytes: g.ringBytes, frameSize: g.frameSize, frames: g.frames, txData: g.txData, hdrLen: g.hdrLen };
      this.maps = all.map((f) => native.mmap(f, 2 * g.ringBytes, 0));
      this.fds = all;
    }
    this.fd = fd;
    this.failed = null;
  }

  /** Open the device and start both rings, towards the device first. */
  async start(): Promise<void> {
    if (this.kind === 'tap') {
      try {
        this.fd = native.tapOpen(this.opts.device, this.opts.offloads ? TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN : 0).fd;
      } catch (e) {
        throw new UplinkOpenError(this.name, this.kind, this.opts.device, e as NodeJS.ErrnoException);
      }
    } else if (this.kind === 'af_xdp') {
      this.openXsk();
    } else {
      let p: ReturnType<typeof native.packetOpen>;
      try {
        p = native.packetOpen(this.opts.device, this.opts.frameSize, this.opts.frames, this.queues);
      } catch (e) {
        throw new UplinkOpenError(this.name, this.kind, this.opts.device, e as NodeJS.ErrnoException);
      }
      this.fd = p.fd;
      this.fds = p.fds;
      try {
        if (p.txData !== PACKET_TX_DATA || p.hdrLen !== PACKET_HDR_LEN) throw new Error(`unexpected TPACKET_V2 header sizes ${p.hdrLen}/${p.txData}`);
        this.packet = { ringBytes: p.ringBytes, frameSize: p.frameSize, frames: p.frames, txData: p.txData, hdrLen: p.hdrLen };
        for (const f of p.fds) this.maps.push(native.mmap(f, 2 * p.ringBytes, 0));
      } catch (e) {
        this.closePacket();
        throw new UplinkOpenError(this.name, this.kind, this.opts.device, e as NodeJS.ErrnoException);
      }
    }
    this.failed = null;
    await this.startRing(0);
    await this.startRing(1);
    log.info(`${this.kind} port up`, { iface: this.name, device: this.opts.device, port: this.port, fd: this.fd, offloads: this.opts.offloads, ...(this.packet ? { frameSize: this.packet.frameSize, frames: this.packet.frames, queues: this.queues } : {}), ...this.xskInfo });
  }

  /** AF_XDP: how the socket and the program run (logged, shown), null otherwise */
  xskInfo: { queue: number; frameSize: number; frames: number; mode: 'zero-copy' | 'copy'; xdp: 'driver' | 'generic' } | null = null;

  /**
   * AF_XDP: the socket, UMEM, rings, XSKMAP and program (native.xdpOpen), the UMEM and the
   * rings mapped here into SharedArrayBuffers for the workers, the fill ring given every
   * chunk of the RX half before the first frame can arrive.
   */
  private openXsk(): void {
    let x: ReturnType<typeof native.xdpOpen>;
    try {
      x = native.xdpOpen(this.opts.device, this.opts.queue, this.opts.frameSize, this.opts.frames);
    } catch (e) {
      throw new UplinkOpenError(this.name, this.kind, this.opts.device, e as NodeJS.ErrnoException);
    }
    this.fd = x.fd;
    this.linkFd = x.linkFd;
    try {
      const ring = (r: XdpRingInfo): XskRing => ({ sab: native.mmap(x.fd, r.bytes, r.pgoff), producer: r.producer, consumer: r.consumer, flags: r.flags, desc: r.desc });
      const pool = newXskPool(x.entries, x.frameSize);
      const d: XskDesc = { kind: 'af_xdp', fd: x.fd, umem: native.mmap(x.umemFd, x.umemBytes, 0), frameSize: x.frameSize, frames: x.frames, entries: x.entries, rx: ring(x.rx), tx: ring(x.tx), fill: ring(x.fill), comp: ring(x.comp), pool };
      const fill = new Uint32Array(d.fill.sab);
      for (let k = 0; k < x.entries; k++) {
        fill[(d.fill.desc >> 2) + 2 * k] = k * x.frameSize;
        fill[(d.fill.desc >> 2) + 2 * k + 1] = 0;
      }
      Atomics.store(fill, d.fill.producer >> 2, x.entries);
      this.xsk = d;
    } catch (e) {
      this.closeXsk();
      throw new UplinkOpenError(this.name, this.kind, this.opts.device, e as NodeJS.ErrnoException);
    } finally {
      safeClose(x.umemFd);
    }
    this.xskInfo = { queue: this.opts.queue, frameSize: x.frameSize, frames: x.frames, mode: x.zeroCopy ? 'zero-copy' : 'copy', xdp: x.driverMode ? 'driver' : 'generic' };
  }

  /** The program leaves the device with its link, the socket (and its UMEM pins) with its fd. */
  private closeXsk(): void {
    safeClose(this.linkFd);
    this.linkFd = -1;
    safeClose(this.fd);
    this.fd = -1;
    const d = this.xsk;
    this.xsk = null;
    if (d) for (const sab of [d.umem, d.rx.sab, d.tx.sab, d.fill.sab, d.comp.sab]) native.retire(sab);
  }

  /** AF_PACKET: every socket closed and every mapping let go (the sockets' rings go with the last) */
  private closePacket(): void {
    for (const sab of this.maps) native.retire(sab);
    this.maps = [];
    for (const f of this.fds) safeClose(f);
    this.fds = [];
    this.fd = -1;
    this.packet = null;
  }

  /** Ring `i` as the workers take it: queue i >> 1, towards the device when even. */
  private ring(i: number): VringDesc {
    const ctrl = this.ringCtrl[i];
    const index = i & 1;
    const q = i >> 1;
    // AF_PACKET with ring frames too small for a GSO frame: partial checksums only (GSO frames
    // are segmented towards it, and the kernel's would not fit a frame: cut, dropped, counted)
    const gso = this.packet === null || this.packet.frameSize >= 65536 + 128;
    const csumOnly = index === 0 ? bit(F.VIRTIO_NET_F_GUEST_CSUM) : bit(F.VIRTIO_NET_F_CSUM);
    // AF_XDP: no virtio-net header crosses, so no offload either way (completed, segmented before)
    const netBits = !this.opts.offloads || this.kind === 'af_xdp' ? 0 : !gso ? csumOnly : index === 0 ? TO_KERNEL : FROM_KERNEL;
    const features: QueueFeatures = {
      hdrLen: 12, mrgRxbuf: true, eventIdx: false, indirect: false, inOrder: false, packed: false, logAll: false,
      netBits,
    };
    const nowhere = { region: 0, offset: 0 };
    return {
      device: this.id, port: this.port, index: i, size: 0, desc: nowhere, avail: nowhere, used: nowhere, logUsedGpa: -1, kickFd: -1, callFd: -1,
      features, ctrl, stats: this.ringStats[i], uplink: this.xsk ?? (this.packet ? { kind: 'af_packet', fd: this.fds[q], ring: this.maps[q], ...this.packet } : { kind: 'tap', fd: this.fd }),
    };
  }

  /** A worker gave a ring up (the device went away): stop the other rings too, keep the fds for stop(). */
  onBroken(index: number, reason: string): void {
    if (!this.running || this.failed !== null) return;
    this.failed = `ring ${index}: ${reason}`;
    log.error(`${this.kind} port failed: its rings stopped (restart once the device is back)`, { iface: this.name, reason: this.failed });
    if (index >= 0 && index < this.started.length) this.started[index] = false;
    void Promise.all([this.stopRing(0), this.stopRing(1)]).catch(() => undefined);
  }

  /** Stop the rings, from the kernel first, and close the fd (the kernel deletes a non-persistent TAP). */
  async stop(): Promise<void> {
    await this.stopRing(1);
    await this.stopRing(0);
    if (this.kind === 'af_xdp') this.closeXsk();
    if (this.kind === 'af_packet') this.closePacket();
    safeClose(this.fd);
    this.fd = -1;
  }

  /** Takeover failed, old side: run again on the same fd (the rings it stopped). */
  async resume(): Promise<void> {
    if (this.failed !== null) return;
    await this.startRing(0);
    await this.startRing(1);
  }

  /** Takeover succeeded, old side: the successor holds the device; let go of the fd. */
  abandon(): void {
    this.started.fill(false);
    if (this.kind === 'af_packet') this.closePacket();
    safeClose(this.fd);
    this.fd = -1;
  }

  /**
   * Takeover, old side: the fd (numbered for the message), an AF_PACKET port's ring geometry
   * and its other queues' sockets (each keeps its fanout group); the counters follow with the positions.
   */
  snapshot(fd: (n: number) => number): UplinkSnapshot {
    const p = this.packet;
    if (!p) return { name: this.name, fd: fd(this.fd) };
    const snap: UplinkSnapshot = { name: this.name, fd: fd(this.fd), packet: { ringBytes: p.ringBytes, frameSize: p.frameSize, frames: p.frames, txData: p.txData, hdrLen: p.hdrLen } };
    if (this.fds.length > 1) snap.queueFds = this.fds.slice(1).map((f) => fd(f));
    return snap;
  }

  /**
   * AF_PACKET: frames the kernel dropped because a queue's RX ring had no free frame (the
   * worker behind a burst, or the process stopped), read from each socket (PACKET_STATISTICS,
   * which the read resets) into that queue's from-device counters as dropNoBuffer: the port's
   * ring had no buffer for them, as a guest's RX ring without one counts it. Called before the
   * counters are read. This thread is the slot's only writer: a worker counts no-buffer drops
   * on the towards-device rings only (PacketPort.rxReserve).
   */
  syncKernelDrops(): void {
    if (!this.packet) return;
    this.fds.forEach((fd, q) => {
      const n = native.packetDrops(fd);
      if (n > 0) new Float64Array(this.ringStats[2 * q + 1])[ST_DROP_NO_BUF] += n;
    });
  }

  /** Takeover, old side, rings stopped: the counters, as the positions message carries a device's. */
  position(): { name: string; rings: Array<{ index: number; lastAvailIdx: number; stats: number[]; started: boolean }> } {
    this.syncKernelDrops();
    return { name: this.name, rings: this.ringCtrl.map((ctrl, i) => ({ index: i, lastAvailIdx: new Int32Array(ctrl)[CTRL_LAST_AVAIL] & 0xffff, stats: Array.from(new Float64Array(this.ringStats[i])), started: true })) };
  }

  /** New side: the counters continue where the old process left them, an AF_PACKET ring from where it stopped. */
  restorePositions(rings: ReadonlyArray<{ index: number; lastAvailIdx: number; stats: readonly number[] }>): void {
    for (const r of rings) {
      if (!Number.isInteger(r.index) || r.index < 0 || r.index >= this.ringCtrl.length) continue;
      new Float64Array(this.ringStats[r.index]).set(r.stats.slice(0, STATS_SLOTS));
      if (this.packet) new Int32Array(this.ringCtrl[r.index])[CTRL_LAST_AVAIL] = r.lastAvailIdx & (this.packet.frames - 1);
    }
  }
}
