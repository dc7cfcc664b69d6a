/**
 * vhostfwd against DPDK's vhost PMD and OVS-DPDK, in the same run, on the same machine.
 *
 * Throughput: dpdk-testpmd with net_virtio_user ports (`start tx_first 4`) loops packets
 * forever through a backend that is, alternately round after round,
 *   - vhostfwd, run as an operator runs it: `node dist/src/cli.js run --config CFG`
 *     (its poller pinned to CPU 1), with and without `--force-log`,
 *   - dpdk-testpmd with two net_vhost ports (io forward, forwarding lcore 1), and
 *   - OVS-DPDK 3.1 (bench/ovs.ts: its own ovsdb-server and ovs-vswitchd, PMD on CPU 1).
 * Topologies (bench/topology.ts): xconnect (2 ports; vhostfwd xconnect, DPDK io, OVS
 * port-to-port flows) and bridge (2 or 8 ports; vhostfwd bridge, OVS NORMAL, unicast after
 * learning). Only one backend runs at a time: each trial starts and stops its own.
 * Rate = sum over the frontend ports of delta RX-packets over `duration` s, after a warm-up.
 * Also: vhostfwd's idle CPU (frontend connected, not forwarding) and the ping RTT between
 * two QEMU guests through each backend. See bench/README.md.
 *
 *   npm run bench -- --sizes 64,256,1518 --queues 1,2 --duration 10 --rounds 3
 *   npm run bench -- --backends vhostfwd,ovs --modes bridge --bridge-ports 2,8
 *   npm run bench -- --quick
 */
import { FAST_FRACTION, compareCells, fastMode, median } from './stats';
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { QemuGuest } from '../kit/peers/qemu';
import { PortStats, Testpmd } from '../kit/peers/testpmd';
import { barChart } from './chart';
import { OvsDpdk, ovsMissing, ovsVersion } from './ovs';
import { BackendChoice, parseBackends } from './backends';
import { CpuPlan, Mode, OvsPortType, Topology, checkBridgePorts, cpuPlan, frontendMacs, topologies, topologyLabel, vhostfwdConfig, wantsPacked, frontendVariants } from './topology';

/** vfB / vfLogB: the build given by --ab-cli, alternating with vf / vfLog inside each round */
type Backend = 'dpdk' | 'ovs' | 'vf' | 'vfLog' | 'vfB' | 'vfLogB';
const BACKEND_NAME: Record<Backend, string> = {
  dpdk: 'DPDK vhost PMD', ovs: 'OVS-DPDK', vf: 'vhostfwd', vfLog: 'vhostfwd + forced log', vfB: 'vhostfwd B', vfLogB: 'vhostfwd B + forced log',
};
const isLogged = (b: Backend): boolean => b === 'vfLog' || b === 'vfLogB';
const isB = (b: Backend): boolean => b === 'vfB' || b === 'vfLogB';

const ROOT = path.resolve(__dirname, '..', '..');
// BENCH_VF_CLI: another build's dist/src/cli.js (A/B runs of two versions)
const CLI = process.env.BENCH_VF_CLI ?? path.join(ROOT, 'dist', 'src', 'cli.js');
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
  .option('backends', { type: 'string', describe: 'backends to measure, comma separated: vhostfwd, dpdk, ovs (default: all three when OVS-DPDK is installed, else vhostfwd,dpdk and the table says OVS was not measured)' })
  .option('dpdk', { type: 'boolean', default: true, describe: 'measure the DPDK reference backend (--no-dpdk to skip; same as leaving dpdk out of --backends)' })
  .option('modes', { type: 'string', default: 'xconnect,bridge', describe: 'topologies: xconnect (2 ports; vhostfwd xconnect vs DPDK io vs OVS port-to-port flows) and/or bridge (vhostfwd bridge vs OVS NORMAL)' })
  .option('bridge-ports', { type: 'string', default: '2,8', describe: 'port counts of the bridge rows (even: the frontend pairs ports 0-1, 2-3, ...)' })
  .option('ovs-port-type', { choices: ['dpdkvhostuser', 'dpdkvhostuserclient'] as const, default: 'dpdkvhostuser' as const, describe: 'OVS vhost-user ports: OVS the socket server (as vhostfwd and DPDK are here) or the client' })
  .option('ovs-socket-mem', { type: 'number', default: 512, describe: 'OVS dpdk-socket-mem, MiB of hugepages' })
  .option('idle', { type: 'boolean', default: true, describe: 'measure idle CPU (--no-idle to skip)' })
  .option('idle-seconds', { type: 'number', default: 10 })
  .option('load', { type: 'boolean', default: true, describe: "CPU at partial load: bench/gen.js (a paced frontend of our own) offers --load-rates through each backend's xconnect, after its own peak; the backend's CPU time per million packets (--no-load to skip)" })
  .option('load-rates', { type: 'string', default: '10000,50000,100000', describe: 'offered loads in frames per second (the same for every backend)' })
  .option('load-seconds', { type: 'number', default: 5, describe: 'seconds per load level (and for the peak)' })
  .option('ping', { type: 'boolean', describe: 'ping RTT between two QEMU guests (default on; off with --quick)' })
  .option('ping-count', { type: 'number', default: 20 })
  .option('ping-interval', { type: 'number', default: 0.2 })
  .option('quick', { type: 'boolean', default: false, describe: 'smoke run: 64 B, 1 queue, bridge rows of 2 ports only, 1 round, 3 s, short idle, no ping; writes quick.json' })
  .option('out', { type: 'string', default: path.join(ROOT, 'bench', 'results'), describe: 'results directory' })
  .option('retries', { type: 'number', default: 1, describe: 'a failed trial is recorded and re-run up to this many times' })
  .option('ab-cli', { type: 'string', describe: "A/B of two builds: another build's dist/src/cli.js, run as 'vhostfwd B' in every round beside this one (trials interleave, so the VM's slow mode hits both alike)" })
  .option('ab-vlan', { type: 'boolean', default: false, describe: "A/B in this build: 'vhostfwd B' is the bridge with every port a VLAN access port of VLAN 10 (802.1Q classification and the (VLAN, MAC) table on every packet), A the same bridge without VLANs; bridge rows only (use with --modes bridge)" })
  .option('virtio-user', { type: 'string', describe: "more devargs for the frontend's virtio-user ports, e.g. mrg_rxbuf=0 or packed_vq=1,in_order=1 (every backend gets the same frontend); several variants separated by ';' give rows of each in one run, 'default' for testpmd's defaults: 'default;packed_vq=1;mrg_rxbuf=0'" })
  .option('scaling', { type: 'boolean', default: false, describe: 'one forwarding core per queue pair for every backend (vhostfwd a worker per pair, DPDK --nb-cores N, OVS N PMD threads) and N for the frontend; with --queues 1,2,4,8 the scaling rows. Without: all queues on one backend core' })
  .option('tcp', { type: 'boolean', default: false, describe: 'VM-to-VM TCP instead (bench/tcp.ts): iperf3 between two QEMU guests through vhostfwd with offloads, without, and OVS-DPDK with userspace TSO; --rounds rounds of --duration seconds (defaults 3 and 10 here)' })
  .option('wait-foreign', { type: 'number', default: 300, describe: 'seconds to wait for other testpmd/QEMU/vhostfwd processes to finish first' })
  .strict()
  .help()
  .parseSync();

// `npm run bench -- --tcp`: the TCP bench is its own program (QEMU guests, not the testpmd loop)
if (argv.tcp) {
  const rounds = process.argv.includes('--rounds') ? argv.rounds : 3;
  const seconds = process.argv.includes('--duration') ? argv.duration : 10;
  try {
    execFileSync(process.execPath, [path.join(__dirname, 'tcp.js'), String(rounds), String(seconds)], { stdio: 'inherit' });
    process.exit(0);
  } catch {
    process.exit(1);
  }
}

const list = (s: string): number[] => s.split(',').map((x) => Number(x.trim())).filter((x) => Number.isFinite(x) && x > 0);
const MODES: readonly Mode[] = ['xconnect', 'bridge'];
function modeList(s: string): Mode[] {
  const out = s.split(',').map((x) => x.trim()).filter((x) => x !== '');
  const bad = out.filter((m) => !MODES.includes(m as Mode));
  if (bad.length > 0 || out.length === 0) throw new Error(`--modes ${s}: expected a list of ${MODES.join(', ')}`);
  return out as Mode[];
}
/** A bad option (or OvsMissingError) ends the run before anything starts, by name, without a stack. */
function orExit<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    process.stderr.write(`bench: ${(e as Error).name}: ${(e as Error).message}\n`);
    process.exit(2);
  }
}
const bridgePorts = argv.quick ? [2] : list(argv['bridge-ports']);
orExit(() => checkBridgePorts(bridgePorts));
const choice: BackendChoice = orExit(() => parseBackends(argv.backends, ovsMissing(), argv.dpdk));
const modes = orExit(() => modeList(argv.modes));
const opts = {
  sizes: argv.quick ? [64] : list(argv.sizes),
  queues: argv.quick ? [1] : list(argv.queues),
  duration: argv.quick ? 3 : argv.duration,
  warmup: argv.warmup,
  rounds: argv.quick ? 1 : Math.max(1, argv.rounds),
  log: argv.log,
  logPairs: argv.quick ? 1 : Math.max(0, Math.floor(argv['log-pairs'])),
  logWindow: argv['log-window'],
  dpdk: choice.dpdk,
  vhostfwd: choice.vhostfwd,
  ovs: choice.ovs,
  ovsNote: choice.ovsNote,
  topologies: topologies(modes, bridgePorts, frontendVariants(argv['virtio-user'] ?? null)),
  ovsPortType: argv['ovs-port-type'] as OvsPortType,
  ovsSocketMemMb: argv['ovs-socket-mem'],
  idle: argv.idle,
  idleSeconds: argv.quick ? 3 : argv['idle-seconds'],
  load: argv.load,
  loadSeconds: argv.quick ? 2 : argv['load-seconds'],
  loadRates: list(argv['load-rates']),
  ping: argv.ping ?? !argv.quick,
  pingCount: argv['ping-count'],
  pingInterval: argv['ping-interval'],
  quick: argv.quick,
  out: argv.out,
  waitForeign: argv['wait-foreign'],
  abCli: argv['ab-cli'] ? path.resolve(argv['ab-cli']) : null,
  abVlan: argv['ab-vlan'],
  retries: Math.max(0, argv.retries),
  scaling: argv.scaling,
  virtioUser: argv['virtio-user'] ?? null,
};
const NCPU = os.cpus().length;
/** Cores of a trial with `queues` queue pairs (bench/topology.ts cpuPlan): the same for every backend. */
const planFor = (queues: number): CpuPlan => cpuPlan(queues, opts.scaling, NCPU);

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

/** vhostfwd as a child process, from a generated config (workers pinned to the plan's backend cores). */
class VhostfwdProc {
  readonly proc: ChildProcess;
  output = '';
  /** 'forced dirty logging paused' / 'resumed' lines seen so far (SIGUSR2 acknowledged) */
  logSwitches = 0;
  private partial = '';
  private exited: Promise<void>;

  /** mode: xconnect or bridge (bench/topology.ts); vlan: every port an access port of VLAN 10 (--ab-vlan's B) */
  constructor(readonly sockets: string[], queues: number, forceLog: boolean, cli = CLI, mode: Mode = 'xconnect', vlan = false, packed = false) {
    const plan = planFor(queues);
    // one worker for every queue (the layout before scaling), or one per queue pair
    const cfg = vhostfwdConfig(sockets, queues, mode, opts.scaling && queues > 1 ? plan.backend : plan.backend[0], vlan, packed);
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

/** Frontend settings beyond the sockets: the bridge rows' MAC forwarding, a client-mode backend. */
interface FrontendExtras {
  mode?: Mode;
  /** the backend connects to us (OVS dpdkvhostuserclient): virtio-user server=1 */
  peerIsClient?: boolean;
  /** more virtio-user devargs (the row's frontend variant, Topology.frontend) */
  devargs?: string;
}

function testpmd(role: 'frontend' | 'backend', sockets: string[], queues: number, size?: number, fx: FrontendExtras = {}): Testpmd {
  // bridge rows: mac forward with distinct port MACs, each port sending to its partner (bench/topology.ts)
  const macs = role === 'frontend' && fx.mode === 'bridge' ? frontendMacs(sockets.length) : null;
  const t = new Testpmd({
    role, sockets, queues, lcores: role === 'frontend' ? planFor(queues).frontend : planFor(queues).dpdkBackend, prefix: newPrefix(role === 'frontend' ? 'fe' : 'be'),
    memMb: TESTPMD_MEM_MB, txpkts: size, extraArgs: TESTPMD_EXTRA, peerIsClient: fx.peerIsClient,
    ...(role === 'frontend' && fx.devargs ? { devargs: fx.devargs } : {}),
    ...(macs ? { forwardMode: 'mac', macs: macs.macs, ethPeers: macs.peers } : {}),
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
  /** topology (bench/topology.ts): xconnect, or a bridge of `ports` ports */
  mode: Mode;
  ports: number;
  /** the row's frontend devargs (Topology.frontend), absent for testpmd's defaults */
  frontend?: string;
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
  /**
   * frontend delta RX / delta TX packets over the measured window: about 1 when every packet
   * reaches one port; above 1 when a switch floods (bridge rows: learning did not settle)
   */
  rxPerTx?: number;
  /** ovs: per-port drop counters OVS reported after the trial (rx_dropped, tx_dropped), nonzero ones */
  ovsDrops?: Record<string, number>;
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
  if (st.length !== fe.o.sockets.length) throw new Error(`could not parse the frontend port stats (${st.length} of ${fe.o.sockets.length} ports)`);
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

/** The backend of one trial, started; `stop()` stops whichever it is. */
interface Started {
  vf: VhostfwdProc | null;
  be: Testpmd | null;
  ovs: OvsDpdk | null;
  /** the sockets the frontend attaches to */
  sockets: string[];
}

async function startBackend(backend: Backend, t: Topology, queues: number, dir: string): Promise<Started> {
  const own = Array.from({ length: t.ports }, (_, i) => path.join(dir, `${String.fromCharCode(97 + i)}.sock`));
  if (backend === 'dpdk') {
    const be = testpmd('backend', own, queues);
    await readyOrStop({ vf: null, be, ovs: null, sockets: own }, () => be.ready(60000));
    return { vf: null, be, ovs: null, sockets: own };
  }
  if (backend === 'ovs') {
    const ovs = await OvsDpdk.start({
      dir: path.join(dir, 'ovs'), topology: t, portType: opts.ovsPortType, pmdCpus: planFor(queues).backend, mainCpu: planFor(queues).ovsMain,
      socketMemMb: opts.ovsSocketMemMb, filePrefix: newPrefix('ovs'), clientSockets: own, track,
    });
    return { vf: null, be: null, ovs, sockets: ovs.sockets };
  }
  // a frontend asking for packed rings gets them from vhostfwd too (DPDK and OVS offer them always)
  const vf = new VhostfwdProc(own, queues, isLogged(backend), isB(backend) ? (opts.abCli ?? CLI) : CLI, t.mode, opts.abVlan && isB(backend), wantsPacked(t.frontend ?? null));
  await readyOrStop({ vf, be: null, ovs: null, sockets: own }, () => vf.ready());
  return { vf, be: null, ovs: null, sockets: own };
}

/** A backend that never got ready is stopped here: the caller has no handle on it yet. */
async function readyOrStop(s: Started, ready: () => Promise<void>): Promise<void> {
  try {
    await ready();
  } catch (e) {
    await stopBackend(s);
    throw e;
  }
}

async function stopBackend(s: Started | null): Promise<void> {
  if (!s) return;
  await quitTestpmd(s.be);
  if (s.vf) await s.vf.stop();
  if (s.ovs) await s.ovs.stop();
}

/** The nonzero drop counters of OVS's ports (where a loop that slowed down lost packets). */
async function ovsDrops(ovs: OvsDpdk): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const [port, st] of Object.entries(await ovs.interfaceStats())) {
    for (const [k, v] of Object.entries(st)) if (/drop/.test(k) && v > 0) out[`${port}.${k}`] = v;
  }
  return out;
}

async function throughputTrial(backend: Backend, topo: Topology, size: number, queues: number, round: number, attempt: number): Promise<Trial> {
  const base: Trial = { backend, mode: topo.mode, ports: topo.ports, ...(topo.frontend ? { frontend: topo.frontend } : {}), size, queues, round, attempt, ok: false, load1: Number(os.loadavg()[0].toFixed(2)) };
  const dir = fs.mkdtempSync(path.join(TMP, `${backend}-`));
  let started: Started | null = null;
  let fe: Testpmd | null = null;
  try {
    started = await startBackend(backend, topo, queues, dir);
    const { vf, be, ovs } = started;
    fe = testpmd('frontend', started.sockets, queues, size, { mode: topo.mode, peerIsClient: ovs !== null && opts.ovsPortType === 'dpdkvhostuserclient', ...(topo.frontend ? { devargs: topo.frontend } : {}) });
    await fe.ready(60000);
    if (be) await startWhenUp(be, topo.ports, 15000);
    if (ovs) await ovs.waitLinksUp();
    await fe.cmd('start tx_first 4');
    await sleep(opts.warmup * 1000);
    const a = await statsAt(fe);
    await sleep(opts.duration * 1000);
    const b = await statsAt(fe);
    const secs = (b.t - a.t) / 1000;
    const rx = b.st.map((p, i) => p.rxPackets - a.st[i].rxPackets);
    const total = sumRx(b.st) - sumRx(a.st);
    if (total <= 0) throw new Error('no packets came back to the frontend');
    const tx = b.st.reduce((s, p, i) => s + p.txPackets - a.st[i].txPackets, 0);
    const mpps = total / secs / 1e6;
    base.ok = true;
    base.mpps = mpps;
    base.gbps = (mpps * size * 8) / 1000;
    base.seconds = secs;
    base.rxPackets = rx;
    base.rxPerTx = tx > 0 ? Number((total / tx).toFixed(4)) : undefined;
    base.statsLatencyMs = [Math.round(a.ms), Math.round(b.ms)];
    base.rxMissed = b.st.reduce((s, p, i) => s + p.rxMissed - a.st[i].rxMissed, 0);
    base.errors = b.st.reduce((s, p, i) => s + p.rxErrors + p.txErrors - a.st[i].rxErrors - a.st[i].txErrors, 0);
    if (vf && isLogged(backend) && opts.logPairs > 0) base.logPairs = await logPairs(vf, fe);
    if (ovs) base.ovsDrops = await ovsDrops(ovs);
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
    await stopBackend(started);
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

/** Idle CPU and ping are measured through vhostfwd (no forced log), DPDK and OVS (xconnect). */
type IdlePingBackend = 'vf' | 'dpdk' | 'ovs';
const XC: Topology = { mode: 'xconnect', ports: 2 };

interface IdleResult {
  backend: IdlePingBackend;
  ok: boolean;
  error?: string;
  seconds?: number;
  /** % of one core */
  cpuPercent?: number;
  note: string;
}

const IDLE_NOTE: Record<IdlePingBackend, string> = {
  vf: 'vhostfwd process (all threads), both interfaces connected by an idle testpmd frontend (not forwarding)',
  dpdk: 'DPDK testpmd backend after `start` (forwarding lcore polls), frontend connected but not forwarding',
  ovs: 'ovs-vswitchd (all threads: PMD on the backend core, main, revalidators), ports up, frontend connected but not forwarding',
};

/** The process whose CPU time is the backend's. */
function backendPid(s: Started): number {
  const pid = s.vf?.pid ?? s.be?.proc.pid ?? s.ovs?.pid ?? null;
  if (pid === null) throw new Error('backend has no process');
  return pid;
}

async function idleCpu(backend: IdlePingBackend): Promise<IdleResult> {
  const r: IdleResult = { backend, ok: false, note: IDLE_NOTE[backend] };
  const dir = fs.mkdtempSync(path.join(TMP, `idle-${backend}-`));
  let started: Started | null = null;
  let fe: Testpmd | null = null;
  try {
    started = await startBackend(backend, XC, 1, dir);
    fe = testpmd('frontend', started.sockets, 1, 64, { peerIsClient: started.ovs !== null && opts.ovsPortType === 'dpdkvhostuserclient' });
    await fe.ready(60000);
    if (started.be) await startWhenUp(started.be, 2, 15000);
    if (started.ovs) await started.ovs.waitLinksUp();
    await sleep(1000); // let start-up work settle
    const pid = backendPid(started);
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
    await stopBackend(started);
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return r;
}

// ---------------------------------------------------------------------------------------
// CPU at partial load

const GEN = path.join(ROOT, 'dist', 'bench', 'gen.js');

interface LoadLevel {
  /** offered frames per second; 0 = the peak phase (as fast as the generator goes) */
  rate: number;
  targetPps: number;
  pps: number;
  sent: number;
  received: number;
  seconds: number;
  /** the backend process's CPU over the phase, % of one core */
  cpuPercent: number;
  /** backend CPU seconds per million packets received (null when none were) */
  cpuSecPerMpkt: number | null;
}

interface LoadResult {
  backend: IdlePingBackend;
  ok: boolean;
  error?: string;
  levels: LoadLevel[];
}

/**
 * One backend's xconnect, bench/gen.js on its two sockets (pinned to the frontend's core):
 * the peak, then each level. The backend's CPU time is read at each phase's start and end
 * line, so setup and teardown are not in it.
 */
async function partialLoad(backend: IdlePingBackend): Promise<LoadResult> {
  const r: LoadResult = { backend, ok: false, levels: [] };
  const dir = fs.mkdtempSync(path.join(TMP, `load-${backend}-`));
  let started: Started | null = null;
  let gen: ChildProcess | null = null;
  try {
    if (backend === 'ovs' && opts.ovsPortType === 'dpdkvhostuserclient') throw new Error('the generator is a socket client: needs --ovs-port-type dpdkvhostuser');
    started = await startBackend(backend, XC, 1, dir);
    const pid = backendPid(started);
    const fe = planFor(1).frontend[1];
    const args = [GEN, '--a', started.sockets[0], '--b', started.sockets[1], '--seconds', String(opts.loadSeconds), '--rates', opts.loadRates.join(',')];
    const g = (gen = track(spawn('taskset', ['-c', String(fe), process.execPath, ...args], { stdio: ['pipe', 'pipe', 'pipe'] })));
    let err = '';
    g.stderr?.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
    const exited = new Promise<number | null>((resolve) => g.on('exit', (code) => resolve(code)));
    const lines: string[] = [];
    let wake: (() => void) | null = null;
    let partial = '';
    g.stdout?.on('data', (d: Buffer) => {
      partial += d.toString();
      const parts = partial.split('\n');
      partial = parts.pop() ?? '';
      lines.push(...parts);
      wake?.();
    });
    const next = async (timeoutMs: number): Promise<string> => {
      const end = Date.now() + timeoutMs;
      while (lines.length === 0) {
        if (g.exitCode !== null) throw new Error(`generator exited (${g.exitCode}): ${err.trim().split('\n').slice(-3).join(' | ')}`);
        if (Date.now() > end) throw new Error('generator: no output in time');
        await Promise.race([new Promise<void>((res) => (wake = res)), sleep(200)]);
      }
      return lines.shift() as string;
    };
    if ((await next(30000)) !== 'ready') throw new Error('generator: expected ready');
    if (started.be) await startWhenUp(started.be, 2, 15000);
    if (started.ovs) await started.ovs.waitLinksUp();
    g.stdin?.write('go\n');
    const phaseMs = opts.loadSeconds * 1000 + 30000;
    for (let i = 0; i <= opts.loadRates.length; i++) {
      const s = /^phase (\S+) start$/.exec(await next(phaseMs));
      if (!s) throw new Error('generator: expected a phase start');
      const c0 = cpuSeconds(pid);
      const e = /^phase (\S+) end (\{.*\})$/.exec(await next(phaseMs));
      if (!e) throw new Error('generator: expected a phase end');
      const c1 = cpuSeconds(pid);
      const p = JSON.parse(e[2]) as { targetPps: number; sent: number; received: number; seconds: number; pps: number };
      const cpu = c1 - c0;
      r.levels.push({
        rate: s[1] === 'peak' ? 0 : Number(s[1]), targetPps: p.targetPps, pps: p.pps, sent: p.sent, received: p.received, seconds: p.seconds,
        cpuPercent: (100 * cpu) / p.seconds, cpuSecPerMpkt: p.received > 0 ? cpu / (p.received / 1e6) : null,
      });
    }
    await Promise.race([exited, sleep(5000)]);
    r.ok = true;
  } catch (e) {
    r.error = errText(e);
  } finally {
    if (gen && gen.exitCode === null) gen.kill('SIGKILL');
    await stopBackend(started);
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return r;
}

// ---------------------------------------------------------------------------------------
// Ping RTT between two QEMU guests

interface PingResult {
  backend: IdlePingBackend;
  ok: boolean;
  error?: string;
  sent?: number;
  received?: number;
  minMs?: number;
  avgMs?: number;
  maxMs?: number;
}

async function pingRtt(backend: IdlePingBackend): Promise<PingResult> {
  const r: PingResult = { backend, ok: false };
  const dir = fs.mkdtempSync(path.join(TMP, `ping-${backend}-`));
  let started: Started | null = null;
  const guests: QemuGuest[] = [];
  try {
    started = await startBackend(backend, XC, 1, dir);
    // QEMU is the socket client, except for OVS dpdkvhostuserclient ports (OVS connects, retrying until QEMU listens)
    const server = started.ovs !== null && opts.ovsPortType === 'dpdkvhostuserclient';
    const sockets = started.sockets;
    const be = started.be;
    const g1 = new QemuGuest({ name: 'g1', socket: sockets[0], mac: '52:54:00:00:00:01', ip: '10.0.0.1/24', peer: '10.0.0.2', mode: 'ping', count: opts.pingCount, interval: opts.pingInterval, server });
    track(g1.proc);
    guests.push(g1);
    const g2 = new QemuGuest({ name: 'g2', socket: sockets[1], mac: '52:54:00:00:00:02', ip: '10.0.0.2/24', peer: '10.0.0.1', mode: 'serve', server });
    track(g2.proc);
    guests.push(g2);
    if (be) await startWhenUp(be, 2, 90000);
    if (started.ovs) await started.ovs.waitLinksUp(90000);
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
    await stopBackend(started);
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
  /** topology: xconnect (2 ports) or a bridge of `ports` ports; `topology` its table label (xc, br2, br8) */
  mode: Mode;
  ports: number;
  /** the row's frontend devargs (Topology.frontend) */
  frontend?: string;
  topology: string;
  size: number;
  queues: number;
  /** the backends measured in this row (bridge rows: no DPDK, no forced log) */
  backends: Backend[];
  dpdk?: Cell;
  ovs?: Cell;
  vf?: Cell;
  vfLog?: Cell;
  vfB?: Cell;
  vfLogB?: Cell;
  vfVsDpdk: number | null;
  vfLogVsDpdk: number | null;
  logOnVsOff: number | null;
  /** vhostfwd / OVS-DPDK: xconnect rows against port-to-port flows, bridge rows against NORMAL */
  vfVsOvs: number | null;
  /** the same ratios between the best rounds of each backend */
  bestVfVsDpdk: number | null;
  bestLogOnVsOff: number | null;
  bestVfVsOvs: number | null;
  /** and between their fast-mode medians */
  fastVfVsDpdk: number | null;
  fastLogOnVsOff: number | null;
  fastVfVsOvs: number | null;
  /** median over every --log-pairs pair of the cell (all rounds) of on / off Mpps, and their count */
  pairedLogOnVsOff: number | null;
  logPairs: number;
  /** the pairs' ratios, each round's in order */
  logPairRatios: number[];
}

/**
 * The backends of a topology's rows. Bridge rows compare switches: DPDK's testpmd forwards
 * port to port and learns nothing, and forced logging is measured on the xconnect rows.
 */
function backendsFor(t: Topology, all: Backend[]): Backend[] {
  // --ab-vlan's B is a bridge with VLAN ports: it has no cross-connect row
  if (t.mode === 'xconnect') return opts.abVlan ? all.filter((b) => !isB(b)) : all;
  return all.filter((b) => b === 'vf' || b === 'vfB' || b === 'ovs');
}

function cellOf(trials: Trial[], size: number): Cell {
  const good = trials.filter((t) => t.ok).map((t) => t.mpps as number);
  const med = median(good);
  const fast = fastMode(good);
  return {
    medianMpps: med, medianGbps: med === null ? null : (med * size * 8) / 1000, bestMpps: good.length > 0 ? Math.max(...good) : null,
    fastMpps: fast.median, fastRounds: fast.rounds, roundsMpps: good, ok: good.length, failed: trials.length - good.length,
  };
}

function summarize(trials: Trial[], backends: Backend[]): Row[] {
  const rows: Row[] = [];
  for (const topo of opts.topologies) {
    const bs = backendsFor(topo, backends);
    for (const size of opts.sizes) {
      for (const queues of opts.queues) {
        const mine = trials.filter((t) => t.mode === topo.mode && t.ports === topo.ports && t.frontend === topo.frontend && t.size === size && t.queues === queues);
        const row = { mode: topo.mode, ports: topo.ports, ...(topo.frontend ? { frontend: topo.frontend } : {}), topology: topologyLabel(topo), size, queues, backends: bs } as Row;
        for (const b of bs) row[b] = cellOf(mine.filter((t) => t.backend === b), size);
        const dpdk = compareCells(row.vf, row.dpdk);
        const ovs = compareCells(row.vf, row.ovs);
        const log = compareCells(row.vfLog, row.vf);
        Object.assign(row, {
          vfVsDpdk: dpdk.median, bestVfVsDpdk: dpdk.best, fastVfVsDpdk: dpdk.fast,
          vfVsOvs: ovs.median, bestVfVsOvs: ovs.best, fastVfVsOvs: ovs.fast,
          logOnVsOff: log.median, bestLogOnVsOff: log.best, fastLogOnVsOff: log.fast,
          vfLogVsDpdk: compareCells(row.vfLog, row.dpdk).median,
        });
        const pairs = mine.filter((t) => t.ok && t.backend === 'vfLog').flatMap((t) => t.logPairs ?? []);
        row.logPairRatios = pairs.map((p) => p.on / p.off);
        row.logPairs = pairs.length;
        row.pairedLogOnVsOff = median(row.logPairRatios);
        rows.push(row);
      }
    }
  }
  return rows;
}

const IDLE_NAME: Record<IdlePingBackend, string> = { vf: 'vhostfwd', dpdk: 'DPDK    ', ovs: 'OVS-DPDK' };

const f = (v: number | null | undefined, d = 2): string => (v === null || v === undefined ? 'n/a' : v.toFixed(d));

/** One table column: its heading, and its cell for a row ('-' where the row does not measure it). */
interface Column {
  head: string;
  /** the backends the column needs in the run and in the row */
  needs: Backend[];
  cell: (r: Row) => string;
}

function columns(paired: boolean): Column[] {
  const c = (head: string, needs: Backend[], cell: (r: Row) => string): Column => ({ head, needs, cell });
  return [
    c('DPDK Mpps', ['dpdk'], (r) => f(r.dpdk?.medianMpps, 3)),
    c('Gbps', ['dpdk'], (r) => f(r.dpdk?.medianGbps, 2)),
    c('OVS Mpps', ['ovs'], (r) => f(r.ovs?.medianMpps, 3)),
    c('Gbps', ['ovs'], (r) => f(r.ovs?.medianGbps, 2)),
    c('vf Mpps', ['vf'], (r) => f(r.vf?.medianMpps, 3)),
    c('Gbps', ['vf'], (r) => f(r.vf?.medianGbps, 2)),
    c('vf+log Mpps', ['vfLog'], (r) => f(r.vfLog?.medianMpps, 3)),
    c('Gbps', ['vfLog'], (r) => f(r.vfLog?.medianGbps, 2)),
    c('vf/DPDK', ['vf', 'dpdk'], (r) => f(r.vfVsDpdk)),
    c('vf/OVS', ['vf', 'ovs'], (r) => f(r.vfVsOvs)),
    c('vf+log/DPDK', ['vfLog', 'dpdk'], (r) => f(r.vfLogVsDpdk)),
    c('log on/off', ['vf', 'vfLog'], (r) => f(r.logOnVsOff)),
    c('best vf/DPDK', ['vf', 'dpdk'], (r) => f(r.bestVfVsDpdk)),
    c('best vf/OVS', ['vf', 'ovs'], (r) => f(r.bestVfVsOvs)),
    c('best log on/off', ['vf', 'vfLog'], (r) => f(r.bestLogOnVsOff)),
    c('fast vf/DPDK', ['vf', 'dpdk'], (r) => f(r.fastVfVsDpdk)),
    c('fast vf/OVS', ['vf', 'ovs'], (r) => f(r.fastVfVsOvs)),
    c('fast log on/off', ['vf', 'vfLog'], (r) => f(r.fastLogOnVsOff)),
    ...(paired ? [c('paired log on/off', ['vfLog'], (r) => `${f(r.pairedLogOnVsOff, 3)} (${r.logPairs})`)] : []),
  ];
}

/** CPU at partial load: per level, each backend's rate, CPU % and CPU per Mpkt, and vhostfwd's CPU per packet over each other backend's. */
function loadTable(load: LoadResult[]): string[] {
  const ok = load.filter((l) => l.ok);
  const levels = ok[0]?.levels.map((l) => l.rate) ?? [];
  const head = ['offered pps', ...ok.flatMap((l) => [`${IDLE_NAME[l.backend].trim()} kpps`, 'CPU %', 'CPU ms/Mpkt']), ...ok.filter((l) => l.backend !== 'vf').map((l) => `vf/${IDLE_NAME[l.backend].trim()} CPU/pkt`)];
  const vf = ok.find((l) => l.backend === 'vf');
  const lines = [head];
  for (const [i, lv] of levels.entries()) {
    const row = [lv === 0 ? 'peak' : `${lv / 1000}k`];
    for (const l of ok) {
      const x = l.levels[i];
      row.push(f(x.pps / 1000, 1), f(x.cpuPercent, 1), x.cpuSecPerMpkt === null ? '-' : f(x.cpuSecPerMpkt * 1000, 0));
    }
    for (const l of ok.filter((b) => b.backend !== 'vf')) {
      const a = vf?.levels[i]?.cpuSecPerMpkt ?? null;
      const b = l.levels[i]?.cpuSecPerMpkt ?? null;
      row.push(a !== null && b !== null && b > 0 ? f(a / b, 2) : '-');
    }
    lines.push(row);
  }
  const w = head.map((_, i) => Math.max(...lines.map((l) => l[i].length)));
  const fmt = (l: string[]): string => l.map((c, i) => c.padStart(w[i])).join('  ');
  const peak = ok.map((l) => `${IDLE_NAME[l.backend].trim()} ${f((l.levels[0]?.pps ?? 0) / 1000, 1)}`).join(', ');
  return [
    '',
    `CPU at partial load (xconnect, 64 B, one way; bench/gen.js, our paced TypeScript frontend, on core ${planFor(1).frontend[1]}; ${opts.loadSeconds} s a level):`,
    fmt(lines[0]), w.map((n) => '-'.repeat(n)).join('  '), ...lines.slice(1).map(fmt),
    `offered: frames per second from the generator, the same for every backend; peak: as fast as the generator goes through that backend (kpps received: ${peak}): the generator, a JavaScript frontend, sets that peak, far below the testpmd loop's rates above, so these are partial loads in absolute terms, not percentages of a backend's peak. CPU %: the backend process, % of one core; ms/Mpkt: its CPU time per million packets received; vf/X: vhostfwd's CPU per packet over X's.`,
    ...load.filter((l) => !l.ok).map((l) => `load ${IDLE_NAME[l.backend].trim()}: FAILED (${l.error})`),
  ];
}

function table(rows: Row[], backends: Backend[], idle: IdleResult[], ping: PingResult[], load: LoadResult[]): string {
  const has = (b: Backend): boolean => backends.includes(b);
  const paired = has('vfLog') && opts.logPairs > 0;
  const cols = columns(paired).filter((c) => c.needs.every(has));
  const head = ['mode', 'size', 'q', ...cols.map((c) => c.head), 'rounds ok (fast)'];
  const lines: string[][] = [head];
  for (const r of rows) {
    const l = [r.topology, String(r.size), String(r.queues)];
    for (const c of cols) l.push(c.needs.every((b) => r.backends.includes(b)) ? c.cell(r) : '-');
    l.push(r.backends.map((b) => `${b}:${r[b]?.ok ?? 0}/${(r[b]?.ok ?? 0) + (r[b]?.failed ?? 0)}(${r[b]?.fastRounds ?? 0})`).join(' '));
    lines.push(l);
  }
  const w = head.map((_, i) => Math.max(...lines.map((l) => l[i].length)));
  const fmt = (l: string[]): string => l.map((c, i) => (i === l.length - 1 ? c : c.padStart(w[i]))).join('  ');
  const out = [fmt(lines[0]), w.map((n) => '-'.repeat(n)).join('  '), ...lines.slice(1).map(fmt)];
  if (opts.ovsNote) out.push(`${opts.ovsNote}.`);
  out.push('Mpps: median over rounds of packets through the backend (both directions summed); Gbps = Mpps x size x 8 / 1000 (frame bytes, no 20-byte preamble/IFG).');
  if (opts.scaling) {
    const plans = opts.queues.map((q) => ({ q, p: planFor(q) }));
    out.push(`scaling: one forwarding core per queue pair for every backend: ${plans.map(({ q, p }) => `${q} pair(s) on cores ${p.backend.join(',')}`).join('; ')}.`);
    const over = plans.filter(({ p }) => p.oversubscribed).map(({ q }) => q);
    if (over.length > 0) out.push(`OVERSUBSCRIBED (${NCPU} cores): ${over.join(', ')} pair(s) share cores with the frontend: a functional run, not a scaling measurement.`);
  }
  if (opts.topologies.some((t) => t.mode === 'xconnect')) out.push(`xc: 2 ports cross-connected: vhostfwd xconnect, DPDK testpmd io forward${has('ovs') ? ', OVS-DPDK flows in_port=1,actions=output:2 and back' : ''}; frontend io forward.`);
  if (opts.topologies.some((t) => t.mode === 'bridge')) out.push(`brN: N ports on a learning switch: vhostfwd bridge${has('ovs') ? ' vs OVS-DPDK NORMAL' : ''}, unicast after learning (frontend mac forward, port i sends to its partner i^1; rxPerTx in the JSON ~1 = nothing flooded); '-': not measured in that row (DPDK is not a switch; forced log only on xc).`);
  out.push('best: ratio of the best rounds (noise on a shared machine only slows a trial down; every backend shows a slow mode at random, see bench/NOTES.md).');
  out.push(`fast: ratio of the medians of each backend's fast-mode rounds (>= ${FAST_FRACTION} x its best; their count in parentheses under "rounds ok").`);
  if (paired) out.push(`paired: median over the cell's log-off / log-on window pairs (${opts.logWindow} s each, adjacent in one vhostfwd+log trial, forced logging paused and resumed by SIGUSR2) of on / off; pair count in parentheses.`);
  out.push(...abLines(rows, has));
  if (load.length > 0) out.push(...loadTable(load));
  for (const i of idle) {
    out.push(`idle CPU ${IDLE_NAME[i.backend]}: ${i.ok ? `${f(i.cpuPercent, 2)} % of one core over ${f(i.seconds, 1)} s` : `FAILED (${i.error})`}  [${i.note}]`);
  }
  for (const p of ping) {
    out.push(`ping RTT ${IDLE_NAME[p.backend]}: ${p.ok ? `min/avg/max ${f(p.minMs, 3)}/${f(p.avgMs, 3)}/${f(p.maxMs, 3)} ms, ${p.received}/${p.sent} answered` : `FAILED (${p.error})`}`);
  }
  return out.join('\n');
}

/** --ab-cli: one line per cell comparing build B with this one. */
function abLines(rows: Row[], has: (b: Backend) => boolean): string[] {
  const out: string[] = [];
  for (const [a, b] of [['vf', 'vfB'], ['vfLog', 'vfLogB']] as Array<[Backend, Backend]>) {
    if (!has(a) || !has(b)) continue;
    for (const r of rows) {
      const ca = r[a];
      const cb = r[b];
      if (!ca || !cb) continue;
      const x = compareCells(cb, ca);
      out.push(`A/B ${r.topology} ${r.size} B q${r.queues} ${BACKEND_NAME[a]}: A ${f(ca.medianMpps, 3)} / B ${f(cb.medianMpps, 3)} Mpps median (B/A ${f(x.median, 3)}), fast-mode median A ${f(ca.fastMpps, 3)} (${ca.fastRounds}) / B ${f(cb.fastMpps, 3)} (${cb.fastRounds}) (B/A ${f(x.fast, 3)}), best A ${f(ca.bestMpps, 3)} / B ${f(cb.bestMpps, 3)} (B/A ${f(x.best, 3)}); rounds A ${ca.roundsMpps.map((v) => v.toFixed(2)).join(' ')} | B ${cb.roundsMpps.map((v) => v.toFixed(2)).join(' ')}`);
    }
  }
  return out;
}

function chart(rows: Row[], backends: Backend[]): string {
  const colors: Record<Backend, string> = { dpdk: '#4c72b0', ovs: '#937860', vf: '#dd8452', vfLog: '#c44e52', vfB: '#55a868', vfLogB: '#8172b3' };
  const multiQ = opts.queues.length > 1;
  const multiT = opts.topologies.length > 1;
  return barChart({
    title: `Throughput through the backend: vhostfwd vs ${backends.filter((b) => b === 'dpdk' || b === 'ovs').map((b) => BACKEND_NAME[b]).join(' and ') || 'itself'}`,
    note: `median of ${opts.rounds} alternating round(s) of ${opts.duration} s; testpmd virtio-user loop; ${os.cpus().length} CPUs, one per side`,
    yLabel: 'Mpps (both directions)',
    series: backends.map((b) => ({ name: BACKEND_NAME[b], color: colors[b] })),
    groups: rows.map((r) => ({ label: `${multiT ? `${r.topology} ` : ''}${r.size} B${multiQ ? `, ${r.queues}q` : ''}`, values: backends.map((b) => r[b]?.medianMpps ?? null) })),
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
  // at most two DPDK processes at a time: the frontend and one backend (a testpmd, or OVS)
  const beMb = opts.ovs ? Math.max(TESTPMD_MEM_MB, opts.ovsSocketMemMb) : TESTPMD_MEM_MB;
  const need = (TESTPMD_MEM_MB + beMb) / 2 + 16;
  if (free < need) throw new Error(`only ${free} free 2 MiB hugepages, need about ${need} (frontend testpmd of ${TESTPMD_MEM_MB} MiB and a backend of ${beMb} MiB): run scripts/install-peers.sh`);
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

/** Every trial, one at a time: per topology, size and queue count, the backends alternate inside each round. */
async function throughputTrials(backends: Backend[]): Promise<Trial[]> {
  const plan = opts.topologies.map((t) => ({ t, bs: backendsFor(t, backends) }));
  const total = plan.reduce((s, p) => s + p.bs.length, 0) * opts.sizes.length * opts.queues.length * opts.rounds;
  // e.g. --backends dpdk --modes bridge: DPDK is not a switch, so nothing would be measured
  if (total === 0) throw new Error(`nothing to measure: no backend of ${backends.join(', ')} runs in the rows ${opts.topologies.map(topologyLabel).join(', ')} (bridge rows: vhostfwd and ovs)`);
  process.stderr.write(`bench: ${total} throughput trials (${plan.map((p) => `${topologyLabel(p.t)}: ${p.bs.join(', ')}`).join('; ')} alternating; sizes ${opts.sizes.join(',')}; queues ${opts.queues.join(',')}; ${opts.rounds} round(s) of ${opts.duration} s after ${opts.warmup} s warm-up)\n`);
  if (opts.ovsNote) process.stderr.write(`bench: ${opts.ovsNote}\n`);
  const trials: Trial[] = [];
  let n = 0;
  for (const { t: topo, bs } of plan) {
    for (const size of opts.sizes) {
      for (const queues of opts.queues) {
        for (let round = 1; round <= opts.rounds; round++) {
          for (const b of bs) {
            n++;
            for (let attempt = 0; attempt <= opts.retries; attempt++) {
              const t = await throughputTrial(b, topo, size, queues, round, attempt);
              trials.push(t);
              process.stderr.write(`  [${n}/${total}] ${topologyLabel(topo)} ${size} B q${queues} round ${round}${attempt ? ` retry ${attempt}` : ''} ${BACKEND_NAME[b].padEnd(22)} ${t.ok ? `${f(t.mpps, 3)} Mpps ${f(t.gbps, 2)} Gbps${t.rxMissed ? ` missed ${t.rxMissed}` : ''}${t.errors ? ` errors ${t.errors}` : ''}${t.rxPerTx !== undefined && Math.abs(t.rxPerTx - 1) > 0.01 ? ` rx/tx ${t.rxPerTx}` : ''}` : `FAILED: ${t.error}`}\n`);
              if (t.ok) break;
            }
          }
        }
      }
    }
  }
  return trials;
}

function idlePingBackends(): IdlePingBackend[] {
  return [...(opts.vhostfwd ? ['vf' as const] : []), ...(opts.dpdk ? ['dpdk' as const] : []), ...(opts.ovs ? ['ovs' as const] : [])];
}

async function main(): Promise<void> {
  const started = new Date();
  const pre = await preflight();
  const backends: Backend[] = [];
  if (opts.vhostfwd && opts.log !== 'on') backends.push('vf');
  if (opts.vhostfwd && opts.log !== 'on' && (opts.abCli || opts.abVlan)) backends.push('vfB');
  if (opts.vhostfwd && opts.log !== 'off') backends.push('vfLog');
  if (opts.vhostfwd && opts.log !== 'off' && (opts.abCli || opts.abVlan)) backends.push('vfLogB');
  if (opts.dpdk) backends.push('dpdk');
  if (opts.ovs) backends.push('ovs');
  if (backends.length === 0) throw new Error('no backend to measure (--backends, --log, --no-dpdk)');
  const trials = await throughputTrials(backends);

  /** idle/ping attempts that failed before a successful retry (reported, not dropped) */
  const failedOnce: string[] = [];
  const idle: IdleResult[] = [];
  if (opts.idle) {
    for (const b of idlePingBackends()) {
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
  const load: LoadResult[] = [];
  if (opts.load) {
    for (const b of idlePingBackends()) {
      let r = await partialLoad(b);
      for (let a = 1; !r.ok && a <= opts.retries; a++) {
        process.stderr.write(`  load ${b}: FAILED (${r.error}); retrying\n`);
        failedOnce.push(`load ${b} (retried): ${r.error}`);
        r = await partialLoad(b);
      }
      load.push(r);
      process.stderr.write(`  load ${b}: ${r.ok ? r.levels.map((l) => `${l.rate ? `${l.rate / 1000}k` : 'peak'}: ${f(l.pps / 1000, 1)} kpps ${f(l.cpuPercent, 1)} %`).join(', ') : `FAILED: ${r.error}`}\n`);
    }
  }
  const ping: PingResult[] = [];
  if (opts.ping) {
    for (const b of idlePingBackends()) {
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
  const text = table(rows, backends, idle, ping, load);
  process.stdout.write('\n' + text + '\n');

  const failures = [
    ...trials.filter((t) => !t.ok).map((t) => `throughput ${t.backend} ${t.mode}${t.mode === 'bridge' ? t.ports : ''} ${t.size} B q${t.queues} round ${t.round} attempt ${t.attempt}: ${t.error}`),
    ...failedOnce,
    ...idle.filter((i) => !i.ok).map((i) => `idle ${i.backend}: ${i.error}`),
    ...load.filter((l) => !l.ok).map((l) => `load ${l.backend}: ${l.error}`),
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
      ovs: opts.ovs ? { version: await ovsVersion(), portType: opts.ovsPortType, socketMemMb: opts.ovsSocketMemMb } : null,
      ovsNote: opts.ovsNote,
      loadAvgBefore: pre.load,
      loadAvgAfter: os.loadavg(),
      waitedForOtherProcessesS: pre.waitedForeignS,
      options: opts,
      // per queue count: frontend / DPDK backend testpmd [main, ...forwarding], the backend's
      // forwarding cores (vhostfwd workers, DPDK lcores, OVS PMDs), OVS's other threads
      cpuPlans: Object.fromEntries(opts.queues.map((q) => [q, planFor(q)])),
      definitions: {
        mpps: 'sum over both frontend ports of delta RX-packets / measured seconds, after the warm-up: packets that crossed the backend (both directions)',
        gbps: 'mpps * size * 8 / 1000: frame bytes only (size = frame without CRC), NOT counting the 20-byte Ethernet preamble + inter-frame gap',
        median: 'median over successful rounds; backends alternate inside each round',
        topology: 'xconnect: 2 ports, vhostfwd xconnect / DPDK testpmd io / OVS-DPDK flows in_port=1,actions=output:2 and back, frontend io forward; bridge (ports N): vhostfwd bridge / OVS-DPDK NORMAL, frontend mac forward with port i sending to port i^1 (unicast after learning)',
        vfVsOvs: 'vf / ovs medianMpps (bestVfVsOvs, fastVfVsOvs: best rounds, fast-mode medians), same topology',
        rxPerTx: 'frontend delta RX / delta TX in the measured window: ~1 when each packet reached one port, > 1 when the switch flooded',
        best: 'best (highest) successful round per backend; bestVfVsDpdk and bestLogOnVsOff compare those',
        fast: `fastMpps: median of the rounds >= ${FAST_FRACTION} x bestMpps (the VM's slow mode halves whole trials at random: bench/NOTES.md), fastRounds their count; fastVfVsDpdk and fastLogOnVsOff compare those`,
        vfLog: 'vhostfwd run with --force-log: dirty pages logged into a backend-allocated log (testpmd virtio-user sends no SET_LOG_BASE), the used rings too',
        paired: 'pairedLogOnVsOff: median over the cell\'s logPairs (trials[].logPairs: after each vfLog trial\'s measured window, windows of logWindow s with forced logging paused and resumed by SIGUSR2 in the same process, off-on / on-off alternating) of on / off Mpps',
      },
    },
    throughput: rows,
    trials,
    idleCpu: idle,
    partialLoad: load,
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
  const missing = rows.some((r) => r.backends.some((b) => (r[b]?.ok ?? 0) === 0)) || idle.some((i) => !i.ok) || load.some((l) => !l.ok) || ping.some((p) => !p.ok);
  if (missing) process.exitCode = 1;
}

void main().catch((e) => {
  process.stderr.write(`bench: ${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
