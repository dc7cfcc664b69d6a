/**
 * The CNI plugin (src/cni.ts) driven the way a container runtime drives it: `node
 * dist/src/cni.js` spawned with CNI_* variables and the network configuration on stdin,
 * judged by its stdout JSON and exit status, against a real `vhostfwd run --control`
 * started here with no interfaces. A Python vhost-user frontend (test/kit/pyfront, written
 * from the spec, no code shared with src/) connects to the socket ADD returns.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { main, portName, socketPathOf } from '../src/cni';
import { tmpDir, waitListening, waitUntil } from '../kit/env';

const ROOT = path.join(__dirname, '..', '..');
const CNI = path.join(__dirname, '..', 'src', 'cni.js');
const CLI = path.join(__dirname, '..', 'src', 'cli.js');
const PYFRONT = path.join(ROOT, 'test', 'kit', 'pyfront');

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
  json: Record<string, unknown> | null;
}

/** Spawn a process with stdin text, bounded in time; the JSON of its stdout when there is some. */
function exec(cmd: string, args: string[], env: Record<string, string>, stdin: string, timeoutMs = 30000): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (status) => {
      clearTimeout(timer);
      let json: Record<string, unknown> | null = null;
      try {
        json = out.trim() === '' ? null : (JSON.parse(out) as Record<string, unknown>);
      } catch {
        json = null;
      }
      resolve({ status, stdout: out, stderr: err, json });
    });
    child.stdin.on('error', () => undefined); // a plugin that exits before reading stdin
    child.stdin.end(stdin);
  });
}

/** The plugin as a runtime runs it: a minimal environment (PATH only) plus the CNI_* variables. */
function cni(vars: Record<string, string>, stdin: string): Promise<Run> {
  return exec(process.execPath, [CNI], { PATH: process.env.PATH ?? '/usr/bin:/bin', ...vars }, stdin);
}

/** One request to the control API, as a client independent of the plugin's. */
function get(control: string, p: string): Promise<{ status: number; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: control, method: 'GET', path: p, timeout: 10000 }, (res) => {
      let s = '';
      res.on('data', (b: Buffer) => (s += b.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(s) as Record<string, unknown> }));
    });
    req.on('timeout', () => req.destroy(new Error('control API: no reply in 10 s')));
    req.on('error', reject);
    req.end();
  });
}

/** Connect a spec-written frontend to `sock`, negotiate as QEMU does, close; its JSON verdict. */
const FRONTEND = `
import json, os, sys
sys.path.insert(0, sys.argv[1])
import vhost_user_frontend as vu
out = {'ok': False, 'error': None}
try:
    g = vu.Guest(2 << 20, 1, False)
    g.fill_rx()
    c = vu.Connection(sys.argv[2], timeout=5.0)
    vu.negotiate(c, g, protocol_features=True, reply_ack=True, want_mrg=False, legacy=False)
    out['ok'] = True
    c.close()
    g.close()
except Exception as e:
    out['error'] = repr(e)
sys.stdout.write(json.dumps(out) + '\\n')
`;

t.test('the CNI plugin against a running vhostfwd: VERSION, env/stdin errors, ADD/CHECK/DEL, a frontend on the socket, an absent vhostfwd', async (t) => {
  const dir = tmpDir('vhostfwd-cni-');
  const control = path.join(dir, 'control.sock');
  const socketDir = path.join(dir, 'cni');
  const child = spawn(process.execPath, [CLI, 'run', '--log-level', 'warn', '--control', control], { stdio: ['ignore', 'ignore', 'pipe'] });
  let daemonErr = '';
  child.stderr.on('data', (b: Buffer) => (daemonErr += b.toString()));
  const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await waitUntil(() => fs.existsSync(control) || child.exitCode !== null, 15000, 'the control socket');
  t.ok(fs.existsSync(control), `vhostfwd run --control made its socket ${daemonErr.slice(-400)}`);
  await waitListening(control, 10000, 'the control socket');

  const conf = { cniVersion: '1.1.0', name: 'vhostnet', type: 'vhostfwd', control, socketDir, queues: 2, permissions: '0660' };
  const stdin = JSON.stringify(conf);
  const containerId = 'f00dcafe0123456789abcdef0123456789abcdef0123456789abcdef01234567';
  const base = { CNI_CONTAINERID: containerId, CNI_NETNS: '/var/run/netns/cni-test', CNI_IFNAME: 'net1', CNI_PATH: '/opt/cni/bin' };

  // VERSION: the probe answers in the version it is asked, with what the plugin honours
  const v = await cni({ CNI_COMMAND: 'VERSION' }, JSON.stringify({ cniVersion: '1.0.0' }));
  t.equal(v.status, 0, 'VERSION exits 0');
  t.same(v.json, { cniVersion: '1.0.0', supportedVersions: ['0.4.0', '1.0.0', '1.1.0'] }, 'VERSION: cniVersion of the input, the supported versions');

  const inProcess = await main([], { CNI_COMMAND: 'VERSION' }, '');
  t.same([inProcess.code, JSON.parse(inProcess.stdout)], [0, { cniVersion: '1.1.0', supportedVersions: ['0.4.0', '1.0.0', '1.1.0'] }], 'main() in-process: VERSION with empty stdin answers in 1.1.0');

  // the environment and stdin, checked before anything is touched
  const noEnv = await cni({ CNI_COMMAND: 'ADD', CNI_CONTAINERID: containerId }, stdin);
  t.equal(noEnv.status, 1, 'ADD without CNI_NETNS/CNI_IFNAME exits 1');
  t.equal(noEnv.json?.code, 4, 'error code 4 (invalid necessary environment variables)');
  t.match(String(noEnv.json?.details), /CNI_NETNS.*CNI_IFNAME/, 'the details name the missing variables');
  t.equal(noEnv.json?.cniVersion, '1.1.0', 'the error carries the cniVersion of the input');
  const noCmd = await cni({ ...base }, stdin);
  t.equal(noCmd.json?.code, 4, 'no CNI_COMMAND: code 4');
  const badCmd = await cni({ ...base, CNI_COMMAND: 'FROB' }, stdin);
  t.equal(badCmd.json?.code, 4, 'an unknown CNI_COMMAND: code 4');
  const badJson = await cni({ ...base, CNI_COMMAND: 'ADD' }, '{"cniVersion": "1.1.0", ');
  t.equal(badJson.status, 1, 'stdin that is not JSON: exit 1');
  t.equal(badJson.json?.code, 6, 'error code 6 (failed to decode content)');
  const oldVersion = await cni({ ...base, CNI_COMMAND: 'ADD' }, JSON.stringify({ ...conf, cniVersion: '0.3.1' }));
  t.equal(oldVersion.json?.code, 1, 'a cniVersion the plugin does not honour: code 1 (incompatible CNI version)');
  const badConf = await cni({ ...base, CNI_COMMAND: 'ADD' }, JSON.stringify({ ...conf, queues: 0 }));
  t.equal(badConf.json?.code, 7, 'queues 0: code 7 (invalid network config)');
  t.notOk(fs.existsSync(socketDir), 'none of the refused calls created anything');

  // ADD: a port in vhostfwd, its socket in the per-container directory, the spec's result
  const add = await cni({ ...base, CNI_COMMAND: 'ADD' }, stdin);
  t.equal(add.status, 0, `ADD exits 0 ${add.stdout}${add.stderr}`);
  const result = add.json ?? {};
  t.equal(result.cniVersion, '1.1.0', 'result: cniVersion of the input');
  t.same(result.ips, [], 'result: no IPs');
  const ifs = (result.interfaces ?? []) as Array<Record<string, unknown>>;
  t.equal(ifs.length, 1, 'result: one interface');
  t.equal(ifs[0]?.name, 'net1', 'named CNI_IFNAME');
  t.equal(ifs[0]?.sandbox, base.CNI_NETNS, 'sandbox is CNI_NETNS');
  const sock = String(ifs[0]?.socketPath);
  t.ok(path.isAbsolute(sock) && sock.startsWith(socketDir + '/'), `socketPath ${sock} is absolute, under socketDir`);
  t.ok(Buffer.byteLength(sock) <= 107, 'and fits a unix socket address');
  t.equal(path.basename(sock), 'net1.sock', 'the file is named after the ifname');
  t.ok(path.basename(path.dirname(sock)).startsWith(containerId.slice(0, 12)), 'in a directory named after the container id');
  t.ok(fs.lstatSync(sock).isSocket(), 'socketPath is a socket');
  t.equal(fs.statSync(path.dirname(sock)).mode & 0o777, 0o755, 'the per-container directory is mode 0755');
  t.equal(fs.statSync(sock).mode & 0o777, 0o660, 'permissions passed through: the socket is mode 0660');
  const list = await get(control, '/v1/interfaces');
  const ports = list.body.interfaces as Array<Record<string, unknown>>;
  t.equal(ports.length, 1, 'vhostfwd has one interface');
  const port = ports[0] ?? {};
  t.equal(port.socket, sock, 'on the socket of the result');
  t.equal(port.mode, 'server', 'in server mode');
  t.equal(port.queues, 2, 'with the queues of the configuration');
  t.match(String(port.name), /^cni-[0-9a-f]{8}-[0-9a-f]{16}$/, 'named cni-<network hash>-<attachment hash>');
  t.equal(port.name, portName(conf.name, containerId, 'net1'), 'the name is the documented derivation (what DEL and CHECK look up)');
  t.equal(sock, socketPathOf(socketDir, containerId, 'net1'), 'so is the socket path');

  // a real frontend connects and negotiates on the socket
  // PYTHONDONTWRITEBYTECODE: the import must not rewrite the pyfront __pycache__ the repo tracks
  const fe = await exec('python3', ['-c', FRONTEND, PYFRONT, sock], { PATH: process.env.PATH ?? '/usr/bin:/bin', PYTHONDONTWRITEBYTECODE: '1' }, '', 30000);
  t.same(fe.json, { ok: true, error: null }, `a vhost-user frontend connects and negotiates ${fe.stderr.slice(-400)}`);
  const shown = await get(control, `/v1/interfaces/${String(port.name)}`);
  t.ok(Number(shown.body.connections) >= 1, 'vhostfwd counted the connection on the port');

  // CHECK, with the prevResult a runtime passes
  const check = await cni({ ...base, CNI_COMMAND: 'CHECK' }, JSON.stringify({ ...conf, prevResult: result }));
  t.equal(check.status, 0, `CHECK after ADD exits 0 ${check.stdout}`);
  t.equal(check.stdout, '', 'and prints nothing');
  const checkOther = await cni({ ...base, CNI_IFNAME: 'net2', CNI_COMMAND: 'CHECK' }, stdin);
  t.equal(checkOther.status, 1, 'CHECK of an ifname never added fails');
  t.equal(checkOther.json?.code, 999, 'with code 999');

  // a second ADD of the same (container, ifname): an error, the first port untouched
  const again = await cni({ ...base, CNI_COMMAND: 'ADD' }, stdin);
  t.equal(again.status, 1, 'a second ADD for the same container and ifname exits 1');
  t.match(String(again.json?.msg), /already exists/, 'saying the interface exists');
  t.ok(fs.lstatSync(sock).isSocket(), 'the first port’s socket is still there');
  t.equal(((await get(control, '/v1/interfaces')).body.interfaces as unknown[]).length, 1, 'and vhostfwd still has exactly one port');

  // STATUS (1.1): vhostfwd answers
  const status = await cni({ CNI_COMMAND: 'STATUS' }, stdin);
  t.equal(status.status, 0, 'STATUS exits 0 while vhostfwd runs');

  // DEL: the port and the socket gone, the directory removed; DEL again is success
  const del = await cni({ ...base, CNI_COMMAND: 'DEL' }, JSON.stringify({ ...conf, prevResult: result }));
  t.equal(del.status, 0, `DEL exits 0 ${del.stdout}`);
  t.notOk(fs.existsSync(sock), 'the socket is gone');
  t.notOk(fs.existsSync(path.dirname(sock)), 'the empty per-container directory is gone');
  t.same((await get(control, '/v1/interfaces')).body.interfaces, [], 'vhostfwd lists no interface');
  t.equal((await get(control, `/v1/interfaces/${String(port.name)}`)).status, 404, 'GET of the port: 404');
  const del2 = await cni({ ...base, CNI_COMMAND: 'DEL', CNI_NETNS: '' }, stdin);
  t.equal(del2.status, 0, 'DEL again (and without CNI_NETNS, which DEL may lack) exits 0');
  t.equal(del2.stdout, '', 'and prints nothing');
  const checkGone = await cni({ ...base, CNI_COMMAND: 'CHECK' }, stdin);
  t.equal(checkGone.status, 1, 'CHECK after DEL fails');

  // GC (1.1): only this network's ports that are not valid attachments go
  const keep = { ...base, CNI_CONTAINERID: 'keep0001', CNI_COMMAND: 'ADD' };
  const stale = { ...base, CNI_CONTAINERID: 'stale0001', CNI_COMMAND: 'ADD' };
  t.equal((await cni(keep, stdin)).status, 0, 'GC setup: ADD of an attachment to keep');
  t.equal((await cni(stale, stdin)).status, 0, 'GC setup: ADD of a stale attachment');
  const gc = await cni({ CNI_COMMAND: 'GC', CNI_PATH: '/opt/cni/bin' }, JSON.stringify({ ...conf, 'cni.dev/valid-attachments': [{ containerID: 'keep0001', ifname: 'net1' }] }));
  t.equal(gc.status, 0, `GC exits 0 ${gc.stdout}`);
  const afterGc = (await get(control, '/v1/interfaces')).body.interfaces as Array<Record<string, unknown>>;
  t.equal(afterGc.length, 1, 'GC removed one port');
  t.ok(String(afterGc[0]?.socket).includes('/keep0001-'), 'and kept the valid attachment');
  t.equal((await cni({ ...keep, CNI_COMMAND: 'DEL' }, stdin)).status, 0, 'GC teardown: DEL of the kept attachment');
  t.same(fs.readdirSync(socketDir), [], 'nothing left under socketDir');

  // a socketDir so long that the socket would pass a unix socket's 107 bytes: refused up front
  const longDir = await cni({ ...base, CNI_COMMAND: 'ADD' }, JSON.stringify({ ...conf, socketDir: path.join(socketDir, 'x'.repeat(100)) }));
  t.equal(longDir.json?.code, 7, 'a socketDir too long for the socket path: code 7');
  t.same(fs.readdirSync(socketDir), [], 'and nothing made');

  // vhostfwd refuses (an owner that does not exist): code 999 with its message, nothing left
  const refused = await cni({ ...base, CNI_CONTAINERID: 'refused01', CNI_COMMAND: 'ADD' }, JSON.stringify({ ...conf, owner: 'no-such-user-cni' }));
  t.equal(refused.json?.code, 999, 'a request vhostfwd refuses: code 999');
  t.match(String(refused.json?.details), /no-such-user-cni/, `with vhostfwd's message (${String(refused.json?.details)})`);
  t.same(fs.readdirSync(socketDir), [], 'and no per-container directory left');

  // a port left when vhostfwd stops (SIGTERM: vhostfwd closes and unlinks its sockets)
  const left = { ...base, CNI_CONTAINERID: 'left0001' };
  t.equal((await cni({ ...left, CNI_COMMAND: 'ADD' }, stdin)).status, 0, 'ADD of a port vhostfwd will take down with it');

  // vhostfwd stopped: DEL is success (the port died with it), ADD asks to try again later
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10000);
  t.equal(await exited, 0, 'vhostfwd exits 0 on SIGTERM');
  clearTimeout(timer);
  t.notOk(fs.existsSync(control), 'its control socket is gone');
  const delAbsent = await cni({ ...left, CNI_COMMAND: 'DEL' }, stdin);
  t.equal(delAbsent.status, 0, `DEL of that port with no control socket exits 0 ${delAbsent.stdout}`);
  t.notOk(fs.existsSync(path.dirname(socketPathOf(socketDir, left.CNI_CONTAINERID, 'net1'))), 'and its per-container directory is gone');
  // a socket file nobody listens on (vhostfwd killed without its state file): DEL removes it and the directory
  const staleSock = socketPathOf(socketDir, 'stale0002', 'net1');
  fs.mkdirSync(path.dirname(staleSock));
  const bound = await exec('python3', ['-c', 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', staleSock], { PATH: process.env.PATH ?? '/usr/bin:/bin' }, '', 10000);
  t.ok(bound.status === 0 && fs.lstatSync(staleSock).isSocket(), 'a stale socket file in place');
  const delStale = await cni({ ...base, CNI_CONTAINERID: 'stale0002', CNI_COMMAND: 'DEL' }, stdin);
  t.equal(delStale.status, 0, 'DEL over a stale socket with no vhostfwd exits 0');
  t.notOk(fs.existsSync(path.dirname(staleSock)), 'the stale socket and its directory are gone');
  const addAbsent = await cni({ ...base, CNI_COMMAND: 'ADD' }, stdin);
  t.equal(addAbsent.status, 1, 'ADD with no control socket exits 1');
  t.equal(addAbsent.json?.code, 11, 'error code 11 (try again later)');
  t.same(fs.readdirSync(socketDir), [], 'the failed ADD left no per-container directory');
  const statusAbsent = await cni({ CNI_COMMAND: 'STATUS' }, stdin);
  t.equal(statusAbsent.json?.code, 50, 'STATUS with no vhostfwd: code 50 (not available)');
});
