/**
 * Uplink bench (issue 22): DPDK testpmd's io loop (net_virtio_user, the frontend) through a
 * backend that sends each port's frames out of an AF_PACKET uplink on a veth pair and takes
 * them back in through a second one. The veths' far ends sit in a namespace of their own,
 * joined by tc mirred both ways, so a frame out of uplink 1 comes back in on uplink 2:
 *
 *   testpmd p0 -> a -> uplink vfu1a ~ vfu1b =mirred=> vfu2b ~ vfu2a -> uplink -> b -> testpmd p1 -> p0 ...
 *
 * Backends, alternating in each round, same frontend, same veths: vhostfwd (xconnect a <->
 * vfu1a, b <-> vfu2a, af_packet ports) and DPDK testpmd with net_vhost plus net_af_packet
 * ports (io forward, the same pairs). Mpps = frames the frontend received per second, both
 * ports summed. Prints a table, writes bench/results/uplink/<time>.json and latest.{json,txt}.
 *
 * --type af_xdp: the same with AF_XDP uplinks (vhostfwd `af_xdp` ports, DPDK `net_af_xdp`).
 *
 *   node dist/bench/uplink.js [--type af_packet|af_xdp] [--sizes 64,1518] [--rounds 3] [--duration 5] [--warmup 2] [--burst-frames 4] [--ab-cli OTHER/dist/src/cli.js]
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { NetNs, run } from '../kit/peers/netns';
import { Testpmd } from '../kit/peers/testpmd';
import { VhostfwdProc } from '../kit/vhostfwd-proc';
import { median } from './stats';

const ROOT = path.join(__dirname, '..', '..');
const U1 = 'vfu1a';
const U2 = 'vfu2a';
/** 'vhostfwd B': the build given by --ab-cli, in every round beside this one */
type Backend = 'vhostfwd' | 'vhostfwd B' | 'dpdk';
type UplinkType = 'af_packet' | 'af_xdp';

function delUplinks(): void {
  for (const d of [U1, U2]) {
    try {
      run('ip', ['link', 'del', d]);
    } catch {
      // none there (or gone with its peer)
    }
  }
}

function veths(ns: NetNs): void {
  for (const [a, b] of [[U1, 'vfu1b'], [U2, 'vfu2b']]) {
    // 1518-byte frames need 1504; native XDP on a veth refuses a peer MTU above a page's room
    run('ip', ['link', 'add', a, 'mtu', '2000', 'type', 'veth', 'peer', 'name', b, 'mtu', '2000']);
    run('sysctl', ['-qw', `net.ipv6.conf.${a}.disable_ipv6=1`]);
    ns.adopt(b);
    run('ip', ['link', 'set', a, 'up']);
  }
  // the far ends: whatever comes in on one leaves by the other
  ns.mirror('vfu1b', 'vfu2b');
}

async function trial(backend: Backend, type: UplinkType, size: number, a: { duration: number; warmup: number; burstFrames: number; abCli: string | undefined }, dir: string): Promise<number> {
  const sock = (n: string): string => path.join(dir, `${n}.sock`);
  for (const n of ['a', 'b', 'control']) fs.rmSync(sock(n), { force: true });
  let vf: VhostfwdProc | null = null;
  let be: Testpmd | null = null;
  let fe: Testpmd | null = null;
  try {
    if (backend !== 'dpdk') {
      const cfg = {
        interfaces: [
          { name: 'a', socket: sock('a') }, { name: 'b', socket: sock('b') },
          ...[U1, U2].map((device) => (type === 'af_xdp' ? { type, device, queue: 0 } : { type, device })),
        ],
        forwarding: { mode: 'xconnect', pairs: [['a', U1], ['b', U2]] },
        workers: [{ cpus: [1], queues: ['a:0', 'b:0', `${U1}:0`, `${U2}:0`] }],
        control: { socket: sock('control') },
      };
      fs.writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify(cfg));
      vf = VhostfwdProc.start(['--config', path.join(dir, 'cfg.json'), '--handover', 'off'], {}, backend === 'vhostfwd B' && a.abCli ? a.abCli : undefined);
      await vf.waitFor('forwarder started', 30_000);
    } else {
      // ports 0, 1: net_vhost a, b; 2, 3: the AF_PACKET uplinks; io forward pairs 0-2 and 1-3
      be = new Testpmd({
        role: 'backend', sockets: [sock('a'), sock('b')], lcores: [0, 1], prefix: `vhf-bu-be-${process.pid}`,
        vdevs: [U1, U2].map((d, i) => (type === 'af_xdp'
          ? `net_af_xdp${i},iface=${d},start_queue=0,queue_count=1`
          : `net_af_packet${i},iface=${d},qpairs=1,blocksz=16384,framesz=2048,framecnt=2048,qdisc_bypass=1`)),
        extraArgs: ['--portlist=0,2,1,3'],
      });
      await be.ready(60_000);
      await be.cmd('start');
    }
    fe = new Testpmd({ role: 'frontend', sockets: [sock('a'), sock('b')], lcores: [1 % os.cpus().length, 0], prefix: `vhf-bu-fe-${process.pid}`, txpkts: size });
    await fe.ready(60_000);
    await fe.cmd(`start tx_first ${a.burstFrames}`);
    await sleep(a.warmup * 1000);
    const s0 = await fe.portStats();
    const t0 = performance.now();
    await sleep(a.duration * 1000);
    const s1 = await fe.portStats();
    const secs = (performance.now() - t0) / 1000;
    const rx = (s: typeof s0): number => s.reduce((n, p) => n + p.rxPackets, 0);
    return (rx(s1) - rx(s0)) / secs / 1e6;
  } finally {
    await fe?.quit().catch(() => undefined);
    await fe?.kill();
    await be?.quit().catch(() => undefined);
    await be?.kill();
    await vf?.kill();
  }
}

async function main(): Promise<void> {
  const a = await yargs(hideBin(process.argv))
    .option('type', { choices: ['af_packet', 'af_xdp'] as const, default: 'af_packet' as const, describe: 'uplink port type' })
    .option('sizes', { type: 'string', default: '64,1518' })
    .option('rounds', { type: 'number', default: 3 })
    .option('duration', { type: 'number', default: 5 })
    .option('warmup', { type: 'number', default: 2 })
    .option('burst-frames', { type: 'number', default: 4, describe: 'bursts of 32 frames per port in the loop (testpmd tx_first)' })
    .option('ab-cli', { type: 'string', describe: "A/B of two builds: another build's dist/src/cli.js, run as 'vhostfwd B' in every round beside this one" })
    .strict()
    .parse();
  const sizes = a.sizes.split(',').map(Number);
  const abCli = a['ab-cli'] ? path.resolve(a['ab-cli']) : undefined;
  const backends: Backend[] = abCli ? ['vhostfwd', 'vhostfwd B', 'dpdk'] : ['vhostfwd', 'dpdk'];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vhostfwd-bench-up-'));
  delUplinks();
  const ns = new NetNs('vhf-bench-uplink');
  const rows: Array<{ size: number; backend: Backend; rounds: number[]; median: number }> = [];
  const cleanup = (): void => {
    ns.remove();
    delUplinks();
    fs.rmSync(dir, { recursive: true, force: true });
  };
  process.on('SIGINT', () => {
    cleanup();
    process.exit(130);
  });
  try {
    veths(ns);
    for (const size of sizes) {
      const got: Record<Backend, number[]> = { vhostfwd: [], 'vhostfwd B': [], dpdk: [] };
      for (let r = 0; r < a.rounds; r++) {
        for (const b of backends) {
          const mpps = await trial(b, a.type, size, { duration: a.duration, warmup: a.warmup, burstFrames: a['burst-frames'], abCli }, dir);
          got[b].push(mpps);
          process.stderr.write(`${size} B round ${r + 1} ${b}: ${mpps.toFixed(3)} Mpps\n`);
        }
      }
      for (const b of backends) rows.push({ size, backend: b, rounds: got[b], median: median(got[b]) ?? Number.NaN });
    }
  } finally {
    cleanup();
  }
  const when = new Date().toISOString();
  const T = a.type === 'af_xdp' ? 'AF_XDP' : 'AF_PACKET';
  const lines = [`uplink loop: testpmd virtio-user -> backend -> ${T} on veth -> tc mirred -> veth -> ${T} -> backend -> testpmd (${os.cpus().length} CPUs, load ${os.loadavg()[0].toFixed(1)}, ${a.rounds} alternating rounds of ${a.duration} s)`, 'size  vhostfwd Mpps  DPDK Mpps  vf/DPDK'];
  for (const size of sizes) {
    const v = rows.find((x) => x.size === size && x.backend === 'vhostfwd')?.median ?? Number.NaN;
    const d = rows.find((x) => x.size === size && x.backend === 'dpdk')?.median ?? Number.NaN;
    lines.push(`${String(size).padStart(4)}  ${v.toFixed(3).padStart(13)}  ${d.toFixed(3).padStart(9)}  ${(v / d).toFixed(2).padStart(7)}`);
  }
  if (abCli) {
    for (const size of sizes) {
      const v = rows.find((x) => x.size === size && x.backend === 'vhostfwd')?.median ?? Number.NaN;
      const b = rows.find((x) => x.size === size && x.backend === 'vhostfwd B')?.median ?? Number.NaN;
      const d = rows.find((x) => x.size === size && x.backend === 'dpdk')?.median ?? Number.NaN;
      lines.push(`A/B ${size} B: A ${v.toFixed(3)} / B ${b.toFixed(3)} Mpps median (B/A ${(b / v).toFixed(3)}); B/DPDK ${(b / d).toFixed(2)} (B: ${abCli})`);
    }
  }
  const txt = lines.join('\n');
  process.stdout.write(`${txt}\n`);
  const out = path.join(ROOT, 'bench', 'results', 'uplink', a.type);
  fs.mkdirSync(out, { recursive: true });
  const json = JSON.stringify({ when, host: { cpus: os.cpus().length, load: os.loadavg() }, options: { type: a.type, sizes, rounds: a.rounds, duration: a.duration, warmup: a.warmup, burstFrames: a['burst-frames'] }, rows }, null, 2) + '\n';
  fs.writeFileSync(path.join(out, `${when.replace(/[:.]/g, '-')}.json`), json);
  fs.writeFileSync(path.join(out, 'latest.json'), json);
  fs.writeFileSync(path.join(out, 'latest.txt'), `${txt}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`bench/uplink: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
