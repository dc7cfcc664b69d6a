/**
 * The forwarder's configuration (JSON) and its validation. Every error names the path of
 * the bad key and what was expected, e.g. `interfaces[1].queues: expected an integer 1..128, got 0`.
 */
import fs from 'node:fs';
import path from 'node:path';
import Ajv2020 from 'ajv/dist/2020';
import type { ErrorObject } from 'ajv';
import { F, FeatureName, PF, ProtocolFeatureName } from '../protocol/constants';
import { PortVlan } from '../shared/worker-protocol';

export interface InterfaceConfig {
  /**
   * "vhost-user" (default): a guest on a vhost-user socket; "tap": an uplink port, the kernel
   * TAP device `name`; "af_packet": an uplink port, a packet socket on `device`; "af_xdp": an
   * uplink port, an XDP socket on queue `queue` of `device` (issue 22; socket is "" and the
   * vhost-user keys keep their defaults)
   */
  type: 'vhost-user' | 'tap' | 'af_packet' | 'af_xdp';
  name: string;
  /** uplinks: the network device (a TAP's is its name; "" for vhost-user) */
  device: string;
  /** af_packet: bytes per ring frame (a power of two 2048..131072) and frames per ring (8..65536) */
  frameSize: number;
  frames: number;
  /** af_xdp: the device's queue the socket binds to (0 for the other types) */
  queue: number;
  socket: string;
  mode: 'server' | 'client';
  /** queue pairs: a vhost-user interface's (VIRTIO_NET_F_MQ), an af_packet port's sockets (PACKET_FANOUT); 1 for tap, af_xdp */
  queues: number;
  /** feature names removed from the default offer (e.g. to test a guest without EVENT_IDX). */
  maskFeatures: FeatureName[];
  maskProtocolFeatures: ProtocolFeatureName[];
  /**
   * checksum and segmentation offloads offered (CSUM, GUEST_CSUM, HOST_/GUEST_ TSO4, TSO6,
   * ECN, UFO); false masks them all, as listing each in maskFeatures would. Default true.
   */
  offloads: boolean;
  /**
   * VIRTIO_F_RING_PACKED offered. Default false: packed rings work (test/packed-ring.test.ts,
   * testpmd and QEMU) but run at ~0.7x our split rings at 64 B (bench/NOTES.md #51), and a
   * frontend that would take packed falls back to split at full speed without the offer.
   */
  packedRing: boolean;
  /**
   * the port's MTU: offered to the guest (VIRTIO_NET_F_MTU; QEMU needs host_mtu=N) and
   * enforced on frames towards it; null = not set (no VIRTIO_NET_F_MTU, no limit)
   */
  mtu: number | null;
  /** interrupt coalescing: notify the guest at most every `frames` packets or `usecs` µs (0 = off). */
  coalesceFrames: number;
  coalesceUsecs: number;
  /**
   * how packets towards this port pick one of its RX queues: "hash" (a hash of the flow, so
   * one flow stays on one queue and many flows use them all) or "pair" (the queue pair they
   * came from, mod the port's queues)
   */
  steering: 'hash' | 'pair';
  /**
   * 802.1Q (bridge only): an access port (untagged frames of VLAN `tag`) or a trunk (tagged
   * frames of the `allowed` VLANs, untagged ones of `native`); null = no VLANs: the port
   * bridges with the other ports without VLANs, frames untouched, as before
   */
  vlan: PortVlan;
  /** owner (user name or uid) of the server socket vhostfwd creates; null = as created */
  owner: string | number | null;
  /** group (name or gid) of the server socket; null = as created */
  group: string | number | null;
  /** mode of the server socket (e.g. 0o660); null = 0600 when owner or group is set, else as created */
  permissions: number | null;
}

export type Forwarding = { mode: 'xconnect'; pairs: Array<[string, string]> } | { mode: 'bridge'; agingSeconds: number };

export interface WorkerConfig {
  cpus: number[];
  /** queue pairs polled by this worker, as "iface:queue". */
  queues: string[];
}

export interface Config {
  interfaces: InterfaceConfig[];
  forwarding: Forwarding;
  workers: WorkerConfig[];
  /** seconds between stats lines (0 = off). */
  statsInterval: number;
  /**
   * force dirty logging on whatever the frontend negotiates (benchmarking the log path).
   * Without a frontend log (no SET_LOG_BASE, e.g. DPDK virtio-user) each device logs into
   * a log the backend allocates itself (forced-log.ts), so the cost is real.
   */
  forceLog: boolean;
  /** HTTP endpoint for /stats, /metrics and /healthz, as HOST:PORT (null = off) */
  metrics: { listen: string } | null;
  log: { level: 'debug' | 'info' | 'warn' | 'error'; json: boolean };
  /**
   * The control API (src/main/control/): its unix socket, and the directory every socket of
   * an interface added through it must lie in (null = anywhere). false = no control API.
   */
  control: { socket: string; socketDir: string | null } | false;
}

/** Where `vhostfwd run` serves the control API and `vhostfwd ctl` looks for it. */
export const DEFAULT_CONTROL_SOCKET = '/run/vhostfwd/control.sock';

export class ConfigError extends Error {
  constructor(readonly path: string, readonly expected: string, got: unknown) {
    super(`${path}: expected ${expected}, got ${JSON.stringify(got)}`);
    this.name = 'ConfigError';
  }
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

function checkKeys(o: Obj, path: string, allowed: readonly string[]): void {
  for (const k of Object.keys(o)) {
    if (!allowed.includes(k)) throw new ConfigError(`${path}.${k}`.replace(/^\./, ''), `one of the keys ${allowed.join(', ')}`, k);
  }
}
function int(v: unknown, path: string, min: number, max: number, dflt?: number): number {
  if (v === undefined && dflt !== undefined) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new ConfigError(path, `an integer ${min}..${max}`, v);
  return v;
}
function str(v: unknown, path: string, dflt?: string): string {
  if (v === undefined && dflt !== undefined) return dflt;
  if (typeof v !== 'string' || v.length === 0) throw new ConfigError(path, 'a non-empty string', v);
  return v;
}
function bool(v: unknown, path: string, dflt: boolean): boolean {
  if (v === undefined) return dflt;
  if (typeof v !== 'boolean') throw new ConfigError(path, 'a boolean', v);
  return v;
}
function names<T extends string>(v: unknown, path: string, table: Readonly<Record<string, number>>): T[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw new ConfigError(path, 'an array of feature names', v);
  return v.map((n, i) => {
    if (typeof n !== 'string' || !(n in table)) throw new ConfigError(`${path}[${i}]`, `one of ${Object.keys(table).join(', ')}`, n);
    return n as T;
  });
}

/** queue pairs per interface: 128, as DPDK's vhost library (VHOST_MAX_QUEUE_PAIRS) and VPP allow */
export const MAX_QUEUE_PAIRS = 128;

/** Interface names: they appear in URLs of the control API, metrics labels and log lines. */
const NAME_RE = /^[A-Za-z0-9_.-]{1,64}$/;

/** A user or group: a name as in /etc/passwd (/etc/group) or a numeric id. */
function principal(v: unknown, path: string): string | number | null {
  if (v === undefined || v === null) return null;
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0 && v < 2 ** 32) return v;
  if (typeof v === 'string' && /^[a-z_][a-z0-9_.-]{0,31}\$?$/i.test(v)) return v;
  if (typeof v === 'string' && /^\d+$/.test(v)) return Number(v);
  throw new ConfigError(path, 'a user or group name, or a numeric id', v);
}

function permissions(v: unknown, path: string): number | null {
  if (v === undefined || v === null) return null;
  if (typeof v === 'string' && /^0?[0-7]{3}$/.test(v)) return parseInt(v, 8);
  throw new ConfigError(path, 'an octal mode string such as "0660"', v);
}

/** One interface as the config file and the control API's add request give it. */
export function parseInterface(v: unknown, path: string): InterfaceConfig {
  if (!isObj(v)) throw new ConfigError(path, 'an object', v);
  if (v.type === 'tap' || v.type === 'af_packet' || v.type === 'af_xdp') return parseUplink(v, path, v.type);
  if (v.type !== undefined && v.type !== 'vhost-user') throw new ConfigError(`${path}.type`, '"vhost-user", "tap", "af_packet" or "af_xdp"', v.type);
  checkKeys(v, path, ['type', 'name', 'socket', 'mode', 'queues', 'maskFeatures', 'maskProtocolFeatures', 'offloads', 'packedRing', 'mtu', 'coalesce', 'steering', 'vlan', 'owner', 'group', 'permissions']);
  const steering = v.steering ?? 'hash';
  if (steering !== 'hash' && steering !== 'pair') throw new ConfigError(`${path}.steering`, '"hash" or "pair"', v.steering);
  if (typeof v.name === 'string' && !NAME_RE.test(v.name)) throw new ConfigError(`${path}.name`, 'a name of 1..64 letters, digits, _ . -', v.name);
  const mode = str(v.mode, `${path}.mode`, 'server');
  if (mode !== 'server' && mode !== 'client') throw new ConfigError(`${path}.mode`, '"server" or "client"', v.mode);
  const co = v.coalesce ?? {};
  if (!isObj(co)) throw new ConfigError(`${path}.coalesce`, 'an object {frames, usecs}', co);
  checkKeys(co, `${path}.coalesce`, ['frames', 'usecs']);
  return {
    type: 'vhost-user',
    name: str(v.name, `${path}.name`),
    device: '',
    frameSize: 0,
    frames: 0,
    queue: 0,
    socket: str(v.socket, `${path}.socket`),
    mode,
    queues: int(v.queues, `${path}.queues`, 1, MAX_QUEUE_PAIRS, 1),
    maskFeatures: names<FeatureName>(v.maskFeatures, `${path}.maskFeatures`, F),
    maskProtocolFeatures: names<ProtocolFeatureName>(v.maskProtocolFeatures, `${path}.maskProtocolFeatures`, PF),
    offloads: bool(v.offloads, `${path}.offloads`, true),
    packedRing: bool(v.packedRing, `${path}.packedRing`, false),
    mtu: v.mtu === undefined ? null : int(v.mtu, `${path}.mtu`, 68, 65535),
    coalesceFrames: int(co.frames, `${path}.coalesce.frames`, 0, 4096, 0),
    coalesceUsecs: int(co.usecs, `${path}.coalesce.usecs`, 0, 1_000_000, 0),
    steering,
    vlan: parseVlan(v.vlan, `${path}.vlan`),
    ...ownership(v, path, mode),
  };
}

/** Kernel interface names: 1..15 bytes (IFNAMSIZ - 1), no '/', no whitespace, not . or .. */
const IFNAME_RE = /^(?!\.{1,2}$)[A-Za-z0-9_.-]{1,15}$/;

/**
 * Uplink ports (issue 22): `{"type": "tap", "name": "vf0"}`, a TAP (`name` is the kernel
 * device's and the port's), or `{"type": "af_packet", "device": "eth1"}`, a packet socket on
 * an existing device (the port's `name` defaults to the device's; `queues` > 1: that many
 * sockets in a PACKET_FANOUT group, queue pairs "name:0".. placed on workers as a vhost-user
 * interface's are, `steering` as theirs), or `{"type": "af_xdp",
 * "device": "eth1", "queue": 0}`, an XDP socket on one queue of an existing device (UMEM
 * `frames` frames of `frameSize` 2048 or 4096 bytes, half for each direction).
 */
function parseUplink(v: Obj, path: string, type: 'tap' | 'af_packet' | 'af_xdp'): InterfaceConfig {
  const ifname = (x: unknown, at: string): string => {
    const n = str(x, at);
    if (!IFNAME_RE.test(n)) throw new ConfigError(at, 'a network device name of 1..15 letters, digits, _ . -', x);
    return n;
  };
  let name: string;
  let device: string;
  let frameSize = 0;
  let frames = 0;
  let queue = 0;
  let queues = 1;
  let steering: InterfaceConfig['steering'] = 'hash';
  if (type === 'tap') {
    checkKeys(v, path, ['type', 'name', 'mtu', 'offloads', 'vlan']);
    name = device = ifname(v.name, `${path}.name`);
  } else {
    checkKeys(v, path, ['type', 'device', 'name', 'mtu', 'offloads', 'vlan', 'frameSize', 'frames', ...(type === 'af_xdp' ? ['queue'] : ['queues', 'steering'])]);
    device = ifname(v.device, `${path}.device`);
    name = v.name === undefined ? device : str(v.name, `${path}.name`);
    if (!NAME_RE.test(name)) throw new ConfigError(`${path}.name`, 'a name of 1..64 letters, digits, _ . -', v.name);
    const pow2 = (x: unknown, at: string, min: number, max: number, dflt: number): number => {
      const n = int(x, at, min, max, dflt);
      if ((n & (n - 1)) !== 0) throw new ConfigError(at, `a power of two ${min}..${max}`, x);
      return n;
    };
    if (type === 'af_xdp') {
      // a UMEM chunk is at most a page (aligned mode)
      frameSize = pow2(v.frameSize, `${path}.frameSize`, 2048, 4096, 2048);
      frames = pow2(v.frames, `${path}.frames`, 16, 65536, 4096);
      queue = int(v.queue, `${path}.queue`, 0, 1023, 0);
    } else {
      frameSize = pow2(v.frameSize, `${path}.frameSize`, 2048, 131072, 2048);
      frames = pow2(v.frames, `${path}.frames`, 8, 65536, 1024);
      // one packet socket per queue, the sockets in one PACKET_FANOUT group (ports/uplink.ts)
      queues = int(v.queues, `${path}.queues`, 1, MAX_QUEUE_PAIRS, 1);
      const st = v.steering ?? 'hash';
      if (st !== 'hash' && st !== 'pair') throw new ConfigError(`${path}.steering`, '"hash" or "pair"', v.steering);
      steering = st;
    }
  }
  return {
    type,
    name,
    device,
    frameSize,
    frames,
    queue,
    socket: '',
    mode: 'server',
    queues,
    maskFeatures: [],
    maskProtocolFeatures: [],
    offloads: bool(v.offloads, `${path}.offloads`, true),
    packedRing: false,
    mtu: v.mtu === undefined ? null : int(v.mtu, `${path}.mtu`, 68, 65535),
    coalesceFrames: 0,
    coalesceUsecs: 0,
    steering,
    vlan: parseVlan(v.vlan, `${path}.vlan`),
    owner: null,
    group: null,
    permissions: null,
  };
}

/** VIDs 1..4094 (0 is the priority tag, 4095 reserved: 802.1Q) */
const vid = (v: unknown, path: string): number => int(v, path, 1, 4094);

/** `vlan`: {mode: "access", tag} or {mode: "trunk", allowed: [...], native?}. */
function parseVlan(v: unknown, path: string): PortVlan {
  if (v === undefined) return null;
  if (!isObj(v)) throw new ConfigError(path, 'an object {mode: "access", tag} or {mode: "trunk", allowed, native}', v);
  if (v.mode === 'access') {
    checkKeys(v, path, ['mode', 'tag']);
    return { mode: 'access', tag: vid(v.tag, `${path}.tag`) };
  }
  if (v.mode !== 'trunk') throw new ConfigError(`${path}.mode`, '"access" or "trunk"', v.mode);
  checkKeys(v, path, ['mode', 'allowed', 'native']);
  if (!Array.isArray(v.allowed) || (v.allowed.length === 0 && v.native === undefined)) {
    throw new ConfigError(`${path}.allowed`, 'an array of VLAN ids 1..4094 (empty only with a native VLAN)', v.allowed);
  }
  const seen = new Set<number>();
  const allowed = v.allowed.map((x, i) => {
    const id = vid(x, `${path}.allowed[${i}]`);
    if (seen.has(id)) throw new ConfigError(`${path}.allowed[${i}]`, 'a VLAN id listed once', x);
    seen.add(id);
    return id;
  });
  return { mode: 'trunk', allowed, native: v.native === undefined ? null : vid(v.native, `${path}.native`) };
}

function ownership(v: Obj, path: string, mode: string): Pick<InterfaceConfig, 'owner' | 'group' | 'permissions'> {
  const o = { owner: principal(v.owner, `${path}.owner`), group: principal(v.group, `${path}.group`), permissions: permissions(v.permissions, `${path}.permissions`) };
  if (mode === 'client') {
    for (const k of ['owner', 'group', 'permissions'] as const) {
      if (o[k] !== null) throw new ConfigError(`${path}.${k}`, 'no socket ownership in client mode (the frontend owns that socket)', v[k]);
    }
  }
  return o;
}

/** The config-file form of an interface (what the state file stores and `show` returns as spec). */
export function interfaceToRaw(c: InterfaceConfig): Record<string, unknown> {
  if (c.type !== 'vhost-user') {
    const t: Record<string, unknown> = c.type === 'tap' ? { type: 'tap', name: c.name } : c.type === 'af_xdp' ? { type: 'af_xdp', device: c.device, queue: c.queue } : { type: 'af_packet', device: c.device };
    if (c.type !== 'tap' && c.name !== c.device) t.name = c.name;
    if (c.type !== 'tap' && c.frameSize !== 2048) t.frameSize = c.frameSize;
    if (c.type !== 'tap' && c.frames !== (c.type === 'af_xdp' ? 4096 : 1024)) t.frames = c.frames;
    if (c.type === 'af_packet' && c.queues !== 1) t.queues = c.queues;
    if (c.type === 'af_packet' && c.steering !== 'hash') t.steering = c.steering;
    if (c.mtu !== null) t.mtu = c.mtu;
    if (!c.offloads) t.offloads = false;
    if (c.vlan?.mode === 'access') t.vlan = { mode: 'access', tag: c.vlan.tag };
    if (c.vlan?.mode === 'trunk') t.vlan = c.vlan.native === null ? { mode: 'trunk', allowed: [...c.vlan.allowed] } : { mode: 'trunk', allowed: [...c.vlan.allowed], native: c.vlan.native };
    return t;
  }
  const o: Record<string, unknown> = { name: c.name, socket: c.socket, mode: c.mode, queues: c.queues };
  if (c.mtu !== null) o.mtu = c.mtu;
  if (c.maskFeatures.length) o.maskFeatures = c.maskFeatures;
  if (!c.offloads) o.offloads = false;
  if (c.packedRing) o.packedRing = true;
  if (c.maskProtocolFeatures.length) o.maskProtocolFeatures = c.maskProtocolFeatures;
  if (c.coalesceFrames || c.coalesceUsecs) o.coalesce = { frames: c.coalesceFrames, usecs: c.coalesceUsecs };
  if (c.steering !== 'hash') o.steering = c.steering;
  const v = c.vlan;
  if (v?.mode === 'access') o.vlan = { mode: 'access', tag: v.tag };
  if (v?.mode === 'trunk') o.vlan = v.native === null ? { mode: 'trunk', allowed: [...v.allowed] } : { mode: 'trunk', allowed: [...v.allowed], native: v.native };
  if (c.owner !== null) o.owner = c.owner;
  if (c.group !== null) o.group = c.group;
  if (c.permissions !== null) o.permissions = '0' + c.permissions.toString(8);
  return o;
}

export function parseConfig(raw: unknown, cpuCount: number): Config {
  if (!isObj(raw)) throw new ConfigError('(root)', 'an object', raw);
  checkKeys(raw, '', ['interfaces', 'forwarding', 'workers', 'statsInterval', 'forceLog', 'metrics', 'log', 'control']);
  // Empty is allowed: interfaces may all come at run time through the control API.
  if (!Array.isArray(raw.interfaces)) throw new ConfigError('interfaces', 'an array', raw.interfaces);
  const interfaces = raw.interfaces.map((v, i) => parseInterface(v, `interfaces[${i}]`));
  const seen = new Set<string>();
  const sockets = new Set<string>();
  const devices = new Set<string>();
  interfaces.forEach((itf, i) => {
    if (itf.type !== 'vhost-user') {
      if (devices.has(itf.device)) throw new ConfigError(`interfaces[${i}].${itf.type === 'tap' ? 'name' : 'device'}`, 'a network device used by one uplink port only', itf.device);
      devices.add(itf.device);
    }
    if (seen.has(itf.name)) throw new ConfigError(`interfaces[${i}].name`, 'a name used once', itf.name);
    if (itf.type === 'vhost-user' && sockets.has(itf.socket)) throw new ConfigError(`interfaces[${i}].socket`, 'a socket path used once', itf.socket);
    seen.add(itf.name);
    sockets.add(itf.socket);
  });
  const forwarding = parseForwarding(raw.forwarding, seen, interfaces);
  // VLANs are a bridge's: a cross-connect passes frames as they are, tags included
  const tagged = interfaces.findIndex((i) => i.vlan !== null);
  if (forwarding.mode === 'xconnect' && tagged >= 0) {
    throw new ConfigError(`interfaces[${tagged}].vlan`, 'no vlan with forwarding.mode "xconnect" (VLANs are a bridge feature)', (raw.interfaces as Obj[])[tagged].vlan);
  }
  const workers = parseWorkers(raw.workers, interfaces, cpuCount);
  const statsInterval = int(raw.statsInterval, 'statsInterval', 0, 3600, 0);
  if (raw.forceLog !== undefined && typeof raw.forceLog !== 'boolean') throw new ConfigError('forceLog', 'a boolean', raw.forceLog);
  const metrics = parseMetrics(raw.metrics);
  const logCfg = parseLog(raw.log);
  const control = parseControl(raw.control);
  // The published schema is the contract: anything the checks above let through but the
  // schema refuses is still an error, named by its path.
  checkSchema(raw);
  return { interfaces, forwarding, workers, statsInterval, forceLog: raw.forceLog === true, metrics, log: logCfg, control };
}

function parseControl(v: unknown): Config['control'] {
  if (v === undefined) return { socket: DEFAULT_CONTROL_SOCKET, socketDir: null };
  if (v === false) return false;
  if (!isObj(v)) throw new ConfigError('control', 'false or an object {socket, socketDir}', v);
  checkKeys(v, 'control', ['socket', 'socketDir']);
  const socket = str(v.socket, 'control.socket', DEFAULT_CONTROL_SOCKET);
  if (Buffer.byteLength(socket) > 107) throw new ConfigError('control.socket', 'a unix socket path of at most 107 bytes', socket);
  const dir = v.socketDir === undefined ? null : str(v.socketDir, 'control.socketDir');
  if (dir !== null && !path.isAbsolute(dir)) throw new ConfigError('control.socketDir', 'an absolute directory path', dir);
  return { socket, socketDir: dir === null ? null : path.resolve(dir) };
}

function parseMetrics(v: unknown): Config['metrics'] {
  if (v === undefined) return null;
  if (!isObj(v)) throw new ConfigError('metrics', 'an object {listen: "HOST:PORT"}', v);
  checkKeys(v, 'metrics', ['listen']);
  const l = str(v.listen, 'metrics.listen');
  const m = /^([^:]+):(\d{1,5})$/.exec(l);
  if (!m || Number(m[2]) > 65535) throw new ConfigError('metrics.listen', 'HOST:PORT with a port 0..65535', l);
  return { listen: l };
}

function parseLog(v: unknown): Config['log'] {
  if (v === undefined) return { level: 'info', json: false };
  if (!isObj(v)) throw new ConfigError('log', 'an object {level, json}', v);
  checkKeys(v, 'log', ['level', 'json']);
  const level = v.level ?? 'info';
  if (level !== 'debug' && level !== 'info' && level !== 'warn' && level !== 'error') throw new ConfigError('log.level', 'one of debug, info, warn, error', level);
  if (v.json !== undefined && typeof v.json !== 'boolean') throw new ConfigError('log.json', 'a boolean', v.json);
  return { level, json: v.json === true };
}

/** schema/config.schema.json, compiled once with ajv (JSON Schema 2020-12). */
export const SCHEMA_FILE = path.join(__dirname, '..', '..', '..', 'schema', 'config.schema.json');
let validate: ((d: unknown) => boolean) & { errors?: ErrorObject[] | null } | null = null;

/** `/interfaces/1/queues` -> `interfaces[1].queues` (the style of every config error). */
function jsonPath(p: string): string {
  const out = p
    .split('/')
    .slice(1)
    .map((k) => (/^\d+$/.test(k) ? `[${k}]` : `.${k}`))
    .join('')
    .replace(/^\./, '');
  return out === '' ? '(root)' : out;
}

export function checkSchema(raw: unknown): void {
  if (!validate) {
    const ajv = new Ajv2020({ allErrors: false, strict: false });
    validate = ajv.compile(JSON.parse(fs.readFileSync(SCHEMA_FILE, 'utf8')) as object);
  }
  if (validate(raw)) return;
  const e = (validate.errors ?? [])[0];
  if (!e) throw new ConfigError('(root)', 'a config matching schema/config.schema.json', raw);
  let at = jsonPath(e.instancePath);
  if (e.keyword === 'additionalProperties') at = `${at === '(root)' ? '' : at + '.'}${String((e.params as { additionalProperty: string }).additionalProperty)}`;
  throw new ConfigError(at, `${e.message ?? 'a valid value'} (schema)`, e.keyword === 'additionalProperties' ? undefined : getAt(raw, e.instancePath));
}

function getAt(raw: unknown, pointer: string): unknown {
  let v: unknown = raw;
  for (const k of pointer.split('/').slice(1)) v = isObj(v) || Array.isArray(v) ? (v as Record<string, unknown>)[k] : undefined;
  return v;
}

function parseForwarding(v: unknown, names: Set<string>, itfs: InterfaceConfig[]): Forwarding {
  if (v === undefined) {
    // Two interfaces: a cross-connect is what an operator means (unless they have VLANs,
    // which only a bridge has); more: a learning bridge.
    return itfs.length === 2 && itfs.every((i) => i.vlan === null) ? { mode: 'xconnect', pairs: [[itfs[0].name, itfs[1].name]] } : { mode: 'bridge', agingSeconds: 300 };
  }
  if (!isObj(v)) throw new ConfigError('forwarding', 'an object', v);
  if (v.mode === 'bridge') {
    checkKeys(v, 'forwarding', ['mode', 'agingSeconds']);
    return { mode: 'bridge', agingSeconds: int(v.agingSeconds, 'forwarding.agingSeconds', 1, 86400, 300) };
  }
  if (v.mode !== 'xconnect') throw new ConfigError('forwarding.mode', '"xconnect" or "bridge"', v.mode);
  checkKeys(v, 'forwarding', ['mode', 'pairs']);
  // Empty pairs are allowed: pairs may come at run time through the control API.
  if (v.pairs === undefined) return { mode: 'xconnect', pairs: [] };
  if (!Array.isArray(v.pairs)) throw new ConfigError('forwarding.pairs', 'an array of [name, name]', v.pairs);
  const used = new Set<string>();
  const pairs = v.pairs.map((p, i): [string, string] => {
    if (!Array.isArray(p) || p.length !== 2) throw new ConfigError(`forwarding.pairs[${i}]`, 'a pair [name, name]', p);
    p.forEach((n, j) => {
      if (typeof n !== 'string' || !names.has(n)) throw new ConfigError(`forwarding.pairs[${i}][${j}]`, `an interface name (${[...names].join(', ')})`, n);
      if (used.has(n)) throw new ConfigError(`forwarding.pairs[${i}][${j}]`, 'an interface in at most one pair', n);
      used.add(n);
    });
    if (p[0] === p[1]) throw new ConfigError(`forwarding.pairs[${i}]`, 'two different interfaces', p);
    return [p[0] as string, p[1] as string];
  });
  return { mode: 'xconnect', pairs };
}

function parseWorkers(v: unknown, itfs: InterfaceConfig[], cpuCount: number): WorkerConfig[] {
  const all = itfs.flatMap((i) => Array.from({ length: i.queues }, (_, q) => `${i.name}:${q}`));
  if (v === undefined) {
    // Default: one poller per queue pair index, up to the CPUs beside the main thread's.
    const n = Math.max(1, Math.min(cpuCount - 1, Math.max(...itfs.map((i) => i.queues))));
    return Array.from({ length: n }, (_, w) => ({ cpus: [], queues: all.filter((q) => Number(q.split(':')[1]) % n === w) }));
  }
  if (!Array.isArray(v) || v.length === 0) throw new ConfigError('workers', 'a non-empty array', v);
  const assigned = new Set<string>();
  const workers = v.map((w, i): WorkerConfig => {
    if (!isObj(w)) throw new ConfigError(`workers[${i}]`, 'an object {cpus, queues}', w);
    checkKeys(w, `workers[${i}]`, ['cpus', 'queues']);
    const cpus = w.cpus === undefined ? [] : w.cpus;
    if (!Array.isArray(cpus)) throw new ConfigError(`workers[${i}].cpus`, 'an array of CPU numbers', cpus);
    cpus.forEach((c, j) => int(c, `workers[${i}].cpus[${j}]`, 0, cpuCount - 1));
    if (!Array.isArray(w.queues)) throw new ConfigError(`workers[${i}].queues`, 'an array of "iface:queue"', w.queues);
    w.queues.forEach((q, j) => {
      if (typeof q !== 'string' || !all.includes(q)) throw new ConfigError(`workers[${i}].queues[${j}]`, `one of ${all.join(', ')}`, q);
      if (assigned.has(q)) throw new ConfigError(`workers[${i}].queues[${j}]`, 'a queue assigned to one worker only', q);
      assigned.add(q);
    });
    return { cpus: cpus as number[], queues: w.queues as string[] };
  });
  const missing = all.filter((q) => !assigned.has(q));
  if (missing.length > 0) workers[0].queues.push(...missing);
  return workers;
}

export function loadConfig(file: string, cpuCount: number): Config {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError('(file)', `a readable file at ${file}`, (e as Error).message);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new ConfigError('(file)', 'valid JSON', (e as Error).message);
  }
  return parseConfig(raw, cpuCount);
}
