/**
 * Real peers: DPDK 22.11 testpmd with net_virtio_user ports is a vhost-user frontend.
 * It connects to vhostfwd in both socket modes and starts its ports, negotiates
 * VIRTIO_F_IN_ORDER, then loops packets through vhostfwd (io forward, --tx-first). Every
 * run ends the same way: testpmd's loop is stopped and drained (rxonly until nothing
 * moves), then on every port both ways testpmd's RX and TX counts equal exactly what
 * vhostfwd delivered and took, with no errors and no drops on either side.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import t, { Test } from 'tap';
import { startForwarder, waitUntil } from '../helpers/env';
import { BackendCounts, Testpmd, stopAndDrain } from '../kit/peers/testpmd';
import { F, hasBit } from '../../src/shared/constants';
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

t.test('testpmd virtio_user in server mode, vhostfwd connects as the client', async (t) => {
  const { tmpDir } = await import('../helpers/env');
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
