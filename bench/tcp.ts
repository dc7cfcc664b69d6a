/**
 * VM-to-VM TCP (issue 18): iperf3, one stream, between two QEMU 7.2 TCG guests (1 vCPU,
 * 512 MiB) through vhostfwd (offloads on, one worker), through vhostfwd with `offloads:
 * false`, and through OVS-DPDK 3.1 with userspace TSO (dpdkvhostuserclient ports, QEMU the
 * socket server, one PMD), the backends alternating in every round, fresh guests and backend
 * per trial. Prints each trial and the medians, and
 * writes bench/results/tcp/<time>.json.
 *
 *     npx tsc -p tsconfig.json && node dist/bench/tcp.js [rounds=3] [seconds=10]
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ChildProcess } from 'node:child_process';
import { parseConfig } from '../src/main/config';
import { Forwarder } from '../src/main/forwarder';
import { QemuGuest } from '../kit/peers/qemu';
import { OvsDpdk, ovsVersion } from './ovs';

const rounds = Number(process.argv[2] ?? 3);
const seconds = Number(process.argv[3] ?? 10);
type Backend = 'vhostfwd' | 'vhostfwd-no-offloads' | 'ovs-tso';

function gbits(out: string): number {
  const m = out.match(/([\d.]+) ([KMG])bits\/sec[^\n]*receiver/);
  if (!m) return NaN;
  return Number(m[1]) * (m[2] === 'G' ? 1 : m[2] === 'M' ? 1e-3 : 1e-6);
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

async function trial(backend: Backend, n: number): Promise<{ gbits: number; tso: string }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `vf-tcp-${backend}-`));
  const sock = (x: string) => path.join(dir, `${x}.sock`);
  const server = backend === 'ovs-tso';
  const guests: QemuGuest[] = [];
  const children: ChildProcess[] = [];
  let fwd: Forwarder | null = null;
  let ovs: OvsDpdk | null = null;
  try {
    if (backend !== 'ovs-tso') {
      const offloads = backend === 'vhostfwd';
      fwd = new Forwarder(parseConfig({ interfaces: [{ name: 'a', socket: sock('a'), offloads }, { name: 'b', socket: sock('b'), offloads }], workers: [{ cpus: [1], queues: ['a:0', 'b:0'] }] }, os.cpus().length));
      await fwd.start();
    }
    const mk = (name: string, id: number) =>
      new QemuGuest({ name, socket: sock(name.toLowerCase()), mac: `52:54:00:00:05:0${id}`, ip: `10.0.5.${id}/24`, peer: '10.0.5.1', mode: 'shell', memMb: 512, server });
    guests.push(mk('A', 1), mk('B', 2));
    if (server) {
      // QEMU listens (wait=off); OVS connects to both sockets once they exist
      for (const x of ['a', 'b']) for (let i = 0; i < 200 && !fs.existsSync(sock(x)); i++) await new Promise((r) => setTimeout(r, 50));
      ovs = await OvsDpdk.start({
        dir: path.join(dir, 'ovs'), topology: { mode: 'xconnect', ports: 2 }, portType: 'dpdkvhostuserclient', pmdCpus: [1], mainCpu: 0,
        socketMemMb: 512, filePrefix: `vftcp${process.pid}x${n}`, clientSockets: [sock('a'), sock('b')], track: (p) => children.push(p), tso: true,
      });
    }
    for (const g of guests) await g.waitFor(/VF:SHELL/, 240000);
    const [a, b] = guests;
    const k = (await a.sh('ethtool -k eth0', 20000)).out;
    const tso = k.match(/^tcp-segmentation-offload: (\w+)/m)?.[1] ?? '?';
    await a.sh('ping -c 3 -W 5 10.0.5.2 >/dev/null; true', 60000);
    await b.sh('( iperf3 -s >/dev/null 2>&1 & ); sleep 1');
    const r = await a.sh(`iperf3 -c 10.0.5.2 --connect-timeout 10000 -t ${seconds} -f m`, (seconds + 60) * 1000);
    return { gbits: gbits(r.out), tso };
  } finally {
    for (const g of guests) await g.kill();
    await ovs?.stop();
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await fwd?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const results: Record<Backend, number[]> = { vhostfwd: [], 'vhostfwd-no-offloads': [], 'ovs-tso': [] };
  const trials: Array<{ round: number; backend: Backend; gbits: number; tso: string; at: string }> = [];
  const load0 = os.loadavg()[0];
  for (let r = 0; r < rounds; r++) {
    const all: Backend[] = ['vhostfwd', 'ovs-tso', 'vhostfwd-no-offloads'];
    const order: Backend[] = r % 2 === 0 ? all : [...all].reverse();
    for (const b of order) {
      const res = await trial(b, r);
      results[b].push(res.gbits);
      trials.push({ round: r, backend: b, ...res, at: new Date().toISOString() });
      console.log(`round ${r} ${b}: ${res.gbits.toFixed(3)} Gbit/s (guest TSO ${res.tso}), load ${os.loadavg()[0].toFixed(2)}`);
    }
  }
  const mv = median(results.vhostfwd);
  const mo = median(results['ovs-tso']);
  const mn = median(results['vhostfwd-no-offloads']);
  const ratios = results.vhostfwd.map((v, i) => v / results['ovs-tso'][i]);
  console.log(`median vhostfwd ${mv.toFixed(3)}, OVS-DPDK TSO ${mo.toFixed(3)}, vhostfwd without offloads ${mn.toFixed(3)} Gbit/s: vf/OVS ${(mv / mo).toFixed(2)} (per-round ratios ${ratios.map((x) => x.toFixed(2)).join(' ')}), offloads on/off ${(mv / mn).toFixed(2)}`);
  const out = path.join(__dirname, '..', '..', 'bench', 'results', 'tcp');
  fs.mkdirSync(out, { recursive: true });
  const file = path.join(out, `${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(file, JSON.stringify({ seconds, rounds, ovs: await ovsVersion(), loadBefore: load0, trials, median: { vhostfwd: mv, 'ovs-tso': mo, 'vhostfwd-no-offloads': mn }, ratio: mv / mo, offloadsOnOff: mv / mn }, null, 2) + '\n');
  console.log(`written ${file}`);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
