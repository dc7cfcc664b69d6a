/**
 * `vhostfwd ctl`: the control API's client. It speaks HTTP+JSON to the API socket
 * (schema/control-api.openapi.json) and prints aligned tables, or the JSON as received with
 * --json. Exit codes as `run`: 0 ok, 1 runtime failure (API unreachable, a 5xx), 2 a request
 * the API refused (4xx) or bad usage.
 */
import http from 'node:http';

export interface ApiReply {
  status: number;
  body: unknown;
}

export class ApiUnreachable extends Error {
  constructor(readonly socket: string, cause: NodeJS.ErrnoException) {
    super(`cannot reach the control API at ${socket}: ${cause.code === 'ENOENT' ? 'no socket there (is vhostfwd running? give --control PATH)' : cause.code === 'EACCES' ? 'permission denied (the socket is mode 0600: run as its owner)' : cause.message}`);
    this.name = 'ApiUnreachable';
  }
}

/** One request to the API; bounded by `timeoutMs`. */
export function api(socket: string, method: string, path: string, body?: unknown, timeoutMs = 10_000): Promise<ApiReply> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request(
      { socketPath: socket, method, path, headers: data === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) }, timeout: timeoutMs },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown = text;
          try {
            parsed = JSON.parse(text);
          } catch {
            // not JSON: returned as text
          }
          resolve({ status: res.statusCode ?? 0, body: parsed });
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer from ${socket} within ${timeoutMs} ms`)));
    req.on('error', (e: NodeJS.ErrnoException) => reject(e.code ? new ApiUnreachable(socket, e) : e));
    if (data !== undefined) req.write(data);
    req.end();
  });
}

type Row = Record<string, unknown>;

/** Columns padded to their widest cell. */
function table(rows: Row[], cols: string[]): string {
  const cell = (v: unknown): string => (Array.isArray(v) ? v.join(',') : v === null || v === undefined ? '-' : String(v));
  const w = cols.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (vals: string[]): string => vals.map((v, i) => v.padEnd(w[i])).join('  ').trimEnd();
  return [line(cols.map((c) => c.toUpperCase())), ...rows.map((r) => line(cols.map((c) => cell(r[c]))))].join('\n') + '\n';
}

/**
 * `ctl add --vlan`: "access:10", "trunk:10,20,100-199" or "trunk:10,20:native=5" as the API's
 * `vlan` object; the numbers are checked by the API (errors named by path), only the shape here.
 */
export function vlanArg(s: string): Record<string, unknown> {
  const access = /^access:(\d+)$/.exec(s);
  if (access) return { mode: 'access', tag: Number(access[1]) };
  const trunk = /^trunk:([\d,-]*)(?::native=(\d+))?$/.exec(s);
  if (!trunk) throw new Error(`--vlan ${s}: expected access:TAG or trunk:ID,ID,FROM-TO[:native=ID]`);
  const allowed = trunk[1].split(',').filter((x) => x !== '').flatMap((r) => {
    const [lo, hi] = r.split('-').map(Number);
    return hi === undefined ? [lo] : Array.from({ length: Math.max(0, Math.min(hi, 4095) - lo + 1) }, (_, i) => lo + i);
  });
  return trunk[2] === undefined ? { mode: 'trunk', allowed } : { mode: 'trunk', allowed, native: Number(trunk[2]) };
}

/** The human form of a successful reply, by command. */
export function render(command: string, body: unknown): string {
  const b = body as Row;
  switch (command) {
    case 'list': {
      const ups = (b.uplinks as Row[]) ?? [];
      return table((b.interfaces as Row[]) ?? [], ['name', 'port', 'mode', 'queues', 'connected', 'socket']) + (ups.length ? '\n' + table(ups, ['name', 'port', 'type', 'device', 'running', 'worker', 'failed']) : '');
    }
    case 'show':
    case 'add': {
      if (typeof b.type === 'string') {
        // an uplink port
        const up = ['name', 'port', 'type', 'device', 'running', 'worker', 'failed'].map((k) => `${(k + ':').padEnd(20)}${String(b[k])}`);
        return up.join('\n') + '\n\n' + table((b.queues as Row[]) ?? [], ['iface', 'queue', 'dir', 'packets', 'bytes', 'dropNoBuffer', 'dropNoDest', 'dropTooBig', 'dropBadOffload', 'gsoPassed', 'gsoSegmented', 'csumSoftware', 'errors']);
      }
      const head = ['name', 'port', 'socket', 'mode', 'queues', 'connected', 'connections'].map((k) => `${(k + ':').padEnd(20)}${String(b[k])}`);
      head.push(`${'features:'.padEnd(20)}${((b.features as string[]) ?? []).join(' ') || '-'}`);
      head.push(`${'protocol features:'.padEnd(20)}${((b.protocolFeatures as string[]) ?? []).join(' ') || '-'}`);
      const resets = (b.resets as string[]) ?? [];
      if (resets.length) head.push(`${'last reset:'.padEnd(20)}${resets[resets.length - 1]}`);
      const memory = (b.memory as Array<{ gpa: number; size: number }>) ?? [];
      const mib = memory.reduce((n, r) => n + r.size, 0) / 2 ** 20;
      head.push(`${'memory:'.padEnd(20)}${memory.length ? `${memory.length} slot${memory.length > 1 ? 's' : ''}, ${mib} MiB: ${memory.slice(0, 8).map((r) => `0x${r.gpa.toString(16)}+0x${r.size.toString(16)}`).join(' ')}${memory.length > 8 ? ` ... (${memory.length - 8} more)` : ''}` : '-'}`);
      const rings = (b.rings as Row[]) ?? [];
      return head.join('\n') + '\n' + (rings.length ? '\n' + table(rings, ['index', 'queue', 'dir', 'enabled', 'started', 'size', 'lastAvailIdx', 'usedIdx', 'kick', 'call', 'worker', 'cpus', 'packets', 'bytes', 'dropNoBuffer', 'dropNoDest', 'dropVlan', 'errors']) : '');
    }
    case 'rm':
      return `removed ${String(b.removed)}\n`;
    case 'pair':
    case 'unpair':
    case 'forwarding':
      return b.mode === 'xconnect' ? table(((b.pairs as string[][]) ?? []).map(([x, y]) => ({ a: x, b: y })), ['a', 'b']) : `bridge (aging ${String(b.agingSeconds)} s)\n`;
    case 'move':
      return `worker ${String(b.worker)}\n`;
    case 'stats':
      return table((b.queues as Row[]) ?? [], ['iface', 'queue', 'dir', 'packets', 'bytes', 'dropNoBuffer', 'dropNoDest', 'dropTooBig', 'dropVlan', 'dropBadOffload', 'errors', 'notifications', 'kicks']);
    case 'version':
      return `vhostfwd ${String(b.version)} (control API v${String(b.api)})\n`;
    default:
      return JSON.stringify(body, null, 2) + '\n';
  }
}
