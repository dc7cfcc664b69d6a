/**
 * The forwarder: the configured interfaces, the poller workers and the forwarding plan
 * (xconnect pairs or a learning bridge). Owns start/stop and the stats view.
 */
import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { ST_BYTES, ST_CSUM_SW, ST_DROP_BAD_OFFLOAD, ST_DROP_NO_BUF, ST_DROP_NO_DEST, ST_DROP_TOO_BIG, ST_DROP_VLAN, ST_GSO_PASSED, ST_GSO_SEGMENTED, ST_ERRORS, ST_NOTIFY, ST_PACKETS, ST_DIRTY_PAGES, ST_KICKS, ST_BURSTS } from '../shared/types';
import { ForwardingPlan } from '../shared/worker-protocol';
import { MAC_TABLE_BYTES, MacTable } from '../workers/mac-table';
import { native } from '../native';
import { Config, Forwarding, InterfaceConfig } from './config';
import { Interface } from './interface';
import { UplinkPort, UplinkSnapshot } from './ports/uplink';
import { safeClose } from './connection';
import { DeviceSnapshot, RingPosition, Vring } from './device';
import { log } from './log';
import { WorkerPool } from './worker-pool';
import { forcedLog } from './forced-log';
import { MetricsServer, startMetrics } from './metrics';
import { QueueStats } from './stats';

export type { QueueStats } from './stats';

/** A refused control request: its HTTP status, a code and the field it is about. */
export class ControlError extends Error {
  constructor(
    readonly status: 400 | 404 | 409,
    readonly field: string | undefined,
    message: string,
  ) {
    super(message);
    this.name = 'ControlError';
  }
}

/** What a restart needs to come back as it was: written to the state file (control/state.ts). */
export interface ForwarderState {
  interfaces: InterfaceConfig[];
  forwarding: Forwarding;
  /** TX polling worker of each queue pair, by "iface:queue" */
  placement: Record<string, number>;
}

/** Everything a takeover hands to the next process besides the fds (handover/). */
export interface ForwarderSnapshot {
  /** the bridge's MAC table: index of a memfd holding its bytes (learned entries survive the takeover) */
  macTable: number;
  interfaces: Array<{ name: string; listen: number; conn: number; device: DeviceSnapshot | null }>;
  /** uplink ports: their fds (indices) and AF_PACKET ring geometry; absent from a process without any */
  uplinks?: UplinkSnapshot[];
}

/** Where each handed ring stopped, with its counters (the takeover's last message before the successor polls). */
export type HandoverPositions = Array<{ name: string; rings: RingPosition[] }>;

export class Forwarder {
  /** ports by number: vhost-user interfaces and uplinks; a removed interface leaves a hole that the next add reuses */
  private readonly ports: Array<Interface | UplinkPort | null> = [];
  private readonly specs = new Map<string, InterfaceConfig>();
  private forwarding: Forwarding;
  /** TX polling worker by "iface:queue" (config workers, then control API moves) */
  private readonly placement = new Map<string, number>();
  readonly pool: WorkerPool;
  private readonly macTable = new SharedArrayBuffer(MAC_TABLE_BYTES);
  private readonly macs = new MacTable(this.macTable, 300);
  private statsTimer: NodeJS.Timeout | null = null;
  private started = false;
  /** the HTTP endpoint when config.metrics is set */
  metrics: MetricsServer | null = null;
  /** called after every change of interfaces, forwarding or placement (the state file) */
  onChange: (() => void) | null = null;

  /** ackDeadlineMs: how long a worker may take to acknowledge a ring change (worker-pool.ts) */
  /** placement: TX polling workers by "iface:queue" from a state file (else the config's) */
  /** leaveOutFailed: start() leaves out an interface whose socket cannot be made instead of failing (a restore from the state file) */
  /** ports: port numbers by interface name (a takeover keeps the previous process's: the MAC table holds them) */
  constructor(readonly config: Config, private readonly opts: { ackDeadlineMs?: number; placement?: Record<string, number>; leaveOutFailed?: boolean; ports?: Record<string, number> } = {}) {
    config.workers.forEach((w, i) => w.queues.forEach((q) => this.placement.set(q, i)));
    for (const [k, w] of Object.entries(opts.placement ?? {})) if (w < Math.max(1, config.workers.length)) this.placement.set(k, w);
    this.forwarding = config.forwarding.mode === 'xconnect' ? { mode: 'xconnect', pairs: config.forwarding.pairs.map(([a, b]) => [a, b]) } : { ...config.forwarding };
    this.pool = new WorkerPool({
      workers: config.workers,
      owner: (port, pair) => this.placement.get(`${this.ports[port]?.name}:${pair}`) ?? 0,
      forceLog: config.forceLog,
      ackDeadlineMs: opts.ackDeadlineMs,
    });
    for (const c of config.interfaces) this.place(c);
    this.pool.onBroken = (device, index, reason) => {
      const up = this.uplinks.find((u) => u.id === device);
      if (up) return up.onBroken(index, reason);
      const itf = this.interfaces.find((i) => i.device?.id === device);
      if (itf?.device) itf.device.brokenByGuest(`ring ${index}: ${reason}`);
    };
  }

  /** The vhost-user interfaces in port order. */
  get interfaces(): Interface[] {
    return this.ports.filter((p): p is Interface => p instanceof Interface);
  }

  /** The uplink ports (TAP) in port order. */
  get uplinks(): UplinkPort[] {
    return this.ports.filter((p): p is UplinkPort => p instanceof UplinkPort);
  }

  uplink(name: string): UplinkPort | undefined {
    return this.uplinks.find((u) => u.name === name);
  }

  interface(name: string): Interface | undefined {
    return this.interfaces.find((i) => i.name === name);
  }

  spec(name: string): InterfaceConfig | undefined {
    return this.specs.get(name);
  }

  /** TX polling worker of queue pair `queue` of `name` */
  workerOf(name: string, queue: number): number {
    return this.placement.get(`${name}:${queue}`) ?? 0;
  }

  get forwardingState(): Forwarding {
    return this.forwarding.mode === 'xconnect' ? { mode: 'xconnect', pairs: this.forwarding.pairs.map(([a, b]) => [a, b]) } : { ...this.forwarding };
  }

  /** A port number for a new interface and the Interface (or uplink) itself (not started). */
  private place(c: InterfaceConfig): Interface | UplinkPort {
    const kept = this.opts.ports?.[c.name];
    let port = kept !== undefined && Number.isInteger(kept) && kept >= 0 && kept < 4096 && !this.ports[kept] ? kept : this.ports.indexOf(null);
    if (port < 0) port = this.ports.length;
    while (this.ports.length < port) this.ports.push(null);
    if (c.type !== 'vhost-user') {
      const up = new UplinkPort({ kind: c.type, name: c.name, device: c.device, frameSize: c.frameSize, frames: c.frames, queue: c.queue, queues: c.queues, offloads: c.offloads, mtu: c.mtu }, port, this.pool);
      this.ports[port] = up;
      this.specs.set(c.name, c);
      // an AF_PACKET port's queues beyond the first go where a guest's would (q mod workers)
      const n = Math.max(1, this.config.workers.length);
      for (let q = 0; q < up.queues; q++) if (!this.placement.has(`${c.name}:${q}`)) this.placement.set(`${c.name}:${q}`, q % n);
      return up;
    }
    const itf = new Interface(
      {
        name: c.name, socket: c.socket, mode: c.mode, queuePairs: c.queues, maskFeatures: c.maskFeatures, maskProtocolFeatures: c.maskProtocolFeatures, offloads: c.offloads, packedRing: c.packedRing, mtu: c.mtu, logPolicy: this.config.forceLog ? forcedLog : undefined,
        ownership: { owner: c.owner, group: c.group, permissions: c.permissions },
      },
      port,
      this.pool,
    );
    this.ports[port] = itf;
    this.specs.set(c.name, c);
    // queue pairs the config did not place go where the config's default would put them
    const n = Math.max(1, this.config.workers.length);
    for (let q = 0; q < c.queues; q++) if (!this.placement.has(`${c.name}:${q}`)) this.placement.set(`${c.name}:${q}`, q % n);
    return itf;
  }

  plan(): ForwardingPlan {
    const f = this.forwarding;
    if (f.mode === 'bridge') return { mode: 'bridge', ports: this.ports.length, agingMs: f.agingSeconds * 1000 };
    const peer = this.ports.map(() => -1);
    const idx = (n: string): number => this.ports.findIndex((i) => i?.name === n);
    for (const [a, b] of f.pairs) {
      const pa = idx(a);
      const pb = idx(b);
      if (pa < 0 || pb < 0) continue;
      peer[pa] = pb;
      peer[pb] = pa;
    }
    return { mode: 'xconnect', peer };
  }

  /**
   * Add an interface at run time (control API): validated like a config entry by the caller,
   * checked here against the running set. Its socket listens (or its first connect is tried)
   * before this returns; other ports are not touched beyond a new forwarding plan.
   */
  addInterface(c: InterfaceConfig): Interface {
    if (c.type !== 'vhost-user') throw new ControlError(400, 'type', `${c.type} ports are added with addUplink`);
    if (this.specs.has(c.name)) throw new ControlError(409, 'name', `interface ${c.name} exists`);
    const clash = [...this.specs.values()].find((o) => o.socket === c.socket);
    if (clash) throw new ControlError(409, 'socket', `socket ${c.socket} is used by interface ${clash.name}`);
    if (c.mode === 'server' && socketIsLive(c.socket)) throw new ControlError(409, 'socket', `a live socket is at ${c.socket} (another process listens there)`);
    if (c.vlan !== null && this.forwarding.mode !== 'bridge') throw new ControlError(400, 'vlan', 'no vlan with forwarding.mode "xconnect" (VLANs are a bridge feature)');
    const itf = this.place(c) as Interface;
    if (this.started) {
      // before its rings can attach: a frame from the port is never bridged without its VLANs
      this.pool.setVlan(itf.port, c.vlan);
      try {
        itf.start();
      } catch (e) {
        this.ports[itf.port] = null;
        this.pool.setVlan(itf.port, null);
        this.specs.delete(c.name);
        for (let q = 0; q < c.queues; q++) this.placement.delete(`${c.name}:${q}`);
        throw e;
      }
      if (c.coalesceFrames || c.coalesceUsecs) this.pool.setCoalesce(itf.port, c.coalesceFrames, c.coalesceUsecs);
      this.pool.setSteering(itf.port, c.steering === 'hash');
      this.pool.setPlan(this.plan(), this.macTable);
    }
    log.info('interface added', { iface: c.name, port: itf.port, socket: c.socket, mode: c.mode });
    this.changed();
    return itf;
  }

  /**
   * Add an uplink port at run time (control API), checked as parseConfig checks the config's:
   * a name used once, a device held by one uplink only. The device is opened and both rings
   * run before this resolves; if the open fails nothing of the port is left (its number,
   * spec, placement and VLAN go back) and the UplinkOpenError is thrown as it came.
   */
  async addUplink(c: InterfaceConfig): Promise<UplinkPort> {
    if (c.type === 'vhost-user') throw new ControlError(400, 'type', 'vhost-user interfaces are added with addInterface');
    // a TAP's device is its name: the key the client gave is the one named
    const devKey = c.type === 'tap' ? 'name' : 'device';
    if (this.specs.has(c.name)) throw new ControlError(409, 'name', `interface ${c.name} exists`);
    const clash = this.uplinks.find((u) => u.opts.device === c.device);
    if (clash) throw new ControlError(409, devKey, `network device ${c.device} is used by uplink ${clash.name}`);
    if (c.vlan !== null && this.forwarding.mode !== 'bridge') throw new ControlError(400, 'vlan', 'no vlan with forwarding.mode "xconnect" (VLANs are a bridge feature)');
    const up = this.place(c) as UplinkPort;
    if (this.started) {
      // before its rings run: no frame from the device is bridged without its VLANs, and a
      // multi-queue AF_PACKET port's TX queue is picked as configurePool sets it at start
      this.pool.setVlan(up.port, c.vlan);
      if (up.queues > 1) this.pool.setSteering(up.port, c.steering === 'hash');
      try {
        await up.start();
      } catch (e) {
        // start() closes what it opened when the open fails; a ring the workers refused
        // after the open leaves the fd open: stop() closes it either way
        await up.stop().catch(() => undefined);
        this.forget(up);
        this.pool.setVlan(up.port, null);
        this.macs.forgetPort(up.port);
        throw e;
      }
      this.pool.setPlan(this.plan(), this.macTable);
    }
    log.info('interface added', { iface: c.name, port: up.port, type: c.type, device: c.device });
    this.changed();
    return up;
  }

  /**
   * Remove an interface: its rings stop as GET_VRING_BASE would stop them (the workers
   * acknowledge), the connection and the socket close, the path we created is unlinked,
   * its pair and the MACs learned on it are dropped. Resolves when all of that is done.
   * An uplink port: its rings stop (from the device first), its fd closes (the kernel
   * deletes a TAP vhostfwd made; an AF_XDP program leaves the device with its link).
   */
  async removeInterface(name: string): Promise<void> {
    const up = this.uplink(name);
    if (up) {
      await up.stop();
      this.forget(up);
      this.pool.setVlan(up.port, null);
      this.pool.setSteering(up.port, true);
      this.pool.setPlan(this.plan(), this.macTable);
      this.macs.forgetPort(up.port);
      log.info('interface removed', { iface: name, port: up.port, type: up.kind });
      this.changed();
      return;
    }
    const itf = this.interface(name);
    if (!itf) throw new ControlError(404, 'name', `no interface ${name}`);
    await itf.stop();
    this.forget(itf);
    this.pool.setCoalesce(itf.port, 0, 0);
    this.pool.setSteering(itf.port, true);
    this.pool.setVlan(itf.port, null);
    this.pool.setPlan(this.plan(), this.macTable);
    // after the plan: no worker sends to the port any more, so no entry points at a reused number
    this.macs.forgetPort(itf.port);
    log.info('interface removed', { iface: name, port: itf.port });
    this.changed();
  }

  /** Drop an interface from the set: its port number, spec, placement and pair. */
  private forget(itf: Interface | UplinkPort): void {
    const name = itf.name;
    this.ports[itf.port] = null;
    this.specs.delete(name);
    for (const k of [...this.placement.keys()]) if (k.startsWith(`${name}:`)) this.placement.delete(k);
    if (this.forwarding.mode === 'xconnect') this.forwarding.pairs = this.forwarding.pairs.filter((p) => !p.includes(name));
  }

  addPair(a: string, b: string): void {
    const f = this.forwarding;
    if (f.mode !== 'xconnect') throw new ControlError(409, 'mode', 'pairs exist in xconnect mode only (forwarding.mode is bridge)');
    if (a === b) throw new ControlError(400, 'b', 'a pair needs two different interfaces');
    for (const [n, field] of [[a, 'a'], [b, 'b']] as const) {
      if (!this.specs.has(n)) throw new ControlError(404, field, `no interface ${n}`);
      if (f.pairs.some((p) => p.includes(n))) throw new ControlError(409, field, `interface ${n} is in a pair already`);
    }
    f.pairs.push([a, b]);
    if (this.started) this.pool.setPlan(this.plan(), this.macTable);
    this.changed();
  }

  removePair(name: string): void {
    const f = this.forwarding;
    if (f.mode !== 'xconnect' || !f.pairs.some((p) => p.includes(name))) throw new ControlError(404, 'name', `interface ${name} is in no pair`);
    f.pairs = f.pairs.filter((p) => !p.includes(name));
    if (this.started) this.pool.setPlan(this.plan(), this.macTable);
    this.changed();
  }

  /** Move queue pair `queue` of `name` (its TX ring's polling) to worker `worker`. */
  async moveQueue(name: string, queue: number, worker: number): Promise<void> {
    const c = this.specs.get(name);
    if (!c) throw new ControlError(404, 'name', `no interface ${name}`);
    if (!Number.isInteger(queue) || queue < 0 || queue >= c.queues) throw new ControlError(404, 'queue', `interface ${name} has queue pairs 0..${c.queues - 1}`);
    if (!Number.isInteger(worker) || worker < 0 || worker >= this.pool.size) throw new ControlError(400, 'worker', `workers are 0..${this.pool.size - 1}`);
    this.placement.set(`${name}:${queue}`, worker);
    const d = this.interface(name)?.device;
    if (d) await this.pool.moveRing(d.id, 2 * queue + 1, worker);
    // an uplink's ring 2q + 1 (from the device) is its polled ring
    const up = this.uplink(name);
    if (up?.running) await this.pool.moveRing(up.id, 2 * queue + 1, worker);
    this.changed();
  }

  /** Port numbers by interface name (a takeover keeps them: the MAC table and the plan hold them). */
  portMap(): Record<string, number> {
    return Object.fromEntries(this.ports.filter((p) => p !== null).map((i) => [i.name, i.port]));
  }

  /** Interfaces, forwarding and placement as plain data (the state file, `show`). */
  state(): ForwarderState {
    return {
      interfaces: this.ports.map((i) => (i ? this.specs.get(i.name) : undefined)).filter((c): c is InterfaceConfig => c !== undefined),
      forwarding: this.forwardingState,
      placement: Object.fromEntries([...this.placement.entries()].sort()),
    };
  }

  private changed(): void {
    try {
      this.onChange?.();
    } catch (e) {
      log.error('saving the state failed', { error: (e as Error).message });
      throw e;
    }
  }

  private poolStarted = false;

  /** Start the workers ahead of start() (a takeover: before the old process stops its rings). */
  async prestart(): Promise<void> {
    if (this.poolStarted) return;
    this.poolStarted = true;
    await this.pool.start();
  }

  /** Start the forwarder: its workers, their plan, every port. */
  async start(): Promise<void> {
    await this.prestart();
    this.configurePool();
    for (const u of this.uplinks) {
      try {
        await u.start();
      } catch (e) {
        if (!this.opts.leaveOutFailed) {
          await this.stopUplinks();
          throw e;
        }
        log.error('interface left out: its device cannot be opened', { iface: u.name, error: (e as Error).message });
        this.forget(u);
        this.pool.setVlan(u.port, null);
      }
    }
    for (const i of this.interfaces) {
      try {
        i.start();
      } catch (e) {
        // From a state file, one port whose socket cannot be made (its directory went with
        // a container, say) must not keep every other port down: it is left out, by name.
        if (!this.opts.leaveOutFailed) throw e;
        log.error('interface left out: its socket cannot be made', { iface: i.name, error: (e as Error).message });
        this.forget(i);
      }
    }
    await this.finishStart();
  }

  /** The workers' forwarding plan and each port's settings. */
  private configurePool(): void {
    this.pool.setPlan(this.plan(), this.macTable);
    for (const i of this.interfaces) {
      const c = this.specs.get(i.name);
      if (c && (c.coalesceFrames || c.coalesceUsecs)) this.pool.setCoalesce(i.port, c.coalesceFrames, c.coalesceUsecs);
      if (c) this.pool.setSteering(i.port, c.steering === 'hash');
      if (c?.vlan) this.pool.setVlan(i.port, c.vlan);
    }
    // uplinks: how frames towards a multi-queue AF_PACKET port pick its TX queue, as a
    // guest's; and an uplink's `vlan` is its port's as a guest's is (it was once left out
    // here: a config-time uplink bridged as a port without VLANs whatever its config said)
    for (const u of this.uplinks) {
      const c = this.specs.get(u.name);
      if (c && u.queues > 1) this.pool.setSteering(u.port, c.steering === 'hash');
      if (c?.vlan) this.pool.setVlan(u.port, c.vlan);
    }
  }

  /** What follows the interfaces' start: anything slower (metrics server, stats timer). */
  private async finishStart(): Promise<void> {
    this.started = true;
    if (this.config.metrics) this.metrics = await startMetrics(this, this.config.metrics.listen);
    if (this.config.statsInterval > 0) {
      let last = this.stats();
      let lastT = Date.now();
      this.statsTimer = setInterval(() => {
        const now = this.stats();
        const t = Date.now();
        process.stdout.write(formatStats(now, last, (t - lastT) / 1000));
        last = now;
        lastT = t;
      }, this.config.statsInterval * 1000);
    }
    log.info('forwarder started', { interfaces: this.interfaces.map((i) => i.name), uplinks: this.uplinks.map((u) => u.name), workers: this.pool.size, mode: this.forwarding.mode, cpus: os.cpus().length });
  }

  // ---- takeover (handover/) ----
  //
  // Old side: handoverQuiesce, handoverDescribe (the rings still run while the successor maps
  // what it got), handoverStop (the blackout starts), then abandon, or resumeAfterHandover if
  // the successor failed. New side: prepareFromHandover (before the old process stops its
  // rings), startFromHandover (the positions: the blackout ends).

  /** rings this process stopped for a takeover, by device id: restarted if it fails */
  private handedRings = new Map<number, Vring[]>();
  /** the devices described to the successor, by interface name (handoverStop checks they are still those) */
  private described = new Map<string, number>();

  /**
   * Old side: wait (bounded) until no connection is inside a message, then stop taking
   * anything in (no accept, no read: nothing a frontend sends can change a device until the
   * takeover ends one way or the other). The rings keep running. resumeAfterHandover() undoes it.
   */
  async handoverQuiesce(idleWaitMs = 2000): Promise<void> {
    const end = Date.now() + idleWaitMs;
    while (!this.interfaces.every((i) => i.idle)) {
      if (Date.now() > end) throw new Error(`a frontend stayed inside a request for ${idleWaitMs} ms (${this.interfaces.filter((i) => !i.idle).map((i) => i.name).join(', ')})`);
      await sleep(2);
    }
    for (const i of this.interfaces) i.quiesce();
    await this.metrics?.close();
    this.metrics = null;
  }

  /**
   * Old side, after handoverQuiesce: describe every interface and device with its fds, while
   * the rings run (their positions and counters are provisional: handoverStop gives the real
   * ones). `fd` numbers one of our fds for the message. Nothing is closed.
   */
  handoverDescribe(fd: (n: number) => number): ForwarderSnapshot {
    this.handedRings.clear();
    this.described.clear();
    return {
      macTable: fd(this.macTableFile()),
      interfaces: this.interfaces.map((i) => {
        const h = i.handoverFds;
        const d = i.device;
        const device = d && h.conn >= 0 ? d.snapshot(d.vrings.filter((v) => v.started), fd) : null;
        if (d && device) this.described.set(i.name, d.id);
        return { name: i.name, listen: h.listen >= 0 ? fd(h.listen) : -1, conn: h.conn >= 0 && d ? fd(h.conn) : -1, device };
      }),
      uplinks: this.uplinks.filter((u) => u.fd >= 0).map((u) => u.snapshot(fd)),
    };
  }

  /**
   * Old side: stop every ring at a burst boundary (as GET_VRING_BASE does), copy the MAC
   * table into the memfd the successor holds, and return where each ring stopped.
   * `firstStopAt`: the worker clock of the first ring stopped (the blackout's start).
   */
  async handoverStop(): Promise<{ positions: HandoverPositions; firstStopAt: number }> {
    const devices = this.interfaces.map((i) => i.device).filter((d): d is NonNullable<typeof d> => d !== null);
    for (const i of this.interfaces) {
      const want = this.described.get(i.name);
      if ((i.device && i.handoverFds.conn >= 0 ? i.device.id : undefined) !== want) throw new Error(`interface ${i.name}: its device changed while the successor mapped it (a ring broke): try again`);
    }
    for (const d of devices) this.handedRings.set(d.id, d.vrings.filter((v) => v.started));
    // Every TX ring before any RX ring: a burst taken from a guest is delivered before its
    // destination stops (one finding it stopped would be dropped as having no destination).
    // Posting the stops in that order is enough: a worker delivers only into its own RX ring
    // entries and reads its mailbox in order, so it leaves its TX rings before its RX rings.
    this.pool.resetAckWindow();
    const stops: Promise<void>[] = [];
    for (const parity of [1, 0] as const) {
      // an uplink's ring 1 (from the device) is a TX ring here, its ring 0 an RX ring
      for (const u of this.uplinks) stops.push(u.stopRing(parity));
      for (const d of devices) for (const v of d.vrings) if (v.started && (v.index & 1) === parity) stops.push(d.stopRing(v));
    }
    await Promise.all(stops);
    const firstStopAt = this.pool.ackTimes().first;
    this.copyMacTable();
    const positions: HandoverPositions = this.interfaces.filter((i) => this.described.has(i.name)).map((i) => {
      const d = i.device as NonNullable<typeof i.device>;
      const running = this.handedRings.get(d.id) ?? [];
      return { name: i.name, rings: d.vrings.map((v) => ({ index: v.index, lastAvailIdx: v.lastAvailIdx, stats: [...new Float64Array(v.stats)], started: running.includes(v) })) };
    });
    for (const u of this.uplinks) if (u.fd >= 0) positions.push(u.position());
    return { positions, firstStopAt: Number.isFinite(firstStopAt) ? firstStopAt : performance.timeOrigin + performance.now() };
  }

  /** a copy of the MAC table in a memfd for a takeover (closed when it ends either way), and its mapping */
  private macFd = -1;
  private macCopy: SharedArrayBuffer | null = null;

  /** A memfd for the MAC table's bytes, holding a copy of this instant (handoverStop copies again). */
  private macTableFile(): number {
    this.dropMacFile();
    this.macFd = native.memfdCreate('vhostfwd-mac-table', MAC_TABLE_BYTES);
    this.macCopy = native.mmap(this.macFd, MAC_TABLE_BYTES, 0);
    this.copyMacTable();
    return this.macFd;
  }

  private copyMacTable(): void {
    if (this.macCopy) new Uint8Array(this.macCopy).set(new Uint8Array(this.macTable));
  }

  private dropMacFile(): void {
    if (this.macCopy) native.retire(this.macCopy);
    this.macCopy = null;
    safeClose(this.macFd);
    this.macFd = -1;
  }

  /** Old side, the takeover failed: restart the rings it stopped (if it got that far) and take things in again. */
  async resumeAfterHandover(): Promise<void> {
    this.dropMacFile();
    await Promise.all(this.uplinks.map((u) => u.resume()));
    await this.startRingsRxFirst();
    for (const i of this.interfaces) i.resumeAfterHandover();
    this.handedRings.clear();
    this.described.clear();
    if (this.config.metrics && !this.metrics) this.metrics = await startMetrics(this, this.config.metrics.listen);
  }

  /** Old side, the takeover succeeded: let go of everything without a word to anyone, stop the workers. */
  async abandon(): Promise<void> {
    this.dropMacFile();
    if (this.statsTimer) clearInterval(this.statsTimer);
    for (const i of this.interfaces) i.abandon();
    for (const u of this.uplinks) u.abandon();
    await this.pool.stop();
  }

  /**
   * New side, while the previous process still forwards: its workers' plan, its MAC table
   * (a first copy), its listening sockets and connections (not read yet), each device with
   * its memory mapped. The Forwarder was built with the snapshot's interfaces, forwarding and
   * placement. Nothing here touches a ring or reads a socket: if this process dies now,
   * the previous one goes on as if nothing happened.
   */
  async prepareFromHandover(snap: ForwarderSnapshot, fds: readonly number[]): Promise<void> {
    const fdAt = (i: number): number => (Number.isInteger(i) && i >= 0 && i < fds.length ? fds[i] : -1);
    const mac = fdAt(snap.macTable);
    if (mac < 0) throw new Error('the MAC table was not handed over');
    if (native.fdStat(mac).size < MAC_TABLE_BYTES) throw new Error(`the MAC table handed over is ${native.fdStat(mac).size} bytes, not ${MAC_TABLE_BYTES}`);
    this.macFd = mac;
    this.macCopy = native.mmap(mac, MAC_TABLE_BYTES, 0);
    new Uint8Array(this.macTable).set(new Uint8Array(this.macCopy));
    await this.prestart();
    this.configurePool();
    const byName = new Map(snap.interfaces.map((h) => [h.name, h]));
    for (const i of this.interfaces) {
      const h = byName.get(i.name);
      if (h) i.prepareAdopt(fdAt(h.listen), fdAt(h.conn), h.device, fds);
    }
    // a TAP's fd: checked now, its rings start once the previous process stopped reading it
    const upByName = new Map((snap.uplinks ?? []).map((h) => [h.name, h]));
    for (const u of this.uplinks) {
      const h = upByName.get(u.name);
      if (h && fdAt(h.fd) >= 0) u.adoptFd(fdAt(h.fd), h.packet, (h.queueFds ?? []).map(fdAt));
    }
    // The workers build every ring now (views, walkers, logs), parked: after the stop only
    // the positions remain to be set.
    await this.startRingsRxFirst(true);
  }

  /**
   * New side, once the previous process stopped its rings: the final MAC table, each ring's
   * position and counters, then every ring started (RX first) and every socket read again.
   * Resolves the worker clock of the last ring started (the blackout's end).
   */
  async startFromHandover(positions: HandoverPositions): Promise<number> {
    if (this.macCopy) new Uint8Array(this.macTable).set(new Uint8Array(this.macCopy));
    this.dropMacFile();
    const byName = new Map(positions.map((p) => [p.name, p]));
    for (const i of this.interfaces) {
      const p = byName.get(i.name);
      if (p && i.device) i.device.adoptPositions(p.rings);
    }
    // uplinks: ring 0 (towards the device) before the guests' TX rings run, ring 1 (from it)
    // after their RX rings do, as startRingsRxFirst orders a guest's
    for (const u of this.uplinks) {
      const p = byName.get(u.name);
      if (p) u.restorePositions(p.rings);
    }
    this.pool.resetAckWindow();
    await Promise.all(this.uplinks.map((u) => u.startRing(0)));
    await this.pool.unpark();
    await Promise.all(this.uplinks.map((u) => u.startRing(1)));
    const lastStartAt = this.pool.ackTimes().last;
    for (const u of this.uplinks) {
      if (u.fd >= 0) continue;
      // not handed over (the previous process had lost it): opened here
      try {
        await u.start();
      } catch (e) {
        log.error('interface left out: its device cannot be opened', { iface: u.name, error: (e as Error).message });
      }
    }
    await this.startRingsRxFirst(); // none, unless a ring could not be built parked
    for (const i of this.interfaces) {
      if (i.adopting) i.finishAdopt();
      else i.start();
    }
    await this.finishStart();
    return Number.isFinite(lastStartAt) ? lastStartAt : performance.timeOrigin + performance.now();
  }

  /**
   * Start every ring that may run, all RX rings (towards the guests) before any TX ring: a
   * frame taken from a guest right after its TX ring starts must find its destination's RX
   * ring attached, or it would be dropped as having no destination.
   */
  private async startRingsRxFirst(parked = false): Promise<void> {
    // Posted in that order, which is enough (handoverStop): each worker attaches its RX ring
    // entries before any TX ring it polls.
    const devices = this.interfaces.map((i) => i.device).filter((d): d is NonNullable<typeof d> => d !== null);
    const starts: Promise<void>[] = [];
    for (const parity of [0, 1]) {
      for (const d of devices) {
        for (const v of d.vrings) {
          if ((v.index & 1) !== parity) continue;
          const p = d.maybeStart(v, 'TAKEOVER', parked);
          if (p) starts.push(p);
        }
      }
    }
    await Promise.all(starts);
  }

  /** Counters of every running queue, read without stopping the workers. */
  stats(): QueueStats[] {
    const out: QueueStats[] = [];
    for (const itf of this.interfaces) {
      const d = itf.device;
      if (!d) continue;
      for (const v of d.vrings) {
        out.push(queueStats(itf.name, v.index, new Float64Array(v.stats)));
      }
    }
    for (const u of this.uplinks) {
      u.syncKernelDrops();
      u.ringStats.forEach((sab, index) => out.push(queueStats(u.name, index, new Float64Array(sab))));
    }
    return out;
  }

  /**
   * Pause or resume forced logging (config forceLog) on every ring at run time; the CLI
   * toggles it on SIGUSR2. Resolves once every worker has switched.
   */
  async setForceLog(on: boolean): Promise<void> {
    await this.pool.setForceLog(on);
    log.info(on ? 'forced dirty logging resumed' : 'forced dirty logging paused', { rings: this.stats().length });
  }

  async stop(): Promise<void> {
    if (this.statsTimer) clearInterval(this.statsTimer);
    await this.metrics?.close();
    this.metrics = null;
    for (const i of this.interfaces) await i.stop();
    await this.stopUplinks();
    await this.pool.stop();
  }

  private async stopUplinks(): Promise<void> {
    for (const u of this.uplinks) await u.stop();
  }
}

/** One ring's counters as the stats view shows them (index: even = towards the port, odd = from it). */
function queueStats(iface: string, index: number, s: Float64Array): QueueStats {
  return {
    iface,
    queue: index >> 1,
    dir: index & 1 ? 'tx' : 'rx',
    packets: s[ST_PACKETS],
    bytes: s[ST_BYTES],
    dropNoBuffer: s[ST_DROP_NO_BUF],
    dropNoDest: s[ST_DROP_NO_DEST],
    dropTooBig: s[ST_DROP_TOO_BIG],
    dropVlan: s[ST_DROP_VLAN],
    dropBadOffload: s[ST_DROP_BAD_OFFLOAD],
    gsoPassed: s[ST_GSO_PASSED],
    gsoSegmented: s[ST_GSO_SEGMENTED],
    csumSoftware: s[ST_CSUM_SW],
    errors: s[ST_ERRORS],
    notifications: s[ST_NOTIFY],
    kicks: s[ST_KICKS],
    dirtyPages: s[ST_DIRTY_PAGES],
    bursts: s[ST_BURSTS],
  };
}

/** Whether something accepts connections at `path` (a listener of another process). */
function socketIsLive(path: string): boolean {
  let fd: number;
  try {
    fd = native.connect(path);
  } catch {
    return false;
  }
  native.close(fd);
  return true;
}

export function formatStats(now: QueueStats[], before: QueueStats[], secs: number): string {
  const key = (s: QueueStats): string => `${s.iface}/${s.queue}/${s.dir}`;
  const prev = new Map(before.map((s) => [key(s), s]));
  const head = `${'iface/queue/dir'.padEnd(18)}${'Mpps'.padStart(9)}${'Mbit/s'.padStart(11)}${'packets'.padStart(14)}${'no-buf'.padStart(9)}${'no-dest'.padStart(9)}${'too-big'.padStart(9)}${'errors'.padStart(8)}${'irqs/s'.padStart(9)}${'pkts/burst'.padStart(11)}`;
  const rows = now.map((s) => {
    const p = prev.get(key(s));
    const dp = s.packets - (p?.packets ?? 0);
    const db = s.bytes - (p?.bytes ?? 0);
    const dn = s.notifications - (p?.notifications ?? 0);
    const dbu = s.bursts - (p?.bursts ?? 0);
    return `${key(s).padEnd(18)}${(dp / secs / 1e6).toFixed(3).padStart(9)}${((db * 8) / secs / 1e6).toFixed(1).padStart(11)}${String(s.packets).padStart(14)}${String(s.dropNoBuffer).padStart(9)}${String(s.dropNoDest).padStart(9)}${String(s.dropTooBig).padStart(9)}${String(s.errors).padStart(8)}${(dn / secs).toFixed(0).padStart(9)}${(dbu > 0 ? (dp / dbu).toFixed(1) : '-').padStart(11)}`;
  });
  return `--- ${new Date().toISOString()}\n${head}\n${rows.join('\n')}\n`;
}
