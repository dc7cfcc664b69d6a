/**
 * The poller workers seen from the main thread: it implements the Dataplane the devices
 * talk to. A guest TX ring is polled by exactly one worker (chosen by the config's queue
 * assignment); a guest RX ring is a destination for every worker (they take its lock).
 * A worker that dies is replaced and gets its rings back: only its queues pause.
 */
import path from 'node:path';
import { MessageChannel, MessagePort, Worker } from 'node:worker_threads';
import { native } from '../native';
import { LogDesc, RegionDesc, VringDesc } from '../shared/types';
import { ForwardingPlan, FromWorker, PortVlan, ToWorker, W_INTS, W_MAILBOX, W_EMPTY_WAKES, W_RUN, W_SLEEPING, W_SLEEPS, WorkerInit } from '../shared/worker-protocol';
import { Dataplane } from './device';
import { log } from './log';

interface Slot {
  init: WorkerInit;
  worker: Worker | null;
  port: MessagePort | null;
  ctrl: Int32Array;
  /** attach messages currently in force, by ring key, replayed after a restart */
  rings: Map<string, ToWorker>;
  ready: Promise<void>;
  restarts: number;
  /** times it was replaced for not acknowledging in time */
  stalls: number;
  /** the worker thread's kernel tid (from its ready message), -1 before */
  tid: number;
}

export interface PoolOptions {
  workers: Array<{ cpus: number[] }>;
  /** which worker polls a guest TX ring: by port and queue pair */
  owner: (port: number, pair: number) => number;
  forceLog: boolean;
  idleSpins?: number;
  idleUs?: number;
  sleepMs?: number;
  /** deadline for a worker's acknowledgement (WORKER_ACK_DEADLINE_MS) */
  ackDeadlineMs?: number;
}

const ringKey = (device: number, index: number): string => `${device}:${index}`;

/** A request to some workers, answered by an 'ack' from each of them (or their exit). */
interface Waiter {
  left: Set<number>;
  done: () => void;
}

/** How long the control plane waits for a worker's acknowledgement (config-independent). */
const WORKER_ACK_DEADLINE_MS = 1000;

/**
 * A worker did not acknowledge in time: the device that asked is reset with this reason
 * (Device.handle catches it) and the worker is replaced.
 */
class WorkerStalledError extends Error {
  constructor(readonly workers: number[], readonly what: string, readonly ms: number) {
    super(`worker ${workers.join(', ')} did not acknowledge ${what} within ${ms} ms`);
  }
}

export class WorkerPool implements Dataplane {
  private readonly slots: Slot[] = [];
  private seq = 0;
  private readonly waiting = new Map<number, Waiter>();
  /** earliest and latest worker clock of the ring attaches and detaches since resetAckWindow() */
  private ackWindow = { first: Infinity, last: -Infinity };
  private plan: ToWorker | null = null;
  private readonly coalesce = new Map<number, ToWorker>();
  private readonly steering = new Map<number, ToWorker>();
  private readonly vlans = new Map<number, ToWorker>();
  private closing = false;
  /** forced logging in force: config forceLog, unless paused with setForceLog(false) */
  private forceLogOn: boolean;
  onBroken: (device: number, index: number, reason: string) => void = () => {};

  constructor(private readonly opts: PoolOptions) {
    this.forceLogOn = opts.forceLog;
  }

  get size(): number {
    return this.slots.length;
  }

  async start(): Promise<void> {
    this.opts.workers.forEach((w, i) => {
      const init: WorkerInit = {
        worker: i,
        cpus: w.cpus,
        ctrl: new SharedArrayBuffer(W_INTS * 4),
        wakeFd: native.eventfdCreate(0),
        idleSpins: this.opts.idleSpins ?? 256,
        idleUs: this.opts.idleUs ?? 1000,
        sleepMs: this.opts.sleepMs ?? 100,
      };
      const slot: Slot = { init, worker: null, port: null, ctrl: new Int32Array(init.ctrl), rings: new Map(), ready: Promise.resolve(), restarts: 0, stalls: 0, tid: -1 };
      this.slots.push(slot);
      this.spawn(slot);
    });
    await Promise.all(this.slots.map((s) => s.ready));
  }

  private spawn(slot: Slot): void {
    const { port1, port2 } = new MessageChannel();
    Atomics.store(slot.ctrl, W_RUN, 1);
    const worker = new Worker(path.join(__dirname, '..', 'workers', 'poller.js'), {
      workerData: { init: slot.init, port: port2 },
      transferList: [port2],
    });
    slot.worker = worker;
    slot.port = port1;
    let readyResolve: () => void = () => {};
    slot.ready = new Promise((r) => (readyResolve = r));
    port1.on('message', (m: FromWorker) => {
      if (m.op === 'ready') {
        log.debug('worker ready', { worker: m.worker, tid: m.tid, cpus: m.cpus });
        slot.tid = m.tid;
        readyResolve();
      } else this.fromWorker(slot, m);
    });
    worker.on('error', (e) => {
      log.error('worker failed; restarting it (its queues pause)', { worker: slot.init.worker, error: e.message });
    });
    worker.on('exit', () => {
      port1.close();
      slot.worker = null;
      slot.tid = -1; // a restarted worker reports its own in its ready message
      // Nothing of this worker touches guest memory any more: release its pending detaches.
      for (const [seq, w] of this.waiting) this.ack(seq, slot.init.worker, w);
      if (!this.closing) this.respawn(slot);
      readyResolve();
    });
    // Replay the state the old worker had: plan, coalescing, rings (their ctrl keeps the indices).
    if (this.plan) this.post(slot, this.plan);
    for (const c of this.coalesce.values()) this.post(slot, c);
    for (const c of this.steering.values()) this.post(slot, c);
    for (const c of this.vlans.values()) this.post(slot, c);
    for (const m of slot.rings.values()) this.post(slot, m);
  }

  private respawn(slot: Slot): void {
    slot.restarts++;
    const delay = Math.min(1000, 10 * 2 ** Math.min(slot.restarts, 6));
    setTimeout(() => {
      if (!this.closing) this.spawn(slot);
    }, delay);
  }

  /** restarts so far, per worker (tests and stats) */
  restarts(): number[] {
    return this.slots.map((s) => s.restarts);
  }

  /** replacements for missed acknowledgement deadlines, per worker (tests and stats) */
  stalls(): number[] {
    return this.slots.map((s) => s.stalls);
  }

  private fromWorker(slot: Slot, m: FromWorker): void {
    switch (m.op) {
      case 'ack': {
        if (m.at !== undefined) {
          this.ackWindow.first = Math.min(this.ackWindow.first, m.at);
          this.ackWindow.last = Math.max(this.ackWindow.last, m.at);
        }
        const w = this.waiting.get(m.seq);
        if (w) this.ack(m.seq, slot.init.worker, w);
        break;
      }
      case 'broken':
        for (const s of this.slots) s.rings.delete(ringKey(m.device, m.index));
        this.onBroken(m.device, m.index, m.reason);
        break;
      case 'bad-offload':
        // the frame was dropped and counted (bad_offload); the device goes on
        log.warn('frame dropped: bad virtio-net header', { device: m.device, ring: m.index, reason: m.reason, suppressed: m.suppressed });
        break;
      case 'error':
        log.error('worker error', { worker: m.worker, error: m.error });
        break;
      default:
        break;
    }
  }

  private ack(seq: number, worker: number, w: Waiter): void {
    w.left.delete(worker);
    if (w.left.size === 0) {
      this.waiting.delete(seq);
      w.done();
    }
  }

  /** Start timing ring attaches and detaches anew (a takeover's stop, or its start). */
  resetAckWindow(): void {
    this.ackWindow = { first: Infinity, last: -Infinity };
  }

  /** When the workers attached or detached the rings since resetAckWindow() (worker clocks, ms; ±Infinity: none). */
  ackTimes(): { first: number; last: number } {
    return { ...this.ackWindow };
  }

  private post(slot: Slot, m: ToWorker): void {
    if (!slot.port || !slot.worker) return;
    slot.port.postMessage(m);
    Atomics.add(slot.ctrl, W_MAILBOX, 1);
    if (Atomics.load(slot.ctrl, W_SLEEPING) === 1) native.eventfdWrite(slot.init.wakeFd, 1);
  }

  setPlan(plan: ForwardingPlan, macTable: SharedArrayBuffer): void {
    this.plan = { op: 'plan', plan, macTable };
    for (const s of this.slots) this.post(s, this.plan);
  }

  /** RX queue choice for packets towards `port`: by flow hash, or by the source's queue pair */
  setSteering(port: number, hash: boolean): void {
    const m: ToWorker = { op: 'steering', port, hash };
    this.steering.set(port, m);
    for (const s of this.slots) this.post(s, m);
  }

  /** The port's 802.1Q membership (bridge); null: none (the untagged domain, as without VLANs) */
  setVlan(port: number, vlan: PortVlan): void {
    const m: ToWorker = { op: 'vlan', port, vlan };
    if (vlan === null) this.vlans.delete(port);
    else this.vlans.set(port, m);
    for (const s of this.slots) this.post(s, m);
  }

  setCoalesce(port: number, frames: number, usecs: number): void {
    const m: ToWorker = { op: 'coalesce', port, frames, usecs };
    this.coalesce.set(port, m);
    for (const s of this.slots) this.post(s, m);
  }

  startRing(ring: VringDesc, regions: readonly RegionDesc[], logDesc: LogDesc | null, parked = false): Promise<void> {
    const tx = (ring.index & 1) === 1;
    const seq = ++this.seq;
    const m: ToWorker = { op: tx ? 'attach-tx' : 'attach-rx', ring, regions: [...regions], log: logDesc, forceLog: this.forceLogOn, seq, parked };
    const targets = (tx ? [this.slots[this.opts.owner(ring.port, ring.index >> 1) % this.slots.length]] : this.slots).filter((s) => s.worker);
    for (const s of targets) s.rings.set(ringKey(ring.device, ring.index), m);
    return this.request(targets, m, seq, `start of ring ${ring.index} of device ${ring.device}`);
  }

  /**
   * The parked rings (startRing's `parked`) go live: every worker takes its parked RX ring
   * entries, then its parked TX rings, reading their positions from their ctrl words
   * (written before this is called). Resolves once every worker has.
   */
  unpark(): Promise<void> {
    const live = this.slots.filter((s) => s.worker);
    for (const s of live) {
      for (const [key, m] of s.rings) if ((m.op === 'attach-tx' || m.op === 'attach-rx') && m.parked) s.rings.set(key, { ...m, parked: false });
    }
    const seq = ++this.seq;
    return this.request(live, { op: 'unpark', seq }, seq, 'unpark of the rings taken over');
  }

  stopRing(device: number, index: number): Promise<void> {
    const key = ringKey(device, index);
    const holders = this.slots.filter((s) => s.rings.delete(key) && s.worker);
    const seq = ++this.seq;
    return this.request(holders, { op: 'detach', device, index, seq }, seq, `stop of ring ${index} of device ${device}`);
  }

  /**
   * Hand a guest TX ring to another worker: the one polling it stops at a burst boundary and
   * acknowledges (as for GET_VRING_BASE), then the other attaches it with the same ring state
   * (the ring's ctrl words carry last_avail_idx across). Packets posted meanwhile wait in
   * the ring; nothing is lost or polled twice.
   */
  async moveRing(device: number, index: number, to: number): Promise<void> {
    const key = ringKey(device, index);
    const target = this.slots[to];
    const from = this.slots.find((s) => s.rings.has(key));
    if (!target || !from || from === target) return;
    const m = from.rings.get(key);
    if (!m || m.op !== 'attach-tx') return;
    from.rings.delete(key);
    if (from.worker) {
      const seq = ++this.seq;
      await this.request([from], { op: 'detach', device, index, seq }, seq, `move of ring ${index} of device ${device} (stop)`);
    }
    const seq = ++this.seq;
    const again: ToWorker = { ...m, seq };
    target.rings.set(key, again);
    await this.request(target.worker ? [target] : [], again, seq, `move of ring ${index} of device ${device} (start)`);
  }

  setRingLogging(device: number, index: number, logAll: boolean, logUsedGpa: number, logDesc: LogDesc | null): Promise<void> {
    const key = ringKey(device, index);
    const holders = this.slots.filter((s) => s.rings.has(key) && s.worker);
    // A restarted worker must get the ring back with its current logging state.
    for (const s of holders) {
      const m = s.rings.get(key);
      if (m && (m.op === 'attach-tx' || m.op === 'attach-rx')) {
        s.rings.set(key, { ...m, ring: { ...m.ring, logUsedGpa, features: { ...m.ring.features, logAll } }, log: logDesc });
      }
    }
    const seq = ++this.seq;
    return this.request(holders, { op: 'set-logging', device, index, logAll, logUsedGpa, log: logDesc, seq }, seq, `logging change of ring ${index} of device ${device}`);
  }

  /** forced logging in force now (config forceLog and not paused) */
  get forceLogging(): boolean {
    return this.forceLogOn;
  }

  /**
   * Pause (false) or resume (true) forced logging on every ring, in place between bursts;
   * resolves when every worker has switched (bench/run.ts measures log on and off in
   * alternating windows of one trial this way). Only with config forceLog: the devices
   * keep their backend-owned logs while paused, so resuming needs no control-plane step.
   * Logging the frontend asked for (VHOST_F_LOG_ALL) is not touched.
   */
  setForceLog(on: boolean): Promise<void> {
    if (!this.opts.forceLog) return Promise.reject(new Error('forced logging is not configured (config forceLog, --force-log)'));
    this.forceLogOn = on;
    // a restarted worker gets its rings back in the current state
    for (const s of this.slots) {
      for (const [key, m] of s.rings) if (m.op === 'attach-tx' || m.op === 'attach-rx') s.rings.set(key, { ...m, forceLog: on });
    }
    const live = this.slots.filter((s) => s.worker);
    const seq = ++this.seq;
    return this.request(live, { op: 'force-log', on, seq }, seq, `forced logging ${on ? 'on' : 'off'}`);
  }

  /**
   * Post `m` to `targets` and resolve once each acknowledged it (or exited). Every wait has a
   * deadline: a worker that has not answered by then is stuck (a bug, or a blocking call
   * it should never make), so it is logged at error with what was awaited, terminated
   * and replaced (its other rings are replayed to the new one, as after a crash), and the
   * promise rejects with WorkerStalledError so the device that asked is reset by name.
   * A silent stall of the control plane is the one outcome this rules out.
   */
  private request(targets: Slot[], m: ToWorker, seq: number, what: string): Promise<void> {
    if (targets.length === 0) return Promise.resolve();
    const ms = this.opts.ackDeadlineMs ?? WORKER_ACK_DEADLINE_MS;
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        const w = this.waiting.get(seq);
        if (!w) return;
        this.waiting.delete(seq);
        const stuck = [...w.left];
        log.error('worker did not acknowledge in time; replacing it', { workers: stuck, awaited: what, deadlineMs: ms });
        for (const i of stuck) this.replaceStuck(this.slots[i]);
        reject(new WorkerStalledError(stuck, what, ms));
      }, ms);
      this.waiting.set(seq, {
        left: new Set(targets.map((s) => s.init.worker)),
        done: () => {
          clearTimeout(timer);
          resolve();
        },
      });
      for (const s of targets) this.post(s, m);
    });
  }

  /**
   * Terminate a worker that stopped answering; its 'exit' handler releases its other
   * waits and respawns it with its rings. terminate() cannot interrupt a system call, so
   * the wake eventfd is written first (a worker asleep in poll(2) comes back to JavaScript).
   */
  private replaceStuck(slot: Slot | undefined): void {
    const w = slot?.worker;
    if (!slot || !w) return;
    slot.stalls++;
    native.eventfdWrite(slot.init.wakeFd, 1);
    void w.terminate();
  }

  injectFrame(port: number, frame: Uint8Array): void {
    const s = this.slots[0];
    if (s) this.post(s, { op: 'inject', port, frame: Uint8Array.from(frame) });
  }

  /** worker thread ids (Node's and the kernel's) and control words (stats / tests) */
  workerInfo(): Array<{ worker: number; threadId: number; tid: number; sleeping: boolean; sleeps: number; emptyWakes: number }> {
    return this.slots.map((s) => ({
      worker: s.init.worker, threadId: s.worker?.threadId ?? -1, tid: s.worker ? s.tid : -1, sleeping: Atomics.load(s.ctrl, W_SLEEPING) === 1,
      sleeps: Atomics.load(s.ctrl, W_SLEEPS), emptyWakes: Atomics.load(s.ctrl, W_EMPTY_WAKES),
    }));
  }

  /** test hook: make a worker throw, to prove a restart pauses only its queues */
  crashWorker(i: number): void {
    this.testHook(i, { op: 'crash' });
  }

  /** test hook: make a worker spin for `ms` without reading its mailbox (a stuck worker) */
  stallWorker(i: number, ms: number): void {
    this.testHook(i, { op: 'stall', ms });
  }

  private testHook(i: number, m: { op: 'crash' } | { op: 'stall'; ms: number }): void {
    const s = this.slots[i];
    if (s) {
      s.port?.postMessage(m);
      Atomics.add(s.ctrl, W_MAILBOX, 1);
      native.eventfdWrite(s.init.wakeFd, 1);
    }
  }

  async stop(): Promise<void> {
    this.closing = true;
    await Promise.all(
      this.slots.map(async (s) => {
        Atomics.store(s.ctrl, W_RUN, 0);
        const w = s.worker;
        if (w) {
          const exited = new Promise<void>((r) => w.once('exit', () => r()));
          this.post(s, { op: 'exit' });
          native.eventfdWrite(s.init.wakeFd, 1);
          await Promise.race([exited, new Promise<void>((r) => setTimeout(r, 2000))]);
          if (s.worker) await w.terminate();
        }
        try {
          native.close(s.init.wakeFd);
        } catch {
          // closed already
        }
      }),
    );
  }
}
