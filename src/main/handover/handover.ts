/**
 * Hitless restart: a running vhostfwd hands its dataplane to a new process without a
 * frontend noticing (`vhostfwd run --takeover`). Everything the dataplane needs is fds
 * (listening and connected vhost-user sockets, guest memory, kick/call eventfds, the dirty
 * log) plus a little state (features, ring addresses and positions, counters, the MAC
 * table, port numbers), and all of it crosses one unix socket (channel.ts).
 *
 *   new -> old  hello {format, version}         step 1
 *   old -> new  ready {state, ports}            step 2 (or {error, code}: a format this build does not speak)
 *   new         builds the forwarder for that state and starts its workers (the slow part)
 *   new -> old  go
 *   old         closes its control API, waits until no frontend is inside a request and
 *               stops reading from frontends (nothing can change a device any more); the
 *               rings keep running
 *   old -> new  memory {snapshot} + every fd     step 3
 *   new         maps the memory and the log, builds each device (the other slow part),
 *               polls no socket and no ring yet
 *   new -> old  armed
 *   old         stops every ring at a burst boundary (as GET_VRING_BASE does): the
 *               blackout starts
 *   old -> new  stopped {positions}              step 4 (each ring's last_avail_idx and counters)
 *   new         starts the rings where they stopped: the blackout ends; reads the sockets
 *   new -> old  polling {blackoutMs}            step 5
 *   old         closes its copies without a word to anyone, exits 0
 *
 * Only ring positions cross while the rings stand still: mapping guest memory and moving
 * fds happen before, while the old process still forwards. The blackout is measured on the
 * workers' clocks, from the first ring a worker left to the last one a worker took.
 *
 * Failure safety: until `polling` arrives the old process owns everything. If the new one
 * fails at any step (exits, crashes, times out, refuses), the old kills it (the pid from
 * SO_PEERCRED, so no second poller can touch a ring), waits until it is gone, restarts its
 * rings and takes requests again: nothing was lost, frames only waited in the rings.
 */
import fs from 'node:fs';
import { performance } from 'node:perf_hooks';
import { native, PollHandle } from '../../native';
import { Config } from '../config';
import { safeClose } from '../connection';
import { StateFormatError, stateFromJson, stateToJson } from '../control/state';
import { Forwarder, ForwarderSnapshot, ForwarderState, HandoverPositions } from '../forwarder';
import type { UplinkSnapshot } from '../ports/uplink';
import { log } from '../log';
import { HandoverChannel, HandoverError } from './channel';
import { SnapshotError, checkDeviceSnapshot, checkPositions } from './snapshot';

/** The handover format: a process refuses a peer that speaks another one, before anything stops. */
const HANDOVER_FORMAT = 2; // 2: memory and fds before the rings stop, positions after

function envInt(name: string, dflt: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  return Number.isInteger(n) && n > 0 ? n : dflt;
}

/** How long either side waits for the other at one step (VHOSTFWD_TAKEOVER_STEP_MS: tests). */
const STEP_TIMEOUT_MS = envInt('VHOSTFWD_TAKEOVER_STEP_MS', 10_000);
/** How long the old process waits for a failed successor to be gone before its rings restart. */
const REAP_MS = 5_000;

/**
 * Test hooks of the new process. VHOSTFWD_TAKEOVER_FAIL_AT=STEP[:how]: right after STEP
 * ('hello' | 'ready' | 'go' | 'mapped' | 'state' | 'started') it dies by SIGKILL (how 'kill', the
 * default), exits 1 ('exit') or stops answering ('hang'). VHOSTFWD_TAKEOVER_FORMAT: the
 * format its hello claims.
 */
const FAIL_AT = process.env.VHOSTFWD_TAKEOVER_FAIL_AT ?? '';
const FORMAT_CLAIMED = envInt('VHOSTFWD_TAKEOVER_FORMAT', HANDOVER_FORMAT);

/** Milliseconds on a clock both processes share (wall clock, sub-millisecond). */
function clock(): number {
  return performance.timeOrigin + performance.now();
}

export interface HandoverHooks {
  /** the rings are about to stop: let go of what the next process will bind (control socket) */
  beforeStop(): Promise<void>;
  /** the takeover failed after beforeStop: take it back */
  afterFailure(): Promise<void>;
  /** the takeover succeeded: the next process polls (exit now) */
  done(): void;
}

/** Whether something accepts connections at `path`. */
function live(path: string): boolean {
  let fd: number;
  try {
    fd = native.connect(path);
  } catch {
    return false;
  }
  safeClose(fd);
  return true;
}

/** The handover socket cannot be served (the CLI exits 2, or runs without it when it was the default path). */
export class HandoverSocketError extends Error {
  constructor(readonly path: string, why: string) {
    super(`handover socket ${path}: ${why}`);
    this.name = 'HandoverSocketError';
  }
}

/** Old side: the listening handover socket; one takeover at a time. */
export class HandoverServer {
  private poll: PollHandle | null = null;
  private busy = false;

  private constructor(private readonly fd: number, readonly path: string, private readonly fwd: Forwarder, private readonly hooks: HandoverHooks, private readonly version: string) {}

  /**
   * Listen on `path` (mode 0600: only this user may take the dataplane over). `replace`:
   * this process just took over from the one listening there (which is exiting), so its
   * socket is replaced; otherwise a live socket there is another vhostfwd's and is refused.
   */
  static listen(path: string, fwd: Forwarder, hooks: HandoverHooks, version: string, replace: boolean): HandoverServer {
    if (!replace && live(path)) throw new HandoverSocketError(path, 'in use: another vhostfwd takes handovers there (give --handover PATH, or take it over with --takeover)');
    const old = process.umask(0o177);
    let fd: number;
    try {
      fd = native.listen(path, 1);
    } catch (e) {
      throw new HandoverSocketError(path, `cannot listen: ${(e as Error).message}`);
    } finally {
      process.umask(old);
    }
    const s = new HandoverServer(fd, path, fwd, hooks, version);
    s.poll = native.poll(fd, () => s.accept());
    log.info('takeovers accepted', { socket: path });
    return s;
  }

  private accept(): void {
    for (;;) {
      const c = native.accept(this.fd);
      if (c < 0) return;
      if (this.busy) {
        log.warn('takeover refused: another one is in progress');
        safeClose(c);
        continue;
      }
      this.busy = true;
      giveAway(c, this.fwd, this.hooks, this.version).then(
        (ok) => {
          this.busy = false;
          if (ok) {
            this.close(false);
            this.hooks.done();
          }
        },
        (e: unknown) => {
          this.busy = false;
          log.error('takeover failed', { error: (e as Error).message });
        },
      );
    }
  }

  /** Stop accepting; `unlink`: remove the path too (not after a takeover: the next process listens there now). */
  close(unlink = true): void {
    this.poll?.close();
    this.poll = null;
    safeClose(this.fd);
    if (unlink) {
      try {
        if (fs.lstatSync(this.path).isSocket()) fs.rmSync(this.path, { force: true });
      } catch {
        // gone already
      }
    }
  }
}

/** Old side: one takeover on connection `fd`. Resolves true when the new process polls. */
async function giveAway(fd: number, fwd: Forwarder, hooks: HandoverHooks, version: string): Promise<boolean> {
  const ch = new HandoverChannel(fd, STEP_TIMEOUT_MS);
  let pid = -1;
  let controlClosed = false;
  let quiesced = false;
  let stopped = false;
  const fds: number[] = [];
  try {
    try {
      pid = native.peerCred(fd).pid;
    } catch (e) {
      throw new HandoverError(`cannot tell who connected: ${(e as Error).message}`);
    }
    const hello = await ch.recvLater();
    for (const f of hello.fds) safeClose(f);
    if (hello.msg.hello !== true) throw new HandoverError(`expected hello, got ${JSON.stringify(hello.msg).slice(0, 200)}`);
    if (hello.msg.format !== HANDOVER_FORMAT) {
      const error = `handover format mismatch: the successor speaks format ${JSON.stringify(hello.msg.format)}, this process (vhostfwd ${version}) speaks ${HANDOVER_FORMAT}; nothing was stopped: restart instead`;
      ch.send({ error, code: 'HANDOVER_FORMAT_MISMATCH' });
      log.warn('takeover refused', { error, pid });
      return false;
    }
    const xdp = fwd.uplinks.filter((u) => u.kind === 'af_xdp').map((u) => u.name);
    if (xdp.length > 0) {
      // the UMEM, its four rings and the bpf_link do not travel (yet): refused before anything stops
      const error = `af_xdp ports cannot be handed over yet (${xdp.join(', ')}); nothing was stopped: restart instead`;
      ch.send({ error, code: 'AF_XDP_NOT_HANDED_OVER' });
      log.warn('takeover refused', { error, pid });
      return false;
    }
    log.info('takeover step 1/5: a successor connected', { pid, version: hello.msg.version });
    const state = fwd.state();
    const stateText = JSON.stringify(stateToJson(state));
    ch.send({ ready: true, format: HANDOVER_FORMAT, version, state: stateToJson(state), ports: fwd.portMap() });
    log.info('takeover step 2/5: state sent; the successor starts its workers', { pid, interfaces: state.interfaces.length });
    const go = await ch.recvLater();
    for (const f of go.fds) safeClose(f);
    if (go.msg.go !== true) throw new HandoverError(`expected go, got ${JSON.stringify(go.msg).slice(0, 200)}`);
    controlClosed = true;
    await hooks.beforeStop();
    // Nothing can change any more (no control API): what the successor built must still be it.
    if (JSON.stringify(stateToJson(fwd.state())) !== stateText) throw new HandoverError('the interfaces changed while the successor started (a control request): try again');
    quiesced = true;
    await fwd.handoverQuiesce();
    const snap = fwd.handoverDescribe((n) => {
      fds.push(n);
      return fds.length - 1;
    });
    ch.send({ memory: snap }, fds);
    log.info('takeover step 3/5: memory and fds handed over; the rings run while the successor maps them', { pid, interfaces: snap.interfaces.length, fds: fds.length });
    const armed = await ch.recvLater();
    for (const f of armed.fds) safeClose(f);
    if (armed.msg.armed !== true) throw new HandoverError(`expected armed, got ${JSON.stringify(armed.msg).slice(0, 200)}`);
    const t0 = clock();
    stopped = true;
    const { positions, firstStopAt } = await fwd.handoverStop();
    ch.send({ stopped: positions, firstStopAt });
    log.info('takeover step 4/5: rings stopped at a burst boundary; positions handed over', { pid, stopMs: Number((clock() - t0).toFixed(2)) });
    const polling = await ch.recvLater();
    for (const f of polling.fds) safeClose(f);
    if (polling.msg.polling !== true) throw new HandoverError(`expected polling, got ${JSON.stringify(polling.msg).slice(0, 200)}`);
    const blackoutMs = typeof polling.msg.blackoutMs === 'number' ? polling.msg.blackoutMs : Number((clock() - firstStopAt).toFixed(2));
    log.info('takeover step 5/5: the successor polls; this process exits', { pid, blackoutMs });
    await fwd.abandon();
    return true;
  } catch (e) {
    log.error('takeover failed; this process keeps forwarding', { pid, error: (e as Error).message, ringsWereStopped: stopped });
    // The successor holds our fds from step 3 on and may have polled from step 4 on: gone
    // before we read a socket or start a ring again.
    if (pid > 0 && pid !== process.pid && quiesced) await reap(pid);
    if (quiesced) await fwd.resumeAfterHandover();
    if (controlClosed) await hooks.afterFailure();
    if (quiesced || controlClosed) log.info('forwarding resumed after the failed takeover', { pid });
    return false;
  } finally {
    ch.close();
  }
}

/** Whether `pid` is gone (or a zombie: it runs nothing any more). */
function gone(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state === 'Z' || state === 'X';
  } catch {
    return true;
  }
}

/** Kill a failed successor and wait (bounded) until it is gone: its workers may have touched the rings. */
async function reap(pid: number): Promise<void> {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return; // gone already
  }
  const end = Date.now() + REAP_MS;
  while (Date.now() < end) {
    if (gone(pid)) return;
    await new Promise((r) => setTimeout(r, 2));
  }
  log.error('the failed successor did not go away', { pid });
}

/** Named errors of the new side (the CLI exits 2 with the message). `code` says which. */
export class TakeoverError extends Error {
  constructor(message: string, readonly code = 'TAKEOVER_FAILED') {
    super(message);
    this.name = 'TakeoverError';
  }
}

/** Port numbers by name from the peer: validated. */
function portsFrom(v: unknown): Record<string, number> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new TakeoverError('the running process sent no port numbers');
  const out: Record<string, number> = {};
  for (const [k, n] of Object.entries(v as Record<string, unknown>)) {
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > 65535) throw new TakeoverError(`port number of ${k}: ${JSON.stringify(n)}`);
    out[k] = n;
  }
  return out;
}

/** The snapshot's outline (the device records are checked by Device.adopt). */
function snapshotFrom(v: unknown, want: ForwarderState): ForwarderSnapshot {
  if (typeof v !== 'object' || v === null) throw new TakeoverError('the running process sent no snapshot');
  const s = v as Partial<ForwarderSnapshot>;
  if (typeof s.macTable !== 'number' || !Array.isArray(s.interfaces)) throw new TakeoverError('the snapshot lacks the MAC table or the interfaces');
  const names = new Set(want.interfaces.map((i) => i.name));
  const interfaces = s.interfaces.map((i: unknown, k) => {
    const r = (typeof i === 'object' && i !== null ? i : {}) as Record<string, unknown>;
    if (typeof r.name !== 'string' || !names.has(r.name)) throw new TakeoverError(`the snapshot names an interface that was not announced: ${JSON.stringify(i).slice(0, 100)}`);
    if (typeof r.listen !== 'number' || !Number.isInteger(r.listen) || typeof r.conn !== 'number' || !Number.isInteger(r.conn)) throw new TakeoverError(`interface ${r.name}: fd indices`);
    try {
      return { name: r.name, listen: r.listen, conn: r.conn, device: r.device === null ? null : checkDeviceSnapshot(r.device, `interfaces[${k}].device`) };
    } catch (e) {
      if (e instanceof SnapshotError) throw new TakeoverError(`interface ${r.name}: ${e.message}`);
      throw e;
    }
  });
  const ups = new Map(want.interfaces.filter((i) => i.type !== 'vhost-user').map((i) => [i.name, i.type]));
  const uplinks = s.uplinks === undefined ? [] : Array.isArray(s.uplinks) ? s.uplinks.map((u: unknown, k) => uplinkFrom(u, k, ups)) : [];
  if (s.uplinks !== undefined && !Array.isArray(s.uplinks)) throw new TakeoverError('the snapshot\'s uplinks are not a list');
  return { macTable: s.macTable, interfaces, uplinks };
}

/** An uplink port's record: an uplink of the announced state, an fd index, an AF_PACKET port's ring geometry and its other queues' fd indices (checked against the config by UplinkPort.adoptFd). */
function uplinkFrom(v: unknown, k: number, ups: Map<string, string>): UplinkSnapshot {
  const r = (typeof v === 'object' && v !== null ? v : {}) as Record<string, unknown>;
  const kind = typeof r.name === 'string' ? ups.get(r.name) : undefined;
  if (typeof r.name !== 'string' || kind === undefined) throw new TakeoverError(`the snapshot names an uplink that was not announced: ${JSON.stringify(v).slice(0, 100)}`);
  if (typeof r.fd !== 'number' || !Number.isInteger(r.fd) || r.fd < 0) throw new TakeoverError(`uplinks[${k}] (${r.name}): fd index`);
  if (kind !== 'af_packet') return { name: r.name, fd: r.fd };
  const g = (typeof r.packet === 'object' && r.packet !== null ? r.packet : {}) as Record<string, unknown>;
  const n = (x: unknown): number => {
    if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0) throw new TakeoverError(`uplinks[${k}] (${r.name}): ring geometry ${JSON.stringify(r.packet)}`);
    return x;
  };
  const packet = { ringBytes: n(g.ringBytes), frameSize: n(g.frameSize), frames: n(g.frames), txData: n(g.txData), hdrLen: n(g.hdrLen) };
  if (r.queueFds === undefined) return { name: r.name, fd: r.fd, packet };
  // a multi-queue port: its other sockets (the fanout group's members), checked by adoptFd
  if (!Array.isArray(r.queueFds) || r.queueFds.length > 255 || !r.queueFds.every((x) => typeof x === 'number' && Number.isInteger(x) && x >= 0)) throw new TakeoverError(`uplinks[${k}] (${r.name}): queue fd indices ${JSON.stringify(r.queueFds).slice(0, 100)}`);
  return { name: r.name, fd: r.fd, packet, queueFds: r.queueFds as number[] };
}

function die(step: string): void {
  const [at, how] = FAIL_AT.split(':');
  if (at !== step) return;
  log.warn('VHOSTFWD_TAKEOVER_FAIL_AT: failing here', { step, how: how ?? 'kill' });
  if (how === 'exit') process.exit(1);
  if (how === 'hang') Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 600_000); // asleep, answering nothing
  process.kill(process.pid, 'SIGKILL');
}

/**
 * New side: take the dataplane over from the process serving `path`. `build` makes this
 * process's forwarder for the state the old one runs (its interfaces, forwarding, placement
 * and port numbers, with this config's workers). Resolves with the started forwarder once
 * the old process knows this one polls (`beforeConfirm` runs just before it is told). On a failure the caller must exit without stopping
 * the forwarder (its sockets are the old process's again: nothing may be unlinked).
 */
export async function takeOver(
  path: string,
  version: string,
  cpuCount: number,
  build: (state: ForwarderState, ports: Record<string, number>) => Forwarder,
  beforeConfirm: () => void = () => undefined,
): Promise<{ fwd: Forwarder; blackoutMs: number }> {
  let fd: number;
  try {
    fd = native.connect(path);
  } catch (e) {
    throw new TakeoverError(`no running vhostfwd takes handovers at ${path}: ${(e as Error).message}`, 'NO_PEER');
  }
  const ch = new HandoverChannel(fd, STEP_TIMEOUT_MS);
  const t0 = performance.now();
  try {
    ch.send({ hello: true, format: FORMAT_CLAIMED, version });
    log.info('takeover step 1/5: connected to the running process', { socket: path });
    die('hello');
    const ready = ch.recv();
    for (const f of ready.fds) safeClose(f);
    if (typeof ready.msg.error === 'string') throw new TakeoverError(`the running vhostfwd refused the takeover: ${ready.msg.error}`, typeof ready.msg.code === 'string' ? ready.msg.code : 'REFUSED');
    if (ready.msg.ready !== true) throw new TakeoverError(`unexpected answer: ${JSON.stringify(ready.msg).slice(0, 200)}`);
    let state: ForwarderState;
    try {
      state = stateFromJson(ready.msg.state, cpuCount);
    } catch (e) {
      if (e instanceof StateFormatError) throw new TakeoverError(`the running process's state ${e.message}`);
      throw e;
    }
    const ports = portsFrom(ready.msg.ports);
    log.info('takeover step 2/5: state received; starting workers', { from: ready.msg.version, interfaces: state.interfaces.length });
    die('ready');
    const fwd = build(state, ports);
    await fwd.prestart();
    ch.send({ go: true });
    log.info('takeover step 3/5: workers ready; the running process stops its rings', { startMs: Number((performance.now() - t0).toFixed(1)) });
    die('go');
    const mem = ch.recv();
    let snap: ForwarderSnapshot;
    try {
      snap = snapshotFrom(mem.msg.memory, state);
    } catch (e) {
      for (const f of mem.fds) safeClose(f);
      throw e;
    }
    const tm = performance.now();
    await fwd.prepareFromHandover(snap, mem.fds);
    log.info('takeover step 3/5: memory mapped and devices built; the running process stops its rings', { interfaces: snap.interfaces.length, fds: mem.fds.length, mapMs: Number((performance.now() - tm).toFixed(2)) });
    die('mapped');
    ch.send({ armed: true });
    const st = ch.recv();
    for (const f of st.fds) safeClose(f);
    die('state');
    const received = clock();
    const firstStopAt = typeof st.msg.firstStopAt === 'number' && Number.isFinite(st.msg.firstStopAt) ? st.msg.firstStopAt : received;
    let positions: HandoverPositions;
    try {
      positions = checkPositions(st.msg.stopped, 'stopped');
    } catch (e) {
      if (e instanceof SnapshotError) throw new TakeoverError(`the running process's ring positions: ${e.message}`);
      throw e;
    }
    log.info('takeover step 4/5: ring positions received', { sinceStopMs: Number((received - firstStopAt).toFixed(2)) });
    const lastStartAt = await fwd.startFromHandover(positions);
    const blackoutMs = Number((lastStartAt - firstStopAt).toFixed(2));
    const startMs = Number((lastStartAt - received).toFixed(2));
    die('started');
    beforeConfirm();
    ch.send({ polling: true, blackoutMs });
    log.info('takeover step 5/5: polling', { blackoutMs, startMs, totalMs: Number((performance.now() - t0).toFixed(1)) });
    return { fwd, blackoutMs };
  } catch (e) {
    if (e instanceof HandoverError) throw new TakeoverError(`takeover failed: ${e.message}`);
    throw e;
  } finally {
    ch.close();
  }
}

/** The config the new process runs: its own settings, the running process's ports and plan. */
export function configFor(cfg: Config, state: ForwarderState): Config {
  return { ...cfg, interfaces: state.interfaces, forwarding: state.forwarding };
}
