/**
 * The control API: HTTP+JSON on a unix socket, the way cloud-hypervisor's and Firecracker's
 * API sockets work (schema/control-api.openapi.json is the contract; tests validate every
 * response against it). Node's own http server listens on the path; the socket is created
 * mode 0600 (root only unless the operator chmods it), so other users are refused by the
 * kernel before a byte is read.
 *
 * Every request is validated before anything changes, and refused with a JSON error naming
 * the field. Changes run one at a time (a queue of promises): two clients adding the same
 * name race to one success and one 409, never to a half-made port.
 */
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { native } from '../../native';
import { CTRL_LAST_AVAIL, CTRL_LAST_USED, ST_CSUM_SW, ST_DROP_BAD_OFFLOAD, ST_DROP_VLAN, ST_GSO_PASSED, ST_GSO_SEGMENTED } from '../../shared/types';
import { F, PF } from '../../protocol/constants';
import { ConfigError, interfaceToRaw, parseInterface } from '../config';
import { ControlError, Forwarder } from '../forwarder';
import { Interface, SocketPathError } from '../interface';
import { UplinkOpenError, UplinkPort } from '../ports/uplink';
import { log } from '../log';
import { OwnershipError } from './ownership';

/** Request bodies are small JSON objects; anything bigger is refused before it is read. */
const MAX_BODY = 64 * 1024;
/** a refused body up to this size is read and dropped before the answer (see the error path) */
const DRAIN_MAX = 16 * 1024 * 1024;
const API_VERSION = 1;

export class ControlSocketError extends Error {
  constructor(readonly socket: string, why: string) {
    super(`control socket ${socket}: ${why}`);
    this.name = 'ControlSocketError';
  }
}

type Code = 'BadRequest' | 'NotFound' | 'Conflict' | 'PayloadTooLarge' | 'UnsupportedMediaType' | 'MethodNotAllowed' | 'Unprocessable' | 'Internal';
const CODE: Record<number, Code> = { 400: 'BadRequest', 404: 'NotFound', 405: 'MethodNotAllowed', 409: 'Conflict', 413: 'PayloadTooLarge', 415: 'UnsupportedMediaType', 422: 'Unprocessable', 500: 'Internal' };

/**
 * An uplink whose device cannot be opened: 409 when something else holds it (another
 * process's TAP or XDP socket, an XDP program already attached), else 422: the request is
 * well formed but the device is not there or not usable as asked (ENODEV, no such queue,
 * missing capabilities). The message names the device and the cause.
 */
function uplinkOpenStatus(e: UplinkOpenError): number {
  return e.code === 'EBUSY' || e.code === 'EEXIST' ? 409 : 422;
}

class HttpError extends Error {
  constructor(readonly status: number, message: string, readonly field?: string) {
    super(message);
  }
}

export interface ControlOptions {
  socket: string;
  /** every socket of an interface added here must lie in this directory (null = anywhere) */
  socketDir: string | null;
  version: string;
}

export interface ControlServer {
  readonly socket: string;
  close(): Promise<void>;
}

function names(bits: bigint, table: Readonly<Record<string, number>>): string[] {
  return Object.entries(table)
    .filter(([, b]) => (bits >> BigInt(b)) & 1n)
    .map(([n]) => n);
}

function summary(i: Interface): Record<string, unknown> {
  return { name: i.name, port: i.port, socket: i.opts.socket, mode: i.opts.mode, queues: i.opts.queuePairs, connected: i.device !== null };
}

/** An uplink port (TAP, AF_PACKET, AF_XDP) in `list`. */
function uplinkSummary(fwd: Forwarder, u: UplinkPort): Record<string, unknown> {
  // an AF_PACKET port of several queues (PACKET_FANOUT) has a worker per queue: `workers`
  const workers = Array.from({ length: u.queues }, (_, q) => fwd.workerOf(u.name, q));
  return { name: u.name, port: u.port, type: u.kind, device: u.opts.device, running: u.running, failed: u.failed, worker: workers[0], workers };
}

/** `show` of an uplink port: its summary, its config form and its two queues' counters. */
function describeUplink(fwd: Forwarder, u: UplinkPort): Record<string, unknown> {
  const spec = fwd.spec(u.name);
  return { ...uplinkSummary(fwd, u), spec: spec ? interfaceToRaw(spec) : {}, queues: fwd.stats().filter((s) => s.iface === u.name) };
}

/** `show`: connection, negotiated features by name, every ring with its counters, the memory slots. */
function describe(fwd: Forwarder, i: Interface): Record<string, unknown> {
  const d = i.device;
  const spec = fwd.spec(i.name);
  const rings = (d?.vrings ?? []).map((v) => {
    const ctrl = new Int32Array(v.ctrl);
    const st = new Float64Array(v.stats);
    const tx = (v.index & 1) === 1;
    const worker = tx ? fwd.workerOf(i.name, v.index >> 1) : null;
    return {
      index: v.index, queue: v.index >> 1, dir: tx ? 'tx' : 'rx', enabled: v.enabled, started: v.started, size: v.num,
      lastAvailIdx: v.started ? ctrl[CTRL_LAST_AVAIL] & 0xffff : v.lastAvailIdx, usedIdx: ctrl[CTRL_LAST_USED] & 0xffff,
      kick: v.hasKick, call: v.callFd >= 0, worker, cpus: worker === null ? [] : fwd.config.workers[worker]?.cpus ?? [],
      packets: st[0], bytes: st[1], dropNoBuffer: st[2], dropNoDest: st[3], dropVlan: st[ST_DROP_VLAN], dropBadOffload: st[ST_DROP_BAD_OFFLOAD], gsoPassed: st[ST_GSO_PASSED], gsoSegmented: st[ST_GSO_SEGMENTED], csumSoftware: st[ST_CSUM_SW], errors: st[5],
    };
  });
  return {
    ...summary(i),
    connections: i.connections,
    features: d ? names(d.features, F) : [],
    protocolFeatures: d ? names(d.protocolFeatures, PF) : [],
    rings,
    memory: d ? d.mem.list().map((r) => ({ gpa: r.gpa, size: r.size, refs: r.refs })) : [],
    resets: [...i.resets],
    spec: spec ? interfaceToRaw(spec) : {},
  };
}

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A socket path from the API: absolute, and inside socketDir when one is configured. */
function checkSocketPath(p: string, dir: string | null): void {
  if (!path.isAbsolute(p)) throw new HttpError(400, 'the socket path must be absolute', 'socket');
  if (dir === null) return;
  const resolved = path.resolve(p);
  const inside = (x: string, d: string): boolean => x.startsWith(d.endsWith('/') ? d : d + '/');
  if (!inside(resolved, dir)) throw new HttpError(400, `the socket path must lie in ${dir}`, 'socket');
  // symlinks in the path must not lead out of the directory either
  let real: string;
  let realDir: string;
  try {
    real = fs.realpathSync(path.dirname(resolved));
    realDir = fs.realpathSync(dir);
  } catch {
    return; // the directory does not exist: listen reports it by name
  }
  if (real !== realDir && !inside(real + '/', realDir)) throw new HttpError(400, `the socket path must lie in ${dir} (it leads to ${real})`, 'socket');
}

async function readBody(req: http.IncomingMessage): Promise<unknown> {
  const len = Number(req.headers['content-length'] ?? 0);
  if (len > MAX_BODY) throw new HttpError(413, `request body over ${MAX_BODY} bytes`);
  const type = String(req.headers['content-type'] ?? '');
  if (!/^application\/json\b/i.test(type)) throw new HttpError(415, 'the request body must be application/json');
  const chunks: Buffer[] = [];
  let got = 0;
  for await (const c of req) {
    got += (c as Buffer).length;
    if (got > MAX_BODY) throw new HttpError(413, `request body over ${MAX_BODY} bytes`);
    chunks.push(c as Buffer);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
  } catch (e) {
    throw new HttpError(400, `the body is not JSON: ${(e as Error).message}`, '(body)');
  }
}

function checkObjectKeys(v: unknown, keys: string[]): Record<string, unknown> {
  if (!isObj(v)) throw new HttpError(400, 'the body must be a JSON object', '(body)');
  for (const k of Object.keys(v)) if (!keys.includes(k)) throw new HttpError(400, `unknown key ${k} (expected ${keys.join(', ')})`, k);
  return v;
}

function urlName(s: string): string {
  let n: string;
  try {
    n = decodeURIComponent(s);
  } catch {
    throw new HttpError(400, 'bad percent-encoding in the interface name', 'name');
  }
  return n;
}

export async function startControl(fwd: Forwarder, opts: ControlOptions): Promise<ControlServer> {
  const sock = opts.socket;
  try {
    fs.mkdirSync(path.dirname(sock), { recursive: true, mode: 0o755 });
  } catch (e) {
    throw new ControlSocketError(sock, `cannot make its directory: ${(e as Error).message}`);
  }
  // A socket left by an earlier run is replaced; one a running vhostfwd serves is not.
  let st: fs.Stats | null = null;
  try {
    st = fs.lstatSync(sock);
  } catch {
    st = null;
  }
  if (st) {
    if (!st.isSocket()) throw new ControlSocketError(sock, 'something that is not a socket is in the way');
    let fd = -1;
    try {
      fd = native.connect(sock);
    } catch {
      fd = -1;
    }
    if (fd >= 0) {
      native.close(fd);
      throw new ControlSocketError(sock, 'in use: another vhostfwd serves its control API there (give --control PATH)');
    }
    fs.rmSync(sock, { force: true });
  }

  let queue: Promise<unknown> = Promise.resolve();
  /** changes one at a time, in arrival order */
  const serial = <T>(fn: () => Promise<T> | T): Promise<T> => {
    const p = queue.then(fn, fn);
    queue = p.catch(() => undefined);
    return p;
  };

  const route = async (req: http.IncomingMessage): Promise<[number, unknown]> => {
    const url = new URL(req.url ?? '/', 'http://control');
    const parts = url.pathname.split('/').filter((x) => x !== '');
    const m = req.method ?? 'GET';
    if (parts[0] !== 'v1') throw new HttpError(404, `no such endpoint ${url.pathname} (the API is under /v1)`);
    const rest = parts.slice(1);
    const only = (...allowed: string[]): void => {
      if (!allowed.includes(m)) throw new HttpError(405, `${m} is not allowed on ${url.pathname} (allowed: ${allowed.join(', ')})`);
    };
    if (rest.length === 1 && rest[0] === 'version') {
      only('GET');
      return [200, { version: opts.version, api: API_VERSION }];
    }
    if (rest.length === 1 && rest[0] === 'stats') {
      only('GET');
      return [200, { queues: fwd.stats() }];
    }
    if (rest[0] === 'interfaces') {
      if (rest.length === 1) {
        only('GET', 'POST');
        if (m === 'GET') return [200, { interfaces: fwd.interfaces.map(summary), uplinks: fwd.uplinks.map((u) => uplinkSummary(fwd, u)) }];
        const body = await readBody(req);
        let c;
        try {
          c = parseInterface(body, '');
        } catch (e) {
          if (e instanceof ConfigError) throw new HttpError(400, e.message.replace(/^\./, ''), e.path.replace(/^\./, '') || '(body)');
          throw e;
        }
        if (c.type !== 'vhost-user') {
          // an uplink port (TAP, AF_PACKET, AF_XDP): opened and running before the reply
          const up = c;
          return serial(async () => {
            try {
              return [201, describeUplink(fwd, await fwd.addUplink(up))] as [number, unknown];
            } catch (e) {
              if (e instanceof UplinkOpenError) throw new HttpError(uplinkOpenStatus(e), e.message, e.field);
              throw e;
            }
          });
        }
        checkSocketPath(c.socket, opts.socketDir);
        const cfg = c;
        return serial(() => {
          try {
            const itf = fwd.addInterface(cfg);
            return [201, describe(fwd, itf)] as [number, unknown];
          } catch (e) {
            if (e instanceof OwnershipError) throw new HttpError(400, e.message, e.field);
            if (e instanceof SocketPathError) throw new HttpError(400, e.message, 'socket');
            throw e;
          }
        });
      }
      const name = urlName(rest[1]);
      if (rest.length === 2) {
        only('GET', 'DELETE');
        if (m === 'GET') {
          const up = fwd.uplink(name);
          if (up) return [200, describeUplink(fwd, up)];
          const i = fwd.interface(name);
          if (!i) throw new HttpError(404, `no interface ${name}`, 'name');
          return [200, describe(fwd, i)];
        }
        return serial(async () => {
          await fwd.removeInterface(name);
          return [200, { removed: name }] as [number, unknown];
        });
      }
      if (rest.length === 4 && rest[2] === 'queues') {
        only('PUT');
        if (!/^\d{1,3}$/.test(rest[3])) throw new HttpError(400, 'the queue must be a number', 'queue');
        const body = checkObjectKeys(await readBody(req), ['worker']);
        const w = body.worker;
        if (typeof w !== 'number' || !Number.isInteger(w)) throw new HttpError(400, 'worker must be an integer', 'worker');
        return serial(async () => {
          await fwd.moveQueue(name, Number(rest[3]), w);
          return [200, { worker: w }] as [number, unknown];
        });
      }
    }
    if (rest[0] === 'forwarding') {
      if (rest.length === 1) {
        only('GET');
        return [200, fwd.forwardingState];
      }
      if (rest[1] === 'pairs' && rest.length === 2) {
        only('POST');
        const body = checkObjectKeys(await readBody(req), ['a', 'b']);
        for (const k of ['a', 'b'] as const) if (typeof body[k] !== 'string') throw new HttpError(400, `${k} must be an interface name`, k);
        return serial(() => {
          fwd.addPair(body.a as string, body.b as string);
          return [200, fwd.forwardingState] as [number, unknown];
        });
      }
      if (rest[1] === 'pairs' && rest.length === 3) {
        only('DELETE');
        const name = urlName(rest[2]);
        return serial(() => {
          fwd.removePair(name);
          return [200, fwd.forwardingState] as [number, unknown];
        });
      }
    }
    throw new HttpError(404, `no such endpoint ${url.pathname}`);
  };

  const server = http.createServer((req, res) => {
    const reply = (status: number, body: unknown): void => {
      const text = JSON.stringify(body);
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      res.end(text);
    };
    route(req).then(
      ([status, body]) => reply(status, body),
      (e: unknown) => {
        let status = 500;
        let field: string | undefined;
        if (e instanceof HttpError) {
          status = e.status;
          field = e.field;
        } else if (e instanceof ControlError) {
          status = e.status;
          field = e.field;
        } else log.error('control request failed', { method: req.method, url: req.url, error: (e as Error).stack ?? String(e) });
        const err: Record<string, unknown> = { code: CODE[status] ?? 'Internal', message: (e as Error).message };
        if (field !== undefined) err.field = field;
        if (status === 413 || status === 415) {
          // the connection ends after the answer. A body of declared length up to DRAIN_MAX
          // is read and dropped first: a client still writing it to a closed socket would
          // get EPIPE instead of this answer. Anything bigger, or sent in chunks past
          // MAX_BODY, is cut off.
          res.setHeader('connection', 'close');
          const declared = Number(req.headers['content-length'] ?? Infinity);
          if (!req.complete && !req.destroyed && declared <= DRAIN_MAX) {
            req.on('end', () => reply(status, { error: err }));
            req.resume();
            return;
          }
        }
        reply(status, { error: err });
      },
    );
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e) => reject(new ControlSocketError(sock, e.message)));
    // created mode 0600: bind(2) applies the umask, so no other user can connect even
    // in the moment before the chmod below
    const old = process.umask(0o177);
    try {
      server.listen(sock, () => resolve());
    } finally {
      process.umask(old);
    }
  });
  fs.chmodSync(sock, 0o600);
  log.info('control API listening', { socket: sock });
  return {
    socket: sock,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
        fs.rmSync(sock, { force: true });
      }),
  };
}
