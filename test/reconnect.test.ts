/**
 * Issue 17: frontends written elsewhere reconnect, and nothing a frontend hands over can stall
 * the switch. The frontend here is test/kit/pyfront (Python, from the spec, no code shared
 * with src/): its eventfds can be blocking, as os.eventfd makes them, which is what stalled
 * vhostfwd on the first reconnect (the worker read a blocking kick eventfd with read(2)).
 */
import t from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { spawn } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { SyntheticGuest, macOf } from '../src/frontend/guest';
import { captureLogs, startForwarder, waitUntil } from '../kit/env';
import { assertFlows, pump } from './helpers/traffic';

const PYFRONT = path.join(__dirname, '..', '..', 'test', 'kit', 'pyfront');

/** Run a pyfront script to its end (bounded); its stdout's JSON lines. */
export async function py(script: string, args: string[], timeoutMs = 60000): Promise<{ code: number | null; lines: Array<Record<string, unknown>>; stderr: string }> {
  const child = spawn('python3', [path.join(PYFRONT, script), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const code = await new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  clearTimeout(timer);
  const lines = out.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l) as Record<string, unknown>);
  return { code, lines, stderr: err };
}

/** Interfaces in xconnect `pairs`, every queue on one worker: a worker stuck on one device stalls all of them. */
function forwarder(names: string[], pairs: string[][], ackDeadlineMs?: number) {
  const workers = [{ cpus: [os.cpus().length > 1 ? 1 : 0], queues: names.map((n) => `${n}:0`) }];
  return startForwarder(names, { forwarding: { mode: 'xconnect', pairs }, workers }, {}, { ackDeadlineMs });
}

for (const v of [
  { name: 'blocking eventfds, no protocol features (the issue as reported)', flags: ['--blocking'], rounds: 3 },
  { name: 'blocking eventfds, PROTOCOL_FEATURES + REPLY_ACK, rings enabled', flags: ['--blocking', '--pf'], rounds: 3 },
  { name: 'non-blocking eventfds', flags: [], rounds: 2 },
]) {
  t.test(`issue 17: a spec-written frontend connects, sends, closes and connects again: every round forwards (${v.name})`, async (t) => {
    const env = await forwarder(['vm1', 'vm2'], [['vm1', 'vm2']]);
    t.teardown(env.stop);
    const r = await py('reconnect.py', ['rounds', '--dev', env.sock('vm2'), '--peer', env.sock('vm1'), '--rounds', String(v.rounds), ...v.flags]);
    t.equal(r.code, 0, `the frontend ran to its end ${r.stderr.slice(-400)}`);
    t.equal(r.lines.length, v.rounds, 'one report per round');
    for (const l of r.lines) {
      t.equal(l.error, null, `round ${String(l.round)}: set up without error`);
      t.equal(l.toPeer, true, `round ${String(l.round)}: its frame reached the peer byte-exact`);
      t.equal(l.fromPeer, true, `round ${String(l.round)}: the peer's frame reached it byte-exact`);
    }
    t.same(env.fwd.pool.stalls(), [0], 'no worker missed a deadline (the fix is in the worker, not the watchdog)');
    t.same(env.fwd.pool.restarts(), [0], 'no worker restarted');
  });
}

t.test('a kick fd that is not an eventfd is refused by name, the device reset, the switch unharmed', async (t) => {
  const env = await forwarder(['vm1', 'vm2'], [['vm1', 'vm2']]);
  t.teardown(env.stop);
  const logs = captureLogs();
  t.teardown(logs.stop);
  const r = await py('reconnect.py', ['bad-kick', '--dev', env.sock('vm1')]);
  t.equal(r.lines.length, 1, `one report ${r.stderr.slice(-400)}`);
  t.equal(r.lines[0].error, null, 'the frontend got its answer');
  t.equal(r.lines[0].status, 1, 'REPLY_ACK: SET_VRING_KICK failed (status 1)');
  t.equal(r.lines[0].closed, true, 'then the device was reset (socket closed)');
  t.ok(logs.lines.some((l) => l.level === 'error' && /SET_VRING_KICK: ring 1: the file descriptor is not an eventfd/.test(String(l.fields.reason))), 'the reset names the request and the cause');
  const again = await py('reconnect.py', ['rounds', '--dev', env.sock('vm1'), '--peer', env.sock('vm2'), '--rounds', '1']);
  t.same(again.lines.map((l) => [l.error, l.toPeer, l.fromPeer]), [[null, true, true]], 'the interface forwards for the next frontend');
});

t.test('a worker that stops answering: the request fails by name within the deadline, the worker is replaced, every other device forwards', async (t) => {
  const DEADLINE = 400;
  const env = await forwarder(['a', 'b', 'c', 'd'], [['a', 'b'], ['c', 'd']], DEADLINE);
  t.teardown(env.stop);
  const c = await SyntheticGuest.start({ socket: env.sock('c'), mac: macOf(3) });
  const d = await SyntheticGuest.start({ socket: env.sock('d'), mac: macOf(4) });
  t.teardown(() => {
    c.close();
    d.close();
  });
  assertFlows(t, await pump(c, d, 200, [64, 1518], { deadlineMs: 20000 }), 200, 'c<->d before');
  const logs = captureLogs();
  t.teardown(logs.stop);
  env.fwd.pool.stallWorker(0, 10000);
  const t0 = Date.now();
  const a = SyntheticGuest.start({ socket: env.sock('a'), mac: macOf(1) });
  const failed = await a.then(
    (g) => {
      g.close();
      return null;
    },
    (e: unknown) => e as Error,
  );
  const took = Date.now() - t0;
  t.ok(failed, `setting up a while the worker is stuck fails (${failed?.message})`);
  const reset = logs.lines.find((l) => l.msg === 'vhost-user request rejected; resetting device');
  t.ok(reset, 'the device was reset');
  t.match(String(reset?.fields.reason), /^worker 0 did not acknowledge start of ring \d of device \d+ within 400 ms$/, 'the reason names the worker, what it did not acknowledge, and the deadline');
  t.ok(took < DEADLINE + 2000, `the frontend had its answer ${took} ms after asking (deadline ${DEADLINE} ms)`);
  t.ok(logs.lines.some((l) => l.level === 'error' && l.msg === 'worker did not acknowledge in time; replacing it'), 'the stall is logged at error');
  await waitUntil(() => env.fwd.pool.restarts()[0] >= 1 && env.fwd.pool.workerInfo()[0].tid > 0, 10000, 'the replacement worker');
  t.same(env.fwd.pool.stalls(), [1], 'one stall counted');
  assertFlows(t, await pump(c, d, 200, [64, 1518], { deadlineMs: 20000 }), 200, 'c<->d after the replacement (their rings were replayed)');
  const a2 = await SyntheticGuest.start({ socket: env.sock('a'), mac: macOf(1) });
  const b2 = await SyntheticGuest.start({ socket: env.sock('b'), mac: macOf(2) });
  t.teardown(() => {
    a2.close();
    b2.close();
  });
  assertFlows(t, await pump(a2, b2, 200, [64, 1518], { deadlineMs: 20000 }), 200, 'a<->b connected again after the replacement');
});

t.test('a frontend that connects before the previous one is gone waits for it; one that meets a frontend staying is refused', async (t) => {
  const env = await forwarder(['vm1', 'vm2'], [['vm1', 'vm2']]);
  t.teardown(env.stop);
  const logs = captureLogs();
  t.teardown(logs.stop);
  const peer = await SyntheticGuest.start({ socket: env.sock('vm2'), mac: macOf(2) });
  const first = await SyntheticGuest.start({ socket: env.sock('vm1'), mac: macOf(1) });
  t.teardown(() => peer.close());
  // the newcomer is accepted while `first` is still connected: it is held, not refused
  const next = SyntheticGuest.start({ socket: env.sock('vm1'), mac: macOf(1) });
  await waitUntil(() => env.fwd.interfaces[0].connections === 1, 2000, 'the first connection counted');
  await sleep(200);
  first.close();
  const g = await next;
  t.teardown(() => g.close());
  t.equal(env.fwd.interfaces[0].connections, 2, 'the newcomer got the interface once the first frontend left');
  assertFlows(t, await pump(g, peer, 100, [64, 1518], { deadlineMs: 20000 }), 100, 'the newcomer forwards');
  const t0 = Date.now();
  const third = await SyntheticGuest.start({ socket: env.sock('vm1'), mac: macOf(1) }).then(
    (x) => {
      x.close();
      return 'served';
    },
    () => 'refused',
  );
  t.equal(third, 'refused', 'a third frontend, while the second stays, is refused');
  t.ok(Date.now() - t0 >= 900, `after waiting for the current one to go (${Date.now() - t0} ms)`);
  t.ok(logs.lines.some((l) => l.msg === 'second frontend refused while one is connected' && /stayed 1000 ms/.test(String(l.fields.why))), 'the refusal is logged with its reason');
  assertFlows(t, await pump(g, peer, 100, [64, 1518], { deadlineMs: 20000 }), 100, 'the connected frontend still forwards');
});

t.test('stopping the switch is bounded even with a worker stuck and devices attached', async (t) => {
  const env = await forwarder(['a', 'b'], [['a', 'b']], 400);
  let stopped = false;
  t.teardown(async () => {
    if (!stopped) await env.stop();
  });
  const a = await SyntheticGuest.start({ socket: env.sock('a'), mac: macOf(1) });
  const b = await SyntheticGuest.start({ socket: env.sock('b'), mac: macOf(2) });
  t.teardown(() => {
    a.close();
    b.close();
  });
  assertFlows(t, await pump(a, b, 50, [64], { deadlineMs: 20000 }), 50, 'a<->b');
  env.fwd.pool.stallWorker(0, 60000);
  await sleep(50);
  const t0 = Date.now();
  await env.stop();
  stopped = true;
  const took = Date.now() - t0;
  // the CLI adds a hard 5 s bound on top (src/cli.ts); this is the stop itself
  t.ok(took < 5000, `Forwarder.stop() returned in ${took} ms with the worker spinning and both devices attached`);
  t.equal(env.fwd.pool.workerInfo()[0].tid, -1, 'the stuck worker is gone');
});
