/**
 * The forwarder's configuration (JSON) and its validation. Every error names the path of
 * the bad key and what was expected, e.g. `interfaces[1].queues: expected an integer 1..8, got 0`.
 */
import fs from 'node:fs';
import path from 'node:path';
import Ajv2020 from 'ajv/dist/2020';
import type { ErrorObject } from 'ajv';
import { F, FeatureName, PF, ProtocolFeatureName } from '../shared/constants';

export interface InterfaceConfig {
  name: string;
  socket: string;
  mode: 'server' | 'client';
  queues: number;
  /** feature names removed from the default offer (e.g. to test a guest without EVENT_IDX). */
  maskFeatures: FeatureName[];
  maskProtocolFeatures: ProtocolFeatureName[];
  mtu: number;
  /** interrupt coalescing: notify the guest at most every `frames` packets or `usecs` µs (0 = off). */
  coalesceFrames: number;
  coalesceUsecs: number;
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
   * a log it allocates itself (Device.ensureForcedLog), so the cost is real.
   */
  forceLog: boolean;
  /** HTTP endpoint for /stats, /metrics and /healthz, as HOST:PORT (null = off) */
  metrics: { listen: string } | null;
  log: { level: 'debug' | 'info' | 'warn' | 'error'; json: boolean };
}

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
function names<T extends string>(v: unknown, path: string, table: Readonly<Record<string, number>>): T[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw new ConfigError(path, 'an array of feature names', v);
  return v.map((n, i) => {
    if (typeof n !== 'string' || !(n in table)) throw new ConfigError(`${path}[${i}]`, `one of ${Object.keys(table).join(', ')}`, n);
    return n as T;
  });
}

export const MAX_QUEUE_PAIRS = 8;

function parseInterface(v: unknown, path: string): InterfaceConfig {
  if (!isObj(v)) throw new ConfigError(path, 'an object', v);
  checkKeys(v, path, ['name', 'socket', 'mode', 'queues', 'maskFeatures', 'maskProtocolFeatures', 'mtu', 'coalesce']);
  const mode = str(v.mode, `${path}.mode`, 'server');
  if (mode !== 'server' && mode !== 'client') throw new ConfigError(`${path}.mode`, '"server" or "client"', v.mode);
  const co = v.coalesce ?? {};
  if (!isObj(co)) throw new ConfigError(`${path}.coalesce`, 'an object {frames, usecs}', co);
  checkKeys(co, `${path}.coalesce`, ['frames', 'usecs']);
  return {
    name: str(v.name, `${path}.name`),
    socket: str(v.socket, `${path}.socket`),
    mode,
    queues: int(v.queues, `${path}.queues`, 1, MAX_QUEUE_PAIRS, 1),
    maskFeatures: names<FeatureName>(v.maskFeatures, `${path}.maskFeatures`, F),
    maskProtocolFeatures: names<ProtocolFeatureName>(v.maskProtocolFeatures, `${path}.maskProtocolFeatures`, PF),
    mtu: int(v.mtu, `${path}.mtu`, 68, 65535, 1500),
    coalesceFrames: int(co.frames, `${path}.coalesce.frames`, 0, 4096, 0),
    coalesceUsecs: int(co.usecs, `${path}.coalesce.usecs`, 0, 1_000_000, 0),
  };
}

export function parseConfig(raw: unknown, cpuCount: number): Config {
  if (!isObj(raw)) throw new ConfigError('(root)', 'an object', raw);
  checkKeys(raw, '', ['interfaces', 'forwarding', 'workers', 'statsInterval', 'forceLog', 'metrics', 'log']);
  if (!Array.isArray(raw.interfaces) || raw.interfaces.length === 0) throw new ConfigError('interfaces', 'a non-empty array', raw.interfaces);
  const interfaces = raw.interfaces.map((v, i) => parseInterface(v, `interfaces[${i}]`));
  const seen = new Set<string>();
  const sockets = new Set<string>();
  interfaces.forEach((itf, i) => {
    if (seen.has(itf.name)) throw new ConfigError(`interfaces[${i}].name`, 'a name used once', itf.name);
    if (sockets.has(itf.socket)) throw new ConfigError(`interfaces[${i}].socket`, 'a socket path used once', itf.socket);
    seen.add(itf.name);
    sockets.add(itf.socket);
  });
  const forwarding = parseForwarding(raw.forwarding, seen, interfaces);
  const workers = parseWorkers(raw.workers, interfaces, cpuCount);
  const statsInterval = int(raw.statsInterval, 'statsInterval', 0, 3600, 0);
  if (raw.forceLog !== undefined && typeof raw.forceLog !== 'boolean') throw new ConfigError('forceLog', 'a boolean', raw.forceLog);
  const metrics = parseMetrics(raw.metrics);
  const logCfg = parseLog(raw.log);
  // The published schema is the contract: anything the checks above let through but the
  // schema refuses is still an error, named by its path.
  checkSchema(raw);
  return { interfaces, forwarding, workers, statsInterval, forceLog: raw.forceLog === true, metrics, log: logCfg };
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
    // Two interfaces: a cross-connect is what an operator means; more: a learning bridge.
    return itfs.length === 2 ? { mode: 'xconnect', pairs: [[itfs[0].name, itfs[1].name]] } : { mode: 'bridge', agingSeconds: 300 };
  }
  if (!isObj(v)) throw new ConfigError('forwarding', 'an object', v);
  if (v.mode === 'bridge') {
    checkKeys(v, 'forwarding', ['mode', 'agingSeconds']);
    return { mode: 'bridge', agingSeconds: int(v.agingSeconds, 'forwarding.agingSeconds', 1, 86400, 300) };
  }
  if (v.mode !== 'xconnect') throw new ConfigError('forwarding.mode', '"xconnect" or "bridge"', v.mode);
  checkKeys(v, 'forwarding', ['mode', 'pairs']);
  if (!Array.isArray(v.pairs) || v.pairs.length === 0) throw new ConfigError('forwarding.pairs', 'a non-empty array of [name, name]', v.pairs);
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
