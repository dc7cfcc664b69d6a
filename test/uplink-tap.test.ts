/**
 * Issue 22: TAP uplink ports. A forwarder with a synthetic guest (our TS frontend) and a TAP
 * port; the TAP is moved into a network namespace the test creates, and raw frames are sent
 * and captured there (AF_PACKET): byte-exact both ways, counters right. The TAP's read path
 * is fed hostile virtio-net headers and lengths (dropped and counted, never a crash); an idle
 * TAP puts its worker to sleep (no busy loop); a TAP that goes away stops its port only; and
 * a takeover (`run --takeover`) carries the TAP's fd, so the device, its namespace and its
 * counters survive a restart.
 */
import t, { Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { DEFAULT_WANT, SyntheticGuest, frame, macOf } from '../src/frontend/guest';
import { parseConfig } from '../src/main/config';
import { Forwarder } from '../src/main/forwarder';
import { QueueStats } from '../src/main/stats';
import { api, render } from '../src/ctl';
import { startControl } from '../src/main/control/server';
import Ajv2020 from 'ajv/dist/2020';
import { native } from '../src/native';
import { F, bit, hasBit } from '../src/protocol/constants';
import { CTRL_INTS, ST_DROP_BAD_OFFLOAD, ST_DROP_TOO_BIG, ST_ERRORS, ST_PACKETS, STATS_SLOTS, VringDesc } from '../src/shared/types';
import { PacketBatch } from '../src/workers/packet-batch';
import { TAP_HDR, TAP_SLOT, TapQueue } from '../src/workers/tap-port';
import { NetNs, canUseNetns, linkExists, run } from '../kit/peers/netns';
import { VhostfwdProc } from '../kit/vhostfwd-proc';
import { tmpDir, waitUntil } from '../kit/env';

const why = canUseNetns();
if (why) t.plan(0, `TAP uplink tests need root, ip netns and python3: ${why}`);

/** Names unique to this run (a TAP name is at most 15 bytes); 10.77.x.0/24 inside the namespace only */
const tag = `${process.pid % 100000}`;
const ETH_TEST = 0x88b5;
const SIZES = [60, 64, 65, 128, 255, 256, 1000, 1500, 1514];
/** every TAP a test made: none may exist once the tests' teardowns ran */
const left: string[] = [];

/** Frames of EtherType 0x88b5 a guest received on queue 0 until `n` came or `ms` passed. */
async function guestFrames(g: SyntheticGuest, n: number, ms: number): Promise<Buffer[]> {
  const got: Buffer[] = [];
  const end = Date.now() + ms;
  while (got.length < n && Date.now() < end) {
    for (const p of g.receive(0)) if (p.data[12] === 0x88 && p.data[13] === 0xb5) got.push(Buffer.from(p.data));
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

const q = (st: QueueStats[], iface: string, dir: 'rx' | 'tx'): QueueStats | undefined => st.find((s) => s.iface === iface && s.dir === dir);

/** CPU time (ms) a thread of this process used so far (/proc: utime + stime, clock ticks of 10 ms). */
function threadCpuMs(tid: number): number {
  const f = fs.readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[11]) + Number(rest[12])) * 10;
}

/** A forwarder with guest port `a` and TAP `tap`, the TAP moved into a new namespace with 10.77.0.1/24. */
async function tapSetup(t: Test, tap: string, extra: Record<string, unknown> = {}, tapExtra: Record<string, unknown> = {}, want?: bigint): Promise<{ fwd: Forwarder; ns: NetNs; a: SyntheticGuest }> {
  const dir = tmpDir('vhostfwd-tap-');
  const ns = new NetNs(`vhf-${tap}`);
  const cfg = parseConfig({ interfaces: [{ name: 'a', socket: path.join(dir, 'a.sock') }, { type: 'tap', name: tap, ...tapExtra }], ...extra }, os.cpus().length);
  const fwd = new Forwarder(cfg);
  let a: SyntheticGuest | null = null;
  t.teardown(async () => {
    a?.close();
    await fwd.stop();
    ns.remove();
    fs.rmSync(dir, { recursive: true, force: true });
    left.push(tap);
  });
  await fwd.start();
  t.ok(linkExists(tap), `vhostfwd created TAP ${tap}`);
  ns.adopt(tap, '10.77.0.1/24');
  a = await SyntheticGuest.start({ socket: path.join(dir, 'a.sock'), mac: macOf(1), want });
  return { fwd, ns, a };
}

t.test('xconnect guest <-> TAP in a namespace: byte-exact both ways, counters right, the worker sleeps when idle', async (t) => {
  const tap = `vft${tag}`;
  const { fwd, ns, a } = await tapSetup(t, tap);
  // guest -> TAP: what the namespace's side of the device sees
  const out = SIZES.map((s, i) => frame(macOf(2), macOf(1), s, i));
  const cap = await ns.capture(tap, ETH_TEST, out.length, 5000);
  t.equal(a.send(0, out), out.length, 'the guest posted every frame');
  sameFrames(t, await cap.frames, out, 'guest -> TAP');
  // TAP -> guest
  const back = SIZES.map((s, i) => frame(macOf(1), macOf(2), s, 100 + i));
  ns.send(tap, back);
  sameFrames(t, await guestFrames(a, back.length, 5000), back, 'TAP -> guest');
  const st = fwd.stats();
  const bytes = (fs: Uint8Array[]): number => fs.reduce((n, f) => n + f.length, 0);
  t.equal(q(st, tap, 'rx')?.packets, out.length, 'TAP rx counter (towards the kernel): every frame the guest sent');
  t.equal(q(st, tap, 'rx')?.bytes, bytes(out), 'TAP rx byte counter');
  t.equal(q(st, 'a', 'tx')?.packets, out.length, "guest a's tx counter agrees");
  t.equal(q(st, tap, 'tx')?.packets, q(st, 'a', 'rx')?.packets, "TAP tx counter (from the kernel) == guest a's rx counter: nothing lost between");
  t.ok((q(st, tap, 'tx')?.packets ?? 0) >= back.length, `TAP tx counter took the ${back.length} frames (${q(st, tap, 'tx')?.packets})`);
  t.equal(st.filter((s) => s.iface === tap).reduce((n, s) => n + s.errors + s.dropBadOffload + s.dropTooBig + s.dropNoBuffer, 0), 0, 'no drops or errors on the TAP');
  t.same(a.brokenGuards(), [], 'no write outside the guest buffers');
  // idle: the worker polling the TAP sleeps on its fd, it does not spin
  await sleep(300);
  const w = fwd.pool.workerInfo()[0];
  const cpu0 = threadCpuMs(w.tid);
  await sleep(1000);
  const used = threadCpuMs(w.tid) - cpu0;
  t.ok(used <= 60, `the idle worker used ${used} ms of CPU in 1 s (asleep on the TAP fd, no busy loop)`);
  t.ok(fwd.pool.workerInfo()[0].sleeping, 'the worker is asleep');
  // a frame arriving wakes it: the TAP fd is in its wait set
  const wake = [frame(macOf(1), macOf(2), 100, 999)];
  ns.send(tap, wake);
  sameFrames(t, await guestFrames(a, 1, 3000), wake, 'a frame from the TAP wakes the sleeping worker');
});

t.test('a guest frame with a bad virtio-net header never reaches the TAP: dropped and counted at the guest port', async (t) => {
  const tap = `vfv${tag}`;
  // a guest that negotiated VIRTIO_NET_F_CSUM (its headers are read), NEEDS_CSUM with a
  // csum_start beyond the frame
  const { fwd, ns, a } = await tapSetup(t, tap, {}, {}, DEFAULT_WANT | bit(F.VIRTIO_NET_F_CSUM));
  t.ok(hasBit(a.features, F.VIRTIO_NET_F_CSUM), 'the guest negotiated CSUM');
  const cap = await ns.capture(tap, ETH_TEST, 2, 3000);
  const hdr = new Uint8Array(12);
  hdr[0] = 1;
  hdr[6] = 0xf0;
  hdr[7] = 0xff;
  hdr[8] = 6;
  a.tx[0].postTx(frame(macOf(2), macOf(1), 100, 1), { hdr });
  const good = frame(macOf(2), macOf(1), 100, 2);
  a.tx[0].postTx(good);
  native.eventfdWrite(a.kickFds[1], 1);
  const got = await cap.frames;
  sameFrames(t, got, [good], 'only the good frame came out of the TAP');
  const st = fwd.stats();
  t.equal(q(st, 'a', 'tx')?.dropBadOffload, 1, "the bad one counted as dropBadOffload on the guest's tx queue");
  t.equal(q(st, tap, 'rx')?.packets, 1, 'the TAP was written one frame');
});

t.test('bridge with a TAP port: learned both ways, the IP stack in the namespace answers an ARP request from a guest', async (t) => {
  const tap = `vfb${tag}`;
  const { fwd, ns, a } = await tapSetup(t, tap, { forwarding: { mode: 'bridge' } });
  const nsMac = Buffer.from(ns.exec('cat', `/sys/class/net/${tap}/address`).trim().split(':').map((h) => parseInt(h, 16)));
  // ARP request from the guest (10.77.0.2) for 10.77.0.1: the namespace's stack answers
  const arp = new Uint8Array(60);
  arp.set([255, 255, 255, 255, 255, 255], 0);
  arp.set(macOf(1), 6);
  arp.set([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1], 12);
  arp.set(macOf(1), 22);
  arp.set([10, 77, 0, 2], 28);
  arp.set([10, 77, 0, 1], 38);
  a.send(0, [arp]);
  let reply: Uint8Array | null = null;
  await waitUntil(() => {
    for (const p of a.receive(0)) if (p.data[12] === 0x08 && p.data[13] === 0x06 && p.data[21] === 2) reply = p.data;
    return reply !== null;
  }, 5000, 'an ARP reply from the namespace');
  const r = reply as unknown as Uint8Array;
  t.same(Buffer.from(r.subarray(22, 28)), nsMac, "the reply carries the TAP's MAC as the sender's");
  t.same([...r.subarray(28, 32)], [10, 77, 0, 1], 'for 10.77.0.1');
  t.same(Buffer.from(r.subarray(0, 6)), Buffer.from(macOf(1)), 'unicast back to the guest (the bridge learned it)');
  const st = fwd.stats();
  t.ok((q(st, tap, 'rx')?.packets ?? 0) >= 1 && (q(st, tap, 'tx')?.packets ?? 0) >= 1, 'counted on the TAP both ways');
});

/**
 * The TAP's read side (TapQueue) on a file: each feed writes `bytes` to the file and reads it
 * through a new queue on a fresh fd, as one frame (a file's read returns what it holds).
 * The queues share one set of counters.
 */
function readSide(netBits: number): { stats: Float64Array; feed: (bytes: Uint8Array) => number; last: () => { vq: TapQueue; batch: PacketBatch }; close: () => void } {
  const dir = tmpDir('vhostfwd-tapq-');
  const file = path.join(dir, 'frame');
  const stats = new SharedArrayBuffer(STATS_SLOTS * 8);
  const ctrl = new SharedArrayBuffer(CTRL_INTS * 4);
  const nowhere = { region: 0, offset: 0 };
  const batch = new PacketBatch();
  let vq: TapQueue | null = null;
  return {
    stats: new Float64Array(stats),
    feed: (bytes) => {
      fs.writeFileSync(file, bytes);
      const fd = fs.openSync(file, 'r');
      vq?.dispose();
      const vd: VringDesc = {
        device: 1, port: 0, index: 1, size: 0, desc: nowhere, avail: nowhere, used: nowhere, logUsedGpa: -1, kickFd: -1, callFd: -1,
        features: { hdrLen: 12, mrgRxbuf: true, eventIdx: false, indirect: false, inOrder: false, logAll: false, netBits },
        ctrl, stats, uplink: { kind: 'tap', fd },
      };
      vq = new TapQueue(vd, { kind: 'tap', fd });
      try {
        return vq.dequeueBurst(batch, 32);
      } finally {
        fs.closeSync(fd);
      }
    },
    last: () => ({ vq: vq as TapQueue, batch }),
    close: () => {
      vq?.dispose();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A virtio-net header (12 bytes) and a frame behind it. */
function withHdr(h: Partial<{ flags: number; gso: number; hdrLen: number; gsoSize: number; csumStart: number; csumOffset: number }>, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(TAP_HDR + body.length);
  const dv = new DataView(out.buffer);
  out[0] = h.flags ?? 0;
  out[1] = h.gso ?? 0;
  dv.setUint16(2, h.hdrLen ?? 0, true);
  dv.setUint16(4, h.gsoSize ?? 0, true);
  dv.setUint16(6, h.csumStart ?? 0, true);
  dv.setUint16(8, h.csumOffset ?? 0, true);
  out.set(body, TAP_HDR);
  return out;
}

t.test('control API: a TAP port in list and show (valid against the OpenAPI document), its polling moved to another worker, a second add of its name refused (409), removed', async (t) => {
  const doc = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'schema', 'control-api.openapi.json'), 'utf8')) as Record<string, unknown>;
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  ajv.addSchema({ ...doc, $id: 'api' });
  const valid = (name: string, v: unknown): string | null => {
    const check = ajv.getSchema(`api#/components/schemas/${name}`);
    if (!check) return `no schema ${name}`;
    return check(v) ? null : ajv.errorsText(check.errors);
  };
  const tap = `vfc${tag}`;
  const dir = tmpDir('vhostfwd-tapctl-');
  const ns = new NetNs(`vhf-${tap}`);
  const cfg = parseConfig({ interfaces: [{ name: 'a', socket: path.join(dir, 'a.sock') }, { type: 'tap', name: tap }], workers: [{ queues: ['a:0', `${tap}:0`] }, { queues: [] }], control: false }, os.cpus().length);
  const fwd = new Forwarder(cfg);
  let a: SyntheticGuest | null = null;
  let ctl: Awaited<ReturnType<typeof startControl>> | null = null;
  t.teardown(async () => {
    a?.close();
    await ctl?.close();
    await fwd.stop();
    ns.remove();
    fs.rmSync(dir, { recursive: true, force: true });
    left.push(tap);
  });
  await fwd.start();
  ns.adopt(tap, '10.77.0.1/24');
  ctl = await startControl(fwd, { socket: path.join(dir, 'control.sock'), socketDir: null, version: 'test' });
  const sock = path.join(dir, 'control.sock');
  a = await SyntheticGuest.start({ socket: path.join(dir, 'a.sock'), mac: macOf(1) });
  const list = await api(sock, 'GET', '/v1/interfaces');
  t.equal(list.status, 200);
  t.equal(valid('InterfaceList', list.body), null, 'the list is valid against InterfaceList');
  const ups = (list.body as { uplinks: Array<Record<string, unknown>> }).uplinks;
  t.same(ups.map((u) => [u.name, u.type, u.device, u.running, u.failed, u.worker]), [[tap, 'tap', tap, true, null, 0]], 'the TAP port is listed: running, polled by worker 0');
  t.match(render('list', list.body), new RegExp(`${tap}\\s+1\\s+tap`), '`vhostfwd ctl list` shows it');
  ns.send(tap, [frame(macOf(1), macOf(2), 100, 1)]);
  t.equal((await guestFrames(a, 1, 3000)).length, 1, 'a frame from the TAP arrived');
  const show = await api(sock, 'GET', `/v1/interfaces/${tap}`);
  t.equal(show.status, 200);
  t.equal(valid('UplinkInfo', show.body), null, 'show is valid against UplinkInfo');
  const info = show.body as { spec: unknown; queues: QueueStats[] };
  t.same(info.spec, { type: 'tap', name: tap }, 'with its config form');
  t.equal(info.queues.find((x) => x.dir === 'tx')?.packets, 1, 'and its counters');
  t.match(render('show', show.body), /type:\s+tap/, '`vhostfwd ctl show` renders it');
  const move = await api(sock, 'PUT', `/v1/interfaces/${tap}/queues/0`, { worker: 1 });
  t.equal(move.status, 200, 'its polling moves to worker 1');
  t.equal(fwd.workerOf(tap, 0), 1, 'placement says worker 1');
  const after = [frame(macOf(1), macOf(2), 300, 2), frame(macOf(1), macOf(2), 1514, 3)];
  ns.send(tap, after);
  sameFrames(t, await guestFrames(a, 2, 3000), after, 'frames from the TAP still arrive, polled by worker 1');
  // run-time adds and removes of uplinks: test/uplink-api.test.ts; here the config's TAP
  const add = await api(sock, 'POST', '/v1/interfaces', { type: 'tap', name: tap });
  t.equal(add.status, 409, 'adding a TAP of the same name through the API is refused (409)');
  t.match(add.body, { error: { message: new RegExp(`interface ${tap} exists`), field: 'name' } }, 'by name, the field named');
  t.ok(fwd.uplink(tap)?.running, 'and the config one still runs');
  const rm = await api(sock, 'DELETE', `/v1/interfaces/${tap}`);
  t.equal(rm.status, 200, 'the config-time TAP is removed through the API');
  await waitUntil(() => { try { ns.exec('ip', 'link', 'show', tap); return false; } catch { return true; } }, 5000, 'the TAP to go').catch(() => undefined);
  t.throws(() => ns.exec('ip', 'link', 'show', tap), 'its fd closed: the kernel deleted the TAP');
  t.equal(fwd.uplink(tap), undefined, 'no such port any more');
});

t.test('frames from the TAP are untrusted: bad headers, runts and cut frames dropped and counted, never a crash', async (t) => {
  const FROM_KERNEL = 2 ** F.VIRTIO_NET_F_CSUM | 2 ** F.VIRTIO_NET_F_HOST_TSO4 | 2 ** F.VIRTIO_NET_F_HOST_TSO6 | 2 ** F.VIRTIO_NET_F_HOST_ECN;
  const r = readSide(FROM_KERNEL);
  t.teardown(r.close);
  const body = frame(macOf(1), macOf(2), 200, 7);
  t.equal(r.feed(withHdr({}, body)), 1, 'a plain frame is taken');
  const { vq, batch: b } = r.last();
  const mem = vq.mem.u8[0];
  t.same(Buffer.from(mem.subarray(b.segOffset[0], b.segOffset[0] + b.segLen[0])), Buffer.from(body), 'described in place, past the header, byte-exact');
  t.equal(r.feed(withHdr({ flags: 2 }, body)), 1, 'DATA_VALID (a receive hint) is taken, the hint cleared');
  t.equal(r.last().batch.flags[0], 0, 'flags 0 after clearing DATA_VALID');
  const cases: Array<[string, Uint8Array, number]> = [
    ['a header and 5 bytes (no Ethernet header)', withHdr({}, new Uint8Array(5)), ST_ERRORS],
    ['only part of a header', new Uint8Array(7), ST_ERRORS],
    ['unknown flags', withHdr({ flags: 0x80 }, body), ST_DROP_BAD_OFFLOAD],
    ['NEEDS_CSUM pointing past the frame', withHdr({ flags: 1, csumStart: 190, csumOffset: 16 }, body), ST_DROP_BAD_OFFLOAD],
    ['NEEDS_CSUM inside the Ethernet header', withHdr({ flags: 1, csumStart: 4, csumOffset: 2 }, body), ST_DROP_BAD_OFFLOAD],
    ['GSO TCPv4 with gso_size 0', withHdr({ flags: 1, gso: 1, csumStart: 34, csumOffset: 16 }, body), ST_DROP_BAD_OFFLOAD],
    ['GSO UDP (UFO), which TUNSETOFFLOAD never allowed', withHdr({ flags: 1, gso: 3, gsoSize: 100, csumStart: 34, csumOffset: 6 }, body), ST_DROP_BAD_OFFLOAD],
    ['GSO TCPv4 whose headers are not IPv4/TCP', withHdr({ flags: 1, gso: 1, gsoSize: 100, hdrLen: 54, csumStart: 34, csumOffset: 16 }, body), ST_DROP_BAD_OFFLOAD],
  ];
  for (const [what, bytes, slot] of cases) {
    const before = r.stats[slot];
    t.equal(r.feed(bytes), 0, `${what}: dropped`);
    t.equal(r.stats[slot], before + 1, `${what}: counted`);
  }
  // a frame of a whole slot is taken; the kernel reports a cut frame with its whole length
  t.equal(r.feed(withHdr({}, frame(macOf(1), macOf(2), TAP_SLOT - TAP_HDR, 8))), 1, 'a frame filling a whole slot is taken');
  t.equal(r.stats[ST_DROP_TOO_BIG], 0, 'nothing counted too big so far');
  t.equal(r.stats[ST_PACKETS], 3, 'the three good frames counted as received');
  // offloads off: every header with a flag is refused
  const off = readSide(0);
  t.teardown(off.close);
  t.equal(off.feed(withHdr({ flags: 1, csumStart: 34, csumOffset: 6 }, body)), 0, 'with offloads off, NEEDS_CSUM is refused');
  t.equal(off.stats[ST_DROP_BAD_OFFLOAD], 1, 'and counted');
});

t.test('a TAP that goes away (its namespace deleted) stops its port only; the worker does not spin', async (t) => {
  const tap = `vfg${tag}`;
  const { fwd, ns, a } = await tapSetup(t, tap);
  ns.send(tap, [frame(macOf(1), macOf(2), 100, 1)]);
  t.equal((await guestFrames(a, 1, 3000)).length, 1, 'the TAP works before');
  ns.remove();
  await waitUntil(() => fwd.uplink(tap)?.failed !== null, 5000, 'the port noticed the device gone').catch(() => undefined);
  t.match(fwd.uplink(tap)?.failed ?? '', /ring 1/, `the port says why: ${fwd.uplink(tap)?.failed}`);
  await sleep(300);
  const w = fwd.pool.workerInfo()[0];
  const cpu0 = threadCpuMs(w.tid);
  await sleep(1000);
  const used = threadCpuMs(w.tid) - cpu0;
  t.ok(used <= 60, `the worker used ${used} ms of CPU in the next second (no spinning on a dead fd)`);
  // the guest port still forwards (its frames to the dead TAP are counted, nothing crashes)
  a.send(0, [frame(macOf(2), macOf(1), 100, 2)]);
  await waitUntil(() => (q(fwd.stats(), 'a', 'tx')?.packets ?? 0) >= 1, 3000, 'the guest frame taken');
  t.pass('the guest port still runs');
});

t.test('takeover (run --takeover) carries the TAP fd: same device, still in its namespace, counters go on', async (t) => {
  const tap = `vfh${tag}`;
  const dir = tmpDir('vhostfwd-tapho-');
  const sock = (n: string): string => path.join(dir, `${n}.sock`);
  const control = sock('control');
  fs.writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ interfaces: [{ name: 'a', socket: sock('a') }, { type: 'tap', name: tap }], control: { socket: control } }));
  const args = ['--config', path.join(dir, 'cfg.json'), '--handover', sock('handover')];
  const procs: VhostfwdProc[] = [];
  const ns = new NetNs(`vhf-${tap}`);
  let a: SyntheticGuest | null = null;
  t.teardown(async () => {
    a?.close();
    for (const p of procs) await p.kill();
    ns.remove();
    fs.rmSync(dir, { recursive: true, force: true });
    left.push(tap);
  });
  const first = VhostfwdProc.start(args);
  procs.push(first);
  await first.waitFor('takeovers accepted');
  ns.adopt(tap, '10.77.0.1/24');
  const ifindex = ns.exec('cat', `/sys/class/net/${tap}/ifindex`).trim();
  a = await SyntheticGuest.start({ socket: sock('a'), mac: macOf(1) });
  const round = async (k: number): Promise<void> => {
    const out = [60, 1514, 256].map((s, i) => frame(macOf(2), macOf(1), s, 10 * k + i));
    const cap = await ns.capture(tap, ETH_TEST, out.length, 5000);
    a?.send(0, out);
    sameFrames(t, await cap.frames, out, `round ${k}: guest -> TAP`);
    const back = [60, 1514, 256].map((s, i) => frame(macOf(1), macOf(2), s, 1000 + 10 * k + i));
    ns.send(tap, back);
    sameFrames(t, await guestFrames(a as SyntheticGuest, back.length, 5000), back, `round ${k}: TAP -> guest`);
  };
  await round(0);
  const next = VhostfwdProc.start([...args, '--takeover']);
  procs.push(next);
  await next.waitFor('takeover step 5/5: polling');
  t.same(await first.waitExit(), { code: 0, signal: null }, 'the old process exited 0 after the takeover');
  t.equal(ns.exec('cat', `/sys/class/net/${tap}/ifindex`).trim(), ifindex, 'the same TAP device (ifindex), still in its namespace: its fd was handed over');
  await round(1);
  const r = await api(control, 'GET', '/v1/stats');
  const st = (r.body as { queues: QueueStats[] }).queues;
  t.equal(q(st, tap, 'rx')?.packets, 6, 'the TAP rx counter went on across the takeover (3 + 3 frames)');
  t.equal(q(st, 'a', 'tx')?.packets, 6, "guest a's tx counter agrees");
  t.equal(a.client.closed, null, 'the guest never saw its connection close');
  t.notOk(run('ip', ['-o', 'link']).includes(`${tap}:`), 'no second TAP of that name appeared outside the namespace');
});

t.test('a successor that fails mid-takeover: the running process resumes its TAP port, same device, frames flow again', async (t) => {
  const tap = `vfr${tag}`;
  const dir = tmpDir('vhostfwd-taphof-');
  const sock = (n: string): string => path.join(dir, `${n}.sock`);
  fs.writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ interfaces: [{ name: 'a', socket: sock('a') }, { type: 'tap', name: tap }], control: false }));
  const args = ['--config', path.join(dir, 'cfg.json'), '--handover', sock('handover')];
  const env = { VHOSTFWD_TAKEOVER_STEP_MS: '3000' };
  const procs: VhostfwdProc[] = [];
  const ns = new NetNs(`vhf-${tap}`);
  let a: SyntheticGuest | null = null;
  t.teardown(async () => {
    a?.close();
    for (const p of procs) await p.kill();
    ns.remove();
    fs.rmSync(dir, { recursive: true, force: true });
    left.push(tap);
  });
  const old = VhostfwdProc.start(args, env);
  procs.push(old);
  await old.waitFor('takeovers accepted');
  ns.adopt(tap, '10.77.0.1/24');
  const ifindex = ns.exec('cat', `/sys/class/net/${tap}/ifindex`).trim();
  a = await SyntheticGuest.start({ socket: sock('a'), mac: macOf(1) });
  let seq = 0;
  const round = async (what: string): Promise<void> => {
    const out = [60, 1514].map((s) => frame(macOf(2), macOf(1), s, seq++));
    const cap = await ns.capture(tap, ETH_TEST, out.length, 5000);
    a?.send(0, out);
    sameFrames(t, await cap.frames, out, `${what}: guest -> TAP`);
    const back = [60, 1514].map((s) => frame(macOf(1), macOf(2), s, seq++));
    ns.send(tap, back);
    sameFrames(t, await guestFrames(a as SyntheticGuest, back.length, 5000), back, `${what}: TAP -> guest`);
  };
  await round('before');
  // mapped: before the rings stop; state: after they stopped (positions sent); started: after the successor polled
  for (const at of ['mapped', 'state', 'started']) {
    const resumed = old.lines.filter((l) => l.msg === 'forwarding resumed after the failed takeover').length;
    const bad = VhostfwdProc.start([...args, '--takeover'], { ...env, VHOSTFWD_TAKEOVER_FAIL_AT: at });
    procs.push(bad);
    const gone = await bad.waitExit(20_000);
    t.ok(gone.signal === 'SIGKILL' || gone.code === 1, `failing at ${at}: the successor is gone`);
    await waitUntil(() => old.lines.filter((l) => l.msg === 'forwarding resumed after the failed takeover').length > resumed || old.lines.some((l) => l.msg === 'takeover failed; this process keeps forwarding' && l.ringsWereStopped === false), 15_000, `the old process to resume after ${at}`).catch(() => undefined);
    t.equal(old.exit, null, `failing at ${at}: the old process runs on`);
    await round(`after a successor failed at ${at}`);
  }
  t.equal(ns.exec('cat', `/sys/class/net/${tap}/ifindex`).trim(), ifindex, 'the same TAP device throughout');
});

t.test('no TAP device or namespace left behind by the tests above', async (t) => {
  for (const dev of left) t.notOk(linkExists(dev), `no device ${dev}`);
  const nss = run('ip', ['netns', 'list']);
  t.notOk(left.some((d) => nss.includes(`vhf-${d}`)), 'no namespace of these tests');
});
