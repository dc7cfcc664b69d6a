/**
 * Issue 22 with a real peer: DPDK 22.11 testpmd (net_virtio_user, io forward, 64-byte frames)
 * loops through vhostfwd out of one uplink and in through another, for each uplink type:
 *
 *   testpmd p0 -> a -> uplink 1 ~ (namespace: mirred) ~ uplink 2 -> b -> testpmd p1 -> p0 ...
 *
 * AF_PACKET and AF_XDP uplinks sit on veth pairs whose far ends the namespace joins back to
 * back; TAP uplinks are themselves moved into the namespace and joined there. After a few
 * seconds the loop is drained: on both ports testpmd's TX equals what vhostfwd took and its
 * RX what vhostfwd delivered, port 1 received exactly what port 0 sent and back (a frame lost
 * on the way through the kernel would show), and vhostfwd counted no drop. The namespace and
 * the veths go away after each case, also when it fails.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { api } from '../../src/ctl';
import { QueueStats } from '../../src/main/stats';
import { tmpDir, waitUntil } from '../../kit/env';
import { NetNs, linkExists, run } from '../../kit/peers/netns';
import { BackendCounts, Testpmd, stopAndDrain } from '../../kit/peers/testpmd';
import { VhostfwdProc } from '../../kit/vhostfwd-proc';

const SECONDS = Number(process.env.VHOSTFWD_LOOP_SECONDS ?? 5);
const tag = process.pid % 10000;

// the last case: AF_PACKET ports of two queues each (a PACKET_FANOUT group of two sockets),
// testpmd's first bursts made of many flows (--txonly-multi-flow: a source address per frame)
// so the kernel's flow hash uses both sockets, and the frames towards the ports both TX queues
for (const [type, queues] of [['af_packet', 1], ['af_xdp', 1], ['tap', 1], ['af_packet', 2]] as const) {
  t.test(`testpmd loops 64 B frames through two ${type} uplinks${queues > 1 ? ` of ${queues} queues` : ''} for ${SECONDS} s: TX == RX exactly, no drop`, async (t) => {
    const dir = tmpDir('vhostfwd-uptpmd-');
    const sock = (n: string): string => path.join(dir, `${n}.sock`);
    const c = queues > 1 ? 'm' : { af_packet: 'p', af_xdp: 'x', tap: 't' }[type];
    const u = [`vfq1${c}${tag}`, `vfq2${c}${tag}`];
    const far = [`vfr1${c}${tag}`, `vfr2${c}${tag}`];
    const ns = new NetNs(`vhf-uptpmd-${tag}`);
    let vf: VhostfwdProc | null = null;
    let fe: Testpmd | null = null;
    let polling = true;
    let refresher: Promise<void> = Promise.resolve();
    t.teardown(async () => {
      polling = false;
      await refresher;
      await fe?.kill();
      await vf?.kill();
      ns.remove();
      for (const d of u) if (linkExists(d)) run('ip', ['link', 'del', d]);
      fs.rmSync(dir, { recursive: true, force: true });
    });
    if (type !== 'tap') {
      for (let i = 0; i < 2; i++) {
        run('ip', ['link', 'add', u[i], 'mtu', '2000', 'type', 'veth', 'peer', 'name', far[i], 'mtu', '2000']);
        run('sysctl', ['-qw', `net.ipv6.conf.${u[i]}.disable_ipv6=1`]);
        ns.adopt(far[i]);
        run('ip', ['link', 'set', u[i], 'up']);
      }
      ns.mirror(far[0], far[1]);
    }
    const uplink = (d: string): Record<string, unknown> => (type === 'tap' ? { type, name: d } : type === 'af_xdp' ? { type, device: d, queue: 0 } : queues > 1 ? { type, device: d, queues } : { type, device: d });
    fs.writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({
      interfaces: [{ name: 'a', socket: sock('a') }, { name: 'b', socket: sock('b') }, uplink(u[0]), uplink(u[1])],
      forwarding: { mode: 'xconnect', pairs: [['a', u[0]], ['b', u[1]]] },
      control: { socket: sock('control') },
    }));
    vf = VhostfwdProc.start(['--config', path.join(dir, 'cfg.json'), '--handover', 'off']);
    await vf.waitFor('forwarder started', 30_000);
    if (type === 'tap') {
      // vhostfwd made the TAPs (it holds their fds); in the namespace they are joined back to back
      for (const d of u) {
        ns.adopt(d);
        ns.exec('sysctl', '-qw', `net.ipv6.conf.${d}.disable_ipv6=1`);
      }
      ns.mirror(u[0], u[1]);
    }
    let latest: QueueStats[] = [];
    refresher = (async () => {
      while (polling) {
        const r = await api(sock('control'), 'GET', '/v1/stats', undefined, 2000).catch(() => null);
        if (r?.status === 200) latest = (r.body as { queues: QueueStats[] }).queues;
        await sleep(20);
      }
    })();
    const counts = (): BackendCounts[] =>
      ['a', 'b'].map((n) => ({
        rx: latest.filter((q) => q.iface === n && q.dir === 'rx').reduce((s, q) => s + q.packets, 0),
        tx: latest.filter((q) => q.iface === n && q.dir === 'tx').reduce((s, q) => s + q.packets, 0),
      }));
    fe = new Testpmd({ role: 'frontend', sockets: [sock('a'), sock('b')], lcores: [1, 0], prefix: `vhf-uptpmd-${process.pid}-${type}${c}`, txpkts: 64, ...(queues > 1 ? { extraArgs: ['--txonly-multi-flow'] } : {}) });
    await fe.ready(60_000);
    t.notMatch(fe.output, /Fail to start port|Failed to setup|Cannot/i, 'no port failed to start');
    await fe.cmd('start tx_first 4');
    await waitUntil(() => counts().every((c) => c.rx > 1280), 30_000, `frames looping through the ${type} uplinks`);
    await sleep(SECONDS * 1000);
    const d = await stopAndDrain(fe, counts);
    polling = false;
    await refresher;
    const final = ((await api(sock('control'), 'GET', '/v1/stats')).body as { queues: QueueStats[] }).queues;
    t.ok(d.settled, 'after stop, the drained counters settled and agree');
    ['a', 'b'].forEach((n, i) => {
      t.equal(d.ports[i].txPackets, d.backend[i].tx, `port ${i} (${n}): testpmd TX ${d.ports[i].txPackets} == taken by vhostfwd ${d.backend[i].tx}`);
      t.equal(d.ports[i].rxPackets, d.backend[i].rx, `port ${i} (${n}): testpmd RX ${d.ports[i].rxPackets} == delivered by vhostfwd ${d.backend[i].rx}`);
    });
    t.equal(d.ports[1].rxPackets, d.ports[0].txPackets, `port 1 received exactly what port 0 sent (${d.ports[0].txPackets}) through ${u[0]} and ${u[1]}`);
    t.equal(d.ports[0].rxPackets, d.ports[1].txPackets, `port 0 received exactly what port 1 sent (${d.ports[1].txPackets})`);
    t.ok(d.ports[0].txPackets > 100_000, `frames carried (${d.ports[0].txPackets} from port 0)`);
    // every queue of each uplink carried frames: with two queues, both fanout sockets and both TX queues
    for (const q of final.filter((x) => u.includes(x.iface))) {
      t.equal(q.packets > 0, true, `${q.iface} queue ${q.queue} ${q.dir}: ${q.packets} frames`);
    }
    t.equal(final.filter((x) => u.includes(x.iface)).length, 2 * 2 * queues, `counters for ${queues} queue pair(s) on each uplink`);
    t.equal(final.reduce((s, q) => s + q.errors + q.dropNoBuffer + q.dropNoDest + q.dropTooBig, 0), 0, 'vhostfwd dropped nothing, on any port');
    t.equal(await fe.quit(), 0, 'testpmd quits cleanly');
  });
}
