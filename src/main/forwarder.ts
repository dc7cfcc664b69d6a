/**
 * The forwarder: the configured interfaces, the poller workers and the forwarding plan
 * (xconnect pairs or a learning bridge). Owns start/stop and the stats view.
 */
import os from 'node:os';
import { ST_BYTES, ST_DROP_NO_BUF, ST_DROP_NO_DEST, ST_DROP_TOO_BIG, ST_ERRORS, ST_NOTIFY, ST_PACKETS, ST_DIRTY_PAGES, ST_KICKS, ST_BURSTS } from '../shared/types';
import { ForwardingPlan } from '../shared/worker-protocol';
import { MAC_TABLE_BYTES } from '../workers/mac-table';
import { Config } from './config';
import { Interface } from './interface';
import { log } from './log';
import { WorkerPool } from './worker-pool';
import { MetricsServer, startMetrics } from './metrics';

export interface QueueStats {
  iface: string;
  queue: number;
  /** 'rx' = towards the guest (we enqueue), 'tx' = from the guest (we dequeue) */
  dir: 'rx' | 'tx';
  packets: number;
  bytes: number;
  dropNoBuffer: number;
  dropNoDest: number;
  dropTooBig: number;
  errors: number;
  notifications: number;
  kicks: number;
  dirtyPages: number;
  /** non-empty bursts (packets / bursts = mean burst size; 32 at most) */
  bursts: number;
}

export class Forwarder {
  readonly interfaces: Interface[];
  readonly pool: WorkerPool;
  private readonly macTable = new SharedArrayBuffer(MAC_TABLE_BYTES);
  private statsTimer: NodeJS.Timeout | null = null;
  /** the HTTP endpoint when config.metrics is set */
  metrics: MetricsServer | null = null;

  /** ackDeadlineMs: how long a worker may take to acknowledge a ring change (worker-pool.ts) */
  constructor(readonly config: Config, opts: { ackDeadlineMs?: number } = {}) {
    const owner = new Map<string, number>();
    config.workers.forEach((w, i) => w.queues.forEach((q) => owner.set(q, i)));
    this.pool = new WorkerPool({
      workers: config.workers,
      owner: (port, pair) => owner.get(`${config.interfaces[port]?.name}:${pair}`) ?? 0,
      forceLog: config.forceLog,
      ackDeadlineMs: opts.ackDeadlineMs,
    });
    this.interfaces = config.interfaces.map(
      (c, port) =>
        new Interface(
          { name: c.name, socket: c.socket, mode: c.mode, queuePairs: c.queues, maskFeatures: c.maskFeatures, maskProtocolFeatures: c.maskProtocolFeatures, mtu: c.mtu, forceLog: config.forceLog },
          port,
          this.pool,
        ),
    );
    this.pool.onBroken = (device, index, reason) => {
      const itf = this.interfaces.find((i) => i.device?.id === device);
      if (itf?.device) itf.device.brokenByGuest(`ring ${index}: ${reason}`);
    };
  }

  plan(): ForwardingPlan {
    const f = this.config.forwarding;
    if (f.mode === 'bridge') return { mode: 'bridge', ports: this.interfaces.length, agingMs: f.agingSeconds * 1000 };
    const peer = this.interfaces.map(() => -1);
    const idx = (n: string): number => this.interfaces.findIndex((i) => i.name === n);
    for (const [a, b] of f.pairs) {
      peer[idx(a)] = idx(b);
      peer[idx(b)] = idx(a);
    }
    return { mode: 'xconnect', peer };
  }

  async start(): Promise<void> {
    await this.pool.start();
    this.pool.setPlan(this.plan(), this.macTable);
    this.config.interfaces.forEach((c, port) => {
      if (c.coalesceFrames || c.coalesceUsecs) this.pool.setCoalesce(port, c.coalesceFrames, c.coalesceUsecs);
    });
    for (const i of this.interfaces) i.start();
    if (this.config.metrics) this.metrics = await startMetrics(this, this.config.metrics.listen);
    if (this.config.statsInterval > 0) {
      let last = this.stats();
      let lastT = Date.now();
      this.statsTimer = setInterval(() => {
        const now = this.stats();
        const t = Date.now();
        process.stdout.write(formatStats(now, last, (t - lastT) / 1000));
        last = now;
        lastT = t;
      }, this.config.statsInterval * 1000);
    }
    log.info('forwarder started', { interfaces: this.interfaces.map((i) => i.name), workers: this.pool.size, mode: this.config.forwarding.mode, cpus: os.cpus().length });
  }

  /** Counters of every running queue, read without stopping the workers. */
  stats(): QueueStats[] {
    const out: QueueStats[] = [];
    for (const itf of this.interfaces) {
      const d = itf.device;
      if (!d) continue;
      for (const v of d.vrings) {
        const s = new Float64Array(v.stats);
        out.push({
          iface: itf.name,
          queue: v.index >> 1,
          dir: v.index & 1 ? 'tx' : 'rx',
          packets: s[ST_PACKETS],
          bytes: s[ST_BYTES],
          dropNoBuffer: s[ST_DROP_NO_BUF],
          dropNoDest: s[ST_DROP_NO_DEST],
          dropTooBig: s[ST_DROP_TOO_BIG],
          errors: s[ST_ERRORS],
          notifications: s[ST_NOTIFY],
          kicks: s[ST_KICKS],
          dirtyPages: s[ST_DIRTY_PAGES],
          bursts: s[ST_BURSTS],
        });
      }
    }
    return out;
  }

  /**
   * Pause or resume forced logging (config forceLog) on every ring at run time; the CLI
   * toggles it on SIGUSR2. Resolves once every worker has switched.
   */
  async setForceLog(on: boolean): Promise<void> {
    await this.pool.setForceLog(on);
    log.info(on ? 'forced dirty logging resumed' : 'forced dirty logging paused', { rings: this.stats().length });
  }

  async stop(): Promise<void> {
    if (this.statsTimer) clearInterval(this.statsTimer);
    await this.metrics?.close();
    this.metrics = null;
    for (const i of this.interfaces) await i.stop();
    await this.pool.stop();
  }
}

export function formatStats(now: QueueStats[], before: QueueStats[], secs: number): string {
  const key = (s: QueueStats): string => `${s.iface}/${s.queue}/${s.dir}`;
  const prev = new Map(before.map((s) => [key(s), s]));
  const head = `${'iface/queue/dir'.padEnd(18)}${'Mpps'.padStart(9)}${'Mbit/s'.padStart(11)}${'packets'.padStart(14)}${'no-buf'.padStart(9)}${'no-dest'.padStart(9)}${'too-big'.padStart(9)}${'errors'.padStart(8)}${'irqs/s'.padStart(9)}${'pkts/burst'.padStart(11)}`;
  const rows = now.map((s) => {
    const p = prev.get(key(s));
    const dp = s.packets - (p?.packets ?? 0);
    const db = s.bytes - (p?.bytes ?? 0);
    const dn = s.notifications - (p?.notifications ?? 0);
    const dbu = s.bursts - (p?.bursts ?? 0);
    return `${key(s).padEnd(18)}${(dp / secs / 1e6).toFixed(3).padStart(9)}${((db * 8) / secs / 1e6).toFixed(1).padStart(11)}${String(s.packets).padStart(14)}${String(s.dropNoBuffer).padStart(9)}${String(s.dropNoDest).padStart(9)}${String(s.dropTooBig).padStart(9)}${String(s.errors).padStart(8)}${(dn / secs).toFixed(0).padStart(9)}${(dbu > 0 ? (dp / dbu).toFixed(1) : '-').padStart(11)}`;
  });
  return `--- ${new Date().toISOString()}\n${head}\n${rows.join('\n')}\n`;
}
