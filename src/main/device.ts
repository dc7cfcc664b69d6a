/**
 * One vhost-user device (one frontend connection): negotiation state and the ring
 * lifecycle. Requests go through one declarative table (request-table.ts) that checks
 * payload size, fd count and acked features BEFORE a typed handler here runs.
 *
 * The table also says what the datapath does around each request (its `pause` column):
 * no handler here stops rings unless that column names it, with the reason.
 *
 * Ring lifecycle (docs/interop/vhost-user.rst, "Starting and stopping rings"):
 *  - a ring starts when it has a kick fd (or the no-fd flag), an address, and is enabled;
 *  - without VHOST_USER_F_PROTOCOL_FEATURES a ring is enabled from the start, with it the
 *    ring waits for SET_VRING_ENABLE;
 *  - GET_VRING_BASE stops the ring (after the worker confirms) and returns last_avail_idx;
 *  - a ring (re)starting resynchronises from used->idx (SET_VRING_ADDR resumes there).
 */
import {
  DEFAULT_FEATURES, DEFAULT_PROTOCOL_FEATURES, F, OFFLOAD_FEATURES, FeatureName, MAX_MEM_SLOTS,
  MAX_QUEUE_SIZE, NET_HDR_LEGACY, NET_HDR_MRG, PF, ProtocolFeatureName, VHOST_VRING_F_LOG, bit, hasBit, reqName,
} from '../protocol/constants';
import {
  CTRL_INTS, CTRL_LAST_AVAIL, CTRL_LAST_USED, CTRL_MAX_FRAME, CTRL_SIGNALLED_USED, LogDesc, QueueFeatures, RingLocation, STATS_SLOTS, VringDesc, RegionDesc,
} from '../shared/types';
import { PACKED_EVENT_AREA, availRingBytes, descTableBytes, usedRingBytes } from '../protocol/ring-layout';
import { Message, encodeReply, needsReply } from '../protocol/codec';
import { safeClose } from './connection';
import { log } from './log';
import { native } from '../native';
import { MemoryTable, mapRegion, statFd } from './memory-table';
import { LogArea, MemoryRegion, ProtocolError, VringAddr, VringFile, VringState, encodeU64, encodeVringState } from '../protocol/messages';
import { BackendRequests, REQUESTS, RequestContext, RequestSpec, pausesAllRings } from './request-table';
import { rarpFrame } from './net-frames';

/** What a device needs from the dataplane (implemented by the worker pool). */
export interface Dataplane {
  /** hand a ring to the workers; `regions`/`log` are the device's current memory and log. */
  /** resolves once every worker that must see the ring has it (so a frontend's next packet is never early) */
  /** `parked`: built by the workers, neither polled nor written until unpark() (a takeover's successor) */
  startRing(ring: VringDesc, regions: readonly RegionDesc[], log: LogDesc | null, parked?: boolean): Promise<void>;
  /** resolves once no worker touches the ring any more (its ctrl holds the final indices). */
  stopRing(device: number, index: number): Promise<void>;
  /** change a running ring's dirty logging in place; resolves once every worker applied it. */
  setRingLogging(device: number, index: number, logAll: boolean, logUsedGpa: number, log: LogDesc | null): Promise<void>;
  /** inject a frame as if the guest of `port` had sent it (RARP after migration). */
  injectFrame(port: number, frame: Uint8Array): void;
}

/** A dirty log as the workers get it (LogDesc), with the mapping it came from. */
export type DeviceLog = LogDesc & LogArea;

/**
 * A dirty log of the backend's own for when the frontend sent none (SET_LOG_BASE), one per
 * device. The frontend's log always comes first: the device consults this only without
 * one. The default (FRONTEND_LOG_ONLY) has none: the workers log only what the frontend
 * asked for (VHOST_F_LOG_ALL, VHOST_VRING_F_LOG). Forced logging for benchmarks is one
 * (forced-log.ts).
 */
export interface LogPolicy {
  /** the backend's log now, null without one */
  readonly log: DeviceLog | null;
  /**
   * Whether a ring the frontend did not flag VHOST_VRING_F_LOG has its used ring logged
   * at its guest address anyway (as a migration's log_guest_addr would be).
   */
  readonly logsUsedRing: boolean;
  /** a ring starts and the frontend sent no log: make one for guest memory up to gpaEnd if wanted and none is held */
  ringStarting(gpaEnd: number): void;
  /** forget the backend's log: guest memory changed (it may not cover it), the frontend sent its own, or the device was reset */
  drop(): void;
}

/** The default LogPolicy: no log but the frontend's. */
const FRONTEND_LOG_ONLY: LogPolicy = {
  log: null,
  logsUsedRing: false,
  ringStarting: () => {},
  drop: () => {},
};

/** Per-interface settings the device needs. */
export interface DeviceOptions {
  name: string;
  port: number;
  queuePairs: number;
  /** features removed from the default offer. */
  maskFeatures?: readonly FeatureName[];
  /** false: none of OFFLOAD_FEATURES is offered (config `offloads`; default true) */
  offloads?: boolean;
  /** VIRTIO_F_RING_PACKED offered (config `packedRing`; default false) */
  packedRing?: boolean;
  maskProtocolFeatures?: readonly ProtocolFeatureName[];
  mtu?: number | null;
  /**
   * Makes the device's LogPolicy (one per device, so per connection), consulted when the
   * frontend sent no log; default FRONTEND_LOG_ONLY. Config `forceLog` gives forcedLog
   * (forced-log.ts).
   */
  logPolicy?: (device: string) => LogPolicy;
}

/** Where a ring stopped for a takeover, and its counters. */
export interface RingPosition {
  index: number;
  lastAvailIdx: number;
  /** STATS_SLOTS doubles: they continue in the next process */
  stats: number[];
  /** whether the ring was running (it restarts in the next process) */
  started: boolean;
}

/**
 * A device's negotiated state as a takeover hands it to the next process (handover/): all
 * plain data, fds as indices into the message's fd list. Taken while the rings still run:
 * their positions and counters come afterwards (RingPosition).
 */
export interface DeviceSnapshot {
  /** bigints as hex strings */
  features: string;
  protocolFeatures: string;
  lastLogAllFeatures: string | null;
  owner: boolean;
  status: number;
  mtu: number | null;
  regions: Array<MemoryRegion & { refs: number; fd: number }>;
  log: { mmapSize: number; mmapOffset: number; fd: number } | null;
  rings: Array<{
    index: number; num: number; addr: VringAddr | null; lastAvailIdx: number; hasKick: boolean; enabled: boolean;
    kick: number; call: number; err: number;
    /** the ring's counters (STATS_SLOTS doubles): they continue in the next process */
    stats: number[];
    /** whether the ring was running (it restarts in the next process) */
    started: boolean;
  }>;
}

/** Reply sender (the connection) and resetter. */
export interface DeviceLink {
  send(bytes: Uint8Array, fds?: readonly number[]): void;
  /** drop the connection: the device is reset with `reason`. */
  reset(reason: string): void;
}

export class Vring {
  num = 0;
  addr: VringAddr | null = null;
  /** last_avail_idx to resume from (SET_VRING_BASE, or read back from the worker). */
  lastAvailIdx = 0;
  kickFd = -1;
  /** SET_VRING_KICK was received (an fd or the no-fd flag, then the ring is polled): the ring may start. */
  hasKick = false;
  callFd = -1;
  errFd = -1;
  enabled = false;
  started = false;
  /** a stop in progress (two stops of one ring must wait for the same worker ack) */
  stopping: Promise<void> | null = null;
  ctrl = new SharedArrayBuffer(CTRL_INTS * 4);
  readonly stats = new SharedArrayBuffer(STATS_SLOTS * 8);
  /** started parked (a takeover's successor before the previous process stopped): the used ring (split), or null (packed) */
  parked: { used: RingLocation | null } | null = null;
  constructor(readonly index: number) {}

  closeFds(): void {
    safeClose(this.kickFd);
    safeClose(this.callFd);
    safeClose(this.errFd);
    this.kickFd = this.callFd = this.errFd = -1;
    this.hasKick = false;
  }
}

let nextDeviceId = 1;

/** A new device id: devices and uplink ports (ports/) share the one space the workers key rings by. */
export function newDeviceId(): number {
  return nextDeviceId++;
}

function featureMask(names: readonly string[], table: Readonly<Record<string, number>>): bigint {
  let m = 0n;
  for (const n of names) m |= bit(table[n]);
  return m;
}

export class Device implements BackendRequests {
  readonly id = newDeviceId();
  readonly offered: bigint;
  readonly offeredProtocol: bigint;
  features = 0n;
  protocolFeatures = 0n;
  owner = false;
  status = 0;
  /** the port's MTU (config mtu, then NET_SET_MTU); null = no limit */
  mtu: number | null;
  readonly mem = new MemoryTable();
  /** the frontend's dirty log (SET_LOG_BASE, or handed over by a takeover); null without one */
  private frontendLog: DeviceLog | null = null;
  /** where a log comes from without the frontend's (DeviceOptions.logPolicy) */
  private readonly logPolicy: LogPolicy;
  /** the file of the last log from SET_LOG_BASE: a repeat of the log in use (one per queue pair) is not mapped again. */
  private logFile: { dev: number; ino: number } | null = null;
  /** the frontend's log file (SET_LOG_BASE), kept open for a takeover; -1 without one */
  private logFd = -1;
  readonly vrings: Vring[];
  /** requests seen, by name (for logs and tests: e.g. migration shows SET_LOG_BASE). */
  readonly seen = new Map<string, number>();
  /** the last SET_FEATURES value that had LOG_ALL set (null: none yet); for logs and tests. */
  lastLogAllFeatures: bigint | null = null;
  private broken = false;

  constructor(readonly opts: DeviceOptions, private readonly dp: Dataplane, private readonly link: DeviceLink) {
    // The offer is a function of the config alone: QEMU refuses to reconnect to a backend
    // that offers fewer features than its guest acked (test/offloads-config.test.ts).
    const mask = featureMask(opts.maskFeatures ?? [], F) | (opts.offloads === false ? featureMask(OFFLOAD_FEATURES, F) : 0n);
    // VIRTIO_NET_F_MTU only with an MTU to stand behind (QEMU passes it to the guest only
    // with host_mtu set, and then sends NET_SET_MTU)
    this.offered = (featureMask(DEFAULT_FEATURES, F) | (opts.mtu != null ? bit(F.VIRTIO_NET_F_MTU) : 0n) | (opts.packedRing ? bit(F.VIRTIO_F_RING_PACKED) : 0n)) & ~mask;
    const pmask = featureMask(opts.maskProtocolFeatures ?? [], PF);
    this.offeredProtocol = featureMask(DEFAULT_PROTOCOL_FEATURES, PF) & ~pmask;
    this.mtu = opts.mtu ?? null;
    this.vrings = Array.from({ length: opts.queuePairs * 2 }, (_, i) => new Vring(i));
    this.logPolicy = opts.logPolicy?.(opts.name) ?? FRONTEND_LOG_ONLY;
  }

  /** The dirty log the workers write: the frontend's, else the LogPolicy's; null: none. */
  get log(): DeviceLog | null {
    return this.frontendLog ?? this.logPolicy.log;
  }

  get protocolFeaturesNegotiated(): boolean {
    return hasBit(this.features, F.VHOST_USER_F_PROTOCOL_FEATURES);
  }
  hasProtocol(pf: number): boolean {
    return hasBit(this.protocolFeatures, pf);
  }

  /**
   * Entry point for one message: validate against the table (size, fds, gating), parse
   * the payload into its typed value, pause rings as the table's `pause` column says,
   * run the typed handler, reply, resume.
   */
  async handle(m: Message): Promise<void> {
    if (this.broken) {
      closeAll(m);
      return;
    }
    const name = reqName(m.request);
    this.seen.set(name, (this.seen.get(name) ?? 0) + 1);
    const spec = REQUESTS.get(m.request);
    try {
      if (!spec) {
        closeAll(m);
        log.warn('unsupported vhost-user request', { dev: this.opts.name, request: name });
        if (needsReply(m)) this.ack(m, false);
        return;
      }
      const reason = this.validate(spec, m);
      if (reason !== null) throw new ProtocolError(spec.name, reason);
      log.debug('request', { dev: this.opts.name, request: spec.name, size: m.payload.length, fds: m.fds.length });
      // Decided before the handler: RESET_OWNER clears the protocol features it is acked under.
      const wantAck = needsReply(m) && this.hasProtocol(PF.REPLY_ACK);
      const payload = spec.parse(m.payload, spec.name);
      // The handler takes the fds it keeps from m.fds; fail() closes the rest.
      const rq: RequestContext = { name: spec.name, fds: m.fds };
      if (pausesAllRings(spec, this, payload)) await this.pauseRings();
      const reply = await spec.handle(this, payload, rq);
      await this.resumeRings(spec.name);
      if (reply) this.link.send(encodeReply(m.request, reply));
      else if (wantAck) this.ack(m, true);
    } catch (e) {
      this.fail(m, spec?.name ?? name, e);
    }
  }

  /** Header-level validation: size, fd count, feature gating. Returns a reason or null. */
  private validate(spec: RequestSpec, m: Message): string | null {
    const size = m.payload.length;
    if (typeof spec.size === 'number' && size !== spec.size) {
      return `payload size ${size}, expected ${spec.size}`;
    }
    if (typeof spec.size === 'object' && (size < spec.size.min || size > spec.size.max)) {
      return `payload size ${size}, expected ${spec.size.min}..${spec.size.max}`;
    }
    const want = spec.fds(m);
    if (typeof want === 'number' ? m.fds.length !== want : m.fds.length < want.min || m.fds.length > want.max) {
      return `${m.fds.length} file descriptors, expected ${typeof want === 'number' ? want : `${want.min}..${want.max}`}`;
    }
    if (spec.protocolFeature !== undefined && !this.hasProtocol(spec.protocolFeature)) {
      return `protocol feature ${Object.keys(PF).find((k) => PF[k as ProtocolFeatureName] === spec.protocolFeature)} not negotiated`;
    }
    if (spec.needsProtocolFeatures && !hasBit(this.offered, F.VHOST_USER_F_PROTOCOL_FEATURES)) {
      return 'VHOST_USER_F_PROTOCOL_FEATURES not offered';
    }
    return null;
  }

  private ack(m: Message, ok: boolean): void {
    this.link.send(encodeReply(m.request, encodeU64(ok ? 0 : 1)));
  }

  /**
   * fds a handler did not take (handlers take ownership with rq.fds.splice) are closed
   * here, exactly once, whatever went wrong.
   */
  private fail(m: Message, name: string, e: unknown): void {
    closeAll(m);
    const reason = e instanceof ProtocolError ? e.reason : (e as Error).message;
    log.error('vhost-user request rejected; resetting device', { dev: this.opts.name, request: name, reason });
    // The frontend may be waiting for an answer: tell it the request failed before the reset.
    const spec = REQUESTS.get(m.request);
    if (spec?.replies || (needsReply(m) && this.hasProtocol(PF.REPLY_ACK))) {
      try {
        this.ack(m, false);
      } catch {
        // the socket may already be gone
      }
    }
    this.broken = true;
    this.link.reset(`${name}: ${reason}`);
  }

  /** A worker found the guest breaking a ring rule: reset this device only. */
  brokenByGuest(reason: string): void {
    if (this.broken) return;
    this.broken = true;
    this.link.reset(`guest error: ${reason}`);
  }

  vring(index: number, req: string): Vring {
    const v = this.vrings[index];
    if (!v) throw new ProtocolError(req, `ring index ${index} out of range (device has ${this.vrings.length} rings)`);
    return v;
  }

  // ---- ring control ----

  /** Stop every running ring; returns them so they can be resumed. */
  async pauseRings(): Promise<Vring[]> {
    const running = this.vrings.filter((v) => v.started);
    await Promise.all(running.map((v) => this.stopRing(v)));
    return running;
  }

  /** After a request: restart paused rings and start any ring whose setup just completed. */
  async resumeRings(req: string): Promise<void> {
    const started: Promise<void>[] = [];
    for (const v of this.vrings) {
      const p = this.maybeStart(v, req);
      if (p) started.push(p);
    }
    // The reply (or REPLY_ACK) goes out only when workers hold the rings: a guest that
    // sends right after SET_VRING_ENABLE must not find a peer RX ring not attached yet.
    await Promise.all(started);
  }

  stopRing(v: Vring): Promise<void> {
    if (v.stopping) return v.stopping;
    if (!v.started) return Promise.resolve();
    v.stopping = this.dp.stopRing(this.id, v.index).then(
      () => {
        v.started = false;
        v.stopping = null;
        v.lastAvailIdx = new Int32Array(v.ctrl)[CTRL_LAST_AVAIL] & 0xffff;
        // packed rings: index | wrap << 15; the worker returns every chain it takes before it
        // stops, so the used index and wrap counter equal these
      },
      (e: unknown) => {
        // the worker missed its deadline and was replaced without this ring: stopped all the same
        v.started = false;
        v.stopping = null;
        throw e;
      },
    );
    return v.stopping;
  }

  /**
   * Start a ring if every condition holds. Throws ProtocolError if its addresses are bad.
   * `parked`: a takeover's successor while the previous process still polls: the workers
   * build the ring but neither poll nor write it, and its position is not known yet;
   * adoptPositions() sets it and Dataplane.unpark() lets the workers go.
   */
  maybeStart(v: Vring, req: string, parked = false): Promise<void> | null {
    if (v.started || !v.hasKick || !v.enabled || !v.addr || v.num === 0 || this.mem.count === 0) return null;
    const ring = this.describeRing(v, req, parked);
    if (!this.frontendLog) this.logPolicy.ringStarting(this.mem.gpaEnd);
    const attached = this.dp.startRing(ring, this.mem.descs(), this.log, parked);
    v.started = true;
    log.debug('ring started', { dev: this.opts.name, ring: v.index, lastAvail: v.lastAvailIdx });
    return attached;
  }

  /**
   * Where the used ring's writes are logged: the frontend's ring log address when it set
   * VHOST_VRING_F_LOG; else the used ring's guest address if the LogPolicy logs it anyway;
   * else -1 (not logged).
   */
  private usedLogGpa(a: VringAddr): number {
    if ((a.flags & VHOST_VRING_F_LOG) !== 0) return a.log;
    return this.logPolicy.logsUsedRing ? this.mem.uvaToGpa(a.used) : -1;
  }

  private describeRing(v: Vring, req: string, parked: boolean): VringDesc {
    const a = v.addr as VringAddr;
    const n = v.num;
    const where = (what: string, uva: number, len: number): RingLocation => {
      const loc = this.mem.fromUva(uva, len);
      if (!loc) throw new ProtocolError(req, `ring ${v.index} ${what} 0x${uva.toString(16)}+${len} is outside guest memory`);
      return loc;
    };
    if (this.packed) return this.describePackedRing(v, req, where, parked);
    const eventIdx = hasBit(this.features, F.VIRTIO_RING_F_EVENT_IDX);
    const desc = where('descriptor table', a.desc, descTableBytes(n));
    const avail = where('available ring', a.avail, availRingBytes(n, eventIdx));
    const used = where('used ring', a.used, usedRingBytes(n, eventIdx));
    if (a.desc % 16 || a.avail % 2 || a.used % 4) throw new ProtocolError(req, `ring ${v.index} addresses are misaligned`);
    v.ctrl = new SharedArrayBuffer(CTRL_INTS * 4);
    new Int32Array(v.ctrl)[CTRL_MAX_FRAME] = this.maxFrame();
    if (parked) v.parked = { used };
    else this.splitResume(v, used);
    return this.ringDesc(v, desc, avail, used);
  }

  /** A split ring's position into its ctrl: the used index the guest sees is where we resume (entries before it are complete). */
  private splitResume(v: Vring, used: RingLocation): void {
    const usedIdx = this.mem.readU16({ region: used.region, offset: used.offset + 2 });
    if (usedIdx !== v.lastAvailIdx) {
      log.warn('last_avail_idx differs from used->idx; resuming from used->idx', { dev: this.opts.name, ring: v.index, lastAvail: v.lastAvailIdx, usedIdx });
      v.lastAvailIdx = usedIdx;
    }
    const ctrl = new Int32Array(v.ctrl);
    ctrl[CTRL_LAST_AVAIL] = v.lastAvailIdx;
    ctrl[CTRL_LAST_USED] = usedIdx;
  }

  /** A packed ring's position into its ctrl: used = avail, as DPDK's vhost does (nothing is in flight across a stop). */
  private packedResume(v: Vring): void {
    const ctrl = new Int32Array(v.ctrl);
    ctrl[CTRL_LAST_AVAIL] = v.lastAvailIdx;
    ctrl[CTRL_LAST_USED] = v.lastAvailIdx;
    ctrl[CTRL_SIGNALLED_USED] = -1;
  }

  /** What the workers get for a ring of either format, its areas located and its ctrl set up. */
  private ringDesc(v: Vring, desc: RingLocation, avail: RingLocation, used: RingLocation): VringDesc {
    return {
      device: this.id,
      port: this.opts.port,
      index: v.index,
      size: v.num,
      desc,
      avail,
      used,
      logUsedGpa: this.usedLogGpa(v.addr as VringAddr),
      kickFd: v.kickFd,
      callFd: v.callFd,
      features: this.queueFeatures(),
      ctrl: v.ctrl,
      stats: v.stats,
    };
  }

  /** VIRTIO_F_RING_PACKED negotiated */
  get packed(): boolean {
    return hasBit(this.features, F.VIRTIO_F_RING_PACKED);
  }

  /**
   * A packed ring (virtio 1.1 2.8): SET_VRING_ADDR's desc is the descriptor ring (16 bytes a
   * slot), avail the driver event suppression area, used the device's (4 bytes each). No
   * index lives in guest memory: the ring resumes from SET_VRING_BASE (index | wrap << 15),
   * used = avail as DPDK's vhost does (nothing is in flight across a stop).
   */
  private describePackedRing(v: Vring, req: string, where: (what: string, uva: number, len: number) => RingLocation, parked: boolean): VringDesc {
    const a = v.addr as VringAddr;
    const n = v.num;
    const desc = where('descriptor ring', a.desc, descTableBytes(n));
    const avail = where('driver event area', a.avail, PACKED_EVENT_AREA);
    const used = where('device event area', a.used, PACKED_EVENT_AREA);
    if (a.desc % 16 || a.avail % 4 || a.used % 4) throw new ProtocolError(req, `ring ${v.index} addresses are misaligned`);
    if ((v.lastAvailIdx & 0x7fff) >= n) throw new ProtocolError(req, `ring ${v.index} base ${v.lastAvailIdx & 0x7fff} is not below the queue size ${n}`);
    v.ctrl = new SharedArrayBuffer(CTRL_INTS * 4);
    new Int32Array(v.ctrl)[CTRL_MAX_FRAME] = this.maxFrame();
    if (parked) v.parked = { used: null };
    else this.packedResume(v);
    return this.ringDesc(v, desc, avail, used);
  }

  queueFeatures(): QueueFeatures {
    const f = this.features;
    const mrg = hasBit(f, F.VIRTIO_NET_F_MRG_RXBUF);
    return {
      hdrLen: mrg || hasBit(f, F.VIRTIO_F_VERSION_1) ? NET_HDR_MRG : NET_HDR_LEGACY,
      mrgRxbuf: mrg,
      eventIdx: hasBit(f, F.VIRTIO_RING_F_EVENT_IDX),
      indirect: hasBit(f, F.VIRTIO_RING_F_INDIRECT_DESC),
      inOrder: hasBit(f, F.VIRTIO_F_IN_ORDER),
      packed: hasBit(f, F.VIRTIO_F_RING_PACKED),
      logAll: hasBit(f, F.VHOST_F_LOG_ALL),
      netBits: Number(f & 0xffff_ffffn),
    };
  }

  /** Release everything: rings stopped, fds closed, mappings dropped. */
  async release(): Promise<void> {
    this.broken = true;
    // Every ring is stopped even when one stop fails (a worker past its deadline is
    // replaced without the ring); the fds and mappings go in any case.
    const stops = await Promise.allSettled(this.vrings.filter((v) => v.started).map((v) => this.stopRing(v)));
    for (const r of stops) {
      if (r.status === 'rejected') log.error('ring stop failed while releasing the device', { dev: this.opts.name, reason: (r.reason as Error).message });
    }
    for (const v of this.vrings) v.closeFds();
    this.dropMemory();
  }

  /**
   * Forget the memory table and the log, and give their pages back now (native.retire):
   * waiting for every isolate to collect the SharedArrayBuffers could take hours in an
   * allocation-free worker, and a hugetlbfs guest would not get its huge pages back to
   * reconnect. Safe whatever a worker still holds: a retired view reads zeros.
   */
  private dropMemory(): void {
    for (const r of this.mem.list()) native.retire(r.sab);
    if (this.frontendLog) native.retire(this.frontendLog.sab);
    this.mem.clear();
    this.frontendLog = null;
    this.logPolicy.drop();
    safeClose(this.logFd);
    this.logFd = -1;
    this.logFile = null;
  }

  /**
   * The takeover's view of this device (rings must be stopped: pauseRings). `fd` turns
   * one of our fds into its index in the message; the fds stay ours until abandon().
   */
  snapshot(running: readonly Vring[], fd: (n: number) => number): DeviceSnapshot {
    return {
      features: this.features.toString(16),
      protocolFeatures: this.protocolFeatures.toString(16),
      lastLogAllFeatures: this.lastLogAllFeatures === null ? null : this.lastLogAllFeatures.toString(16),
      owner: this.owner,
      status: this.status,
      mtu: this.mtu,
      regions: this.mem.list().map((r) => ({ gpa: r.gpa, size: r.size, uva: r.uva, mmapOffset: r.mmapOffset, refs: r.refs, fd: fd(r.fd) })),
      // only the frontend's log: a LogPolicy's is the backend's, and the next process makes its own
      log: this.frontendLog && this.logFd >= 0 ? { mmapSize: this.frontendLog.mmapSize, mmapOffset: this.frontendLog.mmapOffset, fd: fd(this.logFd) } : null,
      rings: this.vrings.map((v) => ({
        index: v.index, num: v.num, addr: v.addr, lastAvailIdx: v.lastAvailIdx, hasKick: v.hasKick, enabled: v.enabled,
        kick: v.kickFd >= 0 ? fd(v.kickFd) : -1, call: v.callFd >= 0 ? fd(v.callFd) : -1, err: v.errFd >= 0 ? fd(v.errFd) : -1,
        stats: [...new Float64Array(v.stats)],
        started: running.includes(v),
      })),
    };
  }

  /**
   * Take over a device from the previous process's snapshot: the same negotiated state,
   * memory mapped from the handed fds, the rings' positions and counters. The fds in `fds`
   * named by the snapshot become ours. The caller starts the rings (resumeRings).
   * Throws when this build cannot stand behind what was negotiated.
   */
  adopt(s: DeviceSnapshot, fds: readonly number[]): void {
    const req = 'TAKEOVER';
    const take = (i: number): number => {
      if (!Number.isInteger(i) || i < 0 || i >= fds.length) throw new ProtocolError(req, `fd index ${i} outside the ${fds.length} handed over`);
      return fds[i];
    };
    const features = BigInt(`0x${s.features}`);
    const missing = features & ~this.offered;
    if (missing !== 0n) throw new ProtocolError(req, `the frontend acked features 0x${missing.toString(16)} that this build does not offer`);
    const pf = BigInt(`0x${s.protocolFeatures}`);
    if ((pf & ~this.offeredProtocol) !== 0n) throw new ProtocolError(req, `protocol features 0x${(pf & ~this.offeredProtocol).toString(16)} are not offered by this build`);
    if (s.rings.length !== this.vrings.length) throw new ProtocolError(req, `${s.rings.length} rings handed over, this interface has ${this.vrings.length}`);
    this.features = features;
    this.protocolFeatures = pf;
    this.lastLogAllFeatures = s.lastLogAllFeatures === null ? null : BigInt(`0x${s.lastLogAllFeatures}`);
    this.owner = s.owner;
    this.status = s.status;
    this.mtu = s.mtu;
    for (const r of s.regions) this.mem.adopt({ gpa: r.gpa, size: r.size, uva: r.uva, mmapOffset: r.mmapOffset }, r.refs, take(r.fd), req);
    if (s.log) {
      const fd = take(s.log.fd);
      const st = statFd(fd, req);
      const m = mapRegion({ gpa: 0, size: s.log.mmapSize, uva: 0, mmapOffset: s.log.mmapOffset }, fd, req, st);
      this.frontendLog = { sab: m.sab, offset: m.sabOffset, size: s.log.mmapSize, mmapSize: s.log.mmapSize, mmapOffset: s.log.mmapOffset };
      this.logFd = m.fd;
      this.logFile = { dev: st.dev, ino: st.ino };
    }
    for (const r of s.rings) {
      const v = this.vring(r.index, req);
      v.num = r.num;
      v.addr = r.addr;
      v.lastAvailIdx = r.lastAvailIdx;
      v.hasKick = r.hasKick;
      v.enabled = r.enabled;
      v.kickFd = r.kick >= 0 ? take(r.kick) : -1;
      v.callFd = r.call >= 0 ? take(r.call) : -1;
      v.errFd = r.err >= 0 ? take(r.err) : -1;
      new Float64Array(v.stats).set(r.stats.slice(0, STATS_SLOTS));
    }
  }

  /**
   * A takeover's final word on the rings adopt() took while they still ran: where each
   * stopped and its counters. Before any ring starts.
   */
  adoptPositions(rings: readonly RingPosition[]): void {
    for (const r of rings) {
      const v = this.vring(r.index, 'TAKEOVER');
      v.lastAvailIdx = r.lastAvailIdx;
      new Float64Array(v.stats).set(r.stats.slice(0, STATS_SLOTS));
      if (!v.parked) continue;
      if (v.parked.used) this.splitResume(v, v.parked.used);
      else {
        if ((v.lastAvailIdx & 0x7fff) >= v.num) throw new ProtocolError('TAKEOVER', `ring ${v.index} base ${v.lastAvailIdx & 0x7fff} is not below the queue size ${v.num}`);
        this.packedResume(v);
      }
      v.parked = null;
    }
  }

  /**
   * The takeover succeeded: the next process holds this device. Close our copies of its
   * fds and drop our mappings, saying nothing to the frontend (its connection lives on).
   */
  abandon(): void {
    this.broken = true;
    for (const v of this.vrings) v.closeFds();
    this.dropMemory();
  }

  /** RESET_OWNER / RESET_DEVICE: back to the state of a new connection. */
  resetState(): void {
    for (const v of this.vrings) {
      v.closeFds();
      v.num = 0;
      v.addr = null;
      v.lastAvailIdx = 0;
      v.enabled = false;
    }
    this.features = 0n;
    this.protocolFeatures = 0n;
    this.status = 0;
    this.dropMemory();
  }

  // ---- typed handlers, one per request (BackendRequests: called by the table after validation and parsing) ----

  getFeatures(): Buffer {
    return encodeU64(this.offered);
  }

  /** SET_FEATURES' pause (request-table.ts): accepted features that change more than LOG_ALL. */
  featuresChangeRingLayout(f: bigint): boolean {
    return (f & ~this.offered) === 0n && ((f ^ this.features) & ~bit(F.VHOST_F_LOG_ALL)) !== 0n;
  }

  async setFeatures(f: bigint, rq: RequestContext): Promise<void> {
    const extra = f & ~this.offered;
    if (extra !== 0n) throw new ProtocolError(rq.name, `features 0x${extra.toString(16)} were not offered`);
    // Migration toggles only LOG_ALL on running rings: apply it in place, drop nothing.
    // Any other change re-derives the rings' layout: the table stopped them (they restart after).
    const onlyLog = !this.featuresChangeRingLayout(f);
    this.features = f;
    if (hasBit(f, F.VHOST_F_LOG_ALL)) this.lastLogAllFeatures = f;
    // Without PROTOCOL_FEATURES rings are enabled from the start.
    // With it they stay as SET_VRING_ENABLE left them (a later SET_FEATURES that only
    // toggles LOG_ALL for migration must not disable running rings).
    if (!this.protocolFeaturesNegotiated) for (const v of this.vrings) v.enabled = true;
    log.info('features negotiated', { dev: this.opts.name, features: '0x' + f.toString(16), logAll: hasBit(f, F.VHOST_F_LOG_ALL) });
    if (onlyLog) await this.applyLoggingToRunningRings();
  }

  /** Hand the current log state to every running ring and wait until workers use it. */
  private async applyLoggingToRunningRings(only?: Vring): Promise<void> {
    const logAll = hasBit(this.features, F.VHOST_F_LOG_ALL);
    await Promise.all(
      this.vrings
        .filter((v) => v.started && !v.stopping && (!only || v === only))
        .map((v) => {
          return this.dp.setRingLogging(this.id, v.index, logAll, this.usedLogGpa(v.addr as VringAddr), this.log);
        }),
    );
  }

  setOwner(): void {
    this.owner = true;
  }

  /** The table paused every ring first ('all'). */
  resetOwner(): void {
    this.resetState();
  }

  setMemTable(regions: MemoryRegion[], rq: RequestContext): void {
    if (rq.fds.length !== regions.length) {
      throw new ProtocolError(rq.name, `${regions.length} regions but ${rq.fds.length} file descriptors`);
    }
    this.mem.replace(regions, rq.fds.splice(0), rq.name);
    this.logPolicy.drop(); // a backend log may not cover the new memory: the next ring start makes one that does
    this.checkLogCoversMemory(rq.name);
    log.info('memory table set', { dev: this.opts.name, regions: regions.map((r) => `gpa 0x${r.gpa.toString(16)}+0x${r.size.toString(16)}`) });
  }

  /** The frontend's log must cover guest memory (a LogPolicy's is made to, at ring start). */
  private checkLogCoversMemory(req: string): void {
    const l = this.frontendLog;
    if (l && l.size * 8 * 4096 < this.mem.gpaEnd) {
      throw new ProtocolError(req, `dirty log of ${l.size} bytes covers ${l.size * 8 * 4096} bytes of guest memory, which ends at 0x${this.mem.gpaEnd.toString(16)}`);
    }
  }

  async setLogBase(area: LogArea, rq: RequestContext): Promise<Buffer> {
    const [fd] = rq.fds.splice(0);
    const st = statFd(fd, rq.name);
    // QEMU 7.2 sends SET_LOG_BASE once per queue pair, every one with the same shared log:
    // a repeat of the log in use is answered without a second mapping.
    const cur = this.frontendLog;
    const file = this.logFile;
    if (cur && file && file.dev === st.dev && file.ino === st.ino && cur.mmapSize === area.mmapSize && cur.mmapOffset === area.mmapOffset) {
      safeClose(fd);
      log.debug(`dirty log repeated (one ${rq.name} per queue pair): kept`, { dev: this.opts.name });
      return encodeU64(0);
    }
    const mapped = mapRegion({ gpa: 0, size: area.mmapSize, uva: 0, mmapOffset: area.mmapOffset }, fd, rq.name, st);
    const previous = this.frontendLog;
    this.frontendLog = { sab: mapped.sab, offset: mapped.sabOffset, size: area.mmapSize, mmapSize: area.mmapSize, mmapOffset: area.mmapOffset };
    try {
      this.checkLogCoversMemory(rq.name);
    } catch (e) {
      this.frontendLog = previous;
      safeClose(mapped.fd);
      throw e;
    }
    this.logPolicy.drop(); // the frontend's log replaces a backend one
    safeClose(this.logFd);
    this.logFd = mapped.fd; // kept for a takeover (handover.ts)
    this.logFile = { dev: st.dev, ino: st.ino };
    log.info('dirty log set', { dev: this.opts.name, size: area.mmapSize, offset: area.mmapOffset });
    // Workers switch to the new log before we answer: QEMU reads the log from then on.
    await this.applyLoggingToRunningRings();
    // QEMU waits for this reply whenever LOG_SHMFD is negotiated.
    return encodeU64(0);
  }

  setLogFd(rq: RequestContext): void {
    // Only the legacy log-notification eventfd: we keep no use for it.
    closeFds(rq.fds);
  }

  setVringNum(s: VringState, rq: RequestContext): void {
    const v = this.vring(s.index, rq.name);
    if (s.num === 0 || s.num > MAX_QUEUE_SIZE || (s.num & (s.num - 1)) !== 0) {
      throw new ProtocolError(rq.name, `queue size ${s.num} is not a power of two in 1..${MAX_QUEUE_SIZE}`);
    }
    v.num = s.num;
  }

  /** Stops its own ring when the ring moves (the table's `pause` column says why). */
  async setVringAddr(a: VringAddr, rq: RequestContext): Promise<void> {
    const v = this.vring(a.index, rq.name);
    if (a.flags & ~VHOST_VRING_F_LOG) throw new ProtocolError(rq.name, `unknown flags 0x${a.flags.toString(16)}`);
    const old = v.addr;
    if (v.started && old && old.desc === a.desc && old.avail === a.avail && old.used === a.used) {
      // Same rings, new log flag / log address (migration): update in place.
      v.addr = a;
      await this.applyLoggingToRunningRings(v);
      return;
    }
    await this.stopRing(v);
    v.addr = a;
    // Fail now (not at start) if the addresses do not translate.
    if (v.num > 0 && this.mem.count > 0) this.describeRing(v, rq.name, false);
  }

  setVringBase(s: VringState, rq: RequestContext): void {
    const v = this.vring(s.index, rq.name);
    if (this.packed) {
      // bits 0-14 last_avail_idx, bit 15 its wrap counter; QEMU adds the used index and wrap
      // in bits 16-31, DPDK's vhost takes used = avail, as we do (nothing is in flight)
      const lo = s.num & 0xffff;
      const hi = s.num >>> 16;
      if (hi !== 0 && hi !== lo) log.warn('packed ring base: used index differs from avail; resuming from avail', { dev: this.opts.name, ring: v.index, base: s.num });
      v.lastAvailIdx = lo;
      return;
    }
    if (s.num > 0xffff) throw new ProtocolError(rq.name, `base ${s.num} does not fit a 16-bit index`);
    v.lastAvailIdx = s.num;
  }

  /** Stops only its own ring (the table's `pause` column says why) and answers its last_avail_idx. */
  async getVringBase(s: VringState, rq: RequestContext): Promise<Buffer> {
    const v = this.vring(s.index, rq.name);
    await this.stopRing(v);
    // The ring is stopped until the frontend sets it up again with a new kick.
    safeClose(v.kickFd);
    v.kickFd = -1;
    v.hasKick = false;
    log.info('ring stopped', { dev: this.opts.name, ring: v.index, lastAvail: v.lastAvailIdx });
    // packed: avail index | wrap << 15, and the same for used in bits 16-31 (QEMU reads both)
    const num = this.packed ? (v.lastAvailIdx | (v.lastAvailIdx << 16)) >>> 0 : v.lastAvailIdx;
    return encodeVringState({ index: v.index, num });
  }

  setVringKick(f: VringFile, rq: RequestContext): void {
    const v = this.takeVringFile(rq, f);
    safeClose(v.kickFd);
    v.kickFd = f.noFd ? -1 : (rq.fds.splice(0)[0] as number);
    v.hasKick = true;
  }

  setVringCall(f: VringFile, rq: RequestContext): void {
    const v = this.takeVringFile(rq, f);
    safeClose(v.callFd);
    v.callFd = f.noFd ? -1 : (rq.fds.splice(0)[0] as number);
  }

  setVringErr(f: VringFile, rq: RequestContext): void {
    const v = this.takeVringFile(rq, f);
    safeClose(v.errFd);
    v.errFd = f.noFd ? -1 : (rq.fds.splice(0)[0] as number);
  }

  private takeVringFile(rq: RequestContext, f: VringFile): Vring {
    if (f.noFd !== (rq.fds.length === 0)) {
      throw new ProtocolError(rq.name, f.noFd ? 'no-fd flag set but a file descriptor was passed' : 'file descriptor missing');
    }
    // Workers read kick fds and write call fds 8 bytes at a time: anything but an eventfd
    // (a pipe, a socket, a file) is refused here, not found broken in a worker's loop.
    if (!f.noFd && !native.isEventfd(rq.fds[0])) throw new ProtocolError(rq.name, `ring ${f.index}: the file descriptor is not an eventfd`);
    return this.vring(f.index, rq.name);
  }

  getProtocolFeatures(): Buffer {
    return encodeU64(this.offeredProtocol);
  }

  setProtocolFeatures(f: bigint, rq: RequestContext): void {
    const extra = f & ~this.offeredProtocol;
    if (extra !== 0n) throw new ProtocolError(rq.name, `protocol features 0x${extra.toString(16)} were not offered`);
    this.protocolFeatures = f;
  }

  getQueueNum(): Buffer {
    return encodeU64(this.opts.queuePairs);
  }

  /**
   * Only this ring stops (here) or starts (resumeRings, after the handler). QEMU sends one
   * per ring whenever a multi-queue guest changes its queue pairs (ethtool -L): pausing
   * every ring of the device for each dropped what other ports sent to it meanwhile.
   */
  async setVringEnable(s: VringState, rq: RequestContext): Promise<void> {
    const v = this.vring(s.index, rq.name);
    if (s.num > 1) throw new ProtocolError(rq.name, `enable value ${s.num} is neither 0 nor 1`);
    v.enabled = s.num === 1;
    if (!v.enabled) await this.stopRing(v);
  }

  sendRarp(mac: Buffer): void {
    this.dp.injectFrame(this.opts.port, rarpFrame(mac));
    log.info('RARP sent for migrated guest', { dev: this.opts.name, mac: [...mac].map((b) => b.toString(16).padStart(2, '0')).join(':') });
  }

  netSetMtu(value: bigint, rq: RequestContext): void {
    const mtu = Number(value);
    if (mtu < 68 || mtu > 65535) throw new ProtocolError(rq.name, `MTU ${mtu} outside 68..65535`);
    this.mtu = mtu;
    // running RX rings take the new limit at their next burst
    for (const v of this.vrings) if ((v.index & 1) === 0) Atomics.store(new Int32Array(v.ctrl), CTRL_MAX_FRAME, this.maxFrame());
    log.info('MTU set by the frontend', { dev: this.opts.name, mtu });
  }

  /** Largest frame towards this port: MTU + Ethernet header + one VLAN tag; 0 = no limit. */
  private maxFrame(): number {
    return this.mtu === null ? 0 : this.mtu + 18;
  }

  getMaxMemSlots(): Buffer {
    return encodeU64(MAX_MEM_SLOTS);
  }

  /**
   * ADD_MEM_REG. QEMU 7.2 sends it once per queue pair (one vhost_dev each on this
   * socket): the same region from the same file again is acknowledged and counted, not
   * mapped twice (MemoryTable.add); a region overlapping another is refused by name.
   */
  addMemReg(region: MemoryRegion, rq: RequestContext): void {
    const added = this.mem.add(region, rq.fds.splice(0)[0] as number, rq.name);
    if (added.shared) {
      log.debug(`memory region repeated (one ${rq.name} per queue pair): shared`, { dev: this.opts.name, region: added.index, refs: added.refs });
      return;
    }
    this.logPolicy.drop(); // running rings keep the log they hold; rings started later get one that covers the new memory
    this.checkLogCoversMemory(rq.name);
  }

  /** REM_MEM_REG: drops one reference of the region; it is unmapped with the last one. */
  remMemReg(region: MemoryRegion, rq: RequestContext): void {
    closeFds(rq.fds);
    const left = this.mem.remove(region, rq.name);
    if (left > 0) log.debug('memory region still referenced by another queue pair', { dev: this.opts.name, refs: left });
  }

  setStatus(value: bigint, rq: RequestContext): void {
    const s = Number(value);
    if (s > 0xff) throw new ProtocolError(rq.name, `status 0x${s.toString(16)} does not fit a byte`);
    this.status = s;
  }

  getStatus(): Buffer {
    return encodeU64(this.status);
  }

  /** The table paused every ring first ('all'). */
  resetDevice(): void {
    this.resetState();
  }
}

function closeFds(fds: number[]): void {
  for (const fd of fds.splice(0)) safeClose(fd);
}

function closeAll(m: Message): void {
  closeFds(m.fds);
}
