/**
 * A poller worker: owns some guest TX rings, forwards their packets straight into the
 * destination guests' RX rings (one copy, guest to guest), and sleeps on the kick
 * eventfds when there is no traffic.
 *
 * The loop is synchronous: it never returns to the event loop, so control messages are
 * read with receiveMessageOnPort when the mailbox counter moves (checked once per round).
 */
import { MessagePort, receiveMessageOnPort, workerData } from 'node:worker_threads';
import { native } from '../native';
import { CTRL_MAX_FRAME, LogDesc, VringDesc, ST_DROP_NO_DEST, ST_DROP_TOO_BIG, ST_DROP_VLAN, ST_NOTIFY, ST_KICKS } from '../shared/types';
import { FromWorker, ToWorker, W_EMPTY_WAKES, W_MAILBOX, W_RUN, W_SLEEPING, W_SLEEPS, WorkerInit } from '../shared/worker-protocol';
import { DirtyLog } from './dirty-log';
import { GuestMemory } from './guest-memory';
import { MacTable } from './mac-table';
import { PacketBatch, BURST } from './packet-batch';
import { CopyQueue } from './bulk-copy';
import { FLOW_HASH_BYTES, flowHash } from './flow-hash';
import type { RingQueue } from './ring-format';
import { fence, notifyChecks, SWEEP_ROUNDS } from './ring-core';
import { openQueue } from './open-queue';
import { TapQueue } from './tap-port';
import { PacketQueue } from './packet-port';
import { XskQueue } from './xsk-port';
import { wireLen } from './offload';
import { TSO } from './ordering';
import { EDIT_POP, EDIT_PUSH, EDIT_TPID_AD, KIND_NONE, TPID_8021AD, TPID_8021Q, VlanPorts, editDelta, egressEdit } from './vlan';

const { init, port } = workerData as { init: WorkerInit; port: MessagePort };
const ctrl = new Int32Array(init.ctrl);

interface Ring {
  device: number;
  index: number;
  port: number;
  pair: number;
  vq: RingQueue;
  mem: GuestMemory;
  dirty: DirtyLog;
  /** config forceLog, unless paused at run time ('force-log' message, SIGUSR2 in the CLI) */
  forceLog: boolean;
  /** what the frontend set: VHOST_F_LOG_ALL acked, the log, the used ring's log address.
   *  Kept so pausing or resuming forced logging can recompute the ring's logging state. */
  logAll: boolean;
  log: LogDesc | null;
  logUsedGpa: number;
  kickFd: number;
  callFd: number;
  /** an uplink port's ring (tap-port.ts): kickFd is its device fd, never read as an eventfd */
  uplink: boolean;
  stats: Float64Array;
  /** interrupt coalescing (RX rings): notifications held back and since when */
  pending: number;
  pendingSince: number;
}

const txRings: Ring[] = [];
/** rxRings[port][pair] */
const rxRings: Array<Array<Ring | undefined>> = [];
const batch = new PacketBatch(BURST);
/** deferred copies of this worker (the addon memcpys a burst at once) */
const bulk = new CopyQueue(native);
/** destination port of each packet of the burst (-1 flood, -2 drop) */
const dstOf = new Int32Array(BURST);
/** packets of the burst bound for the port being delivered to (bridge) */
const pick = new Uint16Array(BURST);
const macScratch = new Uint8Array(16);
/** the bridge's header prefetches, [regionId, offset] a frame, bound once (headerPrefetch) */
const prefetchPairs = new Float64Array(2 * BURST);
const prefetchId = native.copyBind(prefetchPairs);
/** VLAN bridge: each packet's VLAN, its source tag (-1 untagged, else the TCI), and its tag
 *  edit towards the port being delivered to (vlan.ts EDIT_*) */
const vidOf = new Uint16Array(BURST);
const tciOf = new Int32Array(BURST);
const editOf = new Int32Array(BURST);
/** the 802.1Q membership of every port (set by 'vlan' messages) */
const vlans = new VlanPorts();
/** flow hash of each packet of the burst (steering "hash"), computed at most once a burst */
const flowOf = new Uint32Array(BURST);
let flowsReady = false;
const flowScratch = new Uint8Array(FLOW_HASH_BYTES);
let flowBytes = 0;
/** spread(): the packets still to place, their queues, and the ones going to one queue */
const order = new Uint16Array(BURST);
const queueOf = new Uint16Array(BURST);
const qpick = new Uint16Array(BURST);
/** ports steering by queue pair (config steering "pair"); the others by flow hash */
const steerPair: number[] = [];

let mode: 'xconnect' | 'bridge' | 'none' = 'none';
let peer: number[] = [];
let ports = 0;
let macs: MacTable | null = null;
const coalesce: Array<{ frames: number; usecs: number } | undefined> = [];
let seenMailbox = 0;
let running = true;

// Wait set for sleeping: the wake eventfd first, then every TX ring's kick fd (grown when
// rings are attached, never on the data path).
let waitFds = new Int32Array(64);
let waitCount = 0;
let anyPolledRing = false;

function send(m: FromWorker): void {
  port.postMessage(m);
}

function rebuildWaitSet(): void {
  waitCount = 1;
  anyPolledRing = false;
  if (waitFds.length < 1 + txRings.length) waitFds = new Int32Array(2 * (1 + txRings.length));
  waitFds[0] = init.wakeFd;
  for (const r of txRings) {
    if (r.kickFd < 0) anyPolledRing = true;
    else waitFds[waitCount++] = r.kickFd;
  }
}

function makeRing(m: Extract<ToWorker, { op: 'attach-tx' | 'attach-rx' }>): Ring {
  if (m.ring.uplink) return makeUplink(m.ring, m.ring.uplink);
  const mem = new GuestMemory(m.regions);
  const log = new DirtyLog();
  log.enableNative(native);
  log.set(m.ring.features.logAll || m.forceLog ? m.log : null);
  const ring = m.forceLog ? { ...m.ring, features: { ...m.ring.features, logAll: true } } : m.ring;
  mem.enableBulk(native);
  const vq = openQueue(ring, mem, log);
  vq.bulk = bulk;
  // offloads: a frame dropped for its header is logged by the main thread (rate-limited in vq)
  vq.onBadOffload = (reason, suppressed) => send({ op: 'bad-offload', device: m.ring.device, index: m.ring.index, reason, suppressed });
  return {
    device: m.ring.device,
    index: m.ring.index,
    port: m.ring.port,
    pair: m.ring.index >> 1,
    vq,
    mem,
    dirty: log,
    forceLog: m.forceLog,
    logAll: m.ring.features.logAll,
    log: m.log,
    logUsedGpa: m.ring.logUsedGpa,
    kickFd: m.ring.kickFd,
    callFd: m.ring.callFd,
    uplink: false,
    stats: new Float64Array(m.ring.stats),
    pending: 0,
    pendingSince: 0,
  };
}

/** An uplink port's ring (tap-port.ts): its frames live in the queue's own buffer, no log. */
function makeUplink(d: VringDesc, up: NonNullable<VringDesc['uplink']>): Ring {
  const vq = up.kind === 'tap' ? new TapQueue(d, up) : up.kind === 'af_xdp' ? new XskQueue(d, up) : new PacketQueue(d, up);
  vq.bulk = bulk;
  vq.onBadOffload = (reason, suppressed) => send({ op: 'bad-offload', device: d.device, index: d.index, reason, suppressed });
  return {
    device: d.device,
    index: d.index,
    port: d.port,
    pair: d.index >> 1,
    vq,
    mem: vq.mem,
    dirty: new DirtyLog(),
    forceLog: false,
    logAll: false,
    log: null,
    logUsedGpa: -1,
    kickFd: (d.index & 1) === 1 ? up.fd : -1,
    callFd: -1,
    uplink: true,
    stats: vq.stats,
    pending: 0,
    pendingSince: 0,
  };
}

/** rings built ahead of a takeover's stop (attach with `parked`): not polled, not written, until 'unpark' */
let parked: Array<{ ring: Ring; tx: boolean }> = [];

function attach(m: Extract<ToWorker, { op: 'attach-tx' | 'attach-rx' }>): void {
  let ring: Ring;
  try {
    ring = makeRing(m);
  } catch (e) {
    broken(m.ring.device, m.ring.index, e);
    return;
  }
  if (m.parked === true) {
    // Building a ring writes nothing to the guest: the previous process polls it still.
    parked = parked.filter((p) => p.ring.device !== ring.device || p.ring.index !== ring.index);
    parked.push({ ring, tx: m.op === 'attach-tx' });
    return;
  }
  goLive(ring, m.op === 'attach-tx');
}

/** The parked rings go live, RX ring entries before TX rings (a frame taken finds its destination), from the positions now in ctrl. */
function unpark(): void {
  const list = parked;
  parked = [];
  for (const tx of [false, true]) {
    for (const p of list) {
      if (p.tx !== tx) continue;
      try {
        p.ring.vq.reload();
      } catch (e) {
        broken(p.ring.device, p.ring.index, e);
        continue;
      }
      goLive(p.ring, tx);
    }
  }
}

function goLive(ring: Ring, tx: boolean): void {
  if (tx) {
    detach(ring.device, ring.index);
    vlans.ensure(ring.port + 1); // forward() reads kind[src.port] without a bounds test
    txRings.push(ring);
    ring.vq.disableNotify();
    rebuildWaitSet();
  } else {
    // Guest RX kicks ("buffers posted") are never waited on: a packet that finds no buffer
    // is dropped, not held. Ask the guest not to send them (DPDK's vhost PMD does the same);
    // each one costs the frontend a syscall per refill.
    try {
      ring.vq.acquire();
      ring.vq.disableNotify();
    } catch (e) {
      ring.vq.abandon();
      broken(ring.device, ring.index, e);
      return;
    }
    ring.vq.release();
    while (rxRings.length <= ring.port) rxRings.push([]);
    rxRings[ring.port][ring.pair] = ring;
  }
}

function detach(device: number, index: number): void {
  // a provisional decision of the ring is made before it goes (ring-core.ts)
  if (notifyChecks.due > 0) sweepNotifications();
  parked = parked.filter((p) => p.ring.device !== device || p.ring.index !== index);
  const i = txRings.findIndex((r) => r.device === device && r.index === index);
  if (i >= 0) {
    txRings[i].mem.dispose();
    txRings.splice(i, 1);
    rebuildWaitSet();
  }
  for (const list of rxRings) {
    for (let p = 0; p < list.length; p++) {
      const r = list[p];
      if (r && r.device === device && r.index === index) {
        if (r.pending > 0) signal(r);
        r.mem.dispose();
        list[p] = undefined;
      }
    }
  }
}

/** Logging on or off in place, between bursts: the frontend's request or forced. */
function applyLogging(r: Ring): void {
  const on = r.logAll || r.forceLog;
  r.dirty.set(on ? r.log : null);
  r.vq.setLogging(on, r.logUsedGpa);
}

function setLogging(m: Extract<ToWorker, { op: 'set-logging' }>): void {
  const apply = (r: Ring | undefined) => {
    if (!r || r.device !== m.device || r.index !== m.index) return;
    r.logAll = m.logAll;
    r.log = m.log;
    r.logUsedGpa = m.logUsedGpa;
    applyLogging(r);
  };
  for (const r of txRings) apply(r);
  for (const list of rxRings) for (const r of list) apply(r);
}

/** Pause or resume forced logging on every ring attached with it (the frontend's own logging stays). */
function forceLog(on: boolean): void {
  const apply = (r: Ring | undefined) => {
    if (!r || r.forceLog === on) return;
    r.forceLog = on;
    applyLogging(r);
  };
  for (const r of txRings) apply(r);
  for (const list of rxRings) for (const r of list) apply(r);
}

function broken(device: number, index: number, e: unknown): void {
  const reason = (e as Error).message;
  bulk.discard(); // copies queued by the failed burst go nowhere (abandon() dropped RX ones already)
  detach(device, index);
  send({ op: 'broken', device, index, reason });
}

function drainMailbox(): void {
  seenMailbox = Atomics.load(ctrl, W_MAILBOX);
  for (;;) {
    const got = receiveMessageOnPort(port);
    if (!got) return;
    const m = got.message as ToWorker | { op: 'crash' } | { op: 'stall'; ms: number };
    switch (m.op) {
      case 'attach-tx':
      case 'attach-rx':
        attach(m);
        send({ op: 'ack', seq: m.seq, at: performance.timeOrigin + performance.now() });
        break;
      case 'unpark':
        unpark();
        send({ op: 'ack', seq: m.seq, at: performance.timeOrigin + performance.now() });
        break;
      case 'detach':
        detach(m.device, m.index);
        send({ op: 'ack', seq: m.seq, at: performance.timeOrigin + performance.now() });
        break;
      case 'set-logging':
        setLogging(m);
        send({ op: 'ack', seq: m.seq });
        break;
      case 'force-log':
        forceLog(m.on);
        send({ op: 'ack', seq: m.seq });
        break;
      case 'plan':
        mode = m.plan.mode;
        if (m.plan.mode === 'xconnect') peer = m.plan.peer;
        else {
          ports = m.plan.ports;
          vlans.ensure(ports);
          macs = new MacTable(m.macTable, Math.round(m.plan.agingMs / 1000));
        }
        break;
      case 'steering':
        steerPair[m.port] = m.hash ? 0 : 1;
        break;
      case 'vlan':
        vlans.set(m.port, m.vlan);
        break;
      case 'coalesce':
        coalesce[m.port] = m.frames > 0 || m.usecs > 0 ? { frames: m.frames, usecs: m.usecs } : undefined;
        break;
      case 'inject':
        inject(m.port, m.frame);
        break;
      case 'exit':
        running = false;
        break;
      case 'crash':
        throw new Error('worker crash requested (test hook)');
      case 'stall': {
        // test hook: a worker stuck in a loop (the control plane's deadline must notice)
        const end = performance.now() + m.ms;
        while (performance.now() < end && Atomics.load(ctrl, W_RUN) === 1);
        break;
      }
    }
  }
}

function signal(r: Ring): void {
  r.pending = 0;
  if (r.callFd >= 0) {
    native.eventfdWrite(r.callFd, 1);
    r.stats[ST_NOTIFY]++;
  }
}

/** The ring says the guest wants an interrupt: send it now or hold it for coalescing. */
function notifyRx(r: Ring): void {
  const c = coalesce[r.port];
  if (!c) {
    signal(r);
    return;
  }
  if (r.pending === 0) r.pendingSince = performance.now();
  r.pending++;
  if ((c.frames > 0 && r.pending >= c.frames) || (c.usecs > 0 && (performance.now() - r.pendingSince) * 1000 >= c.usecs)) signal(r);
}

/**
 * Decide again every provisional "do not notify" of this worker's rings (ring-core.ts), after
 * one fence: the TX rings here; the RX rings under their lock, whose compare-exchange is the
 * fence for the stores of every worker that held them before.
 */
function sweepNotifications(): void {
  notifyChecks.due = 0;
  fence();
  for (const r of txRings) if (r.vq.notifyUnsure && r.vq.recheckNotify()) signal(r);
  for (const list of rxRings) {
    for (const r of list) {
      if (!r || !r.vq.notifyUnsure) continue;
      r.vq.acquire();
      const due = r.vq.recheckNotify();
      r.vq.release();
      if (due) notifyRx(r);
    }
  }
}

function flushCoalesced(): void {
  for (const list of rxRings) for (const r of list) if (r && r.pending > 0) signal(r);
}

/** Destination RX ring on `dst` for a packet from queue pair `pair`. */
function rxFor(dst: number, pair: number): Ring | undefined {
  const list = rxRings[dst];
  if (!list || list.length === 0) return undefined;
  return list[pair % list.length] ?? list[0];
}

/**
 * Enqueue packets of the burst whose dstOf is `dst` (or flood, -1) into port dst: into the
 * RX queue its flow hashes to when the port steers by hash and has several queues, else
 * into the queue pair the burst came from (mod the port's queues).
 */
function deliver(src: Ring, n: number, dst: number, floodToo: boolean): void {
  const rings = rxRings[dst];
  const nq = rings ? rings.length : 0;
  const rx = nq > 0 ? (rings[src.pair % nq] ?? rings[0]) : undefined;
  if (!rx) {
    if (!floodToo) src.stats[ST_DROP_NO_DEST] += mode === 'xconnect' ? n : countFor(n, dst, false);
    return;
  }
  // xconnect: the whole burst; bridge: the packets for dst (and the flooded ones)
  let count = n;
  let list: Uint16Array | null = null;
  if (mode !== 'xconnect') {
    count = 0;
    for (let i = 0; i < n; i++) {
      const d = dstOf[i];
      if (d === dst || (floodToo && d === -1)) pick[count++] = i;
    }
    if (count === 0) return;
    list = pick;
  }
  if (nq > 1 && steerPair[dst] !== 1) {
    spread(src, n, list, count, rings, nq, null);
    return;
  }
  enqueueTo(rx, src, n, list, count, null);
}

/**
 * deliver() for a burst from a VLAN port: the packets for `dst` (and, with `flood`, the
 * flooded ones) that are of a VLAN `dst` is a member of, each with its tag edit for `dst`.
 */
function deliverVlan(src: Ring, n: number, dst: number, flood: boolean): void {
  const rings = rxRings[dst];
  const nq = rings ? rings.length : 0;
  const rx = nq > 0 ? (rings[src.pair % nq] ?? rings[0]) : undefined;
  const member = vlans.member;
  const base = dst << 12;
  let count = 0;
  let anyEdit = 0;
  for (let i = 0; i < n; i++) {
    const d = dstOf[i];
    if (d !== dst && (!flood || d !== -1)) continue;
    const vid = vidOf[i];
    const m = member[base | vid];
    if (m === 0) continue; // not a member of the packet's VLAN
    if (!rx) {
      if (d === dst) src.stats[ST_DROP_NO_DEST]++;
      continue;
    }
    const e = egressEdit(m, vid, tciOf[i]);
    editOf[i] = e;
    anyEdit |= e;
    pick[count++] = i;
  }
  if (count === 0 || !rx) return;
  // no edit for this port in the burst (access to access, a trunk's tags kept): the copy
  // takes the same path as without VLANs
  const edits = anyEdit === 0 ? null : editOf;
  if (nq > 1 && steerPair[dst] !== 1) spread(src, n, pick, count, rings, nq, edits);
  else enqueueTo(rx, src, n, pick, count, edits);
}

/**
 * Steering by hash: each packet's queue is its flow hash mod the port's queues (a queue not
 * running takes queue 0's share), and each queue gets its packets in burst order in one
 * enqueue. The hashes are computed once per burst, whatever the number of destinations.
 */
function spread(src: Ring, n: number, list: Uint16Array | null, count: number, rings: Array<Ring | undefined>, nq: number, edits: Int32Array | null): void {
  if (!flowsReady) {
    for (let i = 0; i < n; i++) flowOf[i] = flowHash(flowHeader(src.mem, i), flowBytes);
    flowsReady = true;
  }
  let left = 0;
  for (let j = 0; j < count; j++) {
    const i = list === null ? j : list[j];
    let q = flowOf[i] % nq;
    if (!rings[q]) q = 0;
    queueOf[j] = q;
    order[left++] = i;
  }
  // one pass per distinct queue, in the order queues first appear; order[] keeps what is left
  while (left > 0) {
    const q = queueOf[0];
    let sub = 0;
    let keep = 0;
    for (let j = 0; j < left; j++) {
      if (queueOf[j] === q) qpick[sub++] = order[j];
      else {
        order[keep] = order[j];
        queueOf[keep++] = queueOf[j];
      }
    }
    left = keep;
    const r = rings[q];
    if (r) enqueueTo(r, src, n, qpick, sub, edits);
  }
}

/** The first FLOW_HASH_BYTES of packet i (fewer if it is shorter); flowBytes says how many. */
function flowHeader(mem: GuestMemory, i: number): Uint8Array {
  let got = 0;
  const first = batch.segStart[i];
  const end = first + batch.segCount[i];
  for (let s = first; s < end && got < FLOW_HASH_BYTES; s++) {
    const view = mem.u8[batch.segRegion[s]];
    const off = batch.segOffset[s];
    const len = Math.min(batch.segLen[s], FLOW_HASH_BYTES - got);
    for (let k = 0; k < len; k++) flowScratch[got + k] = view[off + k];
    got += len;
  }
  flowBytes = got;
  return flowScratch;
}

/**
 * Enqueue `count` packets of the burst (all n when list is null) into RX ring rx, with their
 * tag edits (`edits`, indexed by packet; only with a list) made while copying.
 */
function enqueueTo(rx: Ring, src: Ring, n: number, list: Uint16Array | null, count: number, edits: Int32Array | null): void {
  const vq = rx.vq;
  vq.acquire();
  // Frames over the port's MTU (+ header and one tag) are dropped and counted on its RX ring,
  // under the ring's lock like its other counters. One compare per packet, only with an MTU.
  // The length compared is the frame as delivered: with the tag pushed or popped.
  const max = vq.ctrl[CTRL_MAX_FRAME];
  if (max > 0) {
    let kept = 0;
    const len = batch.pktLen;
    // offloads: a GSO frame leaves as segments of its headers + gso_size (offload.ts)
    const gso = batch.nOffload > 0;
    if (edits !== null && list !== null) {
      for (let j = 0; j < count; j++) {
        const i = list[j];
        if ((gso ? wireLen(batch, i) : len[i]) + editDelta(edits[i]) <= max) list[kept++] = i;
      }
      rx.stats[ST_DROP_TOO_BIG] += count - kept;
      count = kept;
    } else if (list === null) {
      for (let i = 0; i < n; i++) if (len[i] <= max || (gso && wireLen(batch, i) <= max)) pick[kept++] = i;
      if (kept < n) {
        rx.stats[ST_DROP_TOO_BIG] += n - kept;
        list = pick;
        count = kept;
      }
    } else {
      for (let j = 0; j < count; j++) if (len[list[j]] <= max || (gso && wireLen(batch, list[j]) <= max)) list[kept++] = list[j];
      rx.stats[ST_DROP_TOO_BIG] += count - kept;
      count = kept;
    }
    if (count === 0) {
      vq.release();
      return;
    }
  }
  let notify = false;
  try {
    if (edits === null || list === null) vq.enqueueBurst(src.mem, batch, list, count);
    else vq.enqueueEdited(src.mem, batch, list, count, edits);
    notify = vq.flush();
  } catch (e) {
    vq.abandon();
    broken(rx.device, rx.index, e);
    return;
  }
  vq.release();
  if (notify) notifyRx(rx);
}

function countFor(n: number, dst: number, flood: boolean): number {
  let c = 0;
  for (let i = 0; i < n; i++) if (dstOf[i] === dst || (flood && dstOf[i] === -1)) c++;
  return c;
}

/**
 * The first `need` bytes of packet i (12: dst + src MAC; 16: and a tag's TPID and TCI),
 * wherever its segments are; null when it is shorter (need 12) or fewer were there (16:
 * classify() looks at the packet's length before it reads past what is there).
 */
function headerOf(mem: GuestMemory, i: number, need = 12): Uint8Array | null {
  let got = 0;
  const first = batch.segStart[i];
  const end = first + batch.segCount[i];
  for (let s = first; s < end && got < need; s++) {
    const view = mem.u8[batch.segRegion[s]];
    const off = batch.segOffset[s];
    const len = Math.min(batch.segLen[s], need - got);
    for (let k = 0; k < len; k++) macScratch[got + k] = view[off + k];
    got += len;
  }
  return got >= 12 ? macScratch : null;
}

/**
 * Prefetch the first line of each frame of the burst (its MACs), in one addon call, before
 * the bridge's loop reads them: the frontend has just written those lines on its core, and a
 * JS load waits for its miss before the next frame's starts, where the prefetches of a burst
 * overlap theirs (bench/NOTES.md #54). Only for memory the addon has mapped (bulk ids).
 */
function headerPrefetch(mem: GuestMemory, n: number): void {
  const ids = mem.bulkIds;
  if (ids === null) return;
  const regions = mem.regions;
  const pairs = prefetchPairs;
  for (let i = 0; i < n; i++) {
    const s = batch.segStart[i];
    const r = batch.segRegion[s];
    pairs[2 * i] = ids[r];
    pairs[2 * i + 1] = regions[r].sabOffset + batch.segOffset[s];
  }
  native.copyPrefetch(prefetchId, n);
}

function forward(src: Ring, n: number): void {
  flowsReady = false;
  if (mode === 'xconnect') {
    // the whole burst goes to one port: dstOf is not filled in (TypedArray.fill is a runtime
    // call per burst); deliver() counts an xconnect burst it cannot place as n drops
    const dst = peer[src.port] ?? -1;
    if (dst < 0) src.stats[ST_DROP_NO_DEST] += n;
    else deliver(src, n, dst, false);
    return;
  }
  if (mode !== 'bridge' || !macs) {
    src.stats[ST_DROP_NO_DEST] += n;
    return;
  }
  headerPrefetch(src.mem, n);
  const now = (Date.now() / 1000) | 0;
  if (vlans.kind[src.port] !== KIND_NONE) {
    forwardVlan(src, n, macs, now);
    return;
  }
  let flood = false;
  const u8 = src.mem.u8;
  // A burst is mostly one flow: the source is learned and the destination looked up again
  // only when they differ from the previous frame's (-1: no previous; a 16-bit half never is).
  // Any learn forgets the remembered lookup, so a frame never gets an answer the table would
  // not give it at that point of the burst.
  let src0 = -1;
  let src1 = 0;
  let dst0 = -1;
  let dst1 = 0;
  let dstPort = -1;
  for (let i = 0; i < n; i++) {
    // the header in place when the first segment holds it (every real driver), else gathered
    const s0 = batch.segStart[i];
    let h: Uint8Array | null;
    let o = 0;
    if (batch.segLen[s0] >= 12) {
      h = u8[batch.segRegion[s0]];
      o = batch.segOffset[s0];
    } else {
      h = headerOf(src.mem, i);
    }
    if (!h) {
      dstOf[i] = -2;
      src.stats[ST_DROP_NO_DEST]++;
      continue;
    }
    const a0 = (h[o + 6] << 8) | h[o + 7];
    const a1 = (h[o + 8] << 24) | (h[o + 9] << 16) | (h[o + 10] << 8) | h[o + 11];
    if (a0 !== src0 || a1 !== src1) {
      macs.learn(h, o + 6, src.port, now, 0);
      src0 = a0;
      src1 = a1;
      dst0 = -1;
    }
    const b0 = (h[o] << 8) | h[o + 1];
    const b1 = (h[o + 2] << 24) | (h[o + 3] << 16) | (h[o + 4] << 8) | h[o + 5];
    if (b0 !== dst0 || b1 !== dst1) {
      dstPort = macs.lookup(h, o, now, 0);
      dst0 = b0;
      dst1 = b1;
    }
    const d = dstPort;
    if (d === src.port) {
      dstOf[i] = -2; // the destination is behind the port it came from: filter
      continue;
    }
    dstOf[i] = d;
    if (d < 0) flood = true;
  }
  // ports without VLANs bridge among themselves only (VLAN 0 of the MAC table)
  const kind = vlans.kind;
  for (let p = 0; p < ports; p++) {
    if (p === src.port || kind[p] !== KIND_NONE) continue;
    deliver(src, n, p, flood);
  }
}

/**
 * A burst from a VLAN port: each frame classified (vlan.ts; dropped and counted when the
 * port's rules refuse it), learned and looked up in its VLAN, then delivered to that VLAN's
 * members only, with the tag pushed or popped in the copy.
 */
function forwardVlan(src: Ring, n: number, table: MacTable, now: number): void {
  const len = batch.pktLen;
  const member = vlans.member;
  let flood = false;
  const u8 = src.mem.u8;
  // as in forward(): learn and look up again only when (VLAN, MAC) differs from the previous
  // frame's; any learn forgets the kept lookup
  let srcVid = -1;
  let src0 = 0;
  let src1 = 0;
  let dstVid = -1;
  let dst0 = 0;
  let dst1 = 0;
  let dstPort = -1;
  for (let i = 0; i < n; i++) {
    // the header in place when the first segment holds it (every real driver), else gathered
    const s0 = batch.segStart[i];
    let h: Uint8Array | null;
    let o = 0;
    if (batch.segLen[s0] >= 16) {
      h = u8[batch.segRegion[s0]];
      o = batch.segOffset[s0];
    } else {
      h = headerOf(src.mem, i, 16);
    }
    const vid = h === null ? -1 : vlans.classify(src.port, h, o, len[i]);
    if (h === null || vid < 0) {
      dstOf[i] = -2;
      src.stats[ST_DROP_VLAN]++;
      continue;
    }
    vidOf[i] = vid;
    tciOf[i] = vlans.srcTci;
    const a0 = (h[o + 6] << 8) | h[o + 7];
    const a1 = (h[o + 8] << 24) | (h[o + 9] << 16) | (h[o + 10] << 8) | h[o + 11];
    if (vid !== srcVid || a0 !== src0 || a1 !== src1) {
      table.learn(h, o + 6, src.port, now, vid);
      srcVid = vid;
      src0 = a0;
      src1 = a1;
      dstVid = -1;
    }
    const b0 = (h[o] << 8) | h[o + 1];
    const b1 = (h[o + 2] << 24) | (h[o + 3] << 16) | (h[o + 4] << 8) | h[o + 5];
    if (vid !== dstVid || b0 !== dst0 || b1 !== dst1) {
      dstPort = table.lookup(h, o, now, vid);
      dstVid = vid;
      dst0 = b0;
      dst1 = b1;
    }
    let d = dstPort;
    if (d === src.port) {
      dstOf[i] = -2;
      continue;
    }
    // an entry read while a racing learner rewrote it never sends a frame out of its VLAN
    if (d >= 0 && member[(d << 12) | vid] === 0) d = -1;
    dstOf[i] = d;
    if (d < 0) flood = true;
  }
  const kind = vlans.kind;
  for (let p = 0; p < ports; p++) {
    if (p === src.port || kind[p] === KIND_NONE) continue;
    deliverVlan(src, n, p, flood);
  }
}

/**
 * A frame from the backend itself (RARP after migration) enters as if `from` sent it: on a
 * VLAN port it is classified, learned and flooded in its VLAN as a guest's frame would be.
 * Rare: allocates (the tagged copies).
 */
function inject(from: number, frame: Uint8Array): void {
  const now = (Date.now() / 1000) | 0;
  if (mode === 'xconnect') {
    sendFrame(peer[from] ?? -1, frame);
    return;
  }
  vlans.ensure(from + 1);
  if (vlans.kind[from] === KIND_NONE) {
    if (macs) macs.learn(frame, 6, from, now, 0);
    for (let p = 0; p < ports; p++) if (p !== from && vlans.kind[p] === KIND_NONE) sendFrame(p, frame);
    return;
  }
  const vid = vlans.classify(from, frame, 0, frame.length);
  if (vid < 0) return;
  const tci = vlans.srcTci;
  if (macs) macs.learn(frame, 6, from, now, vid);
  for (let p = 0; p < ports; p++) {
    const e = p === from ? -1 : vlans.egress(p, vid, tci);
    if (e >= 0) sendFrame(p, e === 0 ? frame : edited(frame, e));
  }
}

/** `frame` with a tag edit made (a new array: the inject path only). */
function edited(frame: Uint8Array, e: number): Uint8Array {
  const out = new Uint8Array(frame.length + editDelta(e));
  out.set(frame.subarray(0, 12), 0);
  let at = 12;
  if ((e & EDIT_PUSH) !== 0) {
    const tpid = (e & EDIT_TPID_AD) !== 0 ? TPID_8021AD : TPID_8021Q;
    out[12] = tpid >>> 8;
    out[13] = tpid & 0xff;
    out[14] = (e >>> 8) & 0xff;
    out[15] = e & 0xff;
    at = 16;
  }
  out.set(frame.subarray((e & EDIT_POP) !== 0 ? 16 : 12), at);
  return out;
}

/** Enqueue a backend-made frame into port p's first RX queue. */
function sendFrame(p: number, frame: Uint8Array): void {
  const rx = p >= 0 ? rxFor(p, 0) : undefined;
  if (!rx) return;
  rx.vq.acquire();
  let notify = false;
  try {
    rx.vq.enqueueBytes(frame, 0, frame.length);
    notify = rx.vq.flush();
  } catch (e) {
    rx.vq.abandon();
    broken(rx.device, rx.index, e);
    return;
  }
  rx.vq.release();
  if (notify) notifyRx(rx);
}

/** One pass over every TX ring; returns packets moved. */
function pollOnce(): number {
  let moved = 0;
  for (let k = 0; k < txRings.length; k++) {
    const r = txRings[k];
    let n: number;
    try {
      n = r.vq.dequeueBurst(batch, BURST);
      if (n === 0) continue;
      forward(r, n);
      if (r.vq.completeBurst(batch)) signal(r);
    } catch (e) {
      broken(r.device, r.index, e);
      k--;
      continue;
    }
    moved += n;
  }
  return moved;
}

/**
 * Sleep on kicks: enable notifications, re-check (a kick may have been skipped), wait.
 * The wait times out every sleepMs (1 ms with a ring that has no kick fd) and looks at the
 * rings itself, a safety net for a kick that never comes; a timeout that finds nothing
 * waits again instead of returning to the busy loop, which would spin idleUs before
 * sleeping again, which kept an idle worker measurably busy (bench/NOTES.md #27).
 */
function sleep(): void {
  if (notifyChecks.due > 0) sweepNotifications();
  flushCoalesced();
  for (const r of txRings) r.vq.enableNotify();
  if (pollOnce() > 0) {
    for (const r of txRings) r.vq.disableNotify();
    return;
  }
  Atomics.store(ctrl, W_SLEEPING, 1);
  Atomics.add(ctrl, W_SLEEPS, 1);
  // the seq-cst store above, then the mailbox load: the main thread either sees W_SLEEPING
  // (and writes wakeFd) or we see its message
  while (running && Atomics.load(ctrl, W_MAILBOX) === seenMailbox && Atomics.load(ctrl, W_RUN) === 1) {
    if (native.waitAny(waitFds, waitCount, anyPolledRing ? 1 : init.sleepMs) >= 0) break; // a kick, or woken
    if (pollOnce() > 0) break; // work that came without a kick
    Atomics.add(ctrl, W_EMPTY_WAKES, 1);
  }
  Atomics.store(ctrl, W_SLEEPING, 0);
  native.eventfdRead(init.wakeFd);
  for (const r of txRings) {
    if (r.kickFd >= 0 && !r.uplink && native.eventfdRead(r.kickFd) > 0) r.stats[ST_KICKS]++;
    r.vq.disableNotify();
  }
}

function main(): void {
  if (init.cpus.length > 0) native.setAffinity(init.cpus);
  send({ op: 'ready', worker: init.worker, tid: native.gettid(), cpus: native.getAffinity() });
  rebuildWaitSet();
  // Busy-poll while traffic flows; after `idleUs` without a packet, sleep on the kicks.
  // The clock is read once per `idleSpins` empty rounds, not per round.
  let idle = 0;
  let worked = false;
  let lastWork = performance.now();
  // Packets per productive round, a moving average (1/8 weight a round). Full bursts mean a
  // loaded ring: spin the whole idleUs before sleeping, as before. Small bursts mean a light
  // load: the next packet is far off, and spinning for it would cost a core per light guest;
  // the window shrinks with the square of the fill (1 packet a round: idleUs / 256, so the
  // first clock check, ~256 empty rounds, already sleeps), and the guest's kick wakes us.
  let fill = BURST;
  const idleMs = init.idleUs / 1000;
  let windowMs = idleMs;
  // W_RUN and W_MAILBOX only have to be seen eventually: plain loads on x86 (ordering.ts),
  // where each Atomics.load is a builtin call, two a round. drainMailbox() reads
  // the counter again with Atomics.load before it takes the messages.
  const tso = TSO;
  // rounds since the last sweep of provisional notification decisions (ring-core.ts)
  let unswept = 0;
  while (running && (tso ? ctrl[W_RUN] : Atomics.load(ctrl, W_RUN)) === 1) {
    if ((tso ? ctrl[W_MAILBOX] : Atomics.load(ctrl, W_MAILBOX)) !== seenMailbox) drainMailbox();
    if (txRings.length === 0) {
      // Nothing to poll (every ring detached: a takeover's stop, the last guest gone):
      // sleep now instead of spinning idleUs, the core is better spent on whoever runs next
      // (a takeover's successor, on a small host). The mailbox wakes us.
      sleep();
      lastWork = performance.now();
      continue;
    }
    const moved = pollOnce();
    // provisional "do not notify"s are decided again on the first round without work, or
    // after SWEEP_ROUNDS busy ones: one fence for them all (ring-core.ts)
    if (notifyChecks.due > 0 && (moved === 0 || ++unswept >= SWEEP_ROUNDS)) {
      unswept = 0;
      sweepNotifications();
    }
    if (moved > 0) {
      idle = 0;
      worked = true;
      fill += ((moved < BURST ? moved : BURST) - fill) / 8;
    } else if (++idle >= init.idleSpins) {
      idle = 0;
      const now = performance.now();
      if (worked) {
        lastWork = now;
        worked = false;
        const f = fill * (2 / BURST); // 1 from half a burst up
        windowMs = f >= 1 ? idleMs : idleMs * f * f;
      } else if (now - lastWork >= windowMs) {
        sleep();
        lastWork = performance.now();
      }
    }
  }
  if (notifyChecks.due > 0) sweepNotifications();
  flushCoalesced();
  port.close();
}

main();
