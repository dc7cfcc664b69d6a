/**
 * OVS-DPDK 3.1 (Debian's openvswitch-switch-dpdk) as a bench backend: its own ovsdb-server
 * and ovs-vswitchd, started for one trial in a private directory (database, run dir, logs,
 * vhost-user sockets) and stopped after it. Nothing of the system's OVS is used or touched:
 * the DPDK build of ovs-vswitchd is run by its path (no update-alternatives), and it runs in
 * a network namespace of its own (`unshare --net`), because the userspace datapath creates
 * tap devices (the bridge's internal port, `ovs-netdev`) that a killed ovs-vswitchd would
 * leave in the host's namespace; a private one goes away with the process.
 */
import { ChildProcess, execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { OvsPortType, Topology, ovsBridgeArgs, ovsFlows, ovsOtherConfig, ovsPortName } from './topology';

const run = promisify(execFile);

const VSWITCHD = '/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk';
const SCHEMA = '/usr/share/openvswitch/vswitch.ovsschema';
const TOOLS = ['ovsdb-tool', 'ovsdb-server', 'ovs-vsctl', 'ovs-ofctl', 'ovs-appctl', 'unshare'];
const BRIDGE = 'br0'; // in the private namespace no other br0 can collide

/** The user asked for OVS (`--backends ...,ovs`) and it is not installed. */
export class OvsMissingError extends Error {
  constructor(missing: string[]) {
    super(`OVS-DPDK requested but not installed (missing: ${missing.join(', ')}): apt-get install openvswitch-switch-dpdk, or run scripts/install-peers.sh as root`);
    this.name = 'OvsMissingError';
  }
}

function onPath(cmd: string): boolean {
  return (process.env.PATH ?? '').split(':').some((d) => d !== '' && fs.existsSync(path.join(d, cmd)));
}

/** What of OVS-DPDK is missing on this machine (empty: installed). */
export function ovsMissing(): string[] {
  const missing = [VSWITCHD, SCHEMA].filter((f) => !fs.existsSync(f));
  return missing.concat(TOOLS.filter((t) => !onPath(t)));
}

/** `ovs-vswitchd --version`'s version, or null. */
export async function ovsVersion(): Promise<string | null> {
  try {
    const { stdout } = await run(VSWITCHD, ['--version'], { timeout: 10000 });
    return /\(Open vSwitch\) (\S+)/.exec(stdout)?.[1] ?? null;
  } catch {
    return null;
  }
}

export interface OvsOptions {
  /** private directory (removed by the caller after stop()) */
  dir: string;
  topology: Topology;
  portType: OvsPortType;
  /** PMD threads' cores (one per queue pair when scaling) */
  pmdCpus: number[];
  mainCpu: number;
  socketMemMb: number;
  filePrefix: string;
  /** sockets for dpdkvhostuserclient (the frontend is the server there) */
  clientSockets?: string[];
  /** called with every long-lived child, so the bench kills it on any exit */
  track: (p: ChildProcess) => void;
}

/** A child whose exit we can await, with the tail of its output for error messages. */
class Daemon {
  output = '';
  readonly exited: Promise<void>;
  constructor(readonly proc: ChildProcess) {
    const add = (b: Buffer): void => {
      this.output = (this.output + b.toString()).slice(-16384);
    };
    proc.stdout?.on('data', add);
    proc.stderr?.on('data', add);
    this.exited = new Promise((r) => proc.on('exit', () => r()));
  }

  get running(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** SIGTERM, SIGKILL after `graceMs`; resolves when it is gone. */
  async stop(graceMs = 3000): Promise<void> {
    if (!this.running) return;
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(t);
  }
}

export class OvsDpdk {
  private db: Daemon | null = null;
  private vswitchd: Daemon | null = null;
  /** the sockets the frontend attaches to, port order (OpenFlow port i + 1) */
  readonly sockets: string[];

  private constructor(private readonly o: OvsOptions) {
    const n = o.topology.ports;
    this.sockets = o.portType === 'dpdkvhostuser'
      ? Array.from({ length: n }, (_, i) => path.join(o.dir, ovsPortName(i)))
      : (o.clientSockets ?? []).slice(0, n);
    if (this.sockets.length !== n) throw new Error(`OVS: ${n} ports need ${n} client sockets`);
  }

  /** Database, ovs-vswitchd with DPDK, the bridge, its ports and flows; on failure stops what it started. */
  static async start(o: OvsOptions): Promise<OvsDpdk> {
    const ovs = new OvsDpdk(o);
    try {
      await ovs.startDb();
      await ovs.startVswitchd();
      await ovs.vsctl(ovsBridgeArgs(BRIDGE, o.topology.ports, o.portType, (i) => ovs.sockets[i]));
      await ovs.setFlows();
      await ovs.checkPmdCore();
    } catch (e) {
      const tail = ovs.logTail();
      await ovs.stop();
      throw new Error(`OVS start: ${(e as Error).message}${tail ? `\n${tail}` : ''}`);
    }
    return ovs;
  }

  private get env(): NodeJS.ProcessEnv {
    const d = this.o.dir;
    // every default path of the OVS tools into the private directory (run dir: pid files,
    // control sockets, dpdkvhostuser sockets; db; logs; ssl/system ids)
    return { ...process.env, OVS_RUNDIR: d, OVS_DBDIR: d, OVS_LOGDIR: d, OVS_SYSCONFDIR: d };
  }

  private file(name: string): string {
    return path.join(this.o.dir, name);
  }

  private async tool(cmd: string, args: string[], timeoutMs = 30000): Promise<string> {
    try {
      const { stdout } = await run(cmd, args, { env: this.env, timeout: timeoutMs });
      return stdout;
    } catch (e) {
      const err = e as Error & { stderr?: string };
      throw new Error(`${cmd} ${args.join(' ')}: ${(err.stderr ?? '').trim() || err.message}`);
    }
  }

  /** ovs-vsctl on our database; without --no-wait it returns once ovs-vswitchd applied the change. */
  private vsctl(args: string[], wait = true): Promise<string> {
    return this.tool('ovs-vsctl', [`--db=unix:${this.file('db.sock')}`, '--timeout=30', ...(wait ? [] : ['--no-wait']), ...args]);
  }

  private spawnDaemon(cmd: string, args: string[]): Daemon {
    const p = spawn(cmd, args, { env: this.env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.o.track(p);
    return new Daemon(p);
  }

  private async waitFile(f: string, d: Daemon, what: string, timeoutMs = 10000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (!fs.existsSync(f)) {
      if (!d.running) throw new Error(`${what} exited (${d.proc.exitCode ?? d.proc.signalCode}): ${d.output.slice(-1500)}`);
      if (Date.now() > end) throw new Error(`${what}: ${f} not created in ${timeoutMs} ms`);
      await sleep(20);
    }
  }

  private async startDb(): Promise<void> {
    fs.mkdirSync(this.o.dir, { recursive: true });
    await this.tool('ovsdb-tool', ['create', this.file('conf.db'), SCHEMA]);
    // in the foreground (no --detach): a child of ours, killed with the bench
    this.db = this.spawnDaemon('ovsdb-server', [
      this.file('conf.db'), `--remote=punix:${this.file('db.sock')}`, `--pidfile=${this.file('ovsdb-server.pid')}`,
      `--unixctl=${this.file('ovsdb-server.ctl')}`, `--log-file=${this.file('ovsdb-server.log')}`,
    ]);
    await this.waitFile(this.file('db.sock'), this.db, 'ovsdb-server');
    await this.vsctl(['init'], false);
    await this.vsctl(['set', 'Open_vSwitch', '.', ...ovsOtherConfig(this.o)], false);
  }

  private async startVswitchd(): Promise<void> {
    this.vswitchd = this.spawnDaemon('unshare', [
      '--net', '--', VSWITCHD, `unix:${this.file('db.sock')}`, `--pidfile=${this.file('ovs-vswitchd.pid')}`,
      `--unixctl=${this.file('ovs-vswitchd.ctl')}`, `--log-file=${this.file('ovs-vswitchd.log')}`,
    ]);
    await this.waitFile(this.file('ovs-vswitchd.ctl'), this.vswitchd, 'ovs-vswitchd', 30000);
  }

  private async setFlows(): Promise<void> {
    const mgmt = `unix:${this.file(`${BRIDGE}.mgmt`)}`;
    await this.tool('ovs-ofctl', ['del-flows', mgmt]);
    for (const f of ovsFlows(this.o.topology)) await this.tool('ovs-ofctl', ['add-flow', mgmt, f]);
  }

  /** The PMD threads must poll on the backend cores, as DPDK's lcores and vhostfwd's workers do. */
  private async checkPmdCore(): Promise<void> {
    const out = await this.appctl(['dpif-netdev/pmd-rxq-show']);
    const cores = [...out.matchAll(/pmd thread numa_id \d+ core_id (\d+)/g)].map((m) => Number(m[1])).sort((a, b) => a - b);
    const want = [...this.o.pmdCpus].sort((a, b) => a - b);
    if (cores.join(',') !== want.join(',')) throw new Error(`OVS PMD threads on cores [${cores.join(',')}], expected [${want.join(',')}]:\n${out}`);
  }

  private appctl(args: string[]): Promise<string> {
    return this.tool('ovs-appctl', ['-t', this.file('ovs-vswitchd.ctl'), ...args], 10000);
  }

  get pid(): number | null {
    return this.vswitchd?.proc.pid ?? null;
  }

  /**
   * Every port's vhost device up (the frontend connected and its rings started). Before that
   * OVS drops what it would send to the port, and packets lost from testpmd's tx_first loop
   * are lost for the whole trial.
   */
  async waitLinksUp(timeoutMs = 15000): Promise<void> {
    const end = Date.now() + timeoutMs;
    const names = this.sockets.map((_, i) => ovsPortName(i));
    for (;;) {
      const out = await this.vsctl(['--format=csv', '--data=bare', '--no-headings', '--columns=name,link_state', 'list', 'Interface'], false);
      const up = new Set(out.split('\n').map((l) => l.split(',')).filter((c) => c[1] === 'up').map((c) => c[0]));
      if (names.every((n) => up.has(n))) return;
      if (!this.vswitchd?.running) throw new Error(`ovs-vswitchd exited: ${this.logTail()}`);
      if (Date.now() > end) throw new Error(`OVS: ports not up in ${timeoutMs} ms (up: ${[...up].join(',') || 'none'})`);
      await sleep(50);
    }
  }

  /** Per-port counters as OVS sees them (drops show where the loop lost packets). */
  async interfaceStats(): Promise<Record<string, Record<string, number>>> {
    const out = await this.vsctl(['--format=csv', '--data=bare', '--no-headings', '--columns=name,statistics', 'list', 'Interface'], false);
    const stats: Record<string, Record<string, number>> = {};
    for (const line of out.split('\n')) {
      const m = /^"?([^,"]+)"?,"?(.*?)"?$/.exec(line.trim());
      if (!m || !m[1].startsWith('vhu')) continue;
      stats[m[1]] = Object.fromEntries([...m[2].matchAll(/(\w+)=(\d+)/g)].map((x) => [x[1], Number(x[2])]));
    }
    return stats;
  }

  /** The last lines of ovs-vswitchd's log (or its output), for error messages. */
  logTail(lines = 8): string {
    let text = this.vswitchd?.output ?? '';
    try {
      text = fs.readFileSync(this.file('ovs-vswitchd.log'), 'utf8');
    } catch {
      // not written yet
    }
    return text.split('\n').filter((l) => l.trim() !== '').slice(-lines).join('\n');
  }

  /** `exit` through the control socket (a clean DPDK shutdown), else signals; then the database. */
  async stop(): Promise<void> {
    const v = this.vswitchd;
    if (v?.running) {
      try {
        await this.appctl(['exit']);
        await Promise.race([v.exited, sleep(5000)]);
      } catch {
        // signals below
      }
      await v.stop();
    }
    await this.db?.stop();
  }
}
