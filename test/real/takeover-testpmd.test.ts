/**
 * Issue 25 with a real peer: DPDK 22.11 testpmd (net_virtio_user, io forward, 64-byte
 * frames looping port 0 -> vhostfwd -> port 1 -> testpmd -> port 0 ...) runs through the
 * `vhostfwd run` process while it is taken over 10 times by a new process. At the end
 * testpmd's loop is drained: on both ports testpmd's TX equals what vhostfwd took and its
 * RX what vhostfwd delivered, port 1 received exactly what port 0 sent and back, and
 * vhostfwd's drop and error counters (carried across every takeover) are 0. The counts
 * would differ by every frame lost in a blackout. Then the same with packed rings
 * (`packedRing: true`, testpmd `packed_vq=1`), shorter: a packed ring carries no index in
 * guest memory, its position (index and wrap counter) crosses only in the handover.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { api } from '../../src/ctl';
import { QueueStats } from '../../src/main/stats';
import { tmpDir, waitUntil } from '../../kit/env';
import { BackendCounts, Testpmd, stopAndDrain } from '../../kit/peers/testpmd';
import { VhostfwdProc } from '../../kit/vhostfwd-proc';

const LOOP_SECONDS = Number(process.env.VHOSTFWD_LOOP_SECONDS ?? 30);
const TAKEOVERS = Number(process.env.VHOSTFWD_TAKEOVERS ?? 10);

const runs = [
  { rings: 'split', seconds: LOOP_SECONDS, takeovers: TAKEOVERS, packed: false },
  { rings: 'packed', seconds: Math.max(5, Math.round(LOOP_SECONDS / 3)), takeovers: Math.max(2, Math.round(TAKEOVERS / 3)), packed: true },
];
for (const { rings, seconds: LOOP_SECONDS, takeovers: TAKEOVERS, packed } of runs) t.test(`testpmd loop (${rings} rings) through vhostfwd for ${LOOP_SECONDS} s with ${TAKEOVERS} takeovers: 0 drops, TX == RX exactly`, async (t) => {
  const dir = tmpDir('vhostfwd-tkpmd-');
  const sock = (n: string): string => path.join(dir, `${n}.sock`);
  fs.writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({
    interfaces: [{ name: 'a', socket: sock('a'), packedRing: packed }, { name: 'b', socket: sock('b'), packedRing: packed }],
    forwarding: { mode: 'xconnect', pairs: [['a', 'b']] },
    control: { socket: sock('control') },
  }));
  const args = ['--config', path.join(dir, 'cfg.json'), '--handover', sock('handover')];
  const procs: VhostfwdProc[] = [];
  let fe: Testpmd | null = null;
  let latest: QueueStats[] = [];
  let polling = true;
  t.teardown(async () => {
    polling = false;
    await fe?.kill();
    for (const p of procs) await p.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  let cur = VhostfwdProc.start(args);
  procs.push(cur);
  await cur.waitFor('takeovers accepted');
  // vhostfwd's counters, read through the control API of whichever process runs (a takeover
  // closes it for some milliseconds: the last reading stands meanwhile)
  const refresh = async (): Promise<void> => {
    while (polling) {
      try {
        const r = await api(sock('control'), 'GET', '/v1/stats', undefined, 2000);
        if (r.status === 200) latest = (r.body as { queues: QueueStats[] }).queues;
      } catch {
        // between two processes
      }
      await sleep(20);
    }
  };
  const refresher = refresh();
  const counts = (): BackendCounts[] =>
    ['a', 'b'].map((n) => ({
      rx: latest.filter((q) => q.iface === n && q.dir === 'rx').reduce((s, q) => s + q.packets, 0),
      tx: latest.filter((q) => q.iface === n && q.dir === 'tx').reduce((s, q) => s + q.packets, 0),
    }));

  // testpmd connects at once: it starts once vhostfwd listens
  fe = new Testpmd({ role: 'frontend', sockets: [sock('a'), sock('b')], lcores: [1, 0], prefix: `vhostfwd-tk-${process.pid}`, txpkts: 64, devargs: packed ? 'packed_vq=1' : undefined });
  await fe.ready();
  t.notMatch(fe.output, /Fail to start port|Failed to setup|Cannot/i, 'no port failed to start');
  await fe.cmd('start tx_first 4');
  await waitUntil(() => counts().every((c) => c.rx > 1280), 60_000, 'packets looping');
  const blackouts: number[] = [];
  const every = (LOOP_SECONDS * 1000) / (TAKEOVERS + 1);
  const t0 = Date.now();
  for (let k = 0; k < TAKEOVERS; k++) {
    await sleep(Math.max(0, t0 + (k + 1) * every - Date.now()));
    const before = counts();
    const next = VhostfwdProc.start([...args, '--takeover']);
    procs.push(next);
    const line = await next.waitFor('takeover step 5/5: polling');
    await next.waitFor('takeovers accepted');
    const ex = await cur.waitExit();
    t.same(ex, { code: 0, signal: null }, `takeover ${k + 1}: the old process exited 0`);
    blackouts.push(Number(line.blackoutMs));
    cur = next;
    // the loop goes on through the new process and its counters go on from the old one's
    await waitUntil(() => counts()[1].rx > before[1].rx + 1000, 30_000, `packets looping after takeover ${k + 1}`);
  }
  for (const n of ['a', 'b']) {
    const r = await api(sock('control'), 'GET', `/v1/interfaces/${n}`);
    const f = (r.body as { features?: string[] }).features ?? [];
    t.equal(f.includes('VIRTIO_F_RING_PACKED'), packed, `after the takeovers, ${n}: VIRTIO_F_RING_PACKED ${packed ? '' : 'not '}negotiated (${rings} rings)`);
  }
  const looped = counts();
  const d = await stopAndDrain(fe, counts);
  polling = false;
  await refresher;
  const st = await api(sock('control'), 'GET', '/v1/stats');
  const final = (st.body as { queues: QueueStats[] }).queues;
  t.comment(`${looped[0].rx + looped[1].rx} packets delivered in ${LOOP_SECONDS} s across ${TAKEOVERS} takeovers`);
  t.comment(`blackout per takeover (ms): ${blackouts.join(', ')}; max ${Math.max(...blackouts)}`);
  t.ok(d.settled, 'after stop, the drained counters settled and agree');
  t.equal(d.ports.length, 2, 'testpmd reported 2 ports');
  ['a', 'b'].forEach((n, i) => {
    t.equal(d.ports[i].txPackets, d.backend[i].tx, `port ${i} (${n}): testpmd TX ${d.ports[i].txPackets} == taken by vhostfwd ${d.backend[i].tx}`);
    t.equal(d.ports[i].rxPackets, d.backend[i].rx, `port ${i} (${n}): testpmd RX ${d.ports[i].rxPackets} == delivered by vhostfwd ${d.backend[i].rx}`);
  });
  t.equal(d.ports[1].rxPackets, d.ports[0].txPackets, `port 1 received exactly what port 0 sent (${d.ports[0].txPackets})`);
  t.equal(d.ports[0].rxPackets, d.ports[1].txPackets, `port 0 received exactly what port 1 sent (${d.ports[1].txPackets})`);
  t.ok(d.ports[0].txPackets > 10 * 1000 * TAKEOVERS, `packets carried (${d.ports[0].txPackets} from port 0)`);
  t.equal(d.ports.reduce((s, p) => s + p.rxErrors + p.txErrors + p.rxMissed, 0), 0, 'testpmd saw no errors, missed nothing');
  t.equal(final.reduce((s, q) => s + q.errors + q.dropNoBuffer + q.dropNoDest + q.dropTooBig, 0), 0, 'vhostfwd dropped nothing (counters of all processes)');
  t.equal(blackouts.length, TAKEOVERS, `${TAKEOVERS} takeovers`);
  t.ok(blackouts.every((ms) => Number.isFinite(ms) && ms < 1000), 'every blackout measured, under 1 s');
  t.equal(await fe.quit(), 0, 'testpmd quits cleanly');
  cur.child.kill('SIGTERM');
  t.same(await cur.waitExit(), { code: 0, signal: null }, 'the last process exits 0 on SIGTERM');
});
