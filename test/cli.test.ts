/** The CLI as an operator runs it: exit codes, named config errors, shipped examples, clean shutdown. */
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { tmpDir, waitUntil } from '../kit/env';

const CLI = path.join(__dirname, '..', 'src', 'cli.js');
const ROOT = path.join(__dirname, '..', '..');
const run = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 30000 });

t.test('--version prints package.json version; --help has examples and exit codes', async (t) => {
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
  const v = run('--version');
  t.equal(v.status, 0);
  t.equal(v.stdout.trim(), pkg.version);
  const h = run('run', '--help');
  t.equal(h.status, 0);
  t.match(h.stdout, /Examples:/);
  t.match(run('--help').stdout, /Exit codes: 0 ok/);
});

t.test('check-config passes on every shipped example', async (t) => {
  const dir = path.join(ROOT, 'examples');
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.json'));
  t.ok(files.length >= 3, 'examples shipped');
  for (const f of files) {
    const r = run('check-config', path.join(dir, f));
    t.equal(r.status, 0, `${f}: exit 0 (${r.stderr.trim()})`);
    t.doesNotThrow(() => JSON.parse(r.stdout), `${f}: prints the config with defaults`);
  }
});

t.test('a bad config names the key, says what was expected, and exits 2', async (t) => {
  const d = tmpDir();
  const cases: Array<[unknown, RegExp]> = [
    [{ interfaces: [{ name: 'a', socket: '/x', queues: 0 }] }, /interfaces\[0\]\.queues: expected an integer 1\.\.128, got 0/],
    [{ interfaces: [{ name: 'a', socket: '/x' }], forwarding: { mode: 'xconnect', pairs: [['a', 'zz']] } }, /forwarding\.pairs\[0\]\[1\]: expected an interface name/],
    [{ interfaces: [{ name: 'a', socket: '/x' }], metrics: { listen: 'nowhere' } }, /metrics\.listen: expected HOST:PORT/],
    [{ interfaces: [{ name: 'a', socket: '/x' }], log: { level: 'loud' } }, /log\.level: expected one of debug, info, warn, error/],
  ];
  for (const [cfg, re] of cases) {
    const f = path.join(d, 'c.json');
    fs.writeFileSync(f, JSON.stringify(cfg));
    for (const args of [['check-config', f], ['run', '--config', f]]) {
      const r = run(...args);
      t.equal(r.status, 2, `${args[0]}: exit 2`);
      t.match(r.stderr, re, `${args[0]}: names the key`);
    }
  }
  fs.writeFileSync(path.join(d, 'broken.json'), '{ nope');
  const r = run('check-config', path.join(d, 'broken.json'));
  t.equal(r.status, 2);
  t.match(r.stderr, /\(file\): expected valid JSON/);
  t.equal(run('run').status, 2, 'run without --config or --socket is a usage error');
});

t.test('a socket path that cannot be listened on: one line naming the interface, the path and the cause; exit 2', async (t) => {
  const d = tmpDir();
  const file = path.join(d, 'plain-file');
  fs.writeFileSync(file, 'not a socket');
  const cases: Array<[string, RegExp]> = [
    [path.join(d, 'missing', 'a.sock'), /its directory does not exist \(bind ENOENT\)/],
    [file, /something that is not a socket is in the way .*\(bind EADDRINUSE\)/],
    [path.join(d, 'x'.repeat(120)), /too long for a unix socket/],
  ];
  for (const [sock, cause] of cases) {
    const r = run('run', '--socket', sock, '--socket', path.join(d, 'ok.sock'));
    t.equal(r.status, 2, `${path.basename(sock).slice(0, 12)}: exit 2`);
    const lines = r.stderr.trim().split('\n');
    t.equal(lines.length, 1, `one line on stderr, no stack trace (${r.stderr.trim().slice(0, 200)})`);
    t.match(lines[0], `vhostfwd: interface vm1: cannot listen on ${sock}: `, 'names the interface and the path');
    t.match(lines[0], cause, 'and the cause');
  }
  t.equal(fs.readFileSync(file, 'utf8'), 'not a socket', 'the file in the way was left alone');
  fs.rmSync(d, { recursive: true, force: true });
});

t.test('run --socket A --socket B: sockets appear; SIGTERM exits 0 and unlinks them', async (t) => {
  const d = tmpDir();
  const a = path.join(d, 'a.sock');
  const b = path.join(d, 'b.sock');
  const child = spawn(process.execPath, [CLI, 'run', '--socket', a, '--socket', b, '--forward', 'xconnect'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (x: Buffer) => (out += x.toString()));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  // the sockets exist a moment before the attach hint is printed
  await waitUntil(() => fs.existsSync(a) && fs.existsSync(b) && /-netdev vhost-user[\s\S]*-netdev vhost-user/.test(out), 10000, 'both sockets and the hint');
  t.match(out, /-netdev vhost-user/, 'prints how to attach QEMU');
  child.kill('SIGTERM');
  t.equal(await exited, 0, 'exit code 0 after SIGTERM');
  t.notOk(fs.existsSync(a) || fs.existsSync(b), 'socket files unlinked');
});

t.test('SIGUSR2 pauses and resumes forced dirty logging; without --force-log it is ignored with a warning', async (t) => {
  for (const force of [true, false]) {
    const d = tmpDir();
    const a = path.join(d, 'a.sock');
    const b = path.join(d, 'b.sock');
    const args = [CLI, 'run', '--socket', a, '--socket', b, '--forward', 'xconnect', '--log-level', 'info', ...(force ? ['--force-log'] : [])];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (x: Buffer) => (out += x.toString()));
    child.stderr.on('data', (x: Buffer) => (out += x.toString()));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    await waitUntil(() => /forwarder started/.test(out) && fs.existsSync(a) && fs.existsSync(b), 10000, 'the forwarder');
    child.kill('SIGUSR2');
    if (force) {
      await waitUntil(() => /forced dirty logging paused/.test(out), 10000, 'paused');
      child.kill('SIGUSR2');
      await waitUntil(() => /forced dirty logging resumed/.test(out), 10000, 'resumed');
      t.pass('--force-log: paused, then resumed');
    } else {
      await waitUntil(() => /SIGUSR2 ignored: forced dirty logging is not configured/.test(out), 10000, 'the warning');
      t.notMatch(out, /forced dirty logging (paused|resumed)/, 'without --force-log nothing switches');
    }
    child.kill('SIGTERM');
    t.equal(await exited, 0, 'still exits 0 after SIGTERM');
  }
});
