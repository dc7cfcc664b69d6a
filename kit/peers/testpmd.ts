/**
 * DPDK 22.11 dpdk-testpmd driven through its interactive prompt: as a vhost-user frontend
 * (net_virtio_user ports, the traffic generator) or as the reference backend (net_vhost).
 * Used by the real-peer tests and by bench/.
 */
import { ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

export interface PortStats {
  port: number;
  rxPackets: number;
  rxMissed: number;
  rxBytes: number;
  rxErrors: number;
  txPackets: number;
  txErrors: number;
  txBytes: number;
}

export interface TestpmdOptions {
  /** 'frontend': net_virtio_user ports on `sockets`; 'backend': net_vhost ports creating `sockets` */
  role: 'frontend' | 'backend';
  sockets: string[];
  queues?: number;
  /** frontend: the backend is the socket client (virtio_user server=1); backend: net_vhost client=1 */
  peerIsClient?: boolean;
  weAreClient?: boolean;
  txpkts?: number;
  /** lcores: first is the main lcore (prompt), the rest forward */
  lcores: number[];
  prefix: string;
  memMb?: number;
  burst?: number;
  /** extra testpmd application arguments (after `--`), e.g. --total-num-mbufs (bench/) */
  extraArgs?: string[];
  /** testpmd forward mode (default io; bench/'s bridge rows use mac) */
  forwardMode?: string;
  /** frontend: more virtio-user devargs for every port, e.g. `mrg_rxbuf=0,in_order=0` (bench --virtio-user) */
  devargs?: string;
  /** frontend: each virtio-user port's MAC (`mac=` devarg), port order */
  macs?: string[];
  /** destination MAC per port (`--eth-peer`), used by the mac and txonly modes, port order */
  ethPeers?: string[];
  /** more EAL --vdev ports after the vhost-user ones, e.g. `net_af_packet0,iface=eth1` (bench/uplink.ts) */
  vdevs?: string[];
}

export class Testpmd {
  readonly proc: ChildProcess;
  readonly args: string[];
  output = '';
  private exited: Promise<number | null>;

  constructor(readonly o: TestpmdOptions) {
    const q = o.queues ?? 1;
    const vdevs = o.sockets.flatMap((s, i) =>
      o.role === 'frontend'
        ? ['--vdev', `net_virtio_user${i},path=${s},queues=${q}${o.peerIsClient ? ',server=1' : ''}${o.macs?.[i] ? `,mac=${o.macs[i]}` : ''}${o.devargs ? `,${o.devargs}` : ''}`]
        : ['--vdev', `net_vhost${i},iface=${s},queues=${q}${o.weAreClient ? ',client=1' : ''}`],
    );
    this.args = [
      '-l', o.lcores.join(','), '--main-lcore', String(o.lcores[0]), '-n', '1', '--no-pci',
      `--file-prefix=${o.prefix}`, '-m', String(o.memMb ?? 512),
      ...(o.role === 'frontend' ? ['--single-file-segments'] : []),
      ...vdevs,
      ...(o.vdevs ?? []).flatMap((v) => ['--vdev', v]),
      '--', '-i', `--forward-mode=${o.forwardMode ?? 'io'}`, `--nb-cores=${Math.max(1, o.lcores.length - 1)}`,
      `--rxq=${q}`, `--txq=${q}`,
      ...(o.txpkts ? [`--txpkts=${o.txpkts}`] : []),
      ...(o.burst ? [`--burst=${o.burst}`] : []),
      ...(o.ethPeers ?? []).map((m, i) => `--eth-peer=${i},${m}`),
      ...(o.extraArgs ?? []),
    ];
    // Line-buffered stdout: testpmd's printf output to a pipe would otherwise sit in a
    // 4 KiB buffer while its prompt (written directly) arrives.
    this.proc = spawn('stdbuf', ['-oL', '-eL', 'dpdk-testpmd', ...this.args], { stdio: ['pipe', 'pipe', 'pipe'] });
    const add = (b: Buffer) => {
      this.output += b.toString();
    };
    this.proc.stdout?.on('data', add);
    this.proc.stderr?.on('data', add);
    this.exited = new Promise((r) => this.proc.on('exit', (code) => r(code)));
  }

  get commandLine(): string {
    return `dpdk-testpmd ${this.args.join(' ')}`;
  }

  /** Wait for the prompt (ports configured and started). */
  async ready(timeoutMs = 30000): Promise<void> {
    // stdout and stderr share `output`: driver messages (VHOST_CONFIG ..., promiscuous-mode
    // errors) can land between "Checking link statuses..." and "Done", or inside the prompt.
    await this.waitFor(/Checking link statuses\.\.\.[\s\S]*?Done/, timeoutMs);
    try {
      await this.waitFor(/testpmd> /, 3000);
    } catch (e) {
      if (this.proc.exitCode !== null) throw e;
      await this.cmd('', timeoutMs); // a fresh, unbroken prompt
    }
  }

  async waitFor(re: RegExp, timeoutMs: number, from = 0): Promise<RegExpMatchArray> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const m = this.output.slice(from).match(re);
      if (m) return m;
      if (this.proc.exitCode !== null) throw new Error(`testpmd exited (${this.proc.exitCode}) before ${re}:\n${this.output.slice(-3000)}`);
      if (Date.now() > end) throw new Error(`testpmd: timed out waiting for ${re}:\n${this.output.slice(-3000)}`);
      await sleep(20);
    }
  }

  /** Run one prompt command and return its output (up to the next prompt). */
  async cmd(line: string, timeoutMs = 10000): Promise<string> {
    const from = this.output.length;
    this.proc.stdin?.write(line + '\n');
    await this.waitFor(/testpmd> /, timeoutMs, from);
    return this.output.slice(from);
  }

  async portStats(): Promise<PortStats[]> {
    const from = this.output.length;
    await this.cmd('show port stats all');
    const ports = (this.args.join(' ').match(/--vdev/g) ?? []).length;
    await this.waitFor(new RegExp(`(Tx-pps[\\s\\S]*){${ports}}`), 10000, from);
    const out = this.output.slice(from);
    const stats: PortStats[] = [];
    const re = /NIC statistics for port (\d+)[\s\S]*?RX-packets:\s*(\d+)\s+RX-missed:\s*(\d+)\s+RX-bytes:\s*(\d+)[\s\S]*?RX-errors:\s*(\d+)[\s\S]*?TX-packets:\s*(\d+)\s+TX-errors:\s*(\d+)\s+TX-bytes:\s*(\d+)/g;
    for (const m of out.matchAll(re)) {
      stats.push({
        port: Number(m[1]), rxPackets: Number(m[2]), rxMissed: Number(m[3]), rxBytes: Number(m[4]), rxErrors: Number(m[5]),
        txPackets: Number(m[6]), txErrors: Number(m[7]), txBytes: Number(m[8]),
      });
    }
    return stats;
  }

  async quit(): Promise<number | null> {
    if (this.proc.exitCode === null) {
      this.proc.stdin?.write('stop\nquit\n');
      const t = setTimeout(() => this.proc.kill('SIGKILL'), 10000);
      const code = await this.exited;
      clearTimeout(t);
      return code;
    }
    return this.proc.exitCode;
  }

  async kill(): Promise<void> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill('SIGKILL');
      await this.exited;
    }
    for (const f of fs.existsSync('/dev/hugepages') ? fs.readdirSync('/dev/hugepages') : []) {
      if (f.startsWith(this.o.prefix)) fs.rmSync(`/dev/hugepages/${f}`, { force: true });
    }
  }
}


/** Packet counters of one port as vhostfwd sees them: rx = delivered to the frontend, tx = taken from it. */
export interface BackendCounts {
  rx: number;
  tx: number;
}

export interface DrainedCounts {
  /** testpmd's port stats once nothing moves any more */
  ports: PortStats[];
  /** vhostfwd's counters per port (all queues summed), same order as the ports */
  backend: BackendCounts[];
  /** true when both sides stopped moving and agree on every port before the deadline */
  settled: boolean;
}

/**
 * Stop testpmd's io loop and drain it: switch to rxonly (receive and free, send nothing)
 * so testpmd takes every packet vhostfwd still delivers, then poll both sides until the
 * counters stop moving and testpmd's RX/TX equal vhostfwd's delivered/taken on every
 * port, or `deadlineMs` passes. testpmd is stopped again before the final read.
 */
export async function stopAndDrain(fe: Testpmd, backend: () => BackendCounts[], deadlineMs = 30000): Promise<DrainedCounts> {
  await fe.cmd('stop');
  await fe.cmd('set fwd rxonly');
  await fe.cmd('start');
  const end = Date.now() + deadlineMs;
  const agree = (ports: PortStats[], be: BackendCounts[]) =>
    ports.length === be.length && ports.every((p, i) => p.rxPackets === be[i].rx && p.txPackets === be[i].tx);
  let prev = '';
  let settled = false;
  while (Date.now() < end) {
    const ports = await fe.portStats();
    const be = backend();
    const now = JSON.stringify([ports.map((p) => [p.rxPackets, p.txPackets]), be]);
    // two reads in a row, 100 ms apart, that agree and did not move
    if (now === prev && agree(ports, be)) {
      settled = true;
      break;
    }
    prev = now;
    await sleep(100);
  }
  await fe.cmd('stop');
  return { ports: await fe.portStats(), backend: backend(), settled };
}
