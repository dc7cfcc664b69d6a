/**
 * Issue 20 with a real peer: two QEMU 7.2 guests whose ports were added through
 * `vhostfwd ctl` (no interface in any config), cross-connected through the API; vhostfwd is
 * restarted from its state file while the guests run with reconnect=1, and the pings
 * resume. Then one port is removed through ctl while the guests run: its QEMU sees the
 * socket go, the pings stop, and vhostfwd goes on serving the API.
 */
import t from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { tmpDir, waitListening, waitUntil } from '../../kit/env';
import { QemuGuest, pingReplies } from '../../kit/peers/qemu';

const CLI = path.join(__dirname, '..', '..', 'src', 'cli.js');

function ctl(control: string, ...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, 'ctl', '--control', control, ...args], { encoding: 'utf8', timeout: 20000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function start(control: string, state: string): { kill: (sig?: NodeJS.Signals) => void; exited: Promise<number | null> } {
  const child = spawn(process.execPath, [CLI, 'run', '--control', control, '--state', state, '--log-level', 'warn'], { stdio: ['ignore', 'ignore', 'inherit'] });
  const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  return { kill: (sig = 'SIGTERM') => child.kill(sig), exited };
}

t.test('QEMU guests on ports added through ctl: pings, a restart from the state file, pings again', async (t) => {
  const dir = tmpDir('vhostfwd-qctl-');
  const control = path.join(dir, 'control.sock');
  const state = path.join(dir, 'state.json');
  const sock = (n: string) => path.join(dir, `${n}.sock`);
  // xconnect with no pairs yet: the pair comes through the API too
  fs.writeFileSync(state, JSON.stringify({ version: 1, interfaces: [], forwarding: { mode: 'xconnect', pairs: [] } }));
  let p = start(control, state);
  let a: QemuGuest | null = null;
  let b: QemuGuest | null = null;
  t.teardown(async () => {
    await a?.kill();
    await b?.kill();
    p.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await waitListening(control, 10000, 'the control socket');
  t.equal(ctl(control, 'add', 'vm1', '--socket', sock('vm1')).status, 0, 'ctl add vm1');
  t.equal(ctl(control, 'add', 'vm2', '--socket', sock('vm2')).status, 0, 'ctl add vm2');
  t.equal(ctl(control, 'pair', 'vm1', 'vm2').status, 0, 'ctl pair vm1 vm2');
  b = new QemuGuest({ name: 'B', socket: sock('vm2'), mac: '52:54:00:00:02:0b', ip: '10.0.2.2/24', peer: '10.0.2.1', mode: 'serve', reconnect: true });
  a = new QemuGuest({ name: 'A', socket: sock('vm1'), mac: '52:54:00:00:02:0a', ip: '10.0.2.1/24', peer: '10.0.2.2', mode: 'pingloop', interval: 0.2, reconnect: true });
  const A = a;
  await A.waitFor(/VF:PINGLOOP-START/, 90000);
  const waited = (w: Promise<void>) => w.then(() => true, () => false);
  t.ok(await waited(waitUntil(() => pingReplies(A.output).length >= 5, 60000, '5 replies')), `pings flow through ports made by ctl (${pingReplies(A.output).length} replies)`);
  const show = JSON.parse(ctl(control, '--json', 'show', 'vm1').stdout) as { connected: boolean; features: string[]; rings: Array<{ started: boolean }> };
  t.ok(show.connected && show.features.includes('VIRTIO_F_VERSION_1') && show.rings.some((r) => r.started), 'ctl show vm1: QEMU connected, VERSION_1 negotiated, rings started');

  p.kill('SIGTERM');
  t.equal(await p.exited, 0, 'vhostfwd stopped (exit 0)');
  const during = pingReplies(A.output).length;
  p = start(control, state);
  const connected = (): boolean => {
    const r = ctl(control, '--json', 'list');
    if (r.status !== 0) return false;
    const l = JSON.parse(r.stdout) as { interfaces: Array<{ connected: boolean }> };
    return l.interfaces.length === 2 && l.interfaces.every((i) => i.connected);
  };
  t.ok(await waited(waitUntil(connected, 60000, 'both QEMUs reconnected')), 'restarted from the state file: both ports back, both QEMUs reconnected');
  t.ok(await waited(waitUntil(() => pingReplies(A.output).length - during >= 10, 60000, '10 more replies')), `pings flow again after the restart (${pingReplies(A.output).length - during} more replies)`);

  t.equal(ctl(control, 'rm', 'vm2').status, 0, 'ctl rm vm2 while its QEMU runs');
  t.notOk(fs.existsSync(sock('vm2')), 'vm2.sock unlinked');
  await sleep(1500);
  const afterRm = pingReplies(A.output).length;
  await sleep(2000);
  t.equal(pingReplies(A.output).length, afterRm, 'no replies once vm2 is removed (its port is gone)');
  const l = JSON.parse(ctl(control, '--json', 'list').stdout) as { interfaces: Array<{ name: string }> };
  t.same(l.interfaces.map((i) => i.name), ['vm1'], 'vhostfwd serves on with vm1');
});
