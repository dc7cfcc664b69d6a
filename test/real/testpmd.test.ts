/**
 * Real peers: DPDK 22.11 testpmd with net_virtio_user ports is a vhost-user frontend.
 * It connects to vhostfwd in both socket modes and starts its ports, negotiates
 * VIRTIO_F_IN_ORDER, then loops packets through vhostfwd (io forward, --tx-first). Every
 * run ends the same way: testpmd's loop is stopped and drained (rxonly until nothing
 * moves), then on every port both ways testpmd's RX and TX counts equal exactly what
 * vhostfwd delivered and took, with no errors and no drops on either side.
 * Hash steering: a 1-queue synthetic guest sends 64 UDP flows to a 4-queue testpmd port; testpmd
 * (rxonly, verbose) reports the RX queue of every packet: all queues get a share, each flow one.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import t, { Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startForwarder, tmpDir, waitUntil } from '../../kit/env';
import { parseConfig } from '../../src/main/config';
import { SyntheticGuest, macOf } from '../../src/frontend/guest';
import { BackendCounts, Testpmd, stopAndDrain } from '../../kit/peers/testpmd';
import { F, hasBit } from '../../src/protocol/constants';
import { Forwarder } from '../../src/main/forwarder';

const LOOP_SECONDS = Number(process.env.VHOSTFWD_LOOP_SECONDS ?? 30);

/** vhostfwd's counters per interface (queues summed), in the order of `names`. */
function backendCounts(fwd: Forwarder, names: string[]): () => BackendCounts[] {
  return () => {
    const vf = fwd.stats();
    const sum = (iface: string, dir: 'rx' | 'tx') => vf.filter((s) => s.iface === iface && s.dir === dir).reduce((a, s) => a + s.packets, 0);
    return names.map((n) => ({ rx: sum(n, 'rx'), tx: sum(n, 'tx') }));
  };
}

/** Wait (deadline, asserted) until every port of `names` was delivered more than `n` packets. */
async function waitLooped(t: Test, fwd: Forwarder, names: string[], n: number, deadlineMs = 60000): Promise<void> {
  const counts = backendCounts(fwd, names);
  let ok = true;
  await waitUntil(() => counts().every((c) => c.rx > n), deadlineMs, `more than ${n} packets delivered on every port`).catch(() => (ok = false));
  t.ok(ok, `packets looped: more than ${n} delivered on every port (${counts().map((c) => c.rx).join(', ')})`);
}

/** Stop and drain testpmd, then compare every port both ways, exactly, and the error counters. */
async function assertDrained(t: Test, fwd: Forwarder, fe: Testpmd, names: string[]): Promise<void> {
  const d = await stopAndDrain(fe, backendCounts(fwd, names));
  t.ok(d.settled, 'after stop, the drained counters settled and agree');
  t.equal(d.ports.length, names.length, `testpmd reported ${names.length} ports`);
  names.forEach((n, i) => {
    t.equal(d.ports[i].txPackets, d.backend[i].tx, `port ${i} (${n}): testpmd TX ${d.ports[i].txPackets} == taken by vhostfwd ${d.backend[i].tx}`);
    t.equal(d.ports[i].rxPackets, d.backend[i].rx, `port ${i} (${n}): testpmd RX ${d.ports[i].rxPackets} == delivered by vhostfwd ${d.backend[i].rx}`);
    t.ok(d.ports[i].rxPackets > 0 && d.ports[i].txPackets > 0, `port ${i} (${n}) carried packets both ways`);
  });
  // xconnect a <-> b: what one port sent is exactly what the other received
  t.equal(d.ports[1].rxPackets, d.ports[0].txPackets, 'port 1 received exactly what port 0 sent');
  t.equal(d.ports[0].rxPackets, d.ports[1].txPackets, 'port 0 received exactly what port 1 sent');
  t.equal(d.ports.reduce((s, p) => s + p.rxErrors + p.txErrors, 0), 0, 'testpmd saw no errors');
  t.equal(d.ports.reduce((s, p) => s + p.rxMissed, 0), 0, 'testpmd missed nothing');
  const vf = fwd.stats();
  t.equal(vf.reduce((s, q) => s + q.errors + q.dropNoBuffer + q.dropNoDest + q.dropTooBig, 0), 0, 'vhostfwd dropped nothing');
}

/** DPDK's virtio PMD takes VIRTIO_F_IN_ORDER when offered and then frees TX mbufs by count
 * and takes RX buffers by ring position: the exact counts hold only if we keep that order. */
function assertInOrder(t: Test, fwd: Forwarder): void {
  t.same(fwd.interfaces.map((i) => hasBit(i.device?.features ?? 0n, F.VIRTIO_F_IN_ORDER)), [true, true], 'testpmd negotiated VIRTIO_F_IN_ORDER on both ports');
}

t.test('testpmd virtio_user connects in server mode (vhostfwd listens), starts its ports, loops packets', async (t) => {
  const env = await startForwarder(['a', 'b']);
  const fe = new Testpmd({ role: 'frontend', sockets: [env.sock('a'), env.sock('b')], lcores: [1, 0], prefix: `vhostfwd-fe-${process.pid}` });
  t.teardown(async () => {
    await fe.kill();
    await env.stop();
  });
  await fe.ready();
  t.notMatch(fe.output, /Fail to start port|Failed to setup|Cannot/i, 'no port failed to start');
  t.ok(env.fwd.interfaces.every((i) => i.device !== null), 'both interfaces have a device');
  assertInOrder(t, env.fwd);
  await fe.cmd('start tx_first 1');
  // one burst of 32 per port: more than 10 bursts delivered means packets went round
  await waitLooped(t, env.fwd, ['a', 'b'], 320);
  await assertDrained(t, env.fwd, fe, ['a', 'b']);
  t.equal(await fe.quit(), 0, 'testpmd quits cleanly');
});

for (const devargs of ['packed_vq=1', 'packed_vq=1,in_order=1', 'packed_vq=1,in_order=0', 'packed_vq=1,mrg_rxbuf=0']) {
  t.test(`testpmd virtio_user with packed rings (${devargs}): VIRTIO_F_RING_PACKED negotiated, the loop exact`, async (t) => {
    const env = await startForwarder(['a', 'b'], {}, { packedRing: true });
    const fe = new Testpmd({ role: 'frontend', sockets: [env.sock('a'), env.sock('b')], lcores: [1, 0], prefix: `vhostfwd-fep-${process.pid}`, devargs });
    t.teardown(async () => {
      await fe.kill();
      await env.stop();
    });
    await fe.ready();
    t.notMatch(fe.output, /Fail to start port|Failed to setup|Cannot/i, 'no port failed to start');
    const has = (b: number) => env.fwd.interfaces.map((i) => hasBit(i.device?.features ?? 0n, b));
    t.same(has(F.VIRTIO_F_RING_PACKED), [true, true], 'VIRTIO_F_RING_PACKED negotiated on both ports');
    const inOrder = !devargs.includes('in_order=0');
    t.same(has(F.VIRTIO_F_IN_ORDER), [inOrder, inOrder], `IN_ORDER ${inOrder ? '' : 'not '}negotiated (virtio_user's in_order defaults to 1)`);
    await fe.cmd('start tx_first 1');
    await waitLooped(t, env.fwd, ['a', 'b'], 320);
    await assertDrained(t, env.fwd, fe, ['a', 'b']);
    t.equal(await fe.quit(), 0, 'testpmd quits cleanly');
  });
}

t.test('testpmd virtio_user without MRG_RXBUF (mrg_rxbuf=0): one RX buffer a packet, the loop exact', async (t) => {
  const env = await startForwarder(['a', 'b']);
  const fe = new Testpmd({ role: 'frontend', sockets: [env.sock('a'), env.sock('b')], lcores: [1, 0], prefix: `vhostfwd-fenm-${process.pid}`, devargs: 'mrg_rxbuf=0', txpkts: 1024 });
  t.teardown(async () => {
    await fe.kill();
    await env.stop();
  });
  await fe.ready();
  t.notMatch(fe.output, /Fail to start port|Failed to setup|Cannot/i, 'no port failed to start');
  t.same(env.fwd.interfaces.map((i) => hasBit(i.device?.features ?? 0n, F.VIRTIO_NET_F_MRG_RXBUF)), [false, false], 'MRG_RXBUF not negotiated on either port');
  t.same(env.fwd.interfaces.map((i) => hasBit(i.device?.features ?? 0n, F.VIRTIO_F_VERSION_1)), [true, true], 'VERSION_1: the 12-byte header');
  await fe.cmd('start tx_first 1');
  await waitLooped(t, env.fwd, ['a', 'b'], 320);
  await assertDrained(t, env.fwd, fe, ['a', 'b']);
  t.equal(await fe.quit(), 0, 'testpmd quits cleanly');
});

t.test('testpmd virtio_user in server mode, vhostfwd connects as the client', async (t) => {
  const { tmpDir } = await import('../../kit/env');
  const dir = tmpDir();
  const sa = `${dir}/a.sock`;
  const sb = `${dir}/b.sock`;
  const fe = new Testpmd({ role: 'frontend', sockets: [sa, sb], peerIsClient: true, lcores: [1, 0], prefix: `vhostfwd-fec-${process.pid}` });
  // virtio_user with server=1 listens; vhostfwd's client-mode interfaces connect to it.
  const { parseConfig } = await import('../../src/main/config');
  const fwd = new Forwarder(parseConfig({ interfaces: [{ name: 'a', socket: sa, mode: 'client' }, { name: 'b', socket: sb, mode: 'client' }] }, 2));
  await fwd.start();
  t.teardown(async () => {
    await fe.kill();
    await fwd.stop();
  });
  await fe.ready(60000);
  t.notMatch(fe.output, /Fail to start port|Failed to setup/i, 'no port failed to start');
  t.equal(fwd.interfaces.filter((i) => i.connections > 0).length, 2, 'vhostfwd connected both interfaces');
  assertInOrder(t, fwd);
  await fe.cmd('start tx_first 1');
  await waitLooped(t, fwd, ['a', 'b'], 320);
  await assertDrained(t, fwd, fe, ['a', 'b']);
  t.equal(await fe.quit(), 0, 'testpmd quits cleanly');
});

t.test(`testpmd loops packets through vhostfwd for ${LOOP_SECONDS} s: no errors, counts equal on every port`, async (t) => {
  const env = await startForwarder(['a', 'b']);
  const fe = new Testpmd({ role: 'frontend', sockets: [env.sock('a'), env.sock('b')], lcores: [1, 0], prefix: `vhostfwd-fel-${process.pid}`, txpkts: 64 });
  t.teardown(async () => {
    await fe.kill();
    await env.stop();
  });
  await fe.ready();
  assertInOrder(t, env.fwd);
  await fe.cmd('start tx_first 4');
  // a soak of fixed length: what is asserted is the counts, not how many there were
  await sleep(LOOP_SECONDS * 1000);
  const looped = backendCounts(env.fwd, ['a', 'b'])();
  t.comment(`${looped[0].rx + looped[1].rx} packets delivered in ${LOOP_SECONDS} s`);
  await assertDrained(t, env.fwd, fe, ['a', 'b']);
  t.equal(await fe.quit(), 0, 'testpmd quits cleanly');
});

for (const devargs of ['packed_vq=1', 'packed_vq=1,in_order=0']) {
  t.test(`testpmd with packed rings (${devargs}) loops packets through vhostfwd for ${LOOP_SECONDS} s: no errors, counts equal`, async (t) => {
    const env = await startForwarder(['a', 'b'], {}, { packedRing: true });
    const fe = new Testpmd({ role: 'frontend', sockets: [env.sock('a'), env.sock('b')], lcores: [1, 0], prefix: `vhostfwd-fepl-${process.pid}`, txpkts: 64, devargs });
    t.teardown(async () => {
      await fe.kill();
      await env.stop();
    });
    await fe.ready();
    t.same(env.fwd.interfaces.map((i) => hasBit(i.device?.features ?? 0n, F.VIRTIO_F_RING_PACKED)), [true, true], 'VIRTIO_F_RING_PACKED negotiated on both ports');
    await fe.cmd('start tx_first 4');
    await sleep(LOOP_SECONDS * 1000);
    const looped = backendCounts(env.fwd, ['a', 'b'])();
    t.ok(looped[0].rx + looped[1].rx > 100000, `${looped[0].rx + looped[1].rx} packets delivered in ${LOOP_SECONDS} s (more than 100000: the loop runs at speed)`);
    await assertDrained(t, env.fwd, fe, ['a', 'b']);
    t.equal(await fe.quit(), 0, 'testpmd quits cleanly');
  });
}

t.test('multi-queue: testpmd with 2 queue pairs per port loops packets through vhostfwd on both pairs', async (t) => {
  // steering by queue pair: testpmd's txonly stream is one flow (a hash would keep it on one queue)
  const env = await startForwarder(['a', 'b'], {}, { queues: 2, steering: 'pair' });
  const fe = new Testpmd({ role: 'frontend', sockets: [env.sock('a'), env.sock('b')], queues: 2, lcores: [1, 0], prefix: `vhostfwd-femq-${process.pid}`, txpkts: 64 });
  t.teardown(async () => {
    await fe.kill();
    await env.stop();
  });
  await fe.ready();
  assertInOrder(t, env.fwd);
  await fe.cmd('start tx_first 2');
  const perPair = (q: number) => env.fwd.stats().filter((s) => s.queue === q && s.dir === 'rx').reduce((a, s) => a + s.packets, 0);
  // two bursts of 32 per queue: more than 10x that on each pair means packets went round
  let both = true;
  await waitUntil(() => perPair(0) > 640 && perPair(1) > 640, 60000, 'both queue pairs carrying traffic').catch(() => (both = false));
  t.ok(both, `both queue pairs looped packets (${perPair(0)}, ${perPair(1)} delivered)`);
  await assertDrained(t, env.fwd, fe, ['a', 'b']);
  for (const q of [0, 1]) t.ok(perPair(q) > 0, `queue pair ${q} carried traffic (${perPair(q)} packets delivered)`);
  t.equal(await fe.quit(), 0, 'testpmd quits cleanly');
});

t.test('hash steering: 64 UDP flows from a 1-queue guest spread over the 4 RX queues of a testpmd port, each flow on one queue', async (t) => {
  const dir = tmpDir();
  const sock = (n: string) => path.join(dir, `${n}.sock`);
  const fwd = new Forwarder(parseConfig({ interfaces: [{ name: 'a', socket: sock('a') }, { name: 'b', socket: sock('b'), queues: 4 }] }, os.cpus().length));
  await fwd.start();
  const fe = new Testpmd({ role: 'frontend', sockets: [sock('b')], queues: 4, lcores: [1, 0], prefix: `vhostfwd-fehash-${process.pid}` });
  let guest: SyntheticGuest | null = null;
  t.teardown(async () => {
    guest?.close();
    await fe.kill();
    await fwd.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await fe.ready();
  await fe.cmd('set fwd rxonly');
  await fe.cmd('set verbose 1');
  await fe.cmd('start');
  const g = (guest = await SyntheticGuest.start({ socket: sock('a'), mac: macOf(1) }));
  // flow f: UDP source port 10000 + f, and frame length 100 + f, which testpmd prints per packet
  const FLOWS = 64;
  const PER = 4;
  const frames: Uint8Array[] = [];
  for (let k = 0; k < PER; k++) {
    for (let f = 0; f < FLOWS; f++) {
      const len = 100 + f;
      const b = new Uint8Array(len);
      const v = new DataView(b.buffer);
      b.set([0x52, 0x54, 0, 0, 0, 2], 0);
      b.set(g.mac, 6);
      v.setUint16(12, 0x0800);
      b[14] = 0x45;
      v.setUint16(16, len - 14);
      b[22] = 64;
      b[23] = 17;
      b.set([10, 0, 0, 1, 10, 0, 0, 2], 26);
      v.setUint16(34, 10000 + f);
      v.setUint16(36, 4789);
      v.setUint16(38, len - 34);
      frames.push(b);
    }
  }
  const from = fe.output.length;
  let sent = 0;
  await waitUntil(() => {
    if (sent < frames.length) sent += g.send(0, frames.slice(sent, sent + 32));
    g.reclaim(0);
    return sent === frames.length;
  }, 10000, 'frames posted');
  const rxPackets = () => fwd.stats().filter((s) => s.iface === 'b' && s.dir === 'rx').map((s) => s.packets);
  await waitUntil(() => rxPackets().reduce((a, b) => a + b, 0) >= frames.length, 10000, 'delivered').catch(() => undefined);
  const perQueue = rxPackets();
  t.equal(perQueue.reduce((a, b) => a + b, 0), frames.length, `vhostfwd delivered all ${frames.length} frames to b (per RX queue ${perQueue.join(', ')})`);
  t.ok(perQueue.length === 4 && perQueue.every((n) => n > 0), 'vhostfwd: every one of the 4 RX queues got a share');
  // testpmd's own view: "port 0/queue Q: received N packets" then one line per packet with its length
  const flowQueues = new Map<number, Set<number>>();
  const seenPerQueue = [0, 0, 0, 0];
  let seen = 0;
  await waitUntil(() => {
    flowQueues.clear();
    seenPerQueue.fill(0);
    seen = 0;
    let q = -1;
    for (const line of fe.output.slice(from).split('\n')) {
      const h = line.match(/port 0\/queue (\d+): received \d+ packets/);
      if (h) q = Number(h[1]);
      const p = line.match(/ length=(\d+) /);
      if (p && q >= 0) {
        const f = Number(p[1]) - 100;
        if (!flowQueues.has(f)) flowQueues.set(f, new Set());
        flowQueues.get(f)?.add(q);
        seenPerQueue[q]++;
        seen++;
      }
    }
    return seen >= frames.length;
  }, 15000, 'testpmd printing every packet').catch(() => undefined);
  t.equal(seen, frames.length, `testpmd received all ${frames.length} frames (per queue ${seenPerQueue.join(', ')})`);
  t.same(seenPerQueue, perQueue, "testpmd's per-queue counts equal vhostfwd's");
  t.equal(flowQueues.size, FLOWS, 'all 64 flows seen');
  t.ok([...flowQueues.values()].every((s) => s.size === 1), 'each flow arrived on one queue only');
  t.equal(await fe.quit(), 0, 'testpmd quits cleanly');
});
