/**
 * Real peers: DPDK 22.11 testpmd with net_virtio_user ports is a vhost-user frontend.
 * It connects to vhostfwd in both socket modes and starts its ports, then loops packets
 * through vhostfwd (io forward, --tx-first) for 30 s with no errors and counts that
 * match on both sides.
 */
import t from 'tap';
import { startForwarder } from '../helpers/env';
import { Testpmd, sleep } from './testpmd';
import { F, hasBit } from '../../src/shared/constants';

const LOOP_SECONDS = Number(process.env.VHOSTFWD_LOOP_SECONDS ?? 30);

t.test('testpmd virtio_user connects in server mode (vhostfwd listens) and starts its ports', async (t) => {
  const env = await startForwarder(['a', 'b']);
  const fe = new Testpmd({ role: 'frontend', sockets: [env.sock('a'), env.sock('b')], lcores: [1, 0], prefix: `vhostfwd-fe-${process.pid}` });
  t.teardown(async () => {
    await fe.kill();
    await env.stop();
  });
  await fe.ready();
  t.notMatch(fe.output, /Fail to start port|Failed to setup|Cannot/i, 'no port failed to start');
  t.ok(env.fwd.interfaces.every((i) => i.device !== null), 'both interfaces have a device');
  await fe.cmd('start tx_first 1');
  await sleep(500);
  await fe.cmd('stop');
  const st = await fe.portStats();
  t.ok(st[0].rxPackets > 0 && st[1].rxPackets > 0, `packets came back on both ports (${st[0].rxPackets}, ${st[1].rxPackets})`);
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
  const { Forwarder } = await import('../../src/main/forwarder');
  const fwd = new Forwarder(parseConfig({ interfaces: [{ name: 'a', socket: sa, mode: 'client' }, { name: 'b', socket: sb, mode: 'client' }] }, 2));
  await fwd.start();
  t.teardown(async () => {
    await fe.kill();
    await fwd.stop();
  });
  await fe.ready(60000);
  t.notMatch(fe.output, /Fail to start port|Failed to setup/i, 'no port failed to start');
  await fe.cmd('start tx_first 1');
  await sleep(500);
  await fe.cmd('stop');
  const st = await fe.portStats();
  t.ok(st[0].rxPackets > 0 && st[1].rxPackets > 0, `packets came back on both ports (${st[0].rxPackets}, ${st[1].rxPackets})`);
  t.equal(fwd.interfaces.filter((i) => i.connections > 0).length, 2, 'vhostfwd connected both interfaces');
});

t.test(`testpmd loops packets through vhostfwd for ${LOOP_SECONDS} s: no errors, counts match`, async (t) => {
  const env = await startForwarder(['a', 'b']);
  const fe = new Testpmd({ role: 'frontend', sockets: [env.sock('a'), env.sock('b')], lcores: [1, 0], prefix: `vhostfwd-fel-${process.pid}`, txpkts: 64 });
  t.teardown(async () => {
    await fe.kill();
    await env.stop();
  });
  await fe.ready();
  await fe.cmd('start tx_first 4');
  await sleep(LOOP_SECONDS * 1000);
  await fe.cmd('stop');
  await sleep(300);
  const st = await fe.portStats();
  const vf = env.fwd.stats();
  const get = (iface: string, dir: 'rx' | 'tx') => vf.find((s) => s.iface === iface && s.dir === dir)!;
  // DPDK's virtio PMD takes VIRTIO_F_IN_ORDER when offered and then frees TX mbufs by count
  // and takes RX buffers by ring position: the counts below hold only if we keep that order
  t.same(env.fwd.interfaces.map((i) => hasBit(i.device?.features ?? 0n, F.VIRTIO_F_IN_ORDER)), [true, true], 'testpmd negotiated VIRTIO_F_IN_ORDER on both ports');
  t.equal(st[0].rxErrors + st[1].rxErrors + st[0].txErrors + st[1].txErrors, 0, 'testpmd saw no errors');
  t.equal(st[0].rxMissed + st[1].rxMissed, 0, 'testpmd missed nothing');
  t.equal(vf.reduce((s, q) => s + q.errors + q.dropNoBuffer + q.dropNoDest + q.dropTooBig, 0), 0, 'vhostfwd dropped nothing');
  t.equal(get('a', 'tx').packets, st[0].txPackets, 'every packet testpmd sent on port 0 was taken by vhostfwd');
  t.equal(get('b', 'tx').packets, st[1].txPackets, 'every packet testpmd sent on port 1 was taken by vhostfwd');
  t.equal(get('b', 'rx').packets, get('a', 'tx').packets, 'vhostfwd delivered to b all it took from a');
  t.equal(get('a', 'rx').packets, get('b', 'tx').packets, 'vhostfwd delivered to a all it took from b');
  t.ok(get('b', 'rx').packets - st[1].rxPackets >= 0 && get('b', 'rx').packets - st[1].rxPackets <= 256, 'testpmd received all but what sat in its RX ring at stop');
  t.ok(st[0].rxPackets > 1e6, `millions of packets looped (${st[0].rxPackets + st[1].rxPackets} in ${LOOP_SECONDS} s)`);
});

t.test('multi-queue: testpmd with 2 queue pairs per port loops packets through vhostfwd on both pairs', async (t) => {
  const env = await startForwarder(['a', 'b'], {}, { queues: 2 });
  const fe = new Testpmd({ role: 'frontend', sockets: [env.sock('a'), env.sock('b')], queues: 2, lcores: [1, 0], prefix: `vhostfwd-femq-${process.pid}`, txpkts: 64 });
  t.teardown(async () => {
    await fe.kill();
    await env.stop();
  });
  await fe.ready();
  await fe.cmd('start tx_first 2');
  await sleep(3000);
  await fe.cmd('stop');
  await sleep(300);
  const st = await fe.portStats();
  const vf = env.fwd.stats();
  for (const q of [0, 1]) {
    const rx = vf.filter((s) => s.queue === q && s.dir === 'rx').reduce((a, s) => a + s.packets, 0);
    t.ok(rx > 10000, `queue pair ${q} carried traffic (${rx} packets delivered)`);
  }
  t.equal(st[0].rxErrors + st[1].rxErrors + st[0].txErrors + st[1].txErrors, 0, 'no errors');
  t.equal(vf.reduce((s, q) => s + q.errors + q.dropNoBuffer + q.dropNoDest, 0), 0, 'vhostfwd dropped nothing');
});
