/**
 * bench/topology.ts and bench/backends.ts: what the bench tells each backend and which
 * backends it measures, checked without starting any of them.
 */
import t from 'tap';
import { parseBackends } from '../bench/backends';
import { OvsMissingError } from '../bench/ovs';
import {
  checkBridgePorts, cpuPlan, frontendMacs, ovsBridgeArgs, ovsFlows, ovsOtherConfig, portMac, topologies, topologyLabel, vhostfwdConfig, wantsPacked, frontendVariants,
} from '../bench/topology';
import { parseConfig } from '../src/main/config';

const sockets = (n: number): string[] => Array.from({ length: n }, (_, i) => `/tmp/bench-test/${i}.sock`);

t.test('vhostfwd configs are valid configs: xconnect of the pair, bridge of every port, all queues on the backend core', async (t) => {
  const xc = parseConfig(vhostfwdConfig(sockets(2), 1, 'xconnect', 1), 2);
  t.same(xc.forwarding, { mode: 'xconnect', pairs: [['vm1', 'vm2']] });
  t.same(xc.workers, [{ cpus: [1], queues: ['vm1:0', 'vm2:0'] }]);
  t.same(xc.interfaces.map((i) => i.steering), ['hash', 'hash'], 'one queue pair: no steering key (builds before steering run it)');

  const br = parseConfig(vhostfwdConfig(sockets(8), 2, 'bridge', 1), 2);
  t.equal(br.forwarding.mode, 'bridge');
  t.equal(br.interfaces.length, 8);
  t.same(br.interfaces.map((i) => i.steering), Array(8).fill('pair'), 'several queue pairs: steered by pair');
  t.equal(br.workers.length, 1, 'one worker: one forwarding core, as DPDK and OVS get');
  t.same(br.workers[0].cpus, [1]);
  t.equal(br.workers[0].queues.length, 16, 'every queue pair of every port');

  t.throws(() => vhostfwdConfig(sockets(3), 1, 'xconnect', 1), /xconnect needs 2 sockets/);
});

t.test('a frontend asking for packed rings gets them from vhostfwd too (packedRing, off by default)', async (t) => {
  t.same(parseConfig(vhostfwdConfig(sockets(2), 1, 'xconnect', 1), 2).interfaces.map((i) => i.packedRing), [false, false]);
  t.same(parseConfig(vhostfwdConfig(sockets(2), 1, 'xconnect', 1, false, true), 2).interfaces.map((i) => i.packedRing), [true, true]);
  for (const d of ['packed_vq=1', 'packed_vq=1,in_order=1', 'in_order=0,packed_vq=1', 'mrg_rxbuf=0,packed_vq=1,in_order=1']) t.ok(wantsPacked(d), d);
  for (const d of [null, '', 'packed_vq=0', 'mrg_rxbuf=0', 'packed_vq=10', 'xpacked_vq=1']) t.notOk(wantsPacked(d), String(d));
});

t.test('OVS flows: port to port both ways for xconnect, NORMAL for the bridge', async (t) => {
  t.same(ovsFlows({ mode: 'xconnect', ports: 2 }), ['in_port=1,actions=output:2', 'in_port=2,actions=output:1']);
  t.same(ovsFlows({ mode: 'bridge', ports: 2 }), ['actions=NORMAL']);
  t.same(ovsFlows({ mode: 'bridge', ports: 8 }), ['actions=NORMAL'], 'learning, whatever the port count');
});

t.test('OVS bridge: a userspace bridge, ports in OpenFlow order 1..n, client ports pointed at the sockets', async (t) => {
  const server = ovsBridgeArgs('br0', 2, 'dpdkvhostuser', () => 'unused');
  t.same(server.slice(0, 7), ['add-br', 'br0', '--', 'set', 'Bridge', 'br0', 'datapath_type=netdev']);
  const s = server.join(' ');
  t.match(s, /add-port br0 vhu0 -- set Interface vhu0 type=dpdkvhostuser ofport_request=1/);
  t.match(s, /add-port br0 vhu1 -- set Interface vhu1 type=dpdkvhostuser ofport_request=2/);
  t.notMatch(s, /vhost-server-path/, 'server ports: OVS creates the sockets');

  const client = ovsBridgeArgs('br0', 8, 'dpdkvhostuserclient', (i) => `/x/${i}.sock`).join(' ');
  for (let i = 0; i < 8; i++) t.match(client, `vhu${i} type=dpdkvhostuserclient ofport_request=${i + 1} options:vhost-server-path=/x/${i}.sock`);
});

t.test('OVS other_config: PMD mask of the backend core, main threads elsewhere, a private file prefix', async (t) => {
  t.same(ovsOtherConfig({ pmdCpus: [1], mainCpu: 0, socketMemMb: 512, filePrefix: 'p1' }), [
    'other_config:dpdk-init=true',
    'other_config:dpdk-socket-mem=512',
    'other_config:pmd-cpu-mask=0x2',
    'other_config:dpdk-lcore-mask=0x1',
    'other_config:dpdk-extra=--no-pci --file-prefix=p1',
  ]);
  t.match(ovsOtherConfig({ pmdCpus: [9], mainCpu: 0, socketMemMb: 1, filePrefix: 'p' })[2], /=0x200$/);
  const tso = ovsOtherConfig({ pmdCpus: [1], mainCpu: 0, socketMemMb: 512, filePrefix: 'p1', tso: true });
  t.equal(tso[tso.length - 1], 'other_config:userspace-tso-enable=true', 'tso: userspace TSO on (bench/tcp.ts)');
  t.notOk(ovsOtherConfig({ pmdCpus: [1], mainCpu: 0, socketMemMb: 512, filePrefix: 'p1' }).some((c) => c.includes('tso')), 'off by default');
});

t.test('frontend MACs for the bridge rows: distinct unicast addresses, each port sending to its partner', async (t) => {
  const { macs, peers } = frontendMacs(8);
  t.equal(new Set(macs).size, 8);
  for (const m of macs) t.equal(parseInt(m.slice(0, 2), 16) & 3, 2, `${m}: unicast, locally administered`);
  t.same(peers, [1, 0, 3, 2, 5, 4, 7, 6].map(portMac), 'port i addresses port i ^ 1 (testpmd pairs 0-1, 2-3, ...)');
  t.same(frontendMacs(2), { macs: ['02:00:00:00:01:00', '02:00:00:00:01:01'], peers: ['02:00:00:00:01:01', '02:00:00:00:01:00'] });
  t.throws(() => portMac(256));
});

t.test('topologies: xconnect first, then a bridge per port count; odd port counts refused', async (t) => {
  const ts = topologies(['bridge', 'xconnect'], [2, 8]);
  t.same(ts.map(topologyLabel), ['xc', 'br2', 'br8']);
  t.same(topologies(['xconnect'], [2, 8]), [{ mode: 'xconnect', ports: 2 }]);
  t.doesNotThrow(() => checkBridgePorts([2, 4, 8]));
  for (const bad of [1, 3, 0, 2.5]) t.throws(() => checkBridgePorts([bad]), /even number of ports/, `${bad}`);
});

t.test('frontend variants (--virtio-user a;b;c): each its rows, labelled, the defaults as before', async (t) => {
  t.same(frontendVariants(null), [null], 'no option: the defaults only');
  t.same(frontendVariants('packed_vq=1'), ['packed_vq=1'], 'one devargs string: one variant, as before');
  t.same(frontendVariants('default;packed_vq=1; mrg_rxbuf=0 ;;packed_vq=1'), [null, 'packed_vq=1', 'mrg_rxbuf=0'], 'default and empty are the defaults; repeats dropped');
  t.throws(() => frontendVariants('packed_vq=1 mrg_rxbuf=0'), /no spaces/);
  const ts = topologies(['xconnect', 'bridge'], [2], frontendVariants('default;packed_vq=1'));
  t.same(ts.map(topologyLabel), ['xc', 'br2', 'xc/packed_vq=1', 'br2/packed_vq=1']);
  t.same(ts[0], { mode: 'xconnect', ports: 2 }, 'a default row has no frontend key (JSON as before)');
  t.same(ts[2], { mode: 'xconnect', ports: 2, frontend: 'packed_vq=1' });
  t.equal(topologies(['xconnect'], [2])[0].frontend, undefined);
});

t.test('backends: OVS by default when installed, a note when not, a named error when asked for and missing', async (t) => {
  t.same(parseBackends(undefined, [], true), { vhostfwd: true, dpdk: true, ovs: true, ovsNote: null });
  const noOvs = parseBackends(undefined, ['/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk'], true);
  t.equal(noOvs.ovs, false);
  t.match(noOvs.ovsNote, /OVS-DPDK not measured: not installed .*ovs-vswitchd-dpdk/, 'the table says why');
  t.equal(parseBackends(undefined, [], false).dpdk, false, '--no-dpdk still works');

  t.same(parseBackends('vhostfwd, OVS', [], true), { vhostfwd: true, dpdk: false, ovs: true, ovsNote: null });
  t.match(parseBackends('vhostfwd,dpdk', [], true).ovsNote, /not in --backends/);
  t.throws(() => parseBackends('vhostfwd,ovs', ['ovs-vsctl'], true), OvsMissingError);
  t.throws(() => parseBackends('ovs', ['ovs-vsctl'], true), { name: 'OvsMissingError', message: /missing: ovs-vsctl/ });
  t.throws(() => parseBackends('vhostfwd,vpp', [], true), /unknown: vpp/);
  t.throws(() => parseBackends(' , ', [], true), /expected a comma-separated list/);
});

t.test('OVS other_config with several PMDs: one mask of all their cores, queues dealt round robin', async (t) => {
  const c = ovsOtherConfig({ pmdCpus: [1, 2, 3, 4], mainCpu: 0, socketMemMb: 512, filePrefix: 'p' });
  t.equal(c[2], 'other_config:pmd-cpu-mask=0x1e');
  t.equal(c[3], 'other_config:dpdk-lcore-mask=0x1');
  t.ok(c.includes('other_config:pmd-rxq-assign=roundrobin'));
});

t.test('cpu plan: one queue or no scaling keeps the 2-core layout; scaling gives each pair its own cores', async (t) => {
  const base = { frontend: [1, 0], dpdkBackend: [0, 1], backend: [1], ovsMain: 0, oversubscribed: false };
  t.same(cpuPlan(1, false, 2), base);
  t.same(cpuPlan(1, true, 16), base, 'one pair scales to the same layout');
  t.same(cpuPlan(8, false, 16), base, 'without scaling every queue stays on one backend core');
  for (const q of [2, 4, 8]) {
    const p = cpuPlan(q, true, 17);
    t.equal(p.oversubscribed, false, `${q} pairs on 17 cores`);
    t.same(p.backend, Array.from({ length: q }, (_, i) => 1 + i), `${q} pairs: backend cores 1..${q}`);
    t.same(p.dpdkBackend, [0, ...p.backend], 'DPDK forwards on the same cores, main on 0');
    t.equal(p.frontend[0], 0, 'frontend main on 0');
    t.same(p.frontend.slice(1), Array.from({ length: q }, (_, i) => q + 1 + i), 'frontend forwarding on cores of its own');
    t.equal(p.frontend.slice(1).filter((c) => p.backend.includes(c)).length, 0, 'no core both frontend and backend forwards on');
  }
  const small = cpuPlan(2, true, 2);
  t.equal(small.oversubscribed, true, '2 pairs on 2 cores: said so');
  t.same(small.backend, [1, 0]);
  for (const l of [small.frontend, small.dpdkBackend]) t.equal(new Set(l).size, l.length, `testpmd lcores distinct: ${l}`);
  t.notOk(small.dpdkBackend.slice(1).includes(small.dpdkBackend[0]), 'the main lcore never forwards');
  t.same(cpuPlan(8, true, 16).oversubscribed, true, '8 pairs need 17 cores');
  t.throws(() => cpuPlan(0, true, 4));
  t.throws(() => cpuPlan(2, true, 1));
});

t.test('vhostfwd config when scaling: one worker per queue pair, each pinned to its core', async (t) => {
  const c = vhostfwdConfig(['/a', '/b'], 4, 'xconnect', [1, 2, 3, 4]) as { workers: Array<{ cpus: number[]; queues: string[] }> };
  t.same(c.workers, [1, 2, 3, 4].map((cpu, q) => ({ cpus: [cpu], queues: [`vm1:${q}`, `vm2:${q}`] })));
  const one = vhostfwdConfig(['/a', '/b'], 2, 'xconnect', 1) as { workers: Array<{ cpus: number[]; queues: string[] }> };
  t.same(one.workers, [{ cpus: [1], queues: ['vm1:0', 'vm2:0', 'vm1:1', 'vm2:1'] }], 'a number: every queue on one worker');
});
