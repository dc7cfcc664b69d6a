/**
 * Issue 22: AF_XDP uplink ports ({"type": "af_xdp", "device": ..., "queue": 0}) on a veth pair:
 * one end stays here for vhostfwd's XDP socket (the UMEM and its four rings walked by the
 * worker with Atomics, the XDP program redirecting queue 0 to the socket), the other goes into
 * a network namespace the test creates, where raw frames are sent and captured (AF_PACKET).
 * Byte-exact both ways, counters right, the idle worker asleep on the socket, a guest's TSO
 * frame segmented and a partial checksum completed in software (no virtio-net header on
 * AF_XDP; synthetic rings), the program gone from the
 * device once vhostfwd stops (also when the process is killed), a takeover refused by name,
 * and bogus RX descriptors (as the kernel's ring could hold) dropped and counted without a
 * read outside the UMEM. Every veth and namespace is removed also when an assertion fails.
 */
import t, { Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { SyntheticGuest, frame, macOf } from '../src/frontend/guest';
import { parseConfig } from '../src/main/config';
import { Forwarder } from '../src/main/forwarder';
import { QueueStats } from '../src/main/stats';
import { NetNs, canUseNetns, linkExists, run, vethPair } from '../kit/peers/netns';
import { VhostfwdProc } from '../kit/vhostfwd-proc';
import { tmpDir, waitUntil } from '../kit/env';
import { api } from '../src/ctl';
import { startControl } from '../src/main/control/server';
import Ajv2020 from 'ajv/dist/2020';
import { CTRL_INTS, ST_DROP_NO_BUF, ST_ERRORS, STATS_SLOTS, VringDesc, XskDesc } from '../src/shared/types';
import { HOST_ALL, build, offloadPair, refComplete, refSegments } from '../kit/offload-lib';
import { pattern } from '../kit/vq-harness';
import { XskQueue, newXskPool } from '../src/workers/xsk-port';
import { PacketBatch } from '../src/workers/packet-batch';
import { CopyQueue } from '../src/workers/bulk-copy';
import { native } from '../src/native';

const why = canUseNetns();
if (why) t.plan(0, `AF_XDP uplink tests need root, ip netns and python3: ${why}`);

const tag = `${process.pid % 100000}`;
const ETH_TEST = 0x88b5;
const SIZES = [60, 64, 65, 128, 255, 256, 1000, 1500, 1514];
const made: string[] = [];

const q = (st: QueueStats[], iface: string, dir: 'rx' | 'tx'): QueueStats | undefined => st.find((s) => s.iface === iface && s.dir === dir);

function threadCpuMs(tid: number): number {
  const f = fs.readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[11]) + Number(rest[12])) * 10;
}

async function guestFrames(g: SyntheticGuest, n: number, ms: number, type = ETH_TEST): Promise<Buffer[]> {
  const got: Buffer[] = [];
  const end = Date.now() + ms;
  while (got.length < n && Date.now() < end) {
    for (const p of g.receive(0)) {
      const et = (p.data[12] << 8) | p.data[13];
      const inner = et === 0x8100 ? (p.data[16] << 8) | p.data[17] : et;
      if (inner === type) got.push(Buffer.from(p.data));
    }
    await sleep(5);
  }
  return got;
}

function sameFrames(t: Test, got: Buffer[], sent: Uint8Array[], what: string): void {
  t.equal(got.length, sent.length, `${what}: ${sent.length} frames arrived`);
  let bad = 0;
  for (let i = 0; i < Math.min(got.length, sent.length); i++) if (Buffer.compare(got[i], Buffer.from(sent[i])) !== 0) bad++;
  t.equal(bad, 0, `${what}: every frame byte-exact and in order`);
}

/** the XDP program on a device, as ip link shows it ("prog/xdp" in driver mode, "xdpgeneric" in generic) */
const xdpOn = (dev: string): boolean => /\bxdp/.test(run('ip', ['link', 'show', 'dev', dev]));

/** A UMEM and rings in plain SharedArrayBuffers (no socket): producer at byte 0, consumer 4, flags 8, descriptors 64. */
function synthetic(index: number, entries: number): { d: XskDesc; vd: VringDesc } {
  const ringSab = (descWords: number): XskDesc['rx'] => ({ sab: new SharedArrayBuffer(64 + descWords * 4 * entries), producer: 0, consumer: 4, flags: 8, desc: 64 });
  const d: XskDesc = { kind: 'af_xdp', fd: -1, umem: new SharedArrayBuffer(2 * entries * 2048), frameSize: 2048, frames: 2 * entries, entries, rx: ringSab(4), tx: ringSab(4), fill: ringSab(2), comp: ringSab(2), pool: newXskPool(entries, 2048) };
  const nowhere = { region: 0, offset: 0 };
  const vd: VringDesc = {
    device: 1, port: 1, index, size: 0, desc: nowhere, avail: nowhere, used: nowhere, logUsedGpa: -1, kickFd: -1, callFd: -1,
    features: { hdrLen: 12, mrgRxbuf: true, eventIdx: false, indirect: false, inOrder: false, packed: false, logAll: false, netBits: 0 },
    ctrl: new SharedArrayBuffer(CTRL_INTS * 4), stats: new SharedArrayBuffer(STATS_SLOTS * 8), uplink: d,
  };
  return { d, vd };
}

async function xdpSetup(t: Test, here: string, there: string, extra: Record<string, unknown> = {}): Promise<{ fwd: Forwarder; ns: NetNs; a: SyntheticGuest }> {
  const ns = vethPair(t, here, there, { made });
  const dir = tmpDir('vhostfwd-xdp-');
  const fwd = new Forwarder(parseConfig({ interfaces: [{ name: 'a', socket: path.join(dir, 'a.sock') }, { type: 'af_xdp', device: here, queue: 0, ...extra }] }, os.cpus().length));
  let a: SyntheticGuest | null = null;
  let stopped = false;
  t.teardown(async () => {
    a?.close();
    if (!stopped) await fwd.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await fwd.start();
  a = await SyntheticGuest.start({ socket: path.join(dir, 'a.sock'), mac: macOf(1) });
  const stop = fwd.stop.bind(fwd);
  fwd.stop = async (): Promise<void> => {
    stopped = true;
    await stop();
  };
  return { fwd, ns, a };
}

t.test('xconnect guest <-> AF_XDP on a veth: byte-exact both ways, counters right, asleep when idle, the program gone after stop', async (t) => {
  const here = `vxa${tag}`;
  const there = `vxb${tag}`;
  // 64 UMEM frames: rings of 32, so the 600 frames below take every ring round many times
  const { fwd, ns, a } = await xdpSetup(t, here, there, { frames: 64 });
  const info = fwd.uplink(here)?.xskInfo;
  t.ok(info, `the port runs: ${JSON.stringify(info)}`);
  t.comment(`veth: socket in ${info?.mode} mode, program in ${info?.xdp} mode`);
  t.ok(xdpOn(here), 'an XDP program is on the device while vhostfwd runs');
  const out = SIZES.map((s, i) => frame(macOf(2), macOf(1), s, i));
  const cap = await ns.capture(there, ETH_TEST, out.length, 5000);
  t.equal(a.send(0, out), out.length, 'the guest posted every frame');
  sameFrames(t, await cap.frames, out, 'guest -> AF_XDP -> the namespace');
  const back = SIZES.map((s, i) => frame(macOf(1), macOf(2), s, 100 + i));
  ns.send(there, back);
  sameFrames(t, await guestFrames(a, back.length, 5000), back, 'the namespace -> AF_XDP -> guest');
  // many more frames than a ring holds, in bursts of 20: TX slots come back through the completion ring
  const many = Array.from({ length: 300 }, (_, i) => frame(macOf(2), macOf(1), 60 + (i % 40) * 30, 1000 + i));
  const cap2 = await ns.capture(there, ETH_TEST, many.length, 8000);
  for (let k = 0; k < many.length; k += 20) {
    a.send(0, many.slice(k, k + 20));
    await sleep(20);
  }
  sameFrames(t, await cap2.frames, many, 'guest -> AF_XDP: 300 more frames through a 32-entry TX ring');
  // towards the guest in rounds of 30 (the synthetic guest's receive ring is small): RX chunks go round the fill ring
  const many2 = Array.from({ length: 300 }, (_, i) => frame(macOf(1), macOf(2), 60 + (i % 40) * 30, 2000 + i));
  const got2: Buffer[] = [];
  for (let k = 0; k < many2.length; k += 30) {
    ns.send(there, many2.slice(k, k + 30));
    got2.push(...(await guestFrames(a, 30, 5000)));
  }
  sameFrames(t, got2, many2, 'the namespace -> AF_XDP -> guest: 300 more frames through 32 RX chunks');
  const st = fwd.stats();
  const outN = out.length + many.length;
  const backN = back.length + many2.length;
  t.equal(q(st, here, 'rx')?.packets, outN, 'AF_XDP rx counter (towards the device): every frame the guest sent');
  t.equal(q(st, here, 'rx')?.bytes, [...out, ...many].reduce((n, f) => n + f.length, 0), 'and their bytes');
  t.equal(q(st, here, 'tx')?.packets, backN, 'AF_XDP tx counter (from the device): the frames sent in the namespace');
  t.equal(q(st, here, 'tx')?.bytes, [...back, ...many2].reduce((n, f) => n + f.length, 0), 'and their bytes');
  t.equal(q(st, 'a', 'rx')?.packets, backN, "guest a's rx counter agrees");
  t.equal(st.filter((s) => s.iface === here).reduce((n, s) => n + s.errors + s.dropBadOffload + s.dropTooBig + s.dropNoBuffer, 0), 0, 'no drops or errors on the port');
  t.same(a.brokenGuards(), [], 'no write outside the guest buffers');
  await sleep(300);
  const w = fwd.pool.workerInfo()[0];
  const cpu0 = threadCpuMs(w.tid);
  await sleep(1000);
  const used = threadCpuMs(w.tid) - cpu0;
  t.ok(used <= 60, `the idle worker used ${used} ms of CPU in 1 s (asleep on the XDP socket)`);
  const wake = [frame(macOf(1), macOf(2), 100, 999)];
  ns.send(there, wake);
  sameFrames(t, await guestFrames(a, 1, 3000), wake, 'a frame on the device wakes the sleeping worker');
  // too big for a 2048-byte UMEM frame towards the device: dropped, counted
  a.send(0, [frame(macOf(2), macOf(1), 3000, 7)]);
  await waitUntil(() => (q(fwd.stats(), here, 'rx')?.dropTooBig ?? 0) >= 1, 5000, 'the big guest frame counted').catch(() => undefined);
  t.equal(q(fwd.stats(), here, 'rx')?.dropTooBig, 1, 'a guest frame over a UMEM frame: dropped, counted as too big');
  await fwd.stop();
  t.notOk(xdpOn(here), 'no XDP program left on the device after vhostfwd stops');
});

t.test('control API: an AF_XDP port in list and show (valid against the OpenAPI document); its polling moved to another worker, frames go on both ways', async (t) => {
  const doc = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'schema', 'control-api.openapi.json'), 'utf8')) as Record<string, unknown>;
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  ajv.addSchema({ ...doc, $id: 'api' });
  const valid = (name: string, v: unknown): string | null => {
    const check = ajv.getSchema(`api#/components/schemas/${name}`);
    if (!check) return `no schema ${name}`;
    return check(v) ? null : ajv.errorsText(check.errors);
  };
  const here = `vxi${tag}`;
  const there = `vxj${tag}`;
  const ns = vethPair(t, here, there, { made });
  const dir = tmpDir('vhostfwd-xdpctl-');
  const fwd = new Forwarder(parseConfig({ interfaces: [{ name: 'a', socket: path.join(dir, 'a.sock') }, { type: 'af_xdp', device: here, queue: 0, frames: 64 }], workers: [{ queues: ['a:0', `${here}:0`] }, { queues: [] }], control: false }, os.cpus().length));
  let a: SyntheticGuest | null = null;
  let ctl: Awaited<ReturnType<typeof startControl>> | null = null;
  t.teardown(async () => {
    a?.close();
    await ctl?.close();
    await fwd.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await fwd.start();
  const sock = path.join(dir, 'control.sock');
  ctl = await startControl(fwd, { socket: sock, socketDir: null, version: 'test' });
  a = await SyntheticGuest.start({ socket: path.join(dir, 'a.sock'), mac: macOf(1) });
  const list = await api(sock, 'GET', '/v1/interfaces');
  t.equal(valid('InterfaceList', list.body), null, 'the list is valid against InterfaceList');
  const ups = (list.body as { uplinks: Array<Record<string, unknown>> }).uplinks;
  t.same(ups.map((u) => [u.name, u.type, u.device, u.running, u.worker]), [[here, 'af_xdp', here, true, 0]], 'the AF_XDP port is listed: running, polled by worker 0');
  const show = await api(sock, 'GET', `/v1/interfaces/${here}`);
  t.equal(valid('UplinkInfo', show.body), null, 'show is valid against UplinkInfo');
  t.same((show.body as { spec: unknown }).spec, { type: 'af_xdp', device: here, queue: 0, frames: 64 }, 'with its config form');
  let seq = 0;
  const both = async (what: string): Promise<void> => {
    const out = Array.from({ length: 40 }, (_, i) => frame(macOf(2), macOf(1), 60 + 35 * i, seq++));
    const cap = await ns.capture(there, ETH_TEST, out.length, 5000);
    a?.send(0, out);
    sameFrames(t, await cap.frames, out, `${what}: guest -> device`);
    const back = Array.from({ length: 30 }, (_, i) => frame(macOf(1), macOf(2), 60 + 45 * i, seq++));
    ns.send(there, back);
    sameFrames(t, await guestFrames(a as SyntheticGuest, back.length, 5000), back, `${what}: device -> guest`);
  };
  await both('polled by worker 0');
  const move = await api(sock, 'PUT', `/v1/interfaces/${here}/queues/0`, { worker: 1 });
  t.equal(move.status, 200, 'its polling moves to worker 1');
  t.equal(fwd.workerOf(here, 0), 1, 'placement says worker 1');
  await both('polled by worker 1');
  await both('polled by worker 1, again (the rings went round)');
  t.equal(fwd.stats().filter((x) => x.iface === here).reduce((n, x) => n + x.errors + x.dropNoBuffer + x.dropTooBig, 0), 0, 'no drops or errors');
});

t.test('AF_XDP: a guest TSO frame is segmented and a partial checksum completed in software (no virtio-net header crosses); TX slots come back through the completion ring', async (t) => {
  const { d, vd } = synthetic(0, 4);
  const vq = new XskQueue(vd, d);
  t.teardown(() => vq.dispose());
  const { a, tx } = offloadPair({ netBits: HOST_ALL }, { netBits: 0 });
  const f = build({ v6: false, payload: pattern(3000, 3), gsoSize: 1000 });
  const c = build({ v6: false, udp: true, payload: pattern(300, 5) });
  tx.drv.postTx(f.frame, { hdr: f.hdr });
  tx.drv.postTx(c.frame, { hdr: c.hdr });
  const batch = new PacketBatch();
  const n = tx.vq.dequeueBurst(batch, 32);
  t.equal(n, 2, 'two frames from the guest');
  vq.acquire();
  t.equal(vq.enqueueBurst(a.gm, batch, null, n), 2, 'both taken');
  vq.flush();
  vq.release();
  tx.vq.completeBurst(batch);
  const ring = new Uint32Array(d.tx.sab);
  const umem = new Uint8Array(d.umem);
  t.equal(Atomics.load(ring, 0), 4, 'four TX descriptors published: three segments and the UDP frame (a 4-entry ring, full)');
  const out = [0, 1, 2, 3].map((k) => umem.slice(ring[16 + 4 * k], ring[16 + 4 * k] + ring[16 + 4 * k + 2]));
  const want = [...refSegments(f.frame, { l3: f.l3, l4: f.l4, hl: f.hl, mss: 1000, v6: false }), refComplete(c.frame, { l3: c.l3, l4: c.l4, v6: false, udp: true })];
  t.same(out.map((x) => x.length), want.map((x) => x.length), 'the lengths of the reference segments');
  t.ok(out.every((x, k) => Buffer.compare(Buffer.from(x), Buffer.from(want[k])) === 0), 'byte-exact against the reference (kit/offload-lib.ts)');
  t.same([0, 1, 2, 3].map((k) => ring[16 + 4 * k]), [4, 5, 6, 7].map((k) => k * 2048), 'TX frames from the TX half, the lowest first');
  // the ring is full until the kernel completes: the next frame is dropped (no buffer)
  const g = build({ v6: false, udp: true, payload: pattern(100, 7) });
  tx.drv.postTx(g.frame, { hdr: g.hdr });
  tx.drv.postTx(g.frame, { hdr: g.hdr });
  const m = tx.vq.dequeueBurst(batch, 1);
  vq.acquire();
  t.equal(vq.enqueueBurst(a.gm, batch, null, m), 0, 'a full TX ring takes nothing');
  vq.release();
  tx.vq.completeBurst(batch);
  t.equal(new Float64Array(vd.stats)[ST_DROP_NO_BUF], 1, 'counted as no buffer');
  // the kernel completes two (their addresses on the completion ring, as it writes them): two slots free again
  const comp = new Uint32Array(d.comp.sab);
  comp[16] = 4 * 2048;
  comp[18] = 5 * 2048;
  Atomics.store(comp, 0, 2);
  const m2 = tx.vq.dequeueBurst(batch, 1);
  vq.acquire();
  t.equal(vq.enqueueBurst(a.gm, batch, null, m2), 1, 'taken once the completion ring moved');
  vq.release();
  t.equal(Atomics.load(comp, 1), 2, 'the completion ring consumed');
  t.equal(Atomics.load(ring, 0), 5, 'the fifth descriptor published, in slot 0 again');
  t.equal(ring[16], 5 * 2048, 'slot 0 uses the frame completed last (frame 5: still in the caches), not the oldest');
  t.equal(new Float64Array(vd.stats)[ST_ERRORS], 0, 'no error counted so far');
  // a completion the kernel could not have written (a frame of the RX half, or not a frame start) is counted, not reused
  comp[20] = 0;
  comp[22] = 6 * 2048 + 100;
  Atomics.store(comp, 0, 4);
  tx.drv.postTx(g.frame, { hdr: g.hdr });
  const m3 = tx.vq.dequeueBurst(batch, 1);
  vq.acquire();
  t.equal(vq.enqueueBurst(a.gm, batch, null, m3), 1, 'the next frame taken (frame 4 is free)');
  vq.release();
  t.equal(new Float64Array(vd.stats)[ST_ERRORS], 2, 'the two bogus completions counted as errors');
  t.equal(ring[20], 4 * 2048, 'the frame used is 4, never one from a bogus completion');
});

t.test('AF_XDP: a partial checksum completed in software with the frame copy on the worker\'s bulk queue: the stored checksum survives the copy', async (t) => {
  // the frame (BULK_MIN bytes and more) is copied in the burst's batch, after completeCsum
  // poked the checksum into the slot: the poke must not be overwritten by the late copy
  const { d, vd } = synthetic(0, 4);
  const vq = new XskQueue(vd, d);
  t.teardown(() => vq.dispose());
  const { a, tx } = offloadPair({ netBits: HOST_ALL }, { netBits: 0 });
  a.gm.enableBulk(native);
  t.teardown(() => a.gm.dispose());
  vq.bulk = new CopyQueue(native);
  const c = build({ v6: false, udp: true, payload: pattern(1200, 9) });
  tx.drv.postTx(c.frame, { hdr: c.hdr });
  const batch = new PacketBatch();
  const n = tx.vq.dequeueBurst(batch, 32);
  t.equal(n, 1, 'one frame from the guest');
  vq.acquire();
  t.equal(vq.enqueueBurst(a.gm, batch, null, n), 1, 'taken');
  vq.flush();
  vq.release();
  tx.vq.completeBurst(batch);
  const ring = new Uint32Array(d.tx.sab);
  const umem = new Uint8Array(d.umem);
  t.equal(Atomics.load(ring, 0), 1, 'one TX descriptor published');
  const out = umem.slice(ring[16], ring[16] + ring[18]);
  const want = refComplete(c.frame, { l3: c.l3, l4: c.l4, v6: false, udp: true });
  t.equal(out.length, want.length, 'the length');
  t.ok(Buffer.compare(Buffer.from(out), Buffer.from(want)) === 0, 'byte-exact against the reference, checksum included');
});

t.test('AF_XDP: the program goes with a killed process; a takeover is refused by name (AF_XDP_NOT_HANDED_OVER), the running process goes on', async (t) => {
  const here = `vxe${tag}`;
  const there = `vxf${tag}`;
  const ns = vethPair(t, here, there, { made });
  const dir = tmpDir('vhostfwd-xdpho-');
  const sock = (n: string): string => path.join(dir, `${n}.sock`);
  fs.writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ interfaces: [{ name: 'a', socket: sock('a') }, { type: 'af_xdp', device: here, queue: 0, frames: 64 }], control: false }));
  const args = ['--config', path.join(dir, 'cfg.json'), '--handover', sock('handover')];
  const procs: VhostfwdProc[] = [];
  let a: SyntheticGuest | null = null;
  t.teardown(async () => {
    a?.close();
    for (const p of procs) await p.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const first = VhostfwdProc.start(args);
  procs.push(first);
  const up = await first.waitFor('af_xdp port up');
  t.match(up, { mode: /^(copy|zero-copy)$/, xdp: /^(driver|generic)$/ }, `logged which mode: socket ${String(up.mode)}, program ${String(up.xdp)}`);
  await first.waitFor('takeovers accepted');
  const next = VhostfwdProc.start([...args, '--takeover']);
  procs.push(next);
  const ex = await next.waitExit();
  t.equal(ex.code, 2, 'the successor exits 2 (refused, nothing stopped)');
  t.match(next.tail(20), /AF_XDP_NOT_HANDED_OVER/, 'naming why: AF_XDP_NOT_HANDED_OVER');
  a = await SyntheticGuest.start({ socket: sock('a'), mac: macOf(1) });
  const back = [frame(macOf(1), macOf(2), 300, 1)];
  ns.send(there, back);
  sameFrames(t, await guestFrames(a, 1, 5000), back, 'the running process still forwards');
  t.ok(xdpOn(here), 'the program is on the device');
  process.kill(first.pid, 'SIGKILL');
  await first.waitExit();
  await waitUntil(() => !xdpOn(here), 5000, 'the program detached').catch(() => undefined);
  t.notOk(xdpOn(here), 'SIGKILL: no XDP program left on the device (the bpf_link went with the process)');
});

t.test('AF_XDP: opening errors are named by step (no such queue, queue taken, a program on the device already); nothing left attached', async (t) => {
  const here = `vxg${tag}`;
  const there = `vxh${tag}`;
  try {
    run('ip', ['link', 'del', here]);
  } catch {
    // none left behind
  }
  // two queues each way, so a second socket can bind queue 1 and fail only at the attach
  run('ip', ['link', 'add', here, 'numtxqueues', '2', 'numrxqueues', '2', 'type', 'veth', 'peer', 'name', there, 'numtxqueues', '2', 'numrxqueues', '2']);
  made.push(here);
  const forwarders: Forwarder[] = [];
  t.teardown(async () => {
    for (const f of forwarders) await f.stop().catch(() => undefined);
    try {
      run('ip', ['link', 'del', here]);
    } catch {
      // gone
    }
  });
  run('ip', ['link', 'set', here, 'up']);
  const open = async (queue: number): Promise<Forwarder> => {
    const f = new Forwarder(parseConfig({ interfaces: [{ type: 'af_xdp', device: here, queue, frames: 64 }] }, 1));
    forwarders.push(f);
    await f.start();
    return f;
  };
  await t.rejects(open(7), /cannot open an AF_XDP socket on vxg\d+: the device has no such queue \(bind AF_XDP EINVAL\)/, 'queue 7 of a two-queue veth: named');
  t.notOk(xdpOn(here), 'nothing attached after the failure');
  const first = await open(0);
  t.ok(xdpOn(here), 'the first port attached its program');
  await t.rejects(open(0), /cannot open an AF_XDP socket on vxg\d+: the queue is bound to another XDP socket \(bind AF_XDP EBUSY\)/, 'the same queue again: bound already, named');
  await t.rejects(open(1), /cannot open an AF_XDP socket on vxg\d+: an XDP program is attached to the device already \(not ours to replace\) \(XDP_ATTACH_FAILED E(BUSY|EXIST)\)/, 'queue 1: the socket binds, the attach is refused, named XDP_ATTACH_FAILED');
  await first.stop();
  t.notOk(xdpOn(here), 'the program left with the port; the failed ones left nothing');
});

t.test('AF_XDP: bogus RX descriptors are dropped and counted, never read outside the UMEM; the good ones go on', async (t) => {
  // a synthetic UMEM and rings (no kernel): what the worker sees if the RX ring lies
  const entries = 8;
  const fs2 = 2048;
  const { d, vd } = synthetic(1, entries);
  const vq = new XskQueue(vd, d);
  t.teardown(() => vq.dispose());
  const rx = new Uint32Array(d.rx.sab);
  const put = (k: number, lo: number, hi: number, len: number): void => {
    rx[16 + 4 * k] = lo;
    rx[16 + 4 * k + 1] = hi;
    rx[16 + 4 * k + 2] = len;
  };
  put(0, 256, 0, 100); // good
  put(1, 2048 + 256, 0, 1800); // past its chunk (256 + 1800 > 2048)
  put(2, entries * fs2, 0, 64); // in the TX half
  put(3, 0, 1, 64); // above 4 GiB
  put(4, 0xfffffff0, 0, 64); // far outside
  put(5, 3 * 2048, 0, 10); // shorter than an Ethernet header
  put(6, 4 * 2048 + 256, 0, 1514); // good
  Atomics.store(rx, 0, 7);
  const batch = new PacketBatch();
  const n = vq.dequeueBurst(batch, 64);
  t.equal(n, 2, 'two good frames of seven');
  t.same([batch.segOffset[0], batch.segLen[0], batch.segOffset[1], batch.segLen[1]], [256, 100, 4 * 2048 + 256, 1514], 'described in place in the UMEM');
  t.equal(new Float64Array(vd.stats)[ST_ERRORS], 5, 'five bad descriptors counted as errors');
  t.equal(Atomics.load(rx, 1), 7, 'the RX ring consumed all seven');
  vq.completeBurst();
  const fill = new Uint32Array(d.fill.sab);
  t.equal(Atomics.load(fill, 0), 4, 'four chunks back on the fill ring (the in-range ones; the three out of range are not ours)');
  t.same([fill[16], fill[18], fill[20], fill[22]], [4 * 2048, 3 * 2048, 2048, 0], 'the chunks, not the frame addresses, the one taken last first');
});

t.test('AF_XDP: the fill ring stays shallow while the worker polls (a few hot chunks go round), every chunk goes back into it before a sleep, none lost or doubled', async (t) => {
  // a synthetic socket as the main thread opens it (every RX chunk in the fill ring), and a
  // "kernel" here that moves chunks from the fill ring to the RX ring 32 at a time
  const entries = 512;
  const fsz = 2048;
  const { d, vd } = synthetic(1, entries);
  const vq = new XskQueue(vd, d);
  t.teardown(() => vq.dispose());
  const fill = new Uint32Array(d.fill.sab);
  const rx = new Uint32Array(d.rx.sab);
  for (let k = 0; k < entries; k++) fill[16 + 2 * k] = k * fsz;
  Atomics.store(fill, 0, entries);
  const batch = new PacketBatch();
  const kernelRound = (): number[] => {
    const cons = fill[1];
    const prod = rx[0];
    const n = Math.min(32, (fill[0] - cons) >>> 0);
    const got: number[] = [];
    for (let k = 0; k < n; k++) {
      const chunk = fill[16 + 2 * ((cons + k) & (entries - 1))];
      got.push(chunk);
      const dsc = 16 + 4 * ((prod + k) & (entries - 1));
      rx[dsc] = chunk + 256;
      rx[dsc + 1] = 0;
      rx[dsc + 2] = 64;
    }
    Atomics.store(fill, 1, (cons + n) >>> 0);
    Atomics.store(rx, 0, (prod + n) >>> 0);
    return got;
  };
  const used = new Set<number>();
  let deepest = 0;
  for (let r = 0; r < 100; r++) {
    const got = kernelRound();
    t.equal(got.length, 32, `round ${r}: the kernel found 32 chunks in the fill ring`);
    if (r >= 50) for (const c of got) used.add(c);
    t.equal(vq.dequeueBurst(batch, 64), 32, `round ${r}: 32 frames taken`);
    vq.completeBurst();
    if (r >= 20) deepest = Math.max(deepest, (fill[0] - fill[1]) >>> 0);
  }
  t.equal(deepest, 128, 'once drained, the fill ring holds 128 chunks (four bursts), not 512');
  t.ok(used.size <= 128 + 32, `the last 50 rounds (1600 frames) went through ${used.size} distinct chunks (at most the ring's 128 and a burst)`);
  const pool = new Int32Array(d.pool);
  t.equal(pool[0] + ((fill[0] - fill[1]) >>> 0), entries, 'every chunk is either in the fill ring or on the spare stack');
  t.equal(vq.enableNotify(), false, 'enableNotify: nothing to report (the socket is the notification)');
  t.equal((fill[0] - fill[1]) >>> 0, entries, 'before a sleep the fill ring holds every chunk');
  t.equal(pool[0], 0, 'the spare stack is empty');
  const inRing = new Set<number>();
  for (let k = 0; k < entries; k++) inRing.add(fill[16 + 2 * ((fill[1] + k) & (entries - 1))]);
  t.equal(inRing.size, entries, 'each chunk once');
  t.ok([...inRing].every((c) => c % fsz === 0 && c < entries * fsz), 'and only chunks of the RX half');
  // awake again: the ring drains back to the busy depth as frames come
  vq.disableNotify();
  for (let r = 0; r < 30; r++) {
    kernelRound();
    vq.dequeueBurst(batch, 64);
    vq.completeBurst();
  }
  t.equal((fill[0] - fill[1]) >>> 0, 128, 'awake and busy: back to 128');
  t.equal(new Float64Array(vd.stats)[ST_ERRORS], 0, 'no error counted');
});

t.test('no veth or namespace left behind by the tests above', async (t) => {
  const nss = run('ip', ['netns', 'list']);
  for (const dev of made) {
    t.notOk(linkExists(dev), `no device ${dev}`);
    t.notOk(nss.includes(`vhf-${dev}`), `no namespace vhf-${dev}`);
  }
});
