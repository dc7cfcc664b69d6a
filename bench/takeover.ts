/**
 * Hitless restart under load (issue 25): DPDK testpmd (net_virtio_user, io forward, a closed
 * loop of frames of --size bytes) through `vhostfwd run`, taken over --takeovers times by a
 * new process during --seconds. Reports each takeover's blackout (first ring stopped to last
 * ring started, from the successor's log line) with its parts, and the loss: testpmd's TX
 * against its RX on both ports after a drain, and vhostfwd's drop counters (which go on
 * across processes). Writes bench/results/takeover/<time>.json, latest.json and latest.txt.
 *
 *   node dist/bench/takeover.js --seconds 30 --takeovers 10 --size 64
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { api } from '../src/ctl';
import type { QueueStats } from '../src/main/stats';
import { Testpmd, stopAndDrain } from '../kit/peers/testpmd';
import { VhostfwdProc } from '../kit/vhostfwd-proc';
import { median as medianOrNull } from './stats';

const median = (xs: readonly number[]): number => medianOrNull(xs) ?? Number.NaN;

const ROOT = path.join(__dirname, '..', '..');

interface Takeover {
  blackoutMs: number;
  /** old side: the ring stops acknowledged */
  stopMs: number;
  /** new side: from the first ring stop to the state received */
  sinceStopMs: number;
  /** new side: memory mapped and rings started */
  startMs: number;
  /** new side: from connecting to polling (workers started while the old process forwards) */
  totalMs: number;
}

async function main(): Promise<void> {
  const a = await yargs(hideBin(process.argv))
    .option('seconds', { type: 'number', default: 30 })
    .option('takeovers', { type: 'number', default: 10 })
    .option('size', { type: 'number', default: 64 })
    .option('mode', { choices: ['xconnect', 'bridge'] as const, default: 'xconnect' as const })
    .option('frames', { type: 'number', default: 4, describe: 'bursts of 32 frames per port in the loop (testpmd tx_first)' })
    .strict()
    .parse();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vhostfwd-bench-tk-'));
  const sock = (n: string): string => path.join(dir, `${n}.sock`);
  fs.writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({
    interfaces: [{ name: 'a', socket: sock('a') }, { name: 'b', socket: sock('b') }],
    forwarding: a.mode === 'bridge' ? { mode: 'bridge' } : { mode: 'xconnect', pairs: [['a', 'b']] },
    control: { socket: sock('control') },
  }));
  const args = ['--config', path.join(dir, 'cfg.json'), '--handover', sock('handover')];
  const procs: VhostfwdProc[] = [];
  let fe: Testpmd | null = null;
  let latest: QueueStats[] = [];
  let polling = true;
  const cleanup = async (): Promise<void> => {
    polling = false;
    await fe?.kill();
    for (const p of procs) await p.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  };
  process.on('SIGINT', () => void cleanup().then(() => process.exit(130)));
  try {
    let cur = VhostfwdProc.start(args);
    procs.push(cur);
    await cur.waitFor('takeovers accepted');
    const refresher = (async () => {
      while (polling) {
        try {
          const r = await api(sock('control'), 'GET', '/v1/stats', undefined, 2000);
          if (r.status === 200) latest = (r.body as { queues: QueueStats[] }).queues;
        } catch {
          // between two processes
        }
        await sleep(20);
      }
    })();
    const counts = () =>
      ['a', 'b'].map((n) => ({
        rx: latest.filter((q) => q.iface === n && q.dir === 'rx').reduce((s, q) => s + q.packets, 0),
        tx: latest.filter((q) => q.iface === n && q.dir === 'tx').reduce((s, q) => s + q.packets, 0),
      }));
    fe = new Testpmd({ role: 'frontend', sockets: [sock('a'), sock('b')], lcores: [1 % os.cpus().length, 0], prefix: `vhostfwd-btk-${process.pid}`, txpkts: a.size });
    await fe.ready();
    await fe.cmd(`start tx_first ${a.frames}`);
    const takeovers: Takeover[] = [];
    const every = (a.seconds * 1000) / (a.takeovers + 1);
    const t0 = Date.now();
    for (let k = 0; k < a.takeovers; k++) {
      await sleep(Math.max(0, t0 + (k + 1) * every - Date.now()));
      const next = VhostfwdProc.start([...args, '--takeover']);
      procs.push(next);
      const done = await next.waitFor('takeover step 5/5: polling');
      const got = await next.waitFor('takeover step 4/5: ring positions received');
      await next.waitFor('takeovers accepted');
      await cur.waitExit();
      const stopped = cur.lines.find((l) => l.msg === 'takeover step 4/5: rings stopped at a burst boundary; positions handed over');
      takeovers.push({ blackoutMs: Number(done.blackoutMs), stopMs: Number(stopped?.stopMs), sinceStopMs: Number(got.sinceStopMs), startMs: Number(done.startMs), totalMs: Number(done.totalMs) });
      process.stderr.write(`takeover ${k + 1}/${a.takeovers}: blackout ${String(done.blackoutMs)} ms\n`);
      cur = next;
    }
    await sleep(Math.max(0, t0 + a.seconds * 1000 - Date.now()));
    const d = await stopAndDrain(fe, counts);
    polling = false;
    await refresher;
    const st = await api(sock('control'), 'GET', '/v1/stats');
    const fin = (st.body as { queues: QueueStats[] }).queues;
    const drops = fin.reduce((s, q) => s + q.errors + q.dropNoBuffer + q.dropNoDest + q.dropTooBig, 0);
    const lost = d.ports.length === 2 ? d.ports[0].txPackets - d.ports[1].rxPackets + (d.ports[1].txPackets - d.ports[0].rxPackets) : -1;
    const bl = takeovers.map((x) => x.blackoutMs).sort((x, y) => x - y);
    const part = (k: keyof Takeover): number => median(takeovers.map((x) => x[k]));
    const result = {
      when: new Date().toISOString(), host: { cpus: os.cpus().length, load: os.loadavg() }, options: { seconds: a.seconds, takeovers: a.takeovers, size: a.size, mode: a.mode, frames: a.frames },
      takeovers, blackoutMs: { median: median(bl), p90: bl[Math.floor((bl.length - 1) * 0.9)], max: bl[bl.length - 1] },
      parts: { stopMs: part('stopMs'), sinceStopMs: part('sinceStopMs'), startMs: part('startMs'), totalMs: part('totalMs') },
      packets: { port0Tx: d.ports[0]?.txPackets, port1Rx: d.ports[1]?.rxPackets, port1Tx: d.ports[1]?.txPackets, port0Rx: d.ports[0]?.rxPackets, lost, vhostfwdDrops: drops, settled: d.settled },
    };
    const txt = [
      `vhostfwd takeover under load: ${a.mode}, ${a.size} B, testpmd loop of ${a.frames * 32} frames per port, ${a.takeovers} takeovers in ${a.seconds} s (${os.cpus().length} CPUs, load ${os.loadavg()[0].toFixed(1)})`,
      `blackout ms: median ${result.blackoutMs.median.toFixed(2)}, p90 ${result.blackoutMs.p90.toFixed(2)}, max ${result.blackoutMs.max.toFixed(2)} (each: ${takeovers.map((x) => x.blackoutMs.toFixed(1)).join(' ')})`,
      `parts (median ms): rings stopped ${result.parts.stopMs.toFixed(2)}, state received ${result.parts.sinceStopMs.toFixed(2)} after the first stop, mapped and started ${result.parts.startMs.toFixed(2)}; successor start to polling ${result.parts.totalMs.toFixed(0)}`,
      `packets: port 0 TX ${result.packets.port0Tx} -> port 1 RX ${result.packets.port1Rx}, port 1 TX ${result.packets.port1Tx} -> port 0 RX ${result.packets.port0Rx}: lost ${lost}, vhostfwd drops ${drops}${d.settled ? '' : ' (NOT SETTLED)'}`,
    ].join('\n');
    process.stdout.write(`${txt}\n`);
    const out = path.join(ROOT, 'bench', 'results', 'takeover');
    fs.mkdirSync(out, { recursive: true });
    const json = JSON.stringify(result, null, 2) + '\n';
    fs.writeFileSync(path.join(out, `${result.when.replace(/[:.]/g, '-')}.json`), json);
    fs.writeFileSync(path.join(out, 'latest.json'), json);
    fs.writeFileSync(path.join(out, 'latest.txt'), `${txt}\n`);
    await fe.quit();
    cur.child.kill('SIGTERM');
    await cur.waitExit();
    process.exitCode = lost === 0 && drops === 0 && d.settled ? 0 : 1;
  } finally {
    await cleanup();
  }
}

void main().catch((e: unknown) => {
  process.stderr.write(`bench/takeover: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
