/**
 * Hitless restart: a running vhostfwd hands its dataplane to a new process without a
 * frontend noticing (`vhostfwd run --takeover`). Everything the dataplane needs is fds
 * (listening and connected vhost-user sockets, guest memory, kick/call eventfds, the dirty
 * log) plus a little state (features, ring addresses and positions, counters, the MAC
 * table), and all of it crosses one unix socket (channel.ts).
 *
 *   new -> old  hello {format, pid, version}
 *   old -> new  ready {state}              (or {error}: a format this build does not speak)
 *   new         builds the forwarder for that state and starts its workers (the slow part)
 *   new -> old  go
 *   old         waits until no frontend is inside a request, stops reading, stops every ring
 *               at a burst boundary (as GET_VRING_BASE does): the blackout starts
 *   old -> new  state {snapshot} + every fd
 *   new         maps the memory, starts the rings where they stopped: the blackout ends
 *   new -> old  polling
 *   old         closes its copies without a word to anyone, exits 0
 *
 * Failure safety: until `polling` arrives the old process owns everything. If the new one
 * fails at any step (exits, crashes, times out, refuses), the old kills it (so no second
 * poller can touch a ring), waits until it is gone, restarts its rings and takes requests
 * again: nothing was lost, frames only waited in the rings.
 */
import fs from 'node:fs';
import { performance } from 'node:perf_hooks';
import { native, PollHandle } from '../../native';
import { Config } from '../config';
import { safeClose } from '../connection';
import { Forwarder, ForwarderSnapshot, ForwarderState } from '../forwarder';
import { log } from '../log';
import { HandoverChannel, HandoverError } from './channel';

/** The handover format: a process refuses a peer that speaks another one, before anything stops. */
export const HANDOVER_FORMAT = 1;
/** How long either side waits for the other at one step. */
const STEP_TIMEOUT_MS = 10_000;
/** How long the old process waits for a failed successor to be gone before its rings restart. */
const REAP_MS = 5_000;

/** Test hook: the new process dies (SIGKILL) right after this step ('ready' | 'state' | 'started'). */
const FAIL_AT = process.env.VHOSTFWD_TAKEOVER_FAIL_AT ?? '';

export interface HandoverHooks {
  /** the rings are about to stop: let go of what the next process will bind (control socket) */
  beforeStop(): Promise<void>;
  /** the takeover failed and forwarding resumed: take it back */
  afterFailure(): Promise<void>;
  /** the takeover succeeded: the next process polls (exit now) */
  done(): void;
}

/** Old side: the listening handover socket; one takeover at a time. */
export class HandoverServer {
  private poll: PollHandle | null = null;
  private busy = false;

  private constructor(private readonly fd: number, readonly path: string, private readonly fwd: Forwarder, private readonly hooks: HandoverHooks, private readonly version: string) {}

  /** Listen on `path` (mode 0600: only this user may take the dataplane over). */
  static listen(path: string, fwd: Forwarder, hooks: HandoverHooks, version: string): HandoverServer {
    const old = process.umask(0o177);
    let fd: number;
    try {
      fd = native.listen(path, 1);
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
    if (unlink) fs.rmSync(this.path, { force: true });
  }
}

/** Old side: one takeover on connection `fd`. Resolves true when the new process polls. */
async function giveAway(fd: number, fwd: Forwarder, hooks: HandoverHooks, version: string): Promise<boolean> {
  const ch = new HandoverChannel(fd, STEP_TIMEOUT_MS);
  let pid = -1;
  let stopped = false;
  const fds: number[] = [];
  try {
    const hello = ch.recv();
    for (const f of hello.fds) safeClose(f);
    pid = typeof hello.msg.pid === 'number' ? hello.msg.pid : -1;
    if (hello.msg.format !== HANDOVER_FORMAT) {
      const error = `handover format ${String(hello.msg.format)} is not ${HANDOVER_FORMAT} (this process runs vhostfwd ${version}): restart instead`;
      ch.send({ error });
      log.warn('takeover refused', { error, pid });
      pid = -1; // it stops on its own; nothing stopped here
      return false;
    }
    log.info('takeover: a successor connected', { pid, version: hello.msg.version });
    ch.send({ ready: true, version, state: fwd.state() });
    const go = ch.recv();
    if (go.msg.go !== true) throw new HandoverError(`expected go, got ${JSON.stringify(go.msg).slice(0, 200)}`);
    await hooks.beforeStop();
    stopped = true;
    const snap = await fwd.handoverOut((n) => {
      fds.push(n);
      return fds.length - 1;
    });
    const t0 = performance.now();
    log.info('takeover: rings stopped, handing over', { pid, interfaces: snap.interfaces.length, fds: fds.length });
    ch.send({ state: snap }, fds);
    const polling = ch.recv();
    if (polling.msg.polling !== true) throw new HandoverError(`expected polling, got ${JSON.stringify(polling.msg).slice(0, 200)}`);
    const blackoutMs = performance.now() - t0;
    log.info('takeover complete: the successor polls; exiting', { pid, blackoutMs: Number(blackoutMs.toFixed(2)), successorStartMs: polling.msg.startMs });
    await fwd.abandon();
    return true;
  } catch (e) {
    log.error('takeover failed; this process keeps forwarding', { pid, error: (e as Error).message, ringsWereStopped: stopped });
    if (pid > 0 && stopped) await reap(pid);
    if (stopped) {
      await fwd.resumeAfterHandover();
      await hooks.afterFailure();
      log.info('forwarding resumed after the failed takeover');
    }
    return false;
  } finally {
    ch.close();
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
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  log.error('the failed successor did not go away', { pid });
}

/** Named errors of the new side (the CLI exits 2 with the message). */
export class TakeoverError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TakeoverError';
  }
}

/**
 * New side: take the dataplane over from the process serving `path`. `build` makes this
 * process's forwarder for the state the old one runs (its interfaces, forwarding and
 * placement with this config's workers). Resolves with the started forwarder once the old
 * process knows this one polls.
 */
export async function takeOver(path: string, version: string, build: (state: ForwarderState) => Forwarder): Promise<Forwarder> {
  let fd: number;
  try {
    fd = native.connect(path);
  } catch (e) {
    throw new TakeoverError(`no running vhostfwd takes handovers at ${path}: ${(e as Error).message}`);
  }
  const ch = new HandoverChannel(fd, STEP_TIMEOUT_MS);
  const t0 = performance.now();
  try {
    ch.send({ hello: true, format: HANDOVER_FORMAT, pid: process.pid, version });
    const ready = ch.recv();
    if (typeof ready.msg.error === 'string') throw new TakeoverError(`the running vhostfwd refused the takeover: ${ready.msg.error}`);
    if (ready.msg.ready !== true) throw new TakeoverError(`unexpected answer: ${JSON.stringify(ready.msg).slice(0, 200)}`);
    die('ready');
    const fwd = build(ready.msg.state as ForwarderState);
    await fwd.prestart();
    log.info('takeover: workers ready, asking the running process to stop its rings', { from: ready.msg.version });
    ch.send({ go: true });
    const st = ch.recv();
    die('state');
    const snap = st.msg.state as ForwarderSnapshot;
    await fwd.startFromHandover(snap, st.fds);
    die('started');
    const startMs = Number((performance.now() - t0).toFixed(1));
    ch.send({ polling: true, startMs });
    log.info('takeover: polling', { interfaces: snap.interfaces.length, fds: st.fds.length, startMs });
    return fwd;
  } catch (e) {
    if (e instanceof HandoverError) throw new TakeoverError(`takeover failed: ${e.message}`);
    throw e;
  } finally {
    ch.close();
  }
}

function die(step: string): void {
  if (FAIL_AT !== step) return;
  log.warn('VHOSTFWD_TAKEOVER_FAIL_AT: dying here', { step });
  process.kill(process.pid, 'SIGKILL');
}

/** The config the new process runs: its own settings, the running process's ports and plan. */
export function configFor(cfg: Config, state: ForwarderState): Config {
  return { ...cfg, interfaces: state.interfaces, forwarding: state.forwarding };
}
