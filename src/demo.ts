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
import { SyntheticGuest, frame, macOf } from './frontend/guest';

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

export async function demo(o: DemoOptions): Promise<DemoResult> {
  const say = (s: string) => {
    if (!o.quiet) process.stdout.write(s + '\n');
  };
  if (o.quiet) setLevel('error');
  else setLevel('warn');
  const size = o.size ?? 256;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vhostfwd-demo-'));
  const sock = (n: string) => path.join(dir, `${n}.sock`);
  const cfg = parseConfig(
    { interfaces: ['vm1', 'vm2', 'vm3'].map((n) => ({ name: n, socket: sock(n) })), forwarding: { mode: 'bridge' } },
    os.cpus().length,
  );
  const fwd = new Forwarder(cfg);
  await fwd.start();
  say(`vhostfwd demo: bridge over ${dir}/{vm1,vm2,vm3}.sock, ${fwd.pool.size} poller worker(s), ${size}-byte frames`);
  const macA = macOf(1);
  const macB = macOf(2);
  const a = await SyntheticGuest.start({ socket: sock('vm1'), mac: macA });
  let b = await SyntheticGuest.start({ socket: sock('vm2'), mac: macB });
  say('guests A (vm1) and B (vm2) connected and negotiated');

  const sent = { ab: 0, ba: 0 };
  const recv = { ab: new Set<number>(), ba: new Set<number>() };
  let window: [number, number] | null = null; // A's seq range sent while B migrates
  let bSending = true;
  let running = true;
  const burst = 32;
  const pktsAB: Uint8Array[] = [];
  const pktsBA: Uint8Array[] = [];

  // Credit-based flow control, as a transport would do: never more frames in flight than
  // the receiver has buffers posted, so any loss is the dataplane's, not a slow receiver's.
  const credit = 192;
  // Frames arrive in order, so "in flight" is everything after the newest frame received
  // (frames lost in the migration window do not hold credit forever).
  const next = { ab: 0, ba: 0 };
  const dups = { ab: 0, ba: 0 };
  let rarpSeen = 0;
  const reordered = { ab: 0, ba: 0 };
  const got = (dir: 'ab' | 'ba', p: { data: Uint8Array }) => {
    // Only our test frames carry a sequence number; the RARP that announces B' reaches A too.
    if (p.data[12] !== 0x88 || p.data[13] !== 0xb5) {
      if (p.data[12] === 0x80 && p.data[13] === 0x35) rarpSeen++;
      return;
    }
    const seq = new DataView(p.data.buffer, p.data.byteOffset).getUint32(14, false);
    if (recv[dir].has(seq)) dups[dir]++;
    if (seq + 1 < next[dir]) reordered[dir]++;
    recv[dir].add(seq);
    if (seq + 1 > next[dir]) next[dir] = seq + 1;
  };
  const pump = async () => {
    while (running) {
      pktsAB.length = 0;
      const inflightAB = sent.ab - next.ab;
      for (let i = 0; i < Math.min(burst, credit - inflightAB); i++) pktsAB.push(frame(macB, macA, size, sent.ab + i));
      sent.ab += a.send(0, pktsAB);
      if (bSending) {
        pktsBA.length = 0;
        const inflightBA = sent.ba - next.ba;
        for (let i = 0; i < Math.min(burst, credit - inflightBA); i++) pktsBA.push(frame(macA, macB, size, sent.ba + i));
        sent.ba += b.send(0, pktsBA);
        for (const p of b.receive(0)) got('ab', p);
      }
      for (const p of a.receive(0)) got('ba', p);
      await new Promise((r) => setImmediate(r));
    }
  };
  const t0 = Date.now();
  const loop = pump();
  const half = (o.seconds * 1000) / 2;
  await sleep(half * 0.6);

  // --- live migration of B: vm2 -> vm3 ---
  say('migration: LOG_ALL + SET_LOG_BASE on B');
  const logStart = Date.now();
  await b.startLogging();
  const image = Uint8Array.from(b.mem); // the first RAM pass, taken while logging is on
  await sleep(half * 0.4);
  const pages = b.dirtyPages().length;
  say(`migration: ${pages} dirty pages so far; stopping B's rings (GET_VRING_BASE)`);
  bSending = false;
  const sentBeforeStop = sent.ba;
  // The window opens with the first frame B had not received when its rings stop: frames
  // still in flight then (A's TX ring, the worker's burst) have nowhere to go until B' runs.
  window = [next.ab, -1];
  const tStop = Date.now();
  const bases = await b.stopRings();
  const dirty = b.dirtyPages();
  // The migration stream: pages the backend logged plus pages the guest wrote itself.
  for (const pg of new Set([...dirty, ...b.guestDirty])) image.set(b.mem.subarray(pg * 4096, (pg + 1) * 4096), pg * 4096);
  const memoryImageMatches = Buffer.compare(Buffer.from(image), Buffer.from(b.mem)) === 0;
  const old = b;
  if (!o.quiet) process.stdout.write(`migration: bases ${bases.join(',')} backend-dirty ${dirty.length} guest-dirty ${b.guestDirty.size}\n`);
  b = await SyntheticGuest.migrate(old, sock('vm3'), image, bases);
  old.close();
  window[1] = sent.ab;
  bSending = true;
  const migrationMs = Date.now() - tStop;
  say(`migration: B' resumed on vm3 at ring bases [${bases.join(', ')}] and sent RARP; blackout ${migrationMs} ms; image ${memoryImageMatches ? 'matches' : 'DIFFERS FROM'} B's memory`);
  void logStart;

  await sleep(half);
  running = false;
  await loop;
  const secs = (Date.now() - t0) / 1000;
  const w = window as [number, number];
  // let the last frames land: until every frame sent outside the window arrived (or 10 s)
  const missing = (): number => {
    let n = 0;
    for (let s = 0; s < sent.ab; s++) if ((s < w[0] || s >= w[1]) && !recv.ab.has(s)) n++;
    return n + sent.ba - recv.ba.size;
  };
  const drainEnd = Date.now() + 10000;
  do {
    for (const p of a.receive(0)) got('ba', p);
    for (const p of b.receive(0)) got('ab', p);
    if (missing() === 0) break;
    await sleep(5);
  } while (Date.now() < drainEnd);
  let lost = 0;
  let inWindow = 0;
  for (let s = 0; s < sent.ab; s++) {
    if (s >= w[0] && s < w[1]) {
      inWindow++;
      continue;
    }
    if (!recv.ab.has(s)) {
      lost++;
      if (process.env.VHOSTFWD_DEMO_DEBUG) process.stderr.write(`lost A->B seq ${s} (window ${w[0]}..${w[1]}, sent ${sent.ab})\n`);
    }
  }
  let firstLostBA = -1;
  for (let s = 0; s < sent.ba; s++) {
    if (!recv.ba.has(s)) {
      lost++;
      if (firstLostBA < 0) firstLostBA = s;
    }
  }
  if (process.env.VHOSTFWD_DEMO_DEBUG && firstLostBA >= 0) process.stderr.write(`first lost B->A seq ${firstLostBA} of ${sent.ba}; B sent ${sentBeforeStop} before its stop; dups ${JSON.stringify(dups)} reordered ${JSON.stringify(reordered)}\n`);
  const total = recv.ab.size + recv.ba.size;
  if (process.env.VHOSTFWD_DEMO_DEBUG) {
    for (const q of fwd.stats()) process.stderr.write(`${q.iface}/${q.dir}: pkts ${q.packets} noBuf ${q.dropNoBuffer} noDest ${q.dropNoDest} err ${q.errors}\n`);
  }
  const guards = [...a.brokenGuards(), ...b.brokenGuards()];
  a.close();
  b.close();
  await fwd.stop();
  fs.rmSync(dir, { recursive: true, force: true });
  const res: DemoResult = {
    ok: lost === 0 && memoryImageMatches && guards.length === 0 && total > 0,
    sent: { ab: sent.ab, ba: sent.ba },
    received: { ab: recv.ab.size, ba: recv.ba.size },
    inWindow,
    lostOutsideWindow: lost,
    dirtyPages: dirty.length,
    memoryImageMatches,
    migrationMs,
    mpps: total / secs / 1e6,
    rarpSeen,
    guardsBroken: guards.length,
    duplicates: dups.ab + dups.ba,
    reordered: reordered.ab + reordered.ba,
  };
  say('');
  say('summary');
  say(`  A -> B   sent ${res.sent.ab}  received ${res.received.ab}  (in the migration window: ${inWindow})`);
  say(`  B -> A   sent ${res.sent.ba}  received ${res.received.ba}`);
  say(`  rate     ${(total / secs).toFixed(0)} frames/s, ${((total * size * 8) / secs / 1e6).toFixed(1)} Mbit/s over ${secs.toFixed(1)} s (single-threaded synthetic guests)`);
  say(`  dirty pages logged ${res.dirtyPages}, migrated image ${memoryImageMatches ? 'identical to' : 'DIFFERENT from'} the source memory`);
  say(`  loss outside the migration window: ${lost}; guard bytes broken: ${guards.length}; RARP frames seen by A: ${rarpSeen}`);
  say(res.ok ? 'demo OK' : 'demo FAILED');
  return res;
}
