/**
 * vhostfwd against DPDK's vhost PMD, in the same run, on the same machine.
 *
 * Throughput: dpdk-testpmd with two net_virtio_user ports (io forward, `start tx_first 4`)
 * loops packets forever through a backend that is, alternately round after round,
 *   - vhostfwd, run as an operator runs it: `node dist/src/cli.js run --config CFG`
 *     (xconnect, its poller pinned to CPU 1), with and without `--force-log`, and
 *   - dpdk-testpmd with two net_vhost ports (io forward, forwarding lcore 1).
 * Rate = sum over both frontend ports of delta RX-packets over `duration` s, after a warm-up.
 * Also: vhostfwd's idle CPU (frontend connected, not forwarding) and the ping RTT between
 * two QEMU guests through each backend. See bench/README.md.
 *
 *   npm run bench -- --sizes 64,256,1518 --queues 1,2 --duration 10 --rounds 3
 *   npm run bench -- --quick
 */
import { FAST_FRACTION, fastMode, median, ratio } from './stats';
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { QemuGuest } from '../test/kit/peers/qemu';
import { PortStats, Testpmd } from '../test/kit/peers/testpmd';
import { barChart } from './chart';

/** vfB / vfLogB: the build given by --ab-cli, alternating with vf / vfLog inside each round */
type Backend = 'dpdk' | 'vf' | 'vfLog' | 'vfB' | 'vfLogB';
const BACKEND_NAME: Record<Backend, string> = {
  dpdk: 'DPDK vhost PMD', vf: 'vhostfwd', vfLog: 'vhostfwd + forced log', vfB: 'vhostfwd B', vfLogB: 'vhostfwd B + forced log',
};
const isLogged = (b: Backend): boolean => b === 'vfLog' || b === 'vfLogB';
const isB = (b: Backend): boolean => b === 'vfB' || b === 'vfLogB';

const ROOT = path.resolve(__dirname, '..', '..');
// BENCH_VF_CLI: another build's dist/src/cli.js (A/B runs of two versions)
const CLI = process.env.BENCH_VF_CLI ?? path.join(ROOT, 'dist', 'src', 'cli.js');
/** lcores: frontend main 1 / forwarding 0; backend forwarding on 1 (DPDK lcore, vhostfwd poller). */
const FE_LCORES = [1, 0];
const BE_LCORES = [0, 1];
const BACKEND_CPU = 1;
/** hugepage memory per testpmd: mbufs are capped below, so 256 MiB is plenty. */
const TESTPMD_MEM_MB = 256;
const TESTPMD_EXTRA = ['--total-num-mbufs=32768'];

// ---------------------------------------------------------------------------------------
// Options

const argv = yargs(hideBin(process.argv))
  .scriptName('bench')
  .option('sizes', { type: 'string', default: '64,256,1518', describe: 'packet sizes in bytes (frame, no CRC), comma separated' })
  .option('queues', { type: 'string', default: '1', describe: 'queue pair counts, comma separated (e.g. 1,2)' })
  .option('duration', { type: 'number', default: 10, describe: 'seconds measured per trial' })
  .option('warmup', { type: 'number', default: 2, describe: 'seconds of traffic before the first reading' })
  .option('rounds', { type: 'number', default: 3, describe: 'alternating rounds (vhostfwd, vhostfwd+log, DPDK) per size and queue count' })
  .option('log', { choices: ['both', 'on', 'off'] as const, default: 'both' as const, describe: 'vhostfwd with forced dirty logging, without, or both' })
  .option('log-pairs', { type: 'number', default: 4, describe: 'vhostfwd+log trials: after the measured window, this many pairs of log-off / log-on windows in the same process (SIGUSR2 switches), their ratios immune to the VM slow mode between trials (0: none)' })
  .option('log-window', { type: 'number', default: 1, describe: 'seconds per log-off or log-on window of --log-pairs' })
  .option('dpdk', { type: 'boolean', default: true, describe: 'measure the DPDK reference backend (--no-dpdk to skip)' })
  .option('idle', { type: 'boolean', default: true, describe: 'measure idle CPU (--no-idle to skip)' })
  .option('idle-seconds', { type: 'number', default: 10 })
  .option('ping', { type: 'boolean', describe: 'ping RTT between two QEMU guests (default on; off with --quick)' })
  .option('ping-count', { type: 'number', default: 20 })
  .option('ping-interval', { type: 'number', default: 0.2 })
  .option('quick', { type: 'boolean', default: false, describe: 'smoke run: 64 B, 1 queue, 1 round, 3 s, short idle, no ping; writes quick.json' })
  .option('out', { type: 'string', default: path.join(ROOT, 'bench', 'results'), describe: 'results directory' })
  .option('retries', { type: 'number', default: 1, describe: 'a failed trial is recorded and re-run up to this many times' })
  .option('ab-cli', { type: 'string', describe: "A/B of two builds: another build's dist/src/cli.js, run as 'vhostfwd B' in every round beside this one (trials interleave, so the VM's slow mode hits both alike)" })
  .option('forward', { choices: ['xconnect', 'bridge'] as const, default: 'xconnect' as const, describe: 'how vhostfwd forwards between the two ports' })
  .option('ab-vlan', { type: 'boolean', default: false, describe: "A/B in this build: 'vhostfwd B' is the bridge with both ports VLAN access ports of VLAN 10 (802.1Q classification and the (VLAN, MAC) table on every packet), A the same bridge without VLANs; implies --forward bridge" })
  .option('wait-foreign', { type: 'number', default: 300, describe: 'seconds to wait for other testpmd/QEMU/vhostfwd processes to finish first' })
  .strict()
  .help()
  .parseSync();

const list = (s: string): number[] => s.split(',').map((x) => Number(x.trim())).filter((x) => Number.isFinite(x) && x > 0);
const opts = {
  sizes: argv.quick ? [64] : list(argv.sizes),
  queues: argv.quick ? [1] : list(argv.queues),
  duration: argv.quick ? 3 : argv.duration,
  warmup: argv.warmup,
  rounds: argv.quick ? 1 : Math.max(1, argv.rounds),
  log: argv.log,
  logPairs: argv.quick ? 1 : Math.max(0, Math.floor(argv['log-pairs'])),
  logWindow: argv['log-window'],
  dpdk: argv.dpdk,
  idle: argv.idle,
  idleSeconds: argv.quick ? 3 : argv['idle-seconds'],
  ping: argv.ping ?? !argv.quick,
  pingCount: argv['ping-count'],
  pingInterval: argv['ping-interval'],
  quick: argv.quick,
  out: argv.out,
  waitForeign: argv['wait-foreign'],
  abCli: argv['ab-cli'] ? path.resolve(argv['ab-cli']) : null,
  abVlan: argv['ab-vlan'],
  bridge: argv['ab-vlan'] || argv.forward === 'bridge',
  retries: Math.max(0, argv.retries),
};

// ---------------------------------------------------------------------------------------
// Everything we start is tracked and killed on any exit (normal, failure, SIGINT/SIGTERM).

const children = new Set<ChildProcess>();
const prefixes: string[] = [];
const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'vhostfwd-bench-'));
let seq = 0;

function track<T extends ChildProcess>(p: T): T {
  children.add(p);
  p.on('exit', () => children.delete(p));
  return p;
}

/** A unique DPDK --file-prefix; the role follows the number so no prefix is a prefix of another. */
function newPrefix(role: string): string {
  const p = `vhostfwd-bench${process.pid}n${++seq}${role}`;
  prefixes.push(p);
  return p;
}

function removeHugepageFiles(): void {
  const hp = '/dev/hugepages';
  let files: string[] = [];
  try {
    files = fs.readdirSync(hp);
  } catch {
    // no hugetlbfs mounted
  }
  for (const f of files) if (prefixes.some((p) => f.startsWith(p))) fs.rmSync(path.join(hp, f), { force: true });
  for (const p of prefixes) fs.rmSync(path.join('/var/run/dpdk', p), { recursive: true, force: true });
}

function cleanupSync(): void {
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
  removeHugepageFiles();
  fs.rmSync(TMP, { recursive: true, force: true });
}

process.on('exit', cleanupSync);
for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]] as const) {
  process.on(sig, () => {
    process.stderr.write(`\nbench: ${sig}: killing ${children.size} child process(es) and cleaning up\n`);
    process.exit(code); // the exit handler kills and cleans
  });
}
process.on('uncaughtException', (e) => {
  process.stderr.write(`bench: ${e.stack ?? e}\n`);
  process.exit(1);
});
process.on('unhandledRejection', (e) => {
  process.stderr.write(`bench: unhandled rejection: ${(e as Error)?.stack ?? e}\n`);
  process.exit(1);
});

// ---------------------------------------------------------------------------------------
// Backends

/** vhostfwd as a child process, from a generated config (poller pinned to BACKEND_CPU). */
class VhostfwdProc {
  readonly proc: ChildProcess;
  output = '';
  /** 'forced dirty logging paused' / 'resumed' lines seen so far (SIGUSR2 acknowledged) */
  logSwitches = 0;
  private partial = '';
  private exited: Promise<void>;

  /** bridge: a learning bridge instead of the cross-connect; vlan: both ports access ports of VLAN 10 in it */
  constructor(readonly sockets: string[], queues: number, forceLog: boolean, cli = CLI, sw: { bridge: boolean; vlan: boolean } = { bridge: false, vlan: false }) {
    const names = sockets.map((_, i) => `vm${i + 1}`);
    const cfg = {
      // steering by queue pair: testpmd's txonly stream is one flow, which a hash would put on one queue
      // (only with several queues, so that builds from before steering existed run the 1-queue rows in --ab-cli)
      interfaces: sockets.map((s, i) => ({ name: names[i], socket: s, mode: 'server', queues, ...(queues > 1 ? { steering: 'pair' } : {}), ...(sw.vlan ? { vlan: { mode: 'access', tag: 10 } } : {}) })),
      forwarding: sw.bridge || sw.vlan ? { mode: 'bridge' } : { mode: 'xconnect', pairs: [[names[0], names[1]]] },
      // every queue pair of both interfaces on one worker, pinned to the backend core
      workers: [{ cpus: [BACKEND_CPU], queues: Array.from({ length: queues }, (_, q) => names.map((n) => `${n}:${q}`)).flat() }],
    };
    const file = path.join(path.dirname(sockets[0]), 'vhostfwd.json');
    fs.writeFileSync(file, JSON.stringify(cfg, null, 2));
    const args = [cli, 'run', '--config', file, '--log-level', 'info', ...(forceLog ? ['--force-log'] : [])];
    // BENCH_VF_ARGS: extra vhostfwd options (e.g. --stats-interval 1 with BENCH_DUMP)
    args.push(...(process.env.BENCH_VF_ARGS ?? '').split(' ').filter((a) => a !== ''));
    // BENCH_NODE_ARGS: V8/Node flags for the vhostfwd process only (e.g. --trace-deopt)
    const nodeArgs = (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter((a) => a !== '');
    this.proc = track(spawn(process.execPath, [...nodeArgs, ...args], { stdio: ['ignore', 'pipe', 'pipe'] }));
    // BENCH_DUMP=file: keep vhostfwd's whole output (e.g. with NODE_OPTIONS=--trace-deopt)
    const dump = process.env.BENCH_DUMP;
    const add = (b: Buffer): void => {
      if (dump) fs.appendFileSync(dump, b);
      const text = b.toString();
      this.output = (this.output + text).slice(-65536);
      const lines = (this.partial + text).split('\n');
      this.partial = lines.pop() ?? '';
      for (const l of lines) if (/forced dirty logging (paused|resumed)/.test(l)) this.logSwitches++;
    };
    this.proc.stdout?.on('data', add);
    this.proc.stderr?.on('data', add);
    this.exited = new Promise((r) => this.proc.on('exit', () => r()));
  }

  get pid(): number {
    return this.proc.pid as number;
  }

  /** Both sockets listening. */
  async ready(timeoutMs = 20000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (!this.sockets.every((s) => fs.existsSync(s))) {
      if (this.proc.exitCode !== null) throw new Error(`vhostfwd exited (${this.proc.exitCode}):\n${this.output.slice(-2000)}`);
      if (Date.now() > end) throw new Error(`vhostfwd: sockets not created in ${timeoutMs} ms:\n${this.output.slice(-2000)}`);
      await sleep(20);
    }
  }

  /** SIGUSR2: pause or resume forced logging; resolves when vhostfwd says every worker switched. */
  async switchLog(timeoutMs = 5000): Promise<void> {
    const want = this.logSwitches + 1;
    this.proc.kill('SIGUSR2');
    const end = Date.now() + timeoutMs;
    while (this.logSwitches < want) {
      if (this.proc.exitCode !== null) throw new Error(`vhostfwd exited (${this.proc.exitCode}) during a log switch`);
      if (Date.now() > end) throw new Error(`vhostfwd did not acknowledge SIGUSR2 in ${timeoutMs} ms`);
      await sleep(5);
    }
  }

  /** SIGTERM (clean shutdown), SIGKILL after 3 s. */
  async stop(): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), 3000);
    await this.exited;
    clearTimeout(t);
  }
}

function testpmd(role: 'frontend' | 'backend', sockets: string[], queues: number, size?: number): Testpmd {
  const t = new Testpmd({
    role, sockets, queues, lcores: role === 'frontend' ? FE_LCORES : BE_LCORES, prefix: newPrefix(role === 'frontend' ? 'fe' : 'be'),
    memMb: TESTPMD_MEM_MB, txpkts: size, extraArgs: TESTPMD_EXTRA,
  });
  track(t.proc);
  return t;
}

/** Wait until testpmd reported the link of every port up (vhost device ready), then `start`. */
async function startWhenUp(be: Testpmd, ports: number, timeoutMs: number): Promise<void> {
  for (let p = 0; p < ports; p++) await be.waitFor(new RegExp(`Port ${p}: link state change event`), timeoutMs);
  await be.cmd('start');
}

async function quitTestpmd(t: Testpmd | null): Promise<void> {
  if (!t) return;
  try {
    if (t.proc.exitCode === null) await Promise.race([t.quit(), sleep(5000)]);
  } catch {
    // killed below
  }
  await t.kill(); // SIGKILL if still running; removes its hugepage files
}

// ---------------------------------------------------------------------------------------
// Throughput trials

interface Trial {
  backend: Backend;
  size: number;
  queues: number;
  round: number;
  /** 0 for the first try, 1.. for re-runs after a failure (the failed try stays in the list) */
  attempt: number;
  /** 1-minute load average when the trial started (other work on the machine shows here) */
  load1: number;
  ok: boolean;
  error?: string;
  mpps?: number;
  gbps?: number;
  seconds?: number;
  rxPackets?: number[];
  rxMissed?: number;
  errors?: number;
  /** how long each `show port stats all` took (the snapshot time is its midpoint) */
  statsLatencyMs?: number[];
  /** vfLog: vhostfwd logged that it allocated the forced log */
  logVerified?: boolean;
  /** vfLog: size of that log per device, bytes (one bit per 4 KiB page up to the highest guest address) */
  logBytes?: number;
  /**
   * vfLog: --log-pairs windows after the measured one, in the same process: Mpps with forced
   * logging paused (off) and on, adjacent in time (order alternating, off-on then on-off).
   */
  logPairs?: Array<{ off: number; on: number }>;
}

/** One line for the report: the error's first line and the last lines of any output it carries. */
function errText(e: unknown): string {
  const lines = String((e as Error)?.message ?? e).split('\n').filter((l) => l.trim() !== '');
  const keep = lines.length > 8 ? [lines[0], '...', ...lines.slice(-6)] : lines;
  return keep.join(' | ').slice(0, 1000);
}

const sumRx = (s: PortStats[]): number => s.reduce((a, p) => a + p.rxPackets, 0);

async function statsAt(fe: Testpmd): Promise<{ st: PortStats[]; t: number; ms: number }> {
  const t0 = performance.now();
  const st = await fe.portStats();
  const t1 = performance.now();
  if (st.length !== 2) throw new Error(`could not parse the frontend port stats (${st.length} ports)`);
  return { st, t: (t0 + t1) / 2, ms: t1 - t0 };
}

/** Mpps through the backend over `seconds`, from the frontend's counters. */
async function rateOver(fe: Testpmd, seconds: number): Promise<number> {
  const a = await statsAt(fe);
  await sleep(seconds * 1000);
  const b = await statsAt(fe);
  const total = sumRx(b.st) - sumRx(a.st);
  if (total <= 0) throw new Error('no packets came back to the frontend');
  return total / ((b.t - a.t) / 1000) / 1e6;
}

/**
 * Log on versus off inside one vhostfwd process (forced logging on at the start): the VM's
 * slow mode holds for seconds at a time (bench/NOTES.md), so adjacent windows of one trial
 * almost always share it, and the ratio of a pair measures the log's cost, not which trial
 * drew the slow mode. Order off, on | on, off | off, on ... (ABBA: a drift cancels); each
 * switch waits for vhostfwd's acknowledgement, then 100 ms for the rings to settle.
 */
async function logPairs(vf: VhostfwdProc, fe: Testpmd): Promise<Array<{ off: number; on: number }>> {
  const out: Array<{ off: number; on: number }> = [];
  let on = true;
  const windowAt = async (want: boolean): Promise<number> => {
    if (on !== want) {
      await vf.switchLog();
      on = want;
      await sleep(100);
    }
    return rateOver(fe, opts.logWindow);
  };
  for (let k = 0; k < opts.logPairs; k++) {
    const order = k % 2 === 0 ? [false, true] : [true, false];
    const r: { off: number; on: number } = { off: 0, on: 0 };
    for (const want of order) r[want ? 'on' : 'off'] = await windowAt(want);
    out.push(r);
  }
  return out;
}

async function throughputTrial(backend: Backend, size: number, queues: number, round: number, attempt: number): Promise<Trial> {
  const base: Trial = { backend, size, queues, round, attempt, ok: false, load1: Number(os.loadavg()[0].toFixed(2)) };
  const dir = fs.mkdtempSync(path.join(TMP, `${backend}-`));
  const sockets = [path.join(dir, 'a.sock'), path.join(dir, 'b.sock')];
  let vf: VhostfwdProc | null = null;
  let be: Testpmd | null = null;
  let fe: Testpmd | null = null;
  try {
    if (backend === 'dpdk') {
      be = testpmd('backend', sockets, queues);
      await be.ready(60000);
    } else {
      vf = new VhostfwdProc(sockets, queues, isLogged(backend), isB(backend) ? (opts.abCli ?? CLI) : CLI, { bridge: opts.bridge, vlan: opts.abVlan && isB(backend) });
      await vf.ready();
    }
    fe = testpmd('frontend', sockets, queues, size);
    await fe.ready(60000);
    if (be) await startWhenUp(be, 2, 15000);
    await fe.cmd('start tx_first 4');
    await sleep(opts.warmup * 1000);
    const a = await statsAt(fe);
    await sleep(opts.duration * 1000);
    const b = await statsAt(fe);
    const secs = (b.t - a.t) / 1000;
    const rx = b.st.map((p, i) => p.rxPackets - a.st[i].rxPackets);
    const total = sumRx(b.st) - sumRx(a.st);
    if (total <= 0) throw new Error('no packets came back to the frontend');
    const mpps = total / secs / 1e6;
    base.ok = true;
    base.mpps = mpps;
    base.gbps = (mpps * size * 8) / 1000;
    base.seconds = secs;
    base.rxPackets = rx;
    base.statsLatencyMs = [Math.round(a.ms), Math.round(b.ms)];
    base.rxMissed = b.st.reduce((s, p, i) => s + p.rxMissed - a.st[i].rxMissed, 0);
    base.errors = b.st.reduce((s, p, i) => s + p.rxErrors + p.txErrors - a.st[i].rxErrors - a.st[i].txErrors, 0);
    if (vf && isLogged(backend) && opts.logPairs > 0) base.logPairs = await logPairs(vf, fe);
    if (vf) {
      await fe.cmd('stop');
      if (isLogged(backend)) {
        const m = /forced dirty logging into a backend-allocated log.*?size[=:"\s]+(\d+)/.exec(vf.output);
        base.logVerified = m !== null;
        if (m) base.logBytes = Number(m[1]);
        if (!base.logVerified) throw new Error('vhostfwd did not report a forced dirty log (log path not exercised)');
      }
      if (vf.proc.exitCode !== null) throw new Error(`vhostfwd exited during the trial (${vf.proc.exitCode})`);
    }
  } catch (e) {
    base.ok = false;
    base.error = errText(e);
  } finally {
    await quitTestpmd(fe);
    await quitTestpmd(be);
    if (vf) await vf.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return base;
}

// ---------------------------------------------------------------------------------------
// Idle CPU

const CLK_TCK = ((): number => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;
  } catch {
    return 100;
  }
})();

/** utime + stime of a process (all its threads), in seconds. */
function cpuSeconds(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // f[0] is field 3 (state)
  return (Number(f[11]) + Number(f[12])) / CLK_TCK; // fields 14 and 15
}

interface IdleResult {
  backend: 'vf' | 'dpdk';
  ok: boolean;
  error?: string;
  seconds?: number;
  /** % of one core */
  cpuPercent?: number;
  note: string;
}

async function idleCpu(backend: 'vf' | 'dpdk'): Promise<IdleResult> {
  const note = backend === 'vf'
    ? 'vhostfwd process (all threads), both interfaces connected by an idle testpmd frontend (not forwarding)'
    : 'DPDK testpmd backend after `start` (forwarding lcore polls), frontend connected but not forwarding';
  const r: IdleResult = { backend, ok: false, note };
  const dir = fs.mkdtempSync(path.join(TMP, `idle-${backend}-`));
  const sockets = [path.join(dir, 'a.sock'), path.join(dir, 'b.sock')];
  let vf: VhostfwdProc | null = null;
  let be: Testpmd | null = null;
  let fe: Testpmd | null = null;
  try {
    if (backend === 'vf') {
      vf = new VhostfwdProc(sockets, 1, false);
      await vf.ready();
    } else {
      be = testpmd('backend', sockets, 1);
      await be.ready(60000);
    }
    fe = testpmd('frontend', sockets, 1, 64);
    await fe.ready(60000);
    if (be) await startWhenUp(be, 2, 15000);
    await sleep(1000); // let start-up work settle
    const pid = vf ? vf.pid : (be as Testpmd).proc.pid as number;
    const c0 = cpuSeconds(pid);
    const t0 = Date.now();
    await sleep(opts.idleSeconds * 1000);
    const c1 = cpuSeconds(pid);
    const secs = (Date.now() - t0) / 1000;
    r.ok = true;
    r.seconds = secs;
    r.cpuPercent = ((c1 - c0) / secs) * 100;
  } catch (e) {
    r.error = errText(e);
  } finally {
    await quitTestpmd(fe);
    await quitTestpmd(be);
    if (vf) await vf.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return r;
}

// ---------------------------------------------------------------------------------------
// Ping RTT between two QEMU guests

interface PingResult {
  backend: 'vf' | 'dpdk';
  ok: boolean;
  error?: string;
  sent?: number;
  received?: number;
  minMs?: number;
  avgMs?: number;
  maxMs?: number;
}

async function pingRtt(backend: 'vf' | 'dpdk'): Promise<PingResult> {
  const r: PingResult = { backend, ok: false };
  const dir = fs.mkdtempSync(path.join(TMP, `ping-${backend}-`));
  const sockets = [path.join(dir, 'a.sock'), path.join(dir, 'b.sock')];
  let vf: VhostfwdProc | null = null;
  let be: Testpmd | null = null;
  const guests: QemuGuest[] = [];
  try {
    if (backend === 'vf') {
      vf = new VhostfwdProc(sockets, 1, false);
      await vf.ready();
    } else {
      be = testpmd('backend', sockets, 1);
      await be.ready(60000);
    }
    const g1 = new QemuGuest({ name: 'g1', socket: sockets[0], mac: '52:54:00:00:00:01', ip: '10.0.0.1/24', peer: '10.0.0.2', mode: 'ping', count: opts.pingCount, interval: opts.pingInterval });
    track(g1.proc);
    guests.push(g1);
    const g2 = new QemuGuest({ name: 'g2', socket: sockets[1], mac: '52:54:00:00:00:02', ip: '10.0.0.2/24', peer: '10.0.0.1', mode: 'serve' });
    track(g2.proc);
    guests.push(g2);
    if (be) await startWhenUp(be, 2, 90000);
    const done = await g1.waitFor(/VF:PING-DONE sent=(\d+) received=(\d*)/, 180000);
    r.sent = Number(done[1]);
    r.received = Number(done[2] || 0);
    const rtt = g1.output.match(/round-trip min\/avg\/max = ([\d.]+)\/([\d.]+)\/([\d.]+) ms/);
    if (!rtt) throw new Error(`no round-trip summary in the guest output (received ${r.received}/${r.sent})`);
    r.minMs = Number(rtt[1]);
    r.avgMs = Number(rtt[2]);
    r.maxMs = Number(rtt[3]);
    r.ok = r.received > 0;
    if (!r.ok) r.error = 'no ping answered';
  } catch (e) {
    r.error = errText(e);
  } finally {
    for (const g of guests) await g.kill();
    await quitTestpmd(be);
    if (vf) await vf.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return r;
}

// ---------------------------------------------------------------------------------------
// Reporting


interface Cell {
  medianMpps: number | null;
  medianGbps: number | null;
  /** the best round: on this shared VM a trial is only ever slowed by its neighbours, never sped up */
  bestMpps: number | null;
  /** median of the fast-mode rounds (>= FAST_FRACTION of bestMpps: bench/stats.ts) and how many there were */
  fastMpps: number | null;
  fastRounds: number;
  roundsMpps: number[];
  ok: number;
  failed: number;
}
interface Row {
  size: number;
  queues: number;
  dpdk?: Cell;
  vf?: Cell;
  vfLog?: Cell;
  vfB?: Cell;
  vfLogB?: Cell;
  vfVsDpdk: number | null;
  vfLogVsDpdk: number | null;
  logOnVsOff: number | null;
  /** the same ratios between the best rounds of each backend */
  bestVfVsDpdk: number | null;
  bestLogOnVsOff: number | null;
  /** and between their fast-mode medians */
  fastVfVsDpdk: number | null;
  fastLogOnVsOff: number | null;
  /** median over every --log-pairs pair of the cell (all rounds) of on / off Mpps, and their count */
  pairedLogOnVsOff: number | null;
  logPairs: number;
  /** the pairs' ratios, each round's in order */
  logPairRatios: number[];
}

function summarize(trials: Trial[], backends: Backend[]): Row[] {
  const rows: Row[] = [];
  for (const size of opts.sizes) {
    for (const queues of opts.queues) {
      const row: Row = { size, queues, vfVsDpdk: null, vfLogVsDpdk: null, logOnVsOff: null, bestVfVsDpdk: null, bestLogOnVsOff: null, fastVfVsDpdk: null, fastLogOnVsOff: null, pairedLogOnVsOff: null, logPairs: 0, logPairRatios: [] };
      for (const b of backends) {
        const ts = trials.filter((t) => t.backend === b && t.size === size && t.queues === queues);
        const good = ts.filter((t) => t.ok).map((t) => t.mpps as number);
        const med = median(good);
        const best = good.length > 0 ? Math.max(...good) : null;
        const fast = fastMode(good);
        row[b] = {
          medianMpps: med, medianGbps: med === null ? null : (med * size * 8) / 1000, bestMpps: best,
          fastMpps: fast.median, fastRounds: fast.rounds, roundsMpps: good, ok: good.length, failed: ts.length - good.length,
        };
      }
      row.vfVsDpdk = ratio(row.vf?.medianMpps ?? null, row.dpdk?.medianMpps ?? null);
      row.vfLogVsDpdk = ratio(row.vfLog?.medianMpps ?? null, row.dpdk?.medianMpps ?? null);
      row.logOnVsOff = ratio(row.vfLog?.medianMpps ?? null, row.vf?.medianMpps ?? null);
      row.bestVfVsDpdk = ratio(row.vf?.bestMpps ?? null, row.dpdk?.bestMpps ?? null);
      row.bestLogOnVsOff = ratio(row.vfLog?.bestMpps ?? null, row.vf?.bestMpps ?? null);
      row.fastVfVsDpdk = ratio(row.vf?.fastMpps ?? null, row.dpdk?.fastMpps ?? null);
      row.fastLogOnVsOff = ratio(row.vfLog?.fastMpps ?? null, row.vf?.fastMpps ?? null);
      const pairs = trials.filter((t) => t.ok && t.backend === 'vfLog' && t.size === size && t.queues === queues).flatMap((t) => t.logPairs ?? []);
      row.logPairRatios = pairs.map((p) => p.on / p.off);
      row.logPairs = pairs.length;
      row.pairedLogOnVsOff = median(row.logPairRatios);
      rows.push(row);
    }
  }
  return rows;
}

const f = (v: number | null | undefined, d = 2): string => (v === null || v === undefined ? 'n/a' : v.toFixed(d));

function table(rows: Row[], backends: Backend[], idle: IdleResult[], ping: PingResult[]): string {
  const head = ['size', 'q'];
  const has = (b: Backend): boolean => backends.includes(b);
  if (has('dpdk')) head.push('DPDK Mpps', 'Gbps');
  if (has('vf')) head.push('vf Mpps', 'Gbps');
  if (has('vfLog')) head.push('vf+log Mpps', 'Gbps');
  if (has('vf') && has('dpdk')) head.push('vf/DPDK');
  if (has('vfLog') && has('dpdk')) head.push('vf+log/DPDK');
  if (has('vf') && has('vfLog')) head.push('log on/off');
  if (has('vf') && has('dpdk')) head.push('best vf/DPDK');
  if (has('vf') && has('vfLog')) head.push('best log on/off');
  if (has('vf') && has('dpdk')) head.push('fast vf/DPDK');
  if (has('vf') && has('vfLog')) head.push('fast log on/off');
  const paired = has('vfLog') && opts.logPairs > 0;
  if (paired) head.push('paired log on/off');
  head.push('rounds ok (fast)');
  const lines: string[][] = [head];
  for (const r of rows) {
    const l = [String(r.size), String(r.queues)];
    if (has('dpdk')) l.push(f(r.dpdk?.medianMpps, 3), f(r.dpdk?.medianGbps, 2));
    if (has('vf')) l.push(f(r.vf?.medianMpps, 3), f(r.vf?.medianGbps, 2));
    if (has('vfLog')) l.push(f(r.vfLog?.medianMpps, 3), f(r.vfLog?.medianGbps, 2));
    if (has('vf') && has('dpdk')) l.push(f(r.vfVsDpdk, 2));
    if (has('vfLog') && has('dpdk')) l.push(f(r.vfLogVsDpdk, 2));
    if (has('vf') && has('vfLog')) l.push(f(r.logOnVsOff, 2));
    if (has('vf') && has('dpdk')) l.push(f(r.bestVfVsDpdk, 2));
    if (has('vf') && has('vfLog')) l.push(f(r.bestLogOnVsOff, 2));
    if (has('vf') && has('dpdk')) l.push(f(r.fastVfVsDpdk, 2));
    if (has('vf') && has('vfLog')) l.push(f(r.fastLogOnVsOff, 2));
    if (paired) l.push(`${f(r.pairedLogOnVsOff, 3)} (${r.logPairs})`);
    l.push(backends.map((b) => `${b}:${r[b]?.ok ?? 0}/${(r[b]?.ok ?? 0) + (r[b]?.failed ?? 0)}(${r[b]?.fastRounds ?? 0})`).join(' '));
    lines.push(l);
  }
  const w = head.map((_, i) => Math.max(...lines.map((l) => l[i].length)));
  const fmt = (l: string[]): string => l.map((c, i) => (i === l.length - 1 ? c : c.padStart(w[i]))).join('  ');
  const out = [fmt(lines[0]), w.map((n) => '-'.repeat(n)).join('  '), ...lines.slice(1).map(fmt)];
  out.push('Mpps: median over rounds of packets through the backend (both directions summed); Gbps = Mpps x size x 8 / 1000 (frame bytes, no 20-byte preamble/IFG).');
  out.push('best: ratio of the best rounds (noise on a shared machine only slows a trial down; both backends show a slow mode at random, see bench/NOTES.md).');
  out.push(`fast: ratio of the medians of each backend's fast-mode rounds (>= ${FAST_FRACTION} x its best; their count in parentheses under "rounds ok").`);
  if (paired) out.push(`paired: median over the cell's log-off / log-on window pairs (${opts.logWindow} s each, adjacent in one vhostfwd+log trial, forced logging paused and resumed by SIGUSR2) of on / off; pair count in parentheses.`);
  for (const [a, b] of [['vf', 'vfB'], ['vfLog', 'vfLogB']] as Array<[Backend, Backend]>) {
    if (!has(a) || !has(b)) continue;
    for (const r of rows) {
      const ca = r[a as keyof Row] as Cell | undefined;
      const cb = r[b as keyof Row] as Cell | undefined;
      out.push(`A/B ${r.size} B q${r.queues} ${BACKEND_NAME[a]}: A ${f(ca?.medianMpps, 3)} / B ${f(cb?.medianMpps, 3)} Mpps median (B/A ${f(ratio(cb?.medianMpps ?? null, ca?.medianMpps ?? null), 3)}), fast-mode median A ${f(ca?.fastMpps, 3)} (${ca?.fastRounds ?? 0}) / B ${f(cb?.fastMpps, 3)} (${cb?.fastRounds ?? 0}) (B/A ${f(ratio(cb?.fastMpps ?? null, ca?.fastMpps ?? null), 3)}), best A ${f(ca?.bestMpps, 3)} / B ${f(cb?.bestMpps, 3)} (B/A ${f(ratio(cb?.bestMpps ?? null, ca?.bestMpps ?? null), 3)}); rounds A ${ca?.roundsMpps.map((x) => x.toFixed(2)).join(' ') ?? ''} | B ${cb?.roundsMpps.map((x) => x.toFixed(2)).join(' ') ?? ''}`);
    }
  }
  for (const i of idle) {
    out.push(`idle CPU ${i.backend === 'vf' ? 'vhostfwd' : 'DPDK    '}: ${i.ok ? `${f(i.cpuPercent, 2)} % of one core over ${f(i.seconds, 1)} s` : `FAILED (${i.error})`}  [${i.note}]`);
  }
  for (const p of ping) {
    out.push(`ping RTT ${p.backend === 'vf' ? 'vhostfwd' : 'DPDK    '}: ${p.ok ? `min/avg/max ${f(p.minMs, 3)}/${f(p.avgMs, 3)}/${f(p.maxMs, 3)} ms, ${p.received}/${p.sent} answered` : `FAILED (${p.error})`}`);
  }
  return out.join('\n');
}

function chart(rows: Row[], backends: Backend[]): string {
  const colors: Record<Backend, string> = { dpdk: '#4c72b0', vf: '#dd8452', vfLog: '#c44e52', vfB: '#55a868', vfLogB: '#8172b3' };
  const multiQ = opts.queues.length > 1;
  return barChart({
    title: 'Throughput through the backend: vhostfwd vs DPDK vhost PMD',
    note: `median of ${opts.rounds} alternating round(s) of ${opts.duration} s; testpmd virtio-user io loop; ${os.cpus().length} CPUs, one per side`,
    yLabel: 'Mpps (both directions)',
    series: backends.map((b) => ({ name: BACKEND_NAME[b], color: colors[b] })),
    groups: rows.map((r) => ({ label: `${r.size} B${multiQ ? `, ${r.queues}q` : ''}`, values: backends.map((b) => r[b]?.medianMpps ?? null) })),
  });
}

// ---------------------------------------------------------------------------------------
// Pre-flight

/** This process and its ancestors (a `timeout`, `sh -c`, npm wrapper is not "another run"). */
function ancestors(): Set<number> {
  const out = new Set<number>();
  let pid = process.pid;
  while (pid > 1 && !out.has(pid)) {
    out.add(pid);
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      pid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    } catch {
      break;
    }
  }
  return out;
}

function foreignBusy(): string[] {
  const mine = new Set([...children].map((c) => c.pid as number).concat([...ancestors()]));
  const out: string[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || mine.has(Number(d))) continue;
    let cmd = '';
    try {
      cmd = fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').replace(/\0/g, ' ');
    } catch {
      continue;
    }
    if (/dpdk-testpmd|qemu-system|ovs-vswitchd|cli\.js run|dataplane\.js|bench\/run\.js/.test(cmd) && !/\bstdbuf\b.*dpdk/.test(cmd)) out.push(`${d}: ${cmd.slice(0, 120)}`);
  }
  return out;
}

async function preflight(): Promise<{ load: number[]; waitedForeignS: number }> {
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} missing: build with npx tsc -p tsconfig.json`);
  if (opts.abCli && !fs.existsSync(opts.abCli)) throw new Error(`--ab-cli ${opts.abCli}: no such file`);
  const t0 = Date.now();
  let busy = foreignBusy();
  if (busy.length > 0) {
    process.stderr.write(`bench: waiting up to ${opts.waitForeign} s for other benchmark processes to finish:\n  ${busy.join('\n  ')}\n`);
    while (busy.length > 0 && Date.now() - t0 < opts.waitForeign * 1000) {
      await sleep(2000);
      busy = foreignBusy();
    }
    if (busy.length > 0) process.stderr.write('bench: still running; measuring anyway (numbers will be noisy)\n');
  }
  const free = Number(/HugePages_Free:\s*(\d+)/.exec(fs.readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
  const need = (2 * TESTPMD_MEM_MB) / 2 + 16;
  if (free < need) throw new Error(`only ${free} free 2 MiB hugepages, need about ${need} (two testpmd of ${TESTPMD_MEM_MB} MiB): run scripts/install-peers.sh`);
  const load = os.loadavg();
  if (load[0] > 0.5) process.stderr.write(`bench: load average ${load[0].toFixed(2)} > 0.5: results will be noisy\n`);
  return { load, waitedForeignS: (Date.now() - t0) / 1000 };
}

function version(cmd: string, args: string[], re: RegExp): string | null {
  try {
    const out = execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: 10000 }).toString();
    return re.exec(out)?.[1] ?? out.split('\n')[0];
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const started = new Date();
  const pre = await preflight();
  const backends: Backend[] = [];
  if (opts.log !== 'on') backends.push('vf');
  if (opts.log !== 'on' && (opts.abCli || opts.abVlan)) backends.push('vfB');
  if (opts.log !== 'off') backends.push('vfLog');
  if (opts.log !== 'off' && (opts.abCli || opts.abVlan)) backends.push('vfLogB');
  if (opts.dpdk) backends.push('dpdk');
  const total = opts.sizes.length * opts.queues.length * opts.rounds * backends.length;
  process.stderr.write(`bench: ${total} throughput trials (${backends.join(', ')} alternating; sizes ${opts.sizes.join(',')}; queues ${opts.queues.join(',')}; ${opts.rounds} round(s) of ${opts.duration} s after ${opts.warmup} s warm-up)\n`);

  const trials: Trial[] = [];
  let n = 0;
  for (const size of opts.sizes) {
    for (const queues of opts.queues) {
      for (let round = 1; round <= opts.rounds; round++) {
        for (const b of backends) {
          n++;
          for (let attempt = 0; attempt <= opts.retries; attempt++) {
            const t = await throughputTrial(b, size, queues, round, attempt);
            trials.push(t);
            process.stderr.write(`  [${n}/${total}] ${size} B q${queues} round ${round}${attempt ? ` retry ${attempt}` : ''} ${BACKEND_NAME[b].padEnd(22)} ${t.ok ? `${f(t.mpps, 3)} Mpps ${f(t.gbps, 2)} Gbps${t.rxMissed ? ` missed ${t.rxMissed}` : ''}${t.errors ? ` errors ${t.errors}` : ''}` : `FAILED: ${t.error}`}\n`);
            if (t.ok) break;
          }
        }
      }
    }
  }

  /** idle/ping attempts that failed before a successful retry (reported, not dropped) */
  const failedOnce: string[] = [];
  const idle: IdleResult[] = [];
  if (opts.idle) {
    for (const b of (opts.dpdk ? ['vf', 'dpdk'] : ['vf']) as Array<'vf' | 'dpdk'>) {
      let r = await idleCpu(b);
      for (let a = 1; !r.ok && a <= opts.retries; a++) {
        process.stderr.write(`  idle CPU ${b}: FAILED (${r.error}); retrying\n`);
        failedOnce.push(`idle ${b} (retried): ${r.error}`);
        r = await idleCpu(b);
      }
      idle.push(r);
      process.stderr.write(`  idle CPU ${b}: ${r.ok ? `${f(r.cpuPercent, 2)} %` : `FAILED: ${r.error}`}\n`);
    }
  }
  const ping: PingResult[] = [];
  if (opts.ping) {
    for (const b of (opts.dpdk ? ['vf', 'dpdk'] : ['vf']) as Array<'vf' | 'dpdk'>) {
      let r = await pingRtt(b);
      for (let a = 1; !r.ok && a <= opts.retries; a++) {
        process.stderr.write(`  ping ${b}: FAILED (${r.error}); retrying\n`);
        failedOnce.push(`ping ${b} (retried): ${r.error}`);
        r = await pingRtt(b);
      }
      ping.push(r);
      process.stderr.write(`  ping ${b}: ${r.ok ? `avg ${f(r.avgMs, 3)} ms (${r.received}/${r.sent})` : `FAILED: ${r.error}`}\n`);
    }
  }

  const rows = summarize(trials, backends);
  const text = table(rows, backends, idle, ping);
  process.stdout.write('\n' + text + '\n');

  const failures = [
    ...trials.filter((t) => !t.ok).map((t) => `throughput ${t.backend} ${t.size} B q${t.queues} round ${t.round} attempt ${t.attempt}: ${t.error}`),
    ...failedOnce,
    ...idle.filter((i) => !i.ok).map((i) => `idle ${i.backend}: ${i.error}`),
    ...ping.filter((p) => !p.ok).map((p) => `ping ${p.backend}: ${p.error}`),
  ];
  const result = {
    meta: {
      started: started.toISOString(),
      finished: new Date().toISOString(),
      host: os.hostname(),
      cpus: os.cpus().length,
      cpuModel: os.cpus()[0]?.model,
      node: process.version,
      dpdk: version('dpkg-query', ['-W', '-f', '${Version}', 'dpdk'], /(.+)/),
      qemu: version('qemu-system-x86_64', ['--version'], /version ([\d.]+)/),
      loadAvgBefore: pre.load,
      loadAvgAfter: os.loadavg(),
      waitedForOtherProcessesS: pre.waitedForeignS,
      options: opts,
      lcores: { frontend: { main: FE_LCORES[0], forwarding: FE_LCORES[1] }, dpdkBackend: { main: BE_LCORES[0], forwarding: BE_LCORES[1] }, vhostfwdPollerCpu: BACKEND_CPU },
      definitions: {
        mpps: 'sum over both frontend ports of delta RX-packets / measured seconds, after the warm-up: packets that crossed the backend (both directions)',
        gbps: 'mpps * size * 8 / 1000: frame bytes only (size = frame without CRC), NOT counting the 20-byte Ethernet preamble + inter-frame gap',
        median: 'median over successful rounds; backends alternate inside each round',
        best: 'best (highest) successful round per backend; bestVfVsDpdk and bestLogOnVsOff compare those',
        fast: `fastMpps: median of the rounds >= ${FAST_FRACTION} x bestMpps (the VM's slow mode halves whole trials at random: bench/NOTES.md), fastRounds their count; fastVfVsDpdk and fastLogOnVsOff compare those`,
        vfLog: 'vhostfwd run with --force-log: dirty pages logged into a backend-allocated log (testpmd virtio-user sends no SET_LOG_BASE), the used rings too',
        paired: 'pairedLogOnVsOff: median over the cell\'s logPairs (trials[].logPairs: after each vfLog trial\'s measured window, windows of logWindow s with forced logging paused and resumed by SIGUSR2 in the same process, off-on / on-off alternating) of on / off Mpps',
      },
    },
    throughput: rows,
    trials,
    idleCpu: idle,
    ping,
    failures,
    table: text,
  };
  fs.mkdirSync(opts.out, { recursive: true });
  const stamp = started.toISOString().replace(/[:.]/g, '-');
  const base = opts.quick ? 'quick' : 'latest';
  const json = JSON.stringify(result, null, 2) + '\n';
  fs.writeFileSync(path.join(opts.out, `${base}.json`), json);
  if (!opts.quick) fs.writeFileSync(path.join(opts.out, `${stamp}.json`), json);
  fs.writeFileSync(path.join(opts.out, `${base}.svg`), chart(rows, backends));
  fs.writeFileSync(path.join(opts.out, `${base}.txt`), text + '\n');
  process.stderr.write(`bench: wrote ${path.join(opts.out, `${base}.{json,svg,txt}`)}${opts.quick ? '' : ` and ${stamp}.json`}\n`);
  if (failures.length > 0) process.stderr.write(`bench: ${failures.length} failure(s):\n  ${failures.join('\n  ')}\n`);
  // Exit 1 when a number is missing from the report (a failure retried successfully is only listed).
  const missing = rows.some((r) => backends.some((b) => (r[b]?.ok ?? 0) === 0)) || idle.some((i) => !i.ok) || ping.some((p) => !p.ok);
  if (missing) process.exitCode = 1;
}

void main().catch((e) => {
  process.stderr.write(`bench: ${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
