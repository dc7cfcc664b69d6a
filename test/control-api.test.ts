/**
 * Issue 20: the control API against the vhostfwd process an operator runs (`vhostfwd run
 * --control`), driven over its unix socket by a plain HTTP client. Every response is
 * validated against schema/control-api.openapi.json; every refusal must change nothing;
 * a bystander pair forwards byte-exact while 100 ports are added, connected, used and
 * removed, and vhostfwd's fds and RSS come back to their baseline.
 */
import t, { Test } from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import Ajv2020 from 'ajv/dist/2020';
import { SyntheticGuest, macOf } from '../src/frontend/guest';
import { Traffic } from '../src/frontend/traffic';
import { tmpDir, waitListening } from '../kit/env';
import { pump, assertFlows } from './helpers/traffic';

const CLI = path.join(__dirname, '..', 'src', 'cli.js');
const OPENAPI = path.join(__dirname, '..', '..', 'schema', 'control-api.openapi.json');

interface Reply {
  status: number;
  body: Record<string, unknown>;
  raw: string;
}

/** A raw HTTP request on the unix socket (this client shares no code with src/). */
function request(socket: string, method: string, urlPath: string, body?: string | Buffer, headers: Record<string, string> = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const h: Record<string, string | number> = { ...headers };
    if (body !== undefined) {
      h['content-length'] = Buffer.byteLength(body);
      if (!('content-type' in h)) h['content-type'] = 'application/json';
    }
    const req = http.request({ socketPath: socket, method, path: urlPath, headers: h, timeout: 10000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const raw = Buffer.concat(chunks).toString();
        let parsed: Record<string, unknown> = {};
        try {
          parsed = JSON.parse(raw) as Record<string, unknown>;
        } catch {
          parsed = { unparsable: raw };
        }
        resolve({ status: res.statusCode ?? 0, body: parsed, raw });
      });
    });
    req.on('timeout', () => req.destroy(new Error(`no answer to ${method} ${urlPath}`)));
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}
const json = (socket: string, method: string, p: string, body?: unknown): Promise<Reply> => request(socket, method, p, body === undefined ? undefined : JSON.stringify(body));

/** Validators for the OpenAPI document's component schemas. */
function contract(): (name: string, v: unknown) => string | null {
  const doc = JSON.parse(fs.readFileSync(OPENAPI, 'utf8')) as Record<string, unknown>;
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  ajv.addSchema({ ...doc, $id: 'api' });
  return (name, v) => {
    const check = ajv.getSchema(`api#/components/schemas/${name}`);
    if (!check) return `no schema ${name}`;
    return check(v) ? null : ajv.errorsText(check.errors);
  };
}
const valid = contract();

function conforms(t: Test, name: string, r: Reply, status: number, what: string): void {
  t.equal(r.status, status, `${what}: status ${status} (${r.raw.slice(0, 200)})`);
  t.equal(valid(name, r.body), null, `${what}: the reply is a valid ${name}`);
}

interface Proc {
  child: ChildProcess;
  stderr: () => string;
  exited: Promise<number | null>;
}

function startVhostfwd(args: string[]): Proc {
  const child = spawn(process.execPath, [CLI, 'run', '--log-level', 'warn', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr?.on('data', (b: Buffer) => (err += b.toString()));
  return { child, stderr: () => err, exited: new Promise((r) => child.on('exit', (c) => r(c))) };
}

function usage(pid: number): { fds: number; rssKiB: number; guestMaps: number } {
  const rss = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  const maps = fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter((l) => l.includes('synthetic-guest')).length;
  return { fds: fs.readdirSync(`/proc/${pid}/fd`).length, rssKiB: rss ? Number(rss[1]) : -1, guestMaps: maps };
}

async function setup(t: Test, cfg: Record<string, unknown>, extraArgs: string[] = []): Promise<{ dir: string; ctl: string; sock: (n: string) => string; proc: Proc }> {
  const dir = tmpDir('vhostfwd-ctl-');
  const ctl = path.join(dir, 'control.sock');
  const sock = (n: string) => path.join(dir, `${n}.sock`);
  fs.writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify(cfg));
  const proc = startVhostfwd(['--config', path.join(dir, 'cfg.json'), '--control', ctl, ...extraArgs]);
  t.teardown(() => {
    proc.child.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await waitListening(ctl, 10000, 'the control socket');
  return { dir, ctl, sock, proc };
}

t.test('add, show, list, pair, move, remove: real traffic through ports made at run time; replies match the OpenAPI document', async (t) => {
  const { ctl, sock, proc } = await setup(t, { interfaces: [], forwarding: { mode: 'xconnect' }, workers: [{ queues: [] }, { queues: [] }] });
  t.equal(fs.statSync(ctl).mode & 0o777, 0o600, 'the control socket is mode 0600');
  conforms(t, 'Version', await json(ctl, 'GET', '/v1/version'), 200, 'version');
  conforms(t, 'InterfaceList', await json(ctl, 'GET', '/v1/interfaces'), 200, 'empty list');

  const t0 = Date.now();
  const addA = await json(ctl, 'POST', '/v1/interfaces', { name: 'a', socket: sock('a') });
  const addMs = Date.now() - t0;
  conforms(t, 'InterfaceInfo', addA, 201, 'add a');
  t.ok(fs.statSync(sock('a')).isSocket(), 'a: its socket exists when the reply arrives');
  t.ok(addMs < 1000, `a: added and listening ${addMs} ms after the request`);
  conforms(t, 'InterfaceInfo', await json(ctl, 'POST', '/v1/interfaces', { name: 'b', socket: sock('b'), queues: 2, mtu: 9000, coalesce: { frames: 8, usecs: 50 } }), 201, 'add b');
  const dup = await json(ctl, 'POST', '/v1/interfaces', { name: 'a', socket: sock('a2') });
  conforms(t, 'Error', dup, 409, 'add a again');
  t.same([(dup.body.error as Record<string, unknown>).code, (dup.body.error as Record<string, unknown>).field], ['Conflict', 'name'], 'a Conflict about the name');

  const A = await SyntheticGuest.start({ socket: sock('a'), mac: macOf(1), memSize: 4 << 20 });
  const B = await SyntheticGuest.start({ socket: sock('b'), mac: macOf(2), memSize: 4 << 20 });
  t.teardown(() => {
    A.close();
    B.close();
  });
  const noPair = await pump(A, B, 8, [64], { deadlineMs: 300 });
  t.equal(noPair.ab.received + noPair.ba.received, 0, 'unpaired ports forward nothing');
  conforms(t, 'Forwarding', await json(ctl, 'POST', '/v1/forwarding/pairs', { a: 'a', b: 'b' }), 200, 'pair a b');
  // frames sent while unpaired were dropped (counted as no-dest); start counting afresh
  assertFlows(t, await pump(A, B, 2000, [60, 1514, 4000], { deadlineMs: 30000 }), 2000, 'paired through the API');

  const show = await json(ctl, 'GET', '/v1/interfaces/a');
  conforms(t, 'InterfaceInfo', show, 200, 'show a');
  t.equal(show.body.connected, true, 'show: connected');
  t.ok((show.body.features as string[]).includes('VIRTIO_F_VERSION_1') && (show.body.features as string[]).includes('VIRTIO_NET_F_MRG_RXBUF'), 'show: negotiated features by name');
  t.ok((show.body.protocolFeatures as string[]).includes('REPLY_ACK'), 'show: protocol features by name');
  const rings = show.body.rings as Array<Record<string, unknown>>;
  const txA = rings.find((r) => r.index === 1);
  t.same([txA?.started, txA?.kick, txA?.call, txA?.size, txA?.worker], [true, true, true, 256, 0], 'show: TX ring 1 started, kick and call set, 256 entries, worker 0');
  t.ok((txA?.packets as number) >= 2000 && txA?.lastAvailIdx === (txA?.packets as number) % 65536, `show: TX counters (${String(txA?.packets)} packets, last_avail ${String(txA?.lastAvailIdx)})`);

  conforms(t, 'QueuePlacement', await json(ctl, 'PUT', '/v1/interfaces/a/queues/0', { worker: 1 }), 200, 'move a:0 to worker 1');
  const moved = await json(ctl, 'GET', '/v1/interfaces/a');
  t.equal((moved.body.rings as Array<Record<string, unknown>>).find((r) => r.index === 1)?.worker, 1, 'show: a:0 polled by worker 1 now');
  assertFlows(t, await pump(A, B, 2000, [60, 1514], { deadlineMs: 30000 }), 2000, 'after the move');
  conforms(t, 'Error', await json(ctl, 'PUT', '/v1/interfaces/a/queues/0', { worker: 7 }), 400, 'move to a worker that does not exist');
  conforms(t, 'Error', await json(ctl, 'PUT', '/v1/interfaces/a/queues/3', { worker: 0 }), 404, 'move a queue that does not exist');

  conforms(t, 'Stats', await json(ctl, 'GET', '/v1/stats'), 200, 'stats');
  const rm = await json(ctl, 'DELETE', '/v1/interfaces/a');
  conforms(t, 'Removed', rm, 200, 'remove a');
  t.notOk(fs.existsSync(sock('a')), 'a: the socket path it created is unlinked');
  conforms(t, 'Error', await json(ctl, 'GET', '/v1/interfaces/a'), 404, 'show a after removal');
  const fw = await json(ctl, 'GET', '/v1/forwarding');
  t.same(fw.body, { mode: 'xconnect', pairs: [] }, 'its pair went with it');
  const list = await json(ctl, 'GET', '/v1/interfaces');
  t.same((list.body.interfaces as Array<Record<string, unknown>>).map((i) => i.name), ['b'], 'list: b only');
  t.notMatch(proc.stderr(), /ERROR|uncaught/i, 'nothing logged at error');
});

t.test('malformed and hostile requests get a named error and change nothing', async (t) => {
  const dir0 = tmpDir('vhostfwd-allowed-');
  t.teardown(() => fs.rmSync(dir0, { recursive: true, force: true }));
  const { ctl, sock, dir } = await setup(t, { interfaces: [], control: { socketDir: dir0 } });
  fs.symlinkSync('/tmp', path.join(dir0, 'escape'));
  const ok = await json(ctl, 'POST', '/v1/interfaces', { name: 'in', socket: path.join(dir0, 'in.sock') });
  t.equal(ok.status, 201, `a socket inside socketDir is accepted (${ok.raw.slice(0, 120)})`);
  const before = await json(ctl, 'GET', '/v1/interfaces');
  const cases: Array<[string, () => Promise<Reply>, number, string | undefined]> = [
    ['not JSON', () => request(ctl, 'POST', '/v1/interfaces', '{"name": "x",'), 400, '(body)'],
    ['an array', () => json(ctl, 'POST', '/v1/interfaces', [1, 2]), 400, '(body)'],
    ['wrong type', () => json(ctl, 'POST', '/v1/interfaces', { name: 'x', socket: path.join(dir0, 'x.sock'), queues: 'two' }), 400, 'queues'],
    ['queues out of range', () => json(ctl, 'POST', '/v1/interfaces', { name: 'x', socket: path.join(dir0, 'x.sock'), queues: 129 }), 400, 'queues'],
    ['unknown key', () => json(ctl, 'POST', '/v1/interfaces', { name: 'x', socket: path.join(dir0, 'x.sock'), colour: 'red' }), 400, 'colour'],
    ['unknown feature', () => json(ctl, 'POST', '/v1/interfaces', { name: 'x', socket: path.join(dir0, 'x.sock'), maskFeatures: ['VIRTIO_NET_F_WARP'] }), 400, 'maskFeatures[0]'],
    ['missing socket', () => json(ctl, 'POST', '/v1/interfaces', { name: 'x' }), 400, 'socket'],
    ['name with a slash', () => json(ctl, 'POST', '/v1/interfaces', { name: '../x', socket: path.join(dir0, 'x.sock') }), 400, 'name'],
    ['traversal out of socketDir', () => json(ctl, 'POST', '/v1/interfaces', { name: 'x', socket: `${dir0}/../x.sock` }), 400, 'socket'],
    ['outside socketDir', () => json(ctl, 'POST', '/v1/interfaces', { name: 'x', socket: sock('x') }), 400, 'socket'],
    ['a symlink out of socketDir', () => json(ctl, 'POST', '/v1/interfaces', { name: 'x', socket: path.join(dir0, 'escape', 'x.sock') }), 400, 'socket'],
    ['relative socket', () => json(ctl, 'POST', '/v1/interfaces', { name: 'x', socket: 'x.sock' }), 400, 'socket'],
    ['unknown owner', () => json(ctl, 'POST', '/v1/interfaces', { name: 'x', socket: path.join(dir0, 'x.sock'), owner: 'no-such-user-here' }), 400, 'owner'],
    ['ownership in client mode', () => json(ctl, 'POST', '/v1/interfaces', { name: 'x', socket: path.join(dir0, 'x.sock'), mode: 'client', permissions: '0660' }), 400, 'permissions'],
    ['the same socket as another port', () => json(ctl, 'POST', '/v1/interfaces', { name: 'x', socket: path.join(dir0, 'in.sock') }), 409, 'socket'],
    ['a huge body', () => request(ctl, 'POST', '/v1/interfaces', Buffer.alloc(1 << 20, 0x20)), 413, undefined],
    ['not application/json', () => request(ctl, 'POST', '/v1/interfaces', '{}', { 'content-type': 'text/plain' }), 415, undefined],
    ['a method the endpoint has not', () => json(ctl, 'PATCH', '/v1/interfaces'), 405, undefined],
    ['an unknown endpoint', () => json(ctl, 'GET', '/v2/interfaces'), 404, undefined],
    ['removing a name that does not exist', () => json(ctl, 'DELETE', '/v1/interfaces/nope'), 404, 'name'],
    ['a pair in bridge mode', () => json(ctl, 'POST', '/v1/forwarding/pairs', { a: 'in', b: 'in' }), 409, 'mode'],
    ['a move body of the wrong type', () => json(ctl, 'PUT', '/v1/interfaces/in/queues/0', { worker: 'first' }), 400, 'worker'],
  ];
  for (const [what, send, status, field] of cases) {
    const r = await send();
    conforms(t, 'Error', r, status, what);
    t.equal((r.body.error as Record<string, unknown> | undefined)?.field, field, `${what}: names the field ${String(field)}`);
  }
  t.same((await json(ctl, 'GET', '/v1/interfaces')).body, before.body, 'the interface list is as before');
  t.same(fs.readdirSync(dir0).sort(), ['escape', 'in.sock'], 'no socket was made by a refused request');
  t.notOk(fs.existsSync(path.join(dir, 'x.sock')), 'nothing made outside socketDir');

  // two clients racing on one name: one success, one Conflict, one port
  const racers = await Promise.all([0, 1, 2, 3].map(() => json(ctl, 'POST', '/v1/interfaces', { name: 'race', socket: path.join(dir0, 'race.sock') })));
  t.same(racers.map((r) => r.status).sort(), [201, 409, 409, 409], 'four adds of one name: one 201, three 409');
  const removers = await Promise.all([0, 1].map(() => json(ctl, 'DELETE', '/v1/interfaces/race')));
  t.same(removers.map((r) => r.status).sort(), [200, 404], 'two removes of one name: one 200, one 404');
  t.notOk(fs.existsSync(path.join(dir0, 'race.sock')), 'the raced port is gone with its socket');
});

t.test('a bystander pair forwards byte-exact while 100 ports are added, connected, used and removed; fds and RSS back at baseline', async (t) => {
  const { ctl, sock, proc } = await setup(t, {
    interfaces: [{ name: 'p', socket: '' }, { name: 'q', socket: '' }].map((i) => ({ ...i, socket: `/tmp/${process.pid}-${i.name}.sock` })),
    forwarding: { mode: 'xconnect', pairs: [['p', 'q']] },
  });
  const P = await SyntheticGuest.start({ socket: `/tmp/${process.pid}-p.sock`, mac: macOf(1), memSize: 4 << 20 });
  const Q = await SyntheticGuest.start({ socket: `/tmp/${process.pid}-q.sock`, mac: macOf(2), memSize: 4 << 20 });
  t.teardown(() => {
    P.close();
    Q.close();
  });
  const pid = proc.child.pid ?? 0;
  const cycle = async (i: number): Promise<{ ok: boolean; addMs: number; why: string }> => {
    const x = `x${i}`;
    const y = `y${i}`;
    const t0 = Date.now();
    const ax = await json(ctl, 'POST', '/v1/interfaces', { name: x, socket: sock(x) });
    const addMs = Date.now() - t0;
    const ay = await json(ctl, 'POST', '/v1/interfaces', { name: y, socket: sock(y) });
    const pr = await json(ctl, 'POST', '/v1/forwarding/pairs', { a: x, b: y });
    if (ax.status !== 201 || ay.status !== 201 || pr.status !== 200) return { ok: false, addMs, why: `${ax.raw} ${ay.raw} ${pr.raw}` };
    const X = await SyntheticGuest.start({ socket: sock(x), mac: macOf(10), memSize: 2 << 20, queueSize: 64 });
    const Y = await SyntheticGuest.start({ socket: sock(y), mac: macOf(11), memSize: 2 << 20, queueSize: 64 });
    const r = await pump(X, Y, 16, [64, 1500], { deadlineMs: 10000 });
    X.close();
    Y.close();
    const rx = await json(ctl, 'DELETE', `/v1/interfaces/${x}`);
    const ry = await json(ctl, 'DELETE', `/v1/interfaces/${y}`);
    const ok = r.complete && r.ab.mismatched + r.ba.mismatched === 0 && rx.status === 200 && ry.status === 200 && !fs.existsSync(sock(x));
    return { ok, addMs, why: ok ? '' : `pump ${r.ab.received}/${r.ba.received}, rm ${rx.status} ${ry.status}` };
  };
  // warm-up: the first cycles grow heaps and code caches that then stay
  for (let i = 0; i < 5; i++) await cycle(1000 + i);
  await sleep(300);
  const base = usage(pid);
  const traffic = new Traffic(P, Q, { sizes: [64, 700, 1514] });
  traffic.start();
  const failures: string[] = [];
  const addMs: number[] = [];
  for (let i = 0; i < 100; i++) {
    const c = await cycle(i);
    addMs.push(c.addMs);
    if (!c.ok) failures.push(`cycle ${i}: ${c.why}`);
  }
  await traffic.stop(10000);
  t.same(failures, [], 'every cycle: two ports added, paired, 16 frames each way byte-exact, removed with their sockets');
  t.ok(traffic.ab.sent > 1000 && traffic.ba.sent > 1000, `the bystanders kept sending (${traffic.ab.sent} and ${traffic.ba.sent} frames)`);
  t.equal(traffic.ab.received, traffic.ab.sent, 'bystander P->Q: every frame received');
  t.equal(traffic.ba.received, traffic.ba.sent, 'bystander Q->P: every frame received');
  t.equal(traffic.ab.mismatched + traffic.ba.mismatched, 0, 'bystander: every frame byte-exact, in order');
  addMs.sort((a, b) => a - b);
  t.ok(addMs[50] < 100, `a port accepts its frontend ${addMs[50]} ms after the add request (median; max ${addMs[addMs.length - 1]} ms)`);
  const list = await json(ctl, 'GET', '/v1/interfaces');
  t.same((list.body.interfaces as Array<Record<string, unknown>>).map((i) => i.name), ['p', 'q'], 'only the bystanders are left');
  let end = usage(pid);
  const until = Date.now() + 5000;
  while ((end.fds !== base.fds || end.guestMaps !== base.guestMaps) && Date.now() < until) {
    await sleep(50);
    end = usage(pid);
  }
  t.equal(end.fds, base.fds, `vhostfwd's fds: ${base.fds} after the warm-up, ${end.fds} after 100 cycles`);
  t.equal(end.guestMaps, base.guestMaps, `guest memory mappings: ${base.guestMaps} then ${end.guestMaps} (removed ports' guests are unmapped)`);
  t.ok(end.rssKiB - base.rssKiB < 32 * 1024, `RSS ${base.rssKiB} KiB then ${end.rssKiB} KiB (bound +32 MiB)`);
  t.notMatch(proc.stderr(), /ERROR|uncaught/i, 'nothing logged at error');
  fs.rmSync(`/tmp/${process.pid}-p.sock`, { force: true });
  fs.rmSync(`/tmp/${process.pid}-q.sock`, { force: true });
});
