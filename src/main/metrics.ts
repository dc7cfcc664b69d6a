/**
 * The operator's HTTP endpoint: GET /stats (JSON), GET /metrics (Prometheus text, via
 * prom-client), GET /healthz. Everything is read from the workers' shared counters at
 * scrape time: nothing runs on the hot path and no timer runs between scrapes.
 */
import http from 'node:http';
import { AddressInfo } from 'node:net';
import { Counter, Gauge, Registry } from 'prom-client';
import type { QueueStats, StatsSource } from './stats';
import { log } from './log';

export interface MetricsServer {
  /** the bound port (useful with port 0) */
  port: number;
  close(): Promise<void>;
}

function statsJson(fwd: StatsSource): object {
  const stats = fwd.stats();
  return {
    time: new Date().toISOString(),
    workers: fwd.pool.size,
    workerRestarts: fwd.pool.restarts(),
    workerStalls: fwd.pool.stalls(),
    interfaces: fwd.interfaces.map((i) => ({
      name: i.name,
      socket: i.opts.socket,
      mode: i.opts.mode,
      connected: i.device !== null,
      connections: i.connections,
      lastResets: i.resets.slice(-5),
      negotiatedFeatures: i.device ? '0x' + i.device.features.toString(16) : null,
      queues: stats.filter((s) => s.iface === i.name),
    })),
  };
}

function registry(fwd: StatsSource): Registry {
  const reg = new Registry();
  const q = ['iface', 'queue', 'dir'] as const;
  const counter = (name: string, help: string, pick: (s: QueueStats) => number) =>
    new Counter({
      name,
      help,
      labelNames: q,
      registers: [reg],
      collect() {
        this.reset();
        for (const s of fwd.stats()) this.inc({ iface: s.iface, queue: String(s.queue), dir: s.dir }, pick(s));
      },
    });
  counter('vhostfwd_packets_total', 'Packets per queue: rx = delivered to the guest, tx = taken from the guest', (s) => s.packets);
  counter('vhostfwd_bytes_total', 'Bytes per queue (virtio-net header excluded)', (s) => s.bytes);
  counter('vhostfwd_notifications_total', 'Call eventfd signals sent to the guest', (s) => s.notifications);
  counter('vhostfwd_kicks_total', 'Kicks read while the poller slept', (s) => s.kicks);
  counter('vhostfwd_bursts_total', 'Non-empty bursts per queue (packets_total / bursts_total = mean burst size, at most 32)', (s) => s.bursts);
  counter('vhostfwd_dirty_page_marks_total', 'Dirty-log page marks (live migration)', (s) => s.dirtyPages);
  counter('vhostfwd_gso_passed_total', 'TSO/UFO frames handed to the guest whole, with their virtio-net header (rx)', (s) => s.gsoPassed);
  counter('vhostfwd_gso_segmented_total', 'TSO/UFO frames segmented by vhostfwd for a guest without GUEST_TSO4/6 or GUEST_UFO (rx)', (s) => s.gsoSegmented);
  counter('vhostfwd_csum_software_total', 'Partial checksums (NEEDS_CSUM) completed by vhostfwd (rx)', (s) => s.csumSoftware);
  counter('vhostfwd_errors_total', 'Guest errors per queue', (s) => s.errors);
  new Counter({
    name: 'vhostfwd_drops_total',
    help: 'Dropped packets by cause: no_buffer (guest posted none), no_destination, too_big, vlan (refused by the port\'s VLAN rules), bad_offload (a virtio-net header that does not hold up)',
    labelNames: [...q, 'cause'],
    registers: [reg],
    collect() {
      this.reset();
      for (const s of fwd.stats()) {
        const l = { iface: s.iface, queue: String(s.queue), dir: s.dir };
        this.inc({ ...l, cause: 'no_buffer' }, s.dropNoBuffer);
        this.inc({ ...l, cause: 'no_destination' }, s.dropNoDest);
        this.inc({ ...l, cause: 'too_big' }, s.dropTooBig);
        this.inc({ ...l, cause: 'vlan' }, s.dropVlan);
        this.inc({ ...l, cause: 'bad_offload' }, s.dropBadOffload);
      }
    },
  });
  new Gauge({
    name: 'vhostfwd_interface_connected',
    help: '1 while a frontend is connected to the interface',
    labelNames: ['iface'],
    registers: [reg],
    collect() {
      for (const i of fwd.interfaces) this.set({ iface: i.name }, i.device ? 1 : 0);
    },
  });
  new Counter({
    name: 'vhostfwd_connections_total',
    help: 'Frontend connections accepted or made per interface',
    labelNames: ['iface'],
    registers: [reg],
    collect() {
      this.reset();
      for (const i of fwd.interfaces) this.inc({ iface: i.name }, i.connections);
    },
  });
  new Gauge({
    name: 'vhostfwd_workers',
    help: 'Poller worker threads',
    registers: [reg],
    collect() {
      this.set(fwd.pool.size);
    },
  });
  return reg;
}

export async function startMetrics(fwd: StatsSource, listen: string): Promise<MetricsServer> {
  const m = /^(.*):(\d+)$/.exec(listen);
  if (!m) throw new Error(`metrics listen address ${listen}: expected HOST:PORT`);
  const reg = registry(fwd);
  const server = http.createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    const send = (code: number, type: string, body: string) => {
      res.writeHead(code, { 'content-type': type });
      res.end(body);
    };
    if (req.method !== 'GET') return send(405, 'text/plain', 'GET only\n');
    if (url === '/stats') return send(200, 'application/json', JSON.stringify(statsJson(fwd), null, 2) + '\n');
    if (url === '/healthz') return send(200, 'text/plain', 'ok\n');
    if (url === '/metrics') {
      reg.metrics().then(
        (text) => send(200, reg.contentType, text),
        (e: Error) => send(500, 'text/plain', `${e.message}\n`),
      );
      return;
    }
    send(404, 'text/plain', 'try /stats, /metrics or /healthz\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(m[2]), m[1], () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  log.info('metrics endpoint', { listen: `${m[1]}:${port}`, paths: ['/stats', '/metrics', '/healthz'] });
  return {
    port,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}
