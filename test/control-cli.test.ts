/**
 * Issue 20, as an operator uses it: `vhostfwd ctl` against `vhostfwd run --control --state`,
 * the state file across a restart (and refused when corrupt or newer, left untouched), and
 * socket ownership checked with frontends run as another user (setpriv).
 */
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { tmpDir, waitListening, waitUntil } from '../kit/env';

const CLI = path.join(__dirname, '..', 'src', 'cli.js');

function ctl(control: string, ...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, 'ctl', '--control', control, ...args], { encoding: 'utf8', timeout: 20000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function start(args: string[]): { kill: (sig?: NodeJS.Signals) => void; exited: Promise<number | null>; stderr: () => string } {
  const child = spawn(process.execPath, [CLI, 'run', '--log-level', 'warn', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  return { kill: (sig = 'SIGTERM') => child.kill(sig), exited, stderr: () => err };
}

t.test('vhostfwd ctl: add, list, show, pair, rm with tables and --json; exit codes as run; state survives a restart', async (t) => {
  const dir = tmpDir('vhostfwd-ctl-cli-');
  const control = path.join(dir, 'control.sock');
  const state = path.join(dir, 'state.json');
  const sock = (n: string) => path.join(dir, `${n}.sock`);
  let p = start(['--control', control, '--state', state]);
  t.teardown(() => {
    p.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await waitListening(control, 10000, 'the control socket');

  const add = ctl(control, 'add', 'vm3', '--socket', sock('vm3'), '--queues', '2');
  t.equal(add.status, 0, `ctl add exits 0 (${add.stderr})`);
  t.match(add.stdout, /^name:\s+vm3$/m, 'ctl add prints the new interface');
  t.equal(ctl(control, 'add', 'vm4', '--socket', sock('vm4'), '--mode', 'client').status, 0, 'a client-mode interface (nobody listens yet: it retries)');
  t.equal(ctl(control, 'pair', 'vm3', 'vm4').status, 2, 'pair in bridge mode (the default with no interfaces): refused, exit 2');
  const list = ctl(control, 'list');
  t.equal(list.status, 0, 'ctl list exits 0');
  const lines = list.stdout.trim().split('\n');
  t.match(lines[0], /^NAME\s+PORT\s+MODE\s+QUEUES\s+CONNECTED\s+SOCKET$/, 'a header row');
  t.match(lines[1], /^vm3\s+0\s+server\s+2\s+false\s+\S+vm3\.sock$/, 'vm3 row, aligned');
  t.equal(lines[1].indexOf('server'), lines[0].indexOf('MODE'), 'columns aligned under their headers');
  const js = ctl(control, '--json', 'list');
  const parsed = JSON.parse(js.stdout) as { interfaces: Array<{ name: string }> };
  t.same(parsed.interfaces.map((i) => i.name), ['vm3', 'vm4'], '--json prints the JSON reply');
  const dup = ctl(control, 'add', 'vm3', '--socket', sock('other'));
  t.equal(dup.status, 2, 'a refused request exits 2');
  t.match(dup.stderr, /interface vm3 exists \(field name\)/, 'and says why, naming the field');
  const gone = ctl(path.join(dir, 'nothing.sock'), 'list');
  t.equal(gone.status, 1, 'an unreachable API exits 1');
  t.match(gone.stderr, /cannot reach the control API at .*nothing\.sock: no socket there/, 'and says so');

  const saved = JSON.parse(fs.readFileSync(state, 'utf8')) as { version: number; interfaces: Array<{ name: string; queues: number }> };
  t.equal(saved.version, 1, 'the state file has a version');
  t.same(saved.interfaces.map((i) => [i.name, i.queues]), [['vm3', 2], ['vm4', 1]], 'the state file holds both interfaces');
  t.equal(fs.statSync(state).mode & 0o777, 0o600, 'the state file is mode 0600');
  t.same(fs.readdirSync(dir).filter((f) => f.includes('.tmp')), [], 'no temporary file left beside it');

  p.kill('SIGTERM');
  t.equal(await p.exited, 0, 'SIGTERM: exit 0');
  t.notOk(fs.existsSync(sock('vm3')), 'the stop unlinked vm3.sock');
  p = start(['--control', control, '--state', state]);
  await waitUntil(() => fs.existsSync(control) && fs.existsSync(sock('vm3')), 10000, 'the control socket and vm3.sock after the restart');
  await waitListening(control, 10000, 'the control socket after the restart');
  const again = JSON.parse(ctl(control, '--json', 'list').stdout) as { interfaces: Array<{ name: string; mode: string }> };
  t.same(again.interfaces.map((i) => [i.name, i.mode]), [['vm3', 'server'], ['vm4', 'client']], 'the restart restored both interfaces from the state file');
  const rm = ctl(control, 'rm', 'vm4');
  t.equal(rm.status, 0, 'ctl rm exits 0');
  t.match(rm.stdout, /removed vm4/, 'and says what it removed');
  t.same((JSON.parse(fs.readFileSync(state, 'utf8')) as { interfaces: Array<{ name: string }> }).interfaces.map((i) => i.name), ['vm3'], 'the removal is in the state file');
  p.kill('SIGTERM');
  t.equal(await p.exited, 0, 'exit 0');

  // a restored port whose socket cannot be made (its directory went with its container) is
  // left out by name; the others come up
  fs.writeFileSync(state, JSON.stringify({ version: 1, interfaces: [{ name: 'ok', socket: sock('ok') }, { name: 'lost', socket: path.join(dir, 'gone', 'x.sock') }] }));
  p = start(['--control', control, '--state', state]);
  await waitUntil(() => fs.existsSync(control) && fs.existsSync(sock('ok')), 10000, 'the control socket and ok.sock');
  await waitListening(control, 10000, 'the control socket');
  const restored = JSON.parse(ctl(control, '--json', 'list').stdout) as { interfaces: Array<{ name: string }> };
  t.same(restored.interfaces.map((i) => i.name), ['ok'], 'the port whose socket cannot be made is left out, the other restored');
  t.match(p.stderr(), /interface left out: its socket cannot be made iface=lost/, 'and the left-out port is named at error');
  p.kill('SIGTERM');
  t.equal(await p.exited, 0, 'exit 0');

  // a state file that is corrupt, or from a newer vhostfwd: a clear error, exit 2, file untouched
  for (const [what, text, re] of [
    ['corrupt', '{"version": 1, "interfaces": [', /state file .*state\.json: is not valid JSON .*\(left untouched\)/],
    ['newer', JSON.stringify({ version: 99, interfaces: [] }), /is from a newer vhostfwd \(format version 99; this one reads up to 1\)/],
    ['invalid', JSON.stringify({ version: 1, interfaces: [{ name: 'a' }] }), /is invalid: interfaces\[0\]\.socket: expected a non-empty string/],
  ] as const) {
    fs.writeFileSync(state, text);
    const r = start(['--control', control, '--state', state]);
    const code = await r.exited;
    t.equal(code, 2, `${what} state file: exit 2`);
    t.match(r.stderr(), re, `${what} state file: named error (${r.stderr().trim().slice(0, 160)})`);
    t.equal(fs.readFileSync(state, 'utf8'), text, `${what} state file: left untouched`);
  }
});

t.test('socket ownership: a frontend of another user connects only when permitted; the control socket refuses it', async (t) => {
  const dir = tmpDir('vhostfwd-owner-');
  fs.chmodSync(dir, 0o755); // others may reach the sockets; their own modes decide
  const control = path.join(dir, 'control.sock');
  const sock = (n: string) => path.join(dir, `${n}.sock`);
  const p = start(['--control', control]);
  t.teardown(() => {
    p.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await waitListening(control, 10000, 'the control socket');
  t.equal(ctl(control, 'add', 'mine', '--socket', sock('mine'), '--owner', 'nobody').status, 0, 'add with --owner nobody');
  t.equal(ctl(control, 'add', 'grp', '--socket', sock('grp'), '--group', 'nogroup', '--permissions', '0660').status, 0, 'add with --group nogroup --permissions 0660');
  t.equal(ctl(control, 'add', 'root', '--socket', sock('root'), '--permissions', '0600').status, 0, 'add with --permissions 0600 (root only)');
  const st = fs.statSync(sock('mine'));
  const nobody = Number(spawnSync('id', ['-u', 'nobody'], { encoding: 'utf8' }).stdout.trim());
  const nogroup = Number(spawnSync('getent', ['group', 'nogroup'], { encoding: 'utf8' }).stdout.split(':')[2]);
  t.same([st.uid, st.mode & 0o777], [nobody, 0o600], 'mine: owned by nobody, mode 0600');
  const sg = fs.statSync(sock('grp'));
  t.same([sg.gid, sg.mode & 0o777], [nogroup, 0o660], 'grp: group nogroup, mode 0660');
  t.equal(fs.statSync(sock('root')).mode & 0o777, 0o600, 'root: mode 0600');

  // A vhost-user frontend run as another user: GET_FEATURES, then read the reply.
  const frontend = `
import socket, struct, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit(0)
s.sendall(struct.pack('<III', 1, 1, 0))
h = s.recv(12)
req, flags, size = struct.unpack('<III', h)
feat = struct.unpack('<Q', s.recv(size))[0]
print("FEATURES %x" % feat)
`;
  const as = (user: string, group: string, target: string): string =>
    spawnSync('setpriv', ['--reuid', user, '--regid', group, '--clear-groups', '/usr/bin/python3', '-c', frontend, target], { encoding: 'utf8', timeout: 10000 }).stdout.trim();
  t.match(as('nobody', 'nogroup', sock('mine')), /^FEATURES [0-9a-f]+$/, 'nobody (the owner) negotiates on mine');
  t.match(as('daemon', 'nogroup', sock('grp')), /^FEATURES [0-9a-f]+$/, 'a member of nogroup negotiates on grp');
  t.equal(as('daemon', 'daemon', sock('mine')), 'EACCES', 'another user is refused on mine');
  t.equal(as('nobody', 'nogroup', sock('root')), 'EACCES', 'nobody is refused on a root-only socket');
  t.equal(as('nobody', 'nogroup', control), 'EACCES', 'the control socket refuses other users (mode 0600)');
  t.equal(fs.statSync(control).mode & 0o777, 0o600, 'the control socket is mode 0600');
});
