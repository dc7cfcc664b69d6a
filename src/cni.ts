#!/usr/bin/env node
/**
 * vhostfwd's CNI plugin (spec 1.1.0, containernetworking/cni SPEC.md): a container runtime
 * (or Multus) executes it with CNI_* environment variables and the plugin configuration on
 * stdin; it gives the container a server-mode vhost-user port of a running vhostfwd, added
 * and removed through the control API (schema/control-api.openapi.json) on a unix socket.
 * The "interface" it creates is the port's socket: the result names it in `socketPath`
 * (added to result interfaces in CNI 1.1), for the VM in the pod (QEMU, cloud-hypervisor,
 * a DPDK app) to connect to.
 *
 * Nothing is kept on disk by the plugin itself: every name is derived from the invocation
 * (network name, CNI_CONTAINERID, CNI_IFNAME), so DEL, CHECK and GC find what ADD made
 * even after a reboot of the runtime, and vhostfwd (with --state) is the one source of truth.
 *
 * `main` is pure apart from the control API and the socket directory: it takes argv, env
 * and the stdin text and returns the exit code and the stdout text, so a test can run it
 * in-process; the bottom of the file is the executable.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';

/**
 * The spec versions whose whole protocol this plugin honours. 0.4.0 is the first with
 * CHECK; the result of ADD (no IPs, one interface) has the same shape in 0.4.0 and 1.0.0.
 * 1.1.0 adds socketPath (emitted only there), STATUS and GC (implemented). Versions
 * before 0.4.0 are left out: they lack CHECK and prevResult on DEL, which nobody tested.
 */
const SUPPORTED_VERSIONS = ['0.4.0', '1.0.0', '1.1.0'] as const;

const DEFAULT_CONTROL = '/run/vhostfwd/control.sock';
const DEFAULT_SOCKET_DIR = '/run/vhostfwd/cni';
/** sun_path holds 108 bytes with its NUL: the control API refuses longer paths. */
const MAX_SOCKET_PATH = 107;
/** One HTTP exchange with vhostfwd; a hung daemon must not hang the runtime's ADD forever. */
const API_TIMEOUT_MS = 15000;

/** Error codes of the spec's table, plus libcni's ErrInternal (999) for everything else. */
const CODE = {
  incompatibleVersion: 1,
  invalidEnv: 4,
  io: 5,
  decode: 6,
  invalidConfig: 7,
  tryAgainLater: 11,
  notAvailable: 50,
  internal: 999,
} as const;

class CniError extends Error {
  constructor(readonly code: number, msg: string, readonly details = '') {
    super(msg);
    this.name = 'CniError';
  }
}

interface NetConf {
  cniVersion: string;
  name: string;
  type: string;
  control: string;
  socketDir: string;
  queues: number;
  owner?: string | number;
  group?: string | number;
  permissions?: string;
  prevResult?: Record<string, unknown>;
  validAttachments?: Array<{ containerID: string; ifname: string }>;
}

interface Outcome {
  code: number;
  stdout: string;
}

type Env = Record<string, string | undefined>;

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function sha(s: string): string {
  return crypto.createHash('sha256').update(s).digest('hex');
}

/** Dotted decimal versions compared by number ("0.10.0" > "0.4.0"). */
function versionAtLeast(v: string, min: string): boolean {
  const a = v.split('.').map(Number);
  const b = min.split('.').map(Number);
  for (let i = 0; i < 3; i++) if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) > (b[i] ?? 0);
  return true;
}

// --- names ---------------------------------------------------------------------------

/** The spec's rule for CNI_CONTAINERID (and what makes it safe in a file name). */
const CONTAINER_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
/** The spec's rule for network names. */
const NETWORK_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

/**
 * Linux's rule for interface names (dev_valid_name): 1-15 bytes, not "." or "..", no '/',
 * ':' or whitespace. It becomes a file name here, so '/' and ".." matter beyond style.
 */
function validIfname(s: string): boolean {
  return Buffer.byteLength(s) >= 1 && Buffer.byteLength(s) <= 15 && s !== '.' && s !== '..' && !/[/:\s]/.test(s);
}

/**
 * The vhostfwd interface name of one attachment: `cni-` + 8 hex of the network name + `-`
 * + 16 hex of (container id, ifname). Hashed because container ids are 64 characters and
 * ifnames may hold characters the API refuses; the network part lets GC tell this
 * network's ports from another network's on the same vhostfwd. 29 characters, within
 * the API's ^[A-Za-z0-9_.-]{1,64}$.
 */
export function portName(network: string, containerId: string, ifname: string): string {
  return `cni-${sha(network).slice(0, 8)}-${sha(`${containerId}\0${ifname}`).slice(0, 16)}`;
}

/**
 * The per-container directory: the first 12 characters of the container id (what
 * `crictl ps` shows, for an operator looking at the directory) + `-` + 8 hex of the whole
 * id (two ids with the same prefix still get two directories). At most 21 characters, so
 * a long socketDir still leaves room under the 107-byte limit.
 */
function containerDir(socketDir: string, containerId: string): string {
  return path.join(socketDir, `${containerId.slice(0, 12)}-${sha(containerId).slice(0, 8)}`);
}

/** The port's socket: `<containerDir>/<ifname>.sock`, the name the VM in the pod looks for. */
export function socketPathOf(socketDir: string, containerId: string, ifname: string): string {
  return path.join(containerDir(socketDir, containerId), `${ifname}.sock`);
}

// --- input ---------------------------------------------------------------------------

function parseJson(stdin: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(stdin);
  } catch (e) {
    throw new CniError(CODE.decode, 'failed to decode content', `the network configuration on stdin is not JSON: ${(e as Error).message}`);
  }
  if (!isObj(v)) throw new CniError(CODE.decode, 'failed to decode content', 'the network configuration on stdin must be a JSON object');
  return v;
}

function checkVersion(v: unknown): string {
  if (typeof v !== 'string' || v === '') throw new CniError(CODE.invalidConfig, 'invalid network config', 'cniVersion must be a non-empty string');
  if (!(SUPPORTED_VERSIONS as readonly string[]).includes(v)) {
    throw new CniError(CODE.incompatibleVersion, 'incompatible CNI version', `cniVersion ${v} is not supported (supported: ${SUPPORTED_VERSIONS.join(', ')})`);
  }
  return v;
}

function ownerLike(v: unknown, key: string): string | number | undefined {
  if (v === undefined) return undefined;
  if ((typeof v === 'string' && v !== '') || (typeof v === 'number' && Number.isInteger(v) && v >= 0)) return v;
  throw new CniError(CODE.invalidConfig, 'invalid network config', `${key} must be a user/group name or a numeric id, got ${JSON.stringify(v)}`);
}

/** The plugin configuration: the spec's keys, ours with their defaults; anything else is ignored (runtimes add keys). */
function parseNetConf(stdin: string): NetConf {
  const o = parseJson(stdin);
  const bad = (why: string): never => {
    throw new CniError(CODE.invalidConfig, 'invalid network config', why);
  };
  const cniVersion = checkVersion(o.cniVersion);
  if (typeof o.name !== 'string' || !NETWORK_NAME.test(o.name)) bad(`name must be a network name (${NETWORK_NAME.source}), got ${JSON.stringify(o.name)}`);
  if (typeof o.type !== 'string' || o.type === '') bad(`type must be a non-empty string, got ${JSON.stringify(o.type)}`);
  const absPath = (key: string, def: string): string => {
    const v = o[key] ?? def;
    if (typeof v !== 'string' || !path.isAbsolute(v)) bad(`${key} must be an absolute path, got ${JSON.stringify(v)}`);
    return path.resolve(v as string);
  };
  const control = absPath('control', DEFAULT_CONTROL);
  const socketDir = absPath('socketDir', DEFAULT_SOCKET_DIR);
  const queues = o.queues ?? 1;
  if (typeof queues !== 'number' || !Number.isInteger(queues) || queues < 1 || queues > 8) bad(`queues must be an integer from 1 to 8, got ${JSON.stringify(o.queues)}`);
  if (o.permissions !== undefined && (typeof o.permissions !== 'string' || !/^0?[0-7]{3}$/.test(o.permissions))) {
    bad(`permissions must be an octal mode string such as "0660", got ${JSON.stringify(o.permissions)}`);
  }
  if (o.prevResult !== undefined && !isObj(o.prevResult)) bad('prevResult must be an object');
  const conf: NetConf = {
    cniVersion,
    name: o.name as string,
    type: o.type as string,
    control,
    socketDir,
    queues: queues as number,
    owner: ownerLike(o.owner, 'owner'),
    group: ownerLike(o.group, 'group'),
    permissions: o.permissions as string | undefined,
    prevResult: o.prevResult as Record<string, unknown> | undefined,
  };
  const va = o['cni.dev/valid-attachments'];
  if (va !== undefined) {
    if (!Array.isArray(va) || !va.every((a) => isObj(a) && typeof a.containerID === 'string' && typeof a.ifname === 'string')) {
      bad('cni.dev/valid-attachments must be a list of {containerID, ifname}');
    }
    conf.validAttachments = (va as Array<{ containerID: string; ifname: string }>).map((a) => ({ containerID: a.containerID, ifname: a.ifname }));
  }
  return conf;
}

interface Invocation {
  command: 'ADD' | 'DEL' | 'CHECK';
  containerId: string;
  netns: string;
  ifname: string;
}

/** CNI_ARGS: "K=V;K2=V2" (the spec's format). Its keys are not used, but a malformed value is an invalid variable. */
function checkArgs(s: string | undefined): void {
  if (s === undefined || s === '') return;
  for (const kv of s.split(';')) {
    if (kv === '') continue;
    const i = kv.indexOf('=');
    if (i <= 0) throw new CniError(CODE.invalidEnv, 'invalid necessary environment variables', `CNI_ARGS: "${kv}" is not KEY=VALUE`);
  }
}

/** The variables ADD/DEL/CHECK require (the spec's lists per command), all named when missing. */
function invocation(command: 'ADD' | 'DEL' | 'CHECK', env: Env): Invocation {
  const required = command === 'DEL' ? ['CNI_CONTAINERID', 'CNI_IFNAME'] : ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME'];
  const missing = required.filter((k) => !env[k]);
  if (missing.length > 0) throw new CniError(CODE.invalidEnv, 'invalid necessary environment variables', `missing: ${missing.join(', ')}`);
  const containerId = env.CNI_CONTAINERID as string;
  const ifname = env.CNI_IFNAME as string;
  const invalid: string[] = [];
  if (!CONTAINER_ID.test(containerId)) invalid.push(`CNI_CONTAINERID ${JSON.stringify(containerId)} (must match ${CONTAINER_ID.source})`);
  if (!validIfname(ifname)) invalid.push(`CNI_IFNAME ${JSON.stringify(ifname)} (an interface name: 1-15 bytes, no '/', ':' or whitespace)`);
  if (invalid.length > 0) throw new CniError(CODE.invalidEnv, 'invalid necessary environment variables', invalid.join('; '));
  checkArgs(env.CNI_ARGS);
  return { command, containerId, netns: env.CNI_NETNS ?? '', ifname };
}

// --- the control API -----------------------------------------------------------------

interface ApiReply {
  status: number;
  body: unknown;
}

/** Connection failures that clear up when vhostfwd (re)starts: the runtime should retry (code 11). */
const TRANSIENT = new Set(['ENOENT', 'ECONNREFUSED', 'ECONNRESET', 'EAGAIN', 'ETIMEDOUT']);

class ApiUnreachable extends Error {
  constructor(readonly errno: string, message: string) {
    super(message);
  }
}

function api(control: string, method: string, p: string, body?: unknown): Promise<ApiReply> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers: Record<string, string | number> = { accept: 'application/json' };
    if (data) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = data.length;
    }
    const req = http.request({ socketPath: control, method, path: p, headers, timeout: API_TIMEOUT_MS }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', (e) => reject(new ApiUnreachable('ECONNRESET', e.message)));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed: unknown = null;
        try {
          parsed = text === '' ? null : JSON.parse(text);
        } catch {
          parsed = text;
        }
        resolve({ status: res.statusCode ?? 0, body: parsed });
      });
    });
    req.on('timeout', () => req.destroy(Object.assign(new Error(`no reply within ${API_TIMEOUT_MS} ms`), { code: 'ETIMEDOUT' })));
    req.on('error', (e: NodeJS.ErrnoException) => reject(new ApiUnreachable(e.code ?? 'EIO', e.message)));
    req.end(data);
  });
}

/** The API's own error message, or the raw body when it is not the documented shape. */
function apiMessage(r: ApiReply): string {
  const b = r.body;
  if (isObj(b) && isObj(b.error) && typeof b.error.message === 'string') {
    const field = typeof b.error.field === 'string' ? ` (field ${b.error.field})` : '';
    return `${b.error.message}${field}`;
  }
  return `HTTP ${r.status}: ${typeof b === 'string' ? b : JSON.stringify(b)}`;
}

/** Call the API; an unreachable socket is code 11 (try again later), other failures 999. */
async function call(conf: NetConf, method: string, p: string, body?: unknown): Promise<ApiReply> {
  try {
    return await api(conf.control, method, p, body);
  } catch (e) {
    throw unreachable(conf, e);
  }
}

function unreachable(conf: NetConf, e: unknown): unknown {
  if (!(e instanceof ApiUnreachable)) return e;
  const code = TRANSIENT.has(e.errno) ? CODE.tryAgainLater : CODE.internal;
  return new CniError(code, code === CODE.tryAgainLater ? 'try again later' : 'vhostfwd control API failed', `cannot reach vhostfwd's control API at ${conf.control}: ${e.message}`);
}

function apiFailure(what: string, r: ApiReply): CniError {
  return new CniError(CODE.internal, `vhostfwd refused to ${what}`, apiMessage(r));
}

// --- commands ------------------------------------------------------------------------

interface ResultInterface {
  name: string;
  sandbox: string;
  socketPath?: string;
}

/**
 * The ADD result. With a prevResult (a plugin before us in the chain), it is passed on
 * with our interface appended, as the spec requires; on its own, one interface and no IPs
 * (a vhost-user port has no address the host assigns).
 */
function addResult(conf: NetConf, inv: Invocation, sock: string): Record<string, unknown> {
  const itf: ResultInterface = { name: inv.ifname, sandbox: inv.netns };
  if (versionAtLeast(conf.cniVersion, '1.1.0')) itf.socketPath = sock;
  const prev = conf.prevResult ?? {};
  const prevIfs = Array.isArray(prev.interfaces) ? (prev.interfaces as unknown[]) : [];
  return { ...prev, cniVersion: conf.cniVersion, interfaces: [...prevIfs, itf], ips: Array.isArray(prev.ips) ? prev.ips : [] };
}

function sockPathFor(conf: NetConf, inv: Invocation): string {
  const sock = socketPathOf(conf.socketDir, inv.containerId, inv.ifname);
  if (Buffer.byteLength(sock) > MAX_SOCKET_PATH) {
    throw new CniError(CODE.invalidConfig, 'invalid network config', `socketDir ${conf.socketDir} is too long: the socket ${sock} is over ${MAX_SOCKET_PATH} bytes (a unix socket's limit)`);
  }
  return sock;
}

/** Remove the per-container directory when nothing is left in it; anything else in it stays. */
function removeDirIfEmpty(dir: string): void {
  try {
    fs.rmdirSync(dir);
  } catch {
    // ENOENT: already gone; ENOTEMPTY: another interface of the container still lives there
  }
}

async function cmdAdd(conf: NetConf, inv: Invocation): Promise<Record<string, unknown>> {
  const sock = sockPathFor(conf, inv);
  const dir = path.dirname(sock);
  const name = portName(conf.name, inv.containerId, inv.ifname);
  try {
    fs.mkdirSync(conf.socketDir, { recursive: true, mode: 0o755 });
    // 0755: the VM in the pod may run as another user than vhostfwd and must reach the socket
    // (the socket's own mode, set through owner/group/permissions, is the access control)
    fs.mkdirSync(dir, { mode: 0o755 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw new CniError(CODE.internal, 'cannot create the socket directory', `${dir}: ${(e as Error).message}`);
  }
  try {
    fs.chmodSync(dir, 0o755); // mkdir's mode is cut by the umask
  } catch (e) {
    throw new CniError(CODE.internal, 'cannot create the socket directory', `${dir}: ${(e as Error).message}`);
  }
  const spec: Record<string, unknown> = { name, socket: sock, mode: 'server', queues: conf.queues };
  if (conf.owner !== undefined) spec.owner = conf.owner;
  if (conf.group !== undefined) spec.group = conf.group;
  if (conf.permissions !== undefined) spec.permissions = conf.permissions;
  let r: ApiReply;
  try {
    r = await call(conf, 'POST', '/v1/interfaces', spec);
  } catch (e) {
    removeDirIfEmpty(dir);
    throw e;
  }
  if (r.status === 201) return addResult(conf, inv, sock);
  if (r.status === 409) {
    // Same name: this (container, ifname) was ADDed before without a DEL, which the spec
    // calls an error. Same socket but another name: another network gave this container
    // the same ifname. Either way nothing of the existing port is touched.
    throw new CniError(CODE.internal, `interface ${inv.ifname} already exists in container ${inv.containerId}`, apiMessage(r));
  }
  removeDirIfEmpty(dir);
  throw apiFailure(`add port ${name} (${sock})`, r);
}

/** Whether something listens on a unix socket path (a stale file from a dead vhostfwd does not). */
function socketIsLive(p: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(p);
    const done = (live: boolean): void => {
      s.destroy();
      resolve(live);
    };
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
    s.setTimeout(2000, () => done(true)); // no answer: assume alive, keep the file
  });
}

/**
 * Best effort, as the spec asks of DEL: a port that is already gone (404) or a vhostfwd
 * that is not running (no control socket) is success. The socket file is vhostfwd's: it
 * unlinks it on removal; only a stale one nobody listens on (vhostfwd died without its
 * state file) is removed here, so the directory can go.
 */
async function cmdDel(conf: NetConf, inv: Invocation): Promise<void> {
  const sock = sockPathFor(conf, inv);
  const name = portName(conf.name, inv.containerId, inv.ifname);
  let r: ApiReply | null = null;
  try {
    r = await api(conf.control, 'DELETE', `/v1/interfaces/${encodeURIComponent(name)}`);
  } catch (e) {
    // No control socket, or one nobody listens on (vhostfwd died): the port died with
    // vhostfwd, DEL is done. A socket we may not open (EACCES) or a vhostfwd that does not
    // answer is not "gone": that fails, and the runtime retries the DEL.
    if (!(e instanceof ApiUnreachable && (e.errno === 'ENOENT' || e.errno === 'ECONNREFUSED'))) throw unreachable(conf, e);
  }
  if (r !== null && r.status !== 200 && r.status !== 404) throw apiFailure(`remove port ${name}`, r);
  try {
    if (fs.lstatSync(sock).isSocket() && !(await socketIsLive(sock))) fs.unlinkSync(sock);
  } catch {
    // ENOENT: vhostfwd unlinked it (the usual case)
  }
  removeDirIfEmpty(path.dirname(sock));
}

/** The spec's CHECK: the port exists in vhostfwd, in server mode, on the socket ADD gave, and the socket is there. */
async function cmdCheck(conf: NetConf, inv: Invocation): Promise<void> {
  const sock = sockPathFor(conf, inv);
  const name = portName(conf.name, inv.containerId, inv.ifname);
  const prev = conf.prevResult;
  if (prev !== undefined) {
    const ifs = Array.isArray(prev.interfaces) ? (prev.interfaces as unknown[]) : [];
    const mine = ifs.find((i): i is Record<string, unknown> => isObj(i) && i.name === inv.ifname);
    if (!mine) throw new CniError(CODE.internal, 'interface missing from prevResult', `prevResult lists no interface ${inv.ifname}`);
    if (mine.socketPath !== undefined && mine.socketPath !== sock) {
      throw new CniError(CODE.internal, 'socket path differs', `prevResult has ${String(mine.socketPath)} for ${inv.ifname}, this configuration gives ${sock}`);
    }
  }
  const r = await call(conf, 'GET', `/v1/interfaces/${encodeURIComponent(name)}`);
  if (r.status === 404) throw new CniError(CODE.internal, `no vhostfwd port for interface ${inv.ifname}`, `vhostfwd has no interface ${name}: ${apiMessage(r)}`);
  if (r.status !== 200 || !isObj(r.body)) throw apiFailure(`show port ${name}`, r);
  const info = r.body;
  if (info.socket !== sock) throw new CniError(CODE.internal, 'socket path differs', `vhostfwd port ${name} is on ${String(info.socket)}, expected ${sock}`);
  if (info.mode !== 'server') throw new CniError(CODE.internal, 'port mode differs', `vhostfwd port ${name} is in ${String(info.mode)} mode, expected server`);
  let isSock = false;
  try {
    isSock = fs.lstatSync(sock).isSocket();
  } catch {
    // missing: reported below
  }
  if (!isSock) throw new CniError(CODE.internal, 'socket missing', `${sock} is not a socket (vhostfwd port ${name} exists)`);
}

/** STATUS (1.1): ready when vhostfwd's API answers. */
async function cmdStatus(conf: NetConf): Promise<void> {
  try {
    const r = await api(conf.control, 'GET', '/v1/version');
    if (r.status === 200) return;
    throw new CniError(CODE.notAvailable, 'plugin not available', `vhostfwd's control API at ${conf.control}: ${apiMessage(r)}`);
  } catch (e) {
    if (e instanceof CniError) throw e;
    throw new CniError(CODE.notAvailable, 'plugin not available', `cannot reach vhostfwd's control API at ${conf.control}: ${(e as Error).message}`);
  }
}

/**
 * GC (1.1): remove this network's ports (names `cni-<network hash>-...`) whose attachment
 * is not in cni.dev/valid-attachments. Other networks' ports and ports added by hand do
 * not match the prefix and are never touched. Keeps going past a failure, reports them all.
 */
async function cmdGc(conf: NetConf): Promise<void> {
  const valid = new Set((conf.validAttachments ?? []).map((a) => portName(conf.name, a.containerID, a.ifname)));
  const r = await call(conf, 'GET', '/v1/interfaces');
  if (r.status !== 200 || !isObj(r.body) || !Array.isArray(r.body.interfaces)) throw apiFailure('list ports', r);
  const prefix = new RegExp(`^cni-${sha(conf.name).slice(0, 8)}-[0-9a-f]{16}$`);
  const failures: string[] = [];
  for (const i of r.body.interfaces as unknown[]) {
    if (!isObj(i) || typeof i.name !== 'string' || !prefix.test(i.name) || valid.has(i.name)) continue;
    try {
      const d = await call(conf, 'DELETE', `/v1/interfaces/${encodeURIComponent(i.name)}`);
      if (d.status !== 200 && d.status !== 404) failures.push(`${i.name}: ${apiMessage(d)}`);
      else if (typeof i.socket === 'string' && i.socket.startsWith(conf.socketDir + '/')) removeDirIfEmpty(path.dirname(i.socket));
    } catch (e) {
      failures.push(`${i.name}: ${(e as Error).message}`);
    }
  }
  if (failures.length > 0) throw new CniError(CODE.internal, 'some stale ports could not be removed', failures.join('; '));
}

// --- entry ---------------------------------------------------------------------------

function errorOut(version: string, e: CniError): Outcome {
  return { code: 1, stdout: JSON.stringify({ cniVersion: version, code: e.code, msg: e.message, details: e.details }) + '\n' };
}

/** VERSION: answers whatever cniVersion it is asked in (that is the probe's point); empty stdin is allowed. */
function cmdVersion(stdin: string): Outcome {
  let asked: string = SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.length - 1];
  if (stdin.trim() !== '') {
    const o = parseJson(stdin);
    if (o.cniVersion !== undefined) {
      if (typeof o.cniVersion !== 'string') throw new CniError(CODE.decode, 'failed to decode content', 'cniVersion must be a string');
      asked = o.cniVersion;
    }
  }
  return { code: 0, stdout: JSON.stringify({ cniVersion: asked, supportedVersions: [...SUPPORTED_VERSIONS] }) + '\n' };
}

/** The cniVersion to put in an error: the input's when it is readable, else ours. */
function versionForError(stdin: string): string {
  try {
    const o = JSON.parse(stdin) as unknown;
    if (isObj(o) && typeof o.cniVersion === 'string' && o.cniVersion !== '') return o.cniVersion;
  } catch {
    // not JSON: the error says so
  }
  return SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.length - 1];
}

/**
 * The plugin: argv is unused (CNI passes everything in env and stdin; kept for the
 * bin's signature), env the CNI_* variables, stdin the configuration text.
 */
export async function main(_argv: readonly string[], env: Env, stdin: string): Promise<Outcome> {
  const command = env.CNI_COMMAND;
  try {
    if (!command) throw new CniError(CODE.invalidEnv, 'invalid necessary environment variables', 'missing: CNI_COMMAND');
    if (command === 'VERSION') return cmdVersion(stdin);
    if (command !== 'ADD' && command !== 'DEL' && command !== 'CHECK' && command !== 'STATUS' && command !== 'GC') {
      throw new CniError(CODE.invalidEnv, 'invalid necessary environment variables', `CNI_COMMAND: unknown command ${JSON.stringify(command)} (expected ADD, DEL, CHECK, STATUS, GC or VERSION)`);
    }
    if (command === 'STATUS' || command === 'GC') {
      if (command === 'GC' && !env.CNI_PATH) throw new CniError(CODE.invalidEnv, 'invalid necessary environment variables', 'missing: CNI_PATH');
      const conf = parseNetConf(stdin);
      // STATUS and GC exist from 1.1.0: a configuration of an older version cannot ask for them
      if (!versionAtLeast(conf.cniVersion, '1.1.0')) throw new CniError(CODE.incompatibleVersion, 'incompatible CNI version', `${command} needs cniVersion 1.1.0 or later, the configuration has ${conf.cniVersion}`);
      if (command === 'STATUS') await cmdStatus(conf);
      else await cmdGc(conf);
      return { code: 0, stdout: '' };
    }
    // the environment first: a runtime that forgot CNI_IFNAME hears so whatever its stdin holds
    const inv = invocation(command, env);
    const conf = parseNetConf(stdin);
    if (command === 'ADD') return { code: 0, stdout: JSON.stringify(await cmdAdd(conf, inv)) + '\n' };
    if (command === 'CHECK' && !versionAtLeast(conf.cniVersion, '0.4.0')) throw new CniError(CODE.incompatibleVersion, 'incompatible CNI version', 'CHECK needs cniVersion 0.4.0 or later');
    if (command === 'DEL') await cmdDel(conf, inv);
    else await cmdCheck(conf, inv);
    return { code: 0, stdout: '' };
  } catch (e) {
    const err = e instanceof CniError ? e : new CniError(CODE.internal, 'internal error', (e as Error).stack ?? String(e));
    return errorOut(versionForError(stdin), err);
  }
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

if (require.main === module) {
  void (async () => {
    let stdin: string;
    try {
      stdin = await readStdin();
    } catch (e) {
      const out = errorOut(SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.length - 1], new CniError(CODE.io, 'I/O failure', `reading the configuration from stdin: ${(e as Error).message}`));
      process.stdout.write(out.stdout);
      process.exitCode = out.code;
      return;
    }
    const out = await main(process.argv.slice(2), process.env, stdin);
    // exitCode, not exit(): stdout to a pipe is written asynchronously and must drain first
    process.stdout.write(out.stdout);
    process.exitCode = out.code;
  })();
}
