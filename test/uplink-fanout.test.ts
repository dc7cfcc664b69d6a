/**
 * Issue 22: AF_PACKET uplink ports with more than one queue ({"type": "af_packet", "queues":
 * 2}): one packet socket per queue in a PACKET_FANOUT_HASH group, each queue's RX ring polled
 * by the worker placed for "name:q", its TX ring a destination picked by flow hash. On a veth
 * pair whose far end is in a namespace the test creates: many UDP flows sent in from the
 * namespace arrive byte-exact at a guest (the project's own frontend) with both sockets
 * having taken some (per-queue counters both > 0, summed = frames sent), and each flow in
 * order; many flows from the guest leave byte-exact through both TX queues; a takeover carries
 * both sockets and their group. Every loop is bounded; every veth and namespace is removed
 * also when an assertion fails.
 */
import t, { Test } from 'tap';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { SyntheticGuest, macOf } from '../src/frontend/guest';
import { parseConfig } from '../src/main/config';
import { Forwarder } from '../src/main/forwarder';
import { QueueStats } from '../src/main/stats';
import { canUseNetns, linkExists, run, vethPair } from '../kit/peers/netns';
import { VhostfwdProc } from '../kit/vhostfwd-proc';
import { api } from '../src/ctl';
import { UplinkOpenError } from '../src/main/ports/uplink';
import { fdCount, tmpDir } from '../kit/env';
import { sum16 } from '../kit/offload-lib';

const why = canUseNetns();
if (why) t.plan(0, `AF_PACKET fanout tests need root, ip netns and python3: ${why}`);

const tag = `${process.pid % 100000}`;
const made: string[] = [];
/** flows per direction: with a flow hash over 2 sockets, all on one is a 2^-63 chance */
const FLOWS = 64;

/**
 * An IPv4/UDP frame of flow `flow` (its source port; addresses inside the namespace's
 * 10.79.0.0/24, MACs not the namespace's: its stack leaves them alone), `seq` in the payload.
 */
function udpFrame(dst: Uint8Array, src: Uint8Array, flow: number, seq: number, len: number): Uint8Array {
  const f = new Uint8Array(len);
  const dv = new DataView(f.buffer);
  f.set(dst, 0);
  f.set(src, 6);
  dv.setUint16(12, 0x0800);
  f[14] = 0x45;
  dv.setUint16(16, len - 14);
  dv.setUint16(18, seq & 0xffff);
  f[22] = 64;
  f[23] = 17;
  f.set([10, 79, 0, 2, 10, 79, 0, 3], 26);
  dv.setUint16(24, ~sum16([f.subarray(14, 34)]) & 0xffff);
  dv.setUint16(34, 20000 + flow);
  dv.setUint16(36, 9);
  dv.setUint16(38, len - 34);
  // UDP checksum 0: none (IPv4)
  dv.setUint32(42, seq >>> 0);
  for (let i = 46; i < len; i++) f[i] = (seq * 7 + i) & 0xff;
  return f;
}

const flowOf = (f: Uint8Array): number => ((f[34] << 8) | f[35]) - 20000;
const isOurs = (f: Uint8Array): boolean => f.length >= 46 && f[12] === 0x08 && f[13] === 0 && f[23] === 17 && f[36] === 0 && f[37] === 9;
const hex = (f: Uint8Array): string => Buffer.from(f).toString('hex');

/** frames of FLOWS flows, `per` each, interleaved (flow 0 seq 0, flow 1 seq 1, ...), sizes varied */
function flows(dst: Uint8Array, src: Uint8Array, per: number, base: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let k = 0; k < per; k++) for (let fl = 0; fl < FLOWS; fl++) out.push(udpFrame(dst, src, fl, base + k * FLOWS + fl, 60 + ((fl * 37 + k * 101) % 1400)));
  return out;
}

/**
 * Every frame sent arrived, byte-exact (compared as sets: flows on different queues may
 * interleave differently), none twice, and each flow's frames in the order sent.
 */
function sameFlows(t: Test, got: Uint8Array[], sent: Uint8Array[], what: string): void {
  t.equal(got.length, sent.length, `${what}: ${sent.length} frames arrived`);
  const want = new Map<string, number>();
  for (const f of sent) want.set(hex(f), (want.get(hex(f)) ?? 0) + 1);
  let bad = 0;
  for (const f of got) {
    const n = want.get(hex(f)) ?? 0;
    if (n === 0) bad++;
    else want.set(hex(f), n - 1);
  }
  t.equal(bad, 0, `${what}: every frame byte-exact, none twice`);
  const order = (list: Uint8Array[]): string => list.map((f) => `${flowOf(f)}:${new DataView(f.buffer, f.byteOffset).getUint32(42)}`).join(',');
  let outOfOrder = 0;
  for (let fl = 0; fl < FLOWS; fl++) if (order(got.filter((f) => flowOf(f) === fl)) !== order(sent.filter((f) => flowOf(f) === fl))) outOfOrder++;
  t.equal(outOfOrder, 0, `${what}: each flow's frames in the order sent`);
}

async function guestUdp(g: SyntheticGuest, n: number, ms: number): Promise<Uint8Array[]> {
  const got: Uint8Array[] = [];
  const end = Date.now() + ms;
  while (got.length < n && Date.now() < end) {
    for (const p of g.receive(0)) if (isOurs(p.data)) got.push(Uint8Array.from(p.data));
    await sleep(5);
  }
  return got;
}

/** Send from the guest in bursts it has descriptors for, bounded in time. */
async function guestSend(g: SyntheticGuest, frames: Uint8Array[], ms = 5000): Promise<number> {
  let at = 0;
  const end = Date.now() + ms;
  while (at < frames.length && Date.now() < end) {
    at += g.send(0, frames.slice(at, at + 32));
    await sleep(2);
  }
  return at;
}

/** packet sockets bound to device `dev` (/proc/net/packet: the Iface column) */
function socketsOn(dev: string): number {
  const ifindex = fs.readFileSync(`/sys/class/net/${dev}/ifindex`, 'utf8').trim();
  return fs.readFileSync('/proc/net/packet', 'utf8').split('\n').slice(1).filter((l) => l.trim().split(/\s+/)[4] === ifindex).length;
}

function threadCpuMs(tid: number): number {
  const f = fs.readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[11]) + Number(rest[12])) * 10;
}

const perQueue = (st: QueueStats[], iface: string, dir: 'rx' | 'tx'): number[] => st.filter((s) => s.iface === iface && s.dir === dir).sort((a, b) => a.queue - b.queue).map((s) => s.packets);

t.test('AF_PACKET with queues: 2 on a veth: two sockets in one fanout group, many flows byte-exact both ways over both queues, each flow in order, asleep when idle', async (t) => {
  const here = `vfa${tag}`;
  const there = `vfb${tag}`;
  const ns = vethPair(t, here, there, { made });
  const dir = tmpDir('vhostfwd-fanout-');
  // two workers: each socket's RX ring polled by its own
  const fwd = new Forwarder(parseConfig({
    interfaces: [{ name: 'a', socket: path.join(dir, 'a.sock') }, { type: 'af_packet', device: here, queues: 2 }],
    workers: [{ queues: ['a:0', `${here}:0`] }, { queues: [`${here}:1`] }],
  }, os.cpus().length));
  let a: SyntheticGuest | null = null;
  t.teardown(async () => {
    a?.close();
    await fwd.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await fwd.start();
  a = await SyntheticGuest.start({ socket: path.join(dir, 'a.sock'), mac: macOf(1) });
  t.equal(socketsOn(here), 2, 'two packet sockets on the device');
  t.same([fwd.workerOf(here, 0), fwd.workerOf(here, 1)], [0, 1], 'queue pair q polled by the worker placed for it');
  // the namespace -> the port's two sockets (the kernel's fanout) -> the guest
  const inward = flows(macOf(1), macOf(2), 2, 0);
  ns.send(there, inward);
  sameFlows(t, await guestUdp(a, inward.length, 10000), inward, 'the namespace -> AF_PACKET (2 queues) -> guest');
  const st = fwd.stats();
  const tx = perQueue(st, here, 'tx');
  t.equal(tx.length, 2, 'counters for both queues (from the device)');
  t.ok(tx[0] > 0 && tx[1] > 0, `both fanout sockets took some (${tx.join(' + ')})`);
  t.equal(tx[0] + tx[1], inward.length, 'and together every frame sent, once');
  // the guest -> the port's two TX rings (by flow hash) -> the namespace
  const outward = flows(macOf(2), macOf(1), 2, 100000);
  const cap = await ns.capture(there, 0x0800, outward.length, 10000);
  t.equal(await guestSend(a, outward), outward.length, 'the guest posted every frame');
  sameFlows(t, (await cap.frames).filter(isOurs), outward, 'guest -> AF_PACKET (2 queues) -> the namespace');
  const rx = perQueue(fwd.stats(), here, 'rx');
  t.ok(rx[0] > 0 && rx[1] > 0, `both TX queues sent some (${rx.join(' + ')})`);
  t.equal(rx[0] + rx[1], outward.length, 'and together every frame the guest sent');
  t.equal(fwd.stats().filter((s) => s.iface === here).reduce((n, s) => n + s.errors + s.dropBadOffload + s.dropTooBig + s.dropNoBuffer + s.dropNoDest, 0), 0, 'no drops or errors on the port');
  t.same(a.brokenGuards(), [], 'no write outside the guest buffers');
  // what the host itself sends out of the device is not read back (a socket in a fanout group
  // receives through the group's hook: PACKET_FANOUT_FLAG_IGNORE_OUTGOING, or the worker's skip)
  const own = flows(macOf(2), macOf(1), 1, 300000);
  execFileSync('python3', ['-c', 'import socket, sys\ns = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\ns.bind((sys.argv[1], 0))\nfor l in sys.stdin:\n    l = l.strip()\n    if l: s.send(bytes.fromhex(l))', here], { input: own.map(hex).join('\n') + '\n', timeout: 10000 });
  t.equal((await guestUdp(a, 1, 500)).length, 0, "the host's own frames out of the device: not forwarded to the guest");
  // queue pair 1 moved to worker 0 (ctl's PUT .../queues/1): its socket's RX ring polled there, nothing lost
  await fwd.moveQueue(here, 1, 0);
  t.equal(fwd.workerOf(here, 1), 0, 'queue pair 1 moved to worker 0');
  const before = perQueue(fwd.stats(), here, 'tx');
  const moved = flows(macOf(1), macOf(2), 1, 200000);
  ns.send(there, moved);
  sameFlows(t, await guestUdp(a, moved.length, 10000), moved, 'after the move: the namespace -> guest');
  const after = perQueue(fwd.stats(), here, 'tx');
  t.ok(after[1] > before[1], `queue 1 still reads its share, now on worker 0 (${after[1] - before[1]} frames)`);
  // idle: both workers asleep on their sockets
  await sleep(300);
  const tids = fwd.pool.workerInfo().map((w) => w.tid);
  const cpu0 = tids.map(threadCpuMs);
  await sleep(1000);
  const used = tids.map((tid, i) => threadCpuMs(tid) - cpu0[i]);
  t.ok(used.every((u) => u <= 60), `the idle workers used ${used.join(', ')} ms of CPU in 1 s (asleep on the packet sockets)`);
  const wake = flows(macOf(1), macOf(2), 1, 500000);
  ns.send(there, wake);
  sameFlows(t, await guestUdp(a, wake.length, 5000), wake, 'frames on the device wake both sleeping workers');
});

t.test('AF_PACKET with queues: 2, steering "pair": every frame from the guest leaves by TX queue 0 (its source queue pair)', async (t) => {
  const here = `vfc${tag}`;
  const there = `vfd${tag}`;
  const ns = vethPair(t, here, there, { made });
  const dir = tmpDir('vhostfwd-fanout-');
  const fwd = new Forwarder(parseConfig({ interfaces: [{ name: 'a', socket: path.join(dir, 'a.sock') }, { type: 'af_packet', device: here, queues: 2, steering: 'pair' }] }, os.cpus().length));
  let a: SyntheticGuest | null = null;
  t.teardown(async () => {
    a?.close();
    await fwd.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await fwd.start();
  a = await SyntheticGuest.start({ socket: path.join(dir, 'a.sock'), mac: macOf(1) });
  const outward = flows(macOf(2), macOf(1), 1, 0);
  const cap = await ns.capture(there, 0x0800, outward.length, 10000);
  t.equal(await guestSend(a, outward), outward.length, 'the guest posted every frame');
  sameFlows(t, (await cap.frames).filter(isOurs), outward, 'guest -> AF_PACKET -> the namespace');
  t.same(perQueue(fwd.stats(), here, 'rx'), [outward.length, 0], 'all by TX queue 0');
});

t.test('a multi-queue port that cannot be opened: an UplinkOpenError naming the device, nothing left open; fanout errors named', async (t) => {
  const dir = tmpDir('vhostfwd-fanout-');
  const fwd = new Forwarder(parseConfig({ interfaces: [{ name: 'a', socket: path.join(dir, 'a.sock') }, { type: 'af_packet', device: `vfz${tag}`, queues: 2 }] }, os.cpus().length));
  t.teardown(async () => {
    await fwd.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await fwd.prestart(); // the workers' fds first: what start() opens after them is the port's
  const fds = fdCount();
  await t.rejects(fwd.start(), { name: 'UplinkOpenError', message: new RegExp(`^interface vfz${tag}: cannot open an AF_PACKET socket on vfz${tag}: no such network device`) }, 'no such device: named');
  t.equal(fdCount(), fds, 'no fd left open');
  const err = (code: string): string => new UplinkOpenError('up', 'af_packet', 'eth1', Object.assign(new Error('x'), { code, syscall: 'PACKET_FANOUT' })).message;
  t.match(err('EINVAL'), /^interface up: cannot open an AF_PACKET socket on eth1: the packet sockets cannot form a fanout group for the queues .*\(PACKET_FANOUT EINVAL\)$/, 'EINVAL from PACKET_FANOUT: the group, named');
  t.match(err('EBUSY'), /the fanout group for the queues is taken .*\(PACKET_FANOUT EBUSY\)$/, 'EBUSY: named');
  t.match(err('ENOSPC'), /the fanout group is full/, 'ENOSPC: named');
});

t.test('takeover (run --takeover) carries both sockets of a queues: 2 port and their fanout group: flows both ways before and after, counters go on', async (t) => {
  const here = `vfe${tag}`;
  const there = `vff${tag}`;
  const ns = vethPair(t, here, there, { made });
  const dir = tmpDir('vhostfwd-fanoutho-');
  const sock = (n: string): string => path.join(dir, `${n}.sock`);
  const control = sock('control');
  fs.writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ interfaces: [{ name: 'a', socket: sock('a') }, { type: 'af_packet', device: here, queues: 2, frames: 64 }], control: { socket: control } }));
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
  await first.waitFor('takeovers accepted');
  t.equal(socketsOn(here), 2, 'two packet sockets on the device');
  a = await SyntheticGuest.start({ socket: sock('a'), mac: macOf(1) });
  let seq = 0;
  // 128 frames each way per round, more than a 64-frame ring: the heads wrap. Inward in bursts
  // of 32, each received before the next is sent: the flow hash splits a burst unevenly
  // between the two sockets, and 128 at once put 68 into one 64-frame ring before its worker
  // woke (the kernel drops what finds no free frame; 4 of 128 lost, every run on one machine)
  const round = async (what: string): Promise<void> => {
    const inward = flows(macOf(1), macOf(2), 2, seq);
    seq += inward.length;
    const got: Uint8Array[] = [];
    for (let at = 0; at < inward.length; at += 32) {
      const burst = inward.slice(at, at + 32);
      ns.send(there, burst);
      got.push(...(await guestUdp(a as SyntheticGuest, burst.length, 10000)));
    }
    sameFlows(t, got, inward, `${what}: the namespace -> guest`);
    const outward = flows(macOf(2), macOf(1), 2, seq);
    seq += outward.length;
    const cap = await ns.capture(there, 0x0800, outward.length, 10000);
    t.equal(await guestSend(a as SyntheticGuest, outward), outward.length, `${what}: the guest posted every frame`);
    sameFlows(t, (await cap.frames).filter(isOurs), outward, `${what}: guest -> the namespace`);
  };
  await round('before');
  const next = VhostfwdProc.start([...args, '--takeover']);
  procs.push(next);
  await next.waitFor('takeover step 5/5: polling');
  t.same(await first.waitExit(), { code: 0, signal: null }, 'the old process exited 0 after the takeover');
  t.equal(socketsOn(here), 2, 'still two packet sockets on the device: the ones handed over');
  await round('after');
  const st = ((await api(control, 'GET', '/v1/stats')).body as { queues: QueueStats[] }).queues;
  const tx = perQueue(st, here, 'tx');
  const rx = perQueue(st, here, 'rx');
  t.ok(tx.length === 2 && tx[0] > 0 && tx[1] > 0, `both queues read frames from the device (${tx.join(' + ')})`);
  t.equal(tx[0] + tx[1], 256, 'and the counters went on: 128 + 128 frames from the device');
  t.equal(rx[0] + rx[1], 256, 'and 128 + 128 towards it');
  t.equal(st.filter((x) => x.iface === here).reduce((n, x) => n + x.errors + x.dropNoBuffer + x.dropTooBig, 0), 0, 'no drops or errors');
  t.equal(a.client.closed, null, 'the guest never saw its connection close');
});

t.test('no veth or namespace left behind by the tests above', async (t) => {
  const nss = run('ip', ['netns', 'list']);
  for (const dev of made) {
    t.notOk(linkExists(dev), `no device ${dev}`);
    t.notOk(nss.includes(`vhf-${dev}`), `no namespace vhf-${dev}`);
  }
});
