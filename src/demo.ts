/**
 * `vhostfwd demo` (what `npm start` runs): the forwarder in bridge mode with three
 * sockets, two synthetic guests (our TS frontend) exchanging traffic, and a live
 * migration of guest B to the third socket midway, done the way QEMU does it:
 * LOG_ALL + SET_LOG_BASE, keep running, GET_VRING_BASE, rebuild B's memory from a
 * snapshot plus the dirty pages, start B' on the new socket at the saved ring bases,
 * SEND_RARP. Needs no QEMU and no root.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseConfig } from './main/config';
import { Forwarder } from './main/forwarder';
import { setLevel } from './main/log';
import { SyntheticGuest, macOf } from './frontend/guest';
import { Traffic } from './frontend/traffic';

export interface DemoOptions {
  seconds: number;
  /** frame size in bytes */
  size?: number;
  quiet?: boolean;
}

export interface DemoResult {
  ok: boolean;
  sent: { ab: number; ba: number };
  received: { ab: number; ba: number };
  /** frames of A sent to B while B was between source and destination */
  inWindow: number;
  lostOutsideWindow: number;
  dirtyPages: number;
  memoryImageMatches: boolean;
  migrationMs: number;
  mpps: number;
  /** RARP frames announcing B' that reached A (SEND_RARP → injected, flooded) */
  rarpSeen: number;
  /** guard bytes after the guests' buffers found overwritten */
  guardsBroken: number;
  /** frames received twice / after a later one, per direction */
  duplicates: number;
  reordered: number;
}

export async function runDemo(o: DemoOptions): Promise<boolean> {
  const r = await demo(o);
  return r.ok;
}

type Say = (s: string) => void;

/** The forwarder in bridge mode on three sockets in a fresh directory. */
async function startForwarder(size: number, say: Say): Promise<{ dir: string; sock: (n: string) => string; fwd: Forwarder }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vhostfwd-demo-'));
  const sock = (n: string) => path.join(dir, `${n}.sock`);
  const cfg = parseConfig(
    { interfaces: ['vm1', 'vm2', 'vm3'].map((n) => ({ name: n, socket: sock(n) })), forwarding: { mode: 'bridge' } },
    os.cpus().length,
  );
  const fwd = new Forwarder(cfg);
  await fwd.start();
  say(`vhostfwd demo: bridge over ${dir}/{vm1,vm2,vm3}.sock, ${fwd.pool.size} poller worker(s), ${size}-byte frames`);
  return { dir, sock, fwd };
}

/** Guests A on vm1 and B on vm2, negotiated. */
async function attachGuests(sock: (n: string) => string, say: Say): Promise<{ a: SyntheticGuest; b: SyntheticGuest }> {
  const a = await SyntheticGuest.start({ socket: sock('vm1'), mac: macOf(1) });
  const b = await SyntheticGuest.start({ socket: sock('vm2'), mac: macOf(2) });
  say('guests A (vm1) and B (vm2) connected and negotiated');
  return { a, b };
}

/**
 * Traffic both ways in the background: credit-based, as a transport would do it (never
 * more frames in flight than the receiver has buffers posted, so any loss is the
 * dataplane's, not a slow receiver's). Frames arrive in order, so "in flight" is
 * everything after the newest frame received: frames lost in the migration window do not
 * hold credit for ever. Only our test frames carry a number; the RARP that announces B'
 * reaches A too, and is counted.
 */
function send(a: SyntheticGuest, b: SyntheticGuest, size: number): { traffic: Traffic; rarpSeen: () => number } {
  let rarp = 0;
  const traffic = new Traffic(a, b, {
    sizes: [size],
    burst: 32,
    credit: 192,
    verify: false,
    recordSeqs: true,
    onOther: (_at, p) => {
      if (p.data[12] === 0x80 && p.data[13] === 0x35) rarp++;
    },
  });
  traffic.start();
  return { traffic, rarpSeen: () => rarp };
}

interface Migration {
  /** A's frame numbers [first, end) sent while B was between source and destination */
  window: [number, number];
  dirtyPages: number;
  memoryImageMatches: boolean;
  migrationMs: number;
  /** frames B sent before its rings stopped */
  sentBeforeStop: number;
}

/**
 * Live migration of B from vm2 to vm3 while the traffic runs, as QEMU does it: LOG_ALL +
 * SET_LOG_BASE, a first RAM pass, `precopyMs` of traffic, GET_VRING_BASE, the image
 * rebuilt from the snapshot plus the dirty pages, B' started on vm3 at the saved ring
 * bases (SEND_RARP). B neither sends nor receives while it is stopped.
 */
async function migrate(traffic: Traffic, sock: (n: string) => string, precopyMs: number, say: Say): Promise<Migration> {
  const b = traffic.b;
  say('migration: LOG_ALL + SET_LOG_BASE on B');
  await b.startLogging();
  const image = Uint8Array.from(b.mem); // the first RAM pass, taken while logging is on
  await sleep(precopyMs);
  const pages = b.dirtyPages().length;
  say(`migration: ${pages} dirty pages so far; stopping B's rings (GET_VRING_BASE)`);
  traffic.hold('b', true);
  const sentBeforeStop = traffic.ba.sent;
  // The window opens with the first frame B had not received when its rings stop: frames
  // still in flight then (A's TX ring, the worker's burst) have nowhere to go until B' runs.
  const window: [number, number] = [traffic.ab.next, -1];
  const tStop = Date.now();
  const bases = await b.stopRings();
  const dirty = b.dirtyPages();
  // The migration stream: pages the backend logged plus pages the guest wrote itself.
  for (const pg of new Set([...dirty, ...b.guestDirty])) image.set(b.mem.subarray(pg * 4096, (pg + 1) * 4096), pg * 4096);
  const memoryImageMatches = Buffer.compare(Buffer.from(image), Buffer.from(b.mem)) === 0;
  say(`migration: bases ${bases.join(',')} backend-dirty ${dirty.length} guest-dirty ${b.guestDirty.size}`);
  traffic.b = await SyntheticGuest.migrate(b, sock('vm3'), image, bases);
  b.close();
  window[1] = traffic.ab.sent;
  traffic.hold('b', false);
  const migrationMs = Date.now() - tStop;
  say(`migration: B' resumed on vm3 at ring bases [${bases.join(', ')}] and sent RARP; blackout ${migrationMs} ms; image ${memoryImageMatches ? 'matches' : 'DIFFERS FROM'} B's memory`);
  return { window, dirtyPages: dirty.length, memoryImageMatches, migrationMs, sentBeforeStop };
}

/** A->B frames outside the window and B->A frames not received (yet). */
function missing(traffic: Traffic, w: [number, number]): number {
  const { ab, ba } = traffic;
  let n = 0;
  for (let s = 0; s < ab.sent; s++) if ((s < w[0] || s >= w[1]) && !ab.seen?.has(s)) n++;
  return n + ba.sent - (ba.seen?.size ?? 0);
}

/** Let the last frames land: until every frame sent outside the window arrived (or 10 s). */
async function drain(traffic: Traffic, w: [number, number]): Promise<void> {
  const drainEnd = Date.now() + 10000;
  do {
    traffic.receive();
    if (missing(traffic, w) === 0) break;
    await sleep(5);
  } while (Date.now() < drainEnd);
}

/** Frames lost outside the migration window (both ways) and A->B frames sent inside it. */
function countLoss(traffic: Traffic, m: Migration): { lost: number; inWindow: number } {
  const { ab, ba } = traffic;
  const w = m.window;
  let lost = 0;
  let inWindow = 0;
  for (let s = 0; s < ab.sent; s++) {
    if (s >= w[0] && s < w[1]) {
      inWindow++;
      continue;
    }
    if (!ab.seen?.has(s)) {
      lost++;
      if (process.env.VHOSTFWD_DEMO_DEBUG) process.stderr.write(`lost A->B seq ${s} (window ${w[0]}..${w[1]}, sent ${ab.sent})\n`);
    }
  }
  let firstLostBA = -1;
  for (let s = 0; s < ba.sent; s++) {
    if (!ba.seen?.has(s)) {
      lost++;
      if (firstLostBA < 0) firstLostBA = s;
    }
  }
  if (process.env.VHOSTFWD_DEMO_DEBUG && firstLostBA >= 0) {
    const dups = { ab: ab.duplicates, ba: ba.duplicates };
    const reordered = { ab: ab.reordered, ba: ba.reordered };
    process.stderr.write(`first lost B->A seq ${firstLostBA} of ${ba.sent}; B sent ${m.sentBeforeStop} before its stop; dups ${JSON.stringify(dups)} reordered ${JSON.stringify(reordered)}\n`);
  }
  return { lost, inWindow };
}

function report(res: DemoResult, size: number, secs: number, say: Say): void {
  const total = res.received.ab + res.received.ba;
  say('');
  say('summary');
  say(`  A -> B   sent ${res.sent.ab}  received ${res.received.ab}  (in the migration window: ${res.inWindow})`);
  say(`  B -> A   sent ${res.sent.ba}  received ${res.received.ba}`);
  say(`  rate     ${(total / secs).toFixed(0)} frames/s, ${((total * size * 8) / secs / 1e6).toFixed(1)} Mbit/s over ${secs.toFixed(1)} s (single-threaded synthetic guests)`);
  say(`  dirty pages logged ${res.dirtyPages}, migrated image ${res.memoryImageMatches ? 'identical to' : 'DIFFERENT from'} the source memory`);
  say(`  loss outside the migration window: ${res.lostOutsideWindow}; guard bytes broken: ${res.guardsBroken}; RARP frames seen by A: ${res.rarpSeen}`);
  say(res.ok ? 'demo OK' : 'demo FAILED');
}

export async function demo(o: DemoOptions): Promise<DemoResult> {
  const say: Say = (s) => {
    if (!o.quiet) process.stdout.write(s + '\n');
  };
  setLevel(o.quiet ? 'error' : 'warn');
  const size = o.size ?? 256;
  const { dir, sock, fwd } = await startForwarder(size, say);
  const { a, b } = await attachGuests(sock, say);
  const t0 = Date.now();
  const { traffic, rarpSeen } = send(a, b, size);
  const half = (o.seconds * 1000) / 2;
  await sleep(half * 0.6);
  const m = await migrate(traffic, sock, half * 0.4, say);
  await sleep(half);
  await traffic.stop(0);
  const secs = (Date.now() - t0) / 1000;
  await drain(traffic, m.window);
  const { lost, inWindow } = countLoss(traffic, m);
  if (process.env.VHOSTFWD_DEMO_DEBUG) {
    for (const q of fwd.stats()) process.stderr.write(`${q.iface}/${q.dir}: pkts ${q.packets} noBuf ${q.dropNoBuffer} noDest ${q.dropNoDest} err ${q.errors}\n`);
  }
  const guards = [...a.brokenGuards(), ...traffic.b.brokenGuards()];
  a.close();
  traffic.b.close();
  await fwd.stop();
  fs.rmSync(dir, { recursive: true, force: true });
  const received = { ab: traffic.ab.seen?.size ?? 0, ba: traffic.ba.seen?.size ?? 0 };
  const total = received.ab + received.ba;
  const res: DemoResult = {
    ok: lost === 0 && m.memoryImageMatches && guards.length === 0 && total > 0,
    sent: { ab: traffic.ab.sent, ba: traffic.ba.sent },
    received,
    inWindow,
    lostOutsideWindow: lost,
    dirtyPages: m.dirtyPages,
    memoryImageMatches: m.memoryImageMatches,
    migrationMs: m.migrationMs,
    mpps: total / secs / 1e6,
    rarpSeen: rarpSeen(),
    guardsBroken: guards.length,
    duplicates: traffic.ab.duplicates + traffic.ba.duplicates,
    reordered: traffic.ab.reordered + traffic.ba.reordered,
  };
  report(res, size, secs, say);
  return res;
}
