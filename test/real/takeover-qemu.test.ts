/**
 * Issue 25 with QEMU: two QEMU 7.2 guests ping each other every 10 ms through the bridge of
 * the `vhostfwd run` process while it is taken over 5 times. The chardevs have no
 * reconnect: a backend that closed a connection would take the guest's link down for good.
 * Every ping sent before the last second is answered (ping's own sequence numbers), the new
 * processes never saw a frontend connect (they took the connections over) and QEMU never
 * renegotiated. And a live migration (slowed to some seconds) with a takeover in the middle
 * of it: the source device comes over with QEMU's dirty log, the migration completes and the
 * migrated guest pings on (the log's completeness byte for byte: test/handover.test.ts).
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { tmpDir, waitUntil } from '../../kit/env';
import { QemuGuest, pingReplies } from '../../kit/peers/qemu';
import { VhostfwdProc } from '../../kit/vhostfwd-proc';

const TAKEOVERS = 5;

t.test(`two QEMU guests pinging every 10 ms through the bridge: 0 lost across ${TAKEOVERS} takeovers`, async (t) => {
  const dir = tmpDir('vhostfwd-tkqemu-');
  const sock = (n: string): string => path.join(dir, `${n}.sock`);
  fs.writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({
    interfaces: [{ name: 'vm1', socket: sock('vm1') }, { name: 'vm2', socket: sock('vm2') }],
    forwarding: { mode: 'bridge' },
    control: { socket: sock('control') },
  }));
  const args = ['--config', path.join(dir, 'cfg.json'), '--handover', sock('handover')];
  const procs: VhostfwdProc[] = [];
  const guests: QemuGuest[] = [];
  t.teardown(async () => {
    for (const g of guests) await g.kill();
    for (const p of procs) await p.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  let cur = VhostfwdProc.start(args);
  procs.push(cur);
  await cur.waitFor('takeovers accepted');
  const b = new QemuGuest({ name: 'B', socket: sock('vm2'), mac: '52:54:00:00:02:0b', ip: '10.0.2.2/24', peer: '10.0.2.1', mode: 'serve' });
  guests.push(b);
  const a = new QemuGuest({ name: 'A', socket: sock('vm1'), mac: '52:54:00:00:02:0a', ip: '10.0.2.1/24', peer: '10.0.2.2', mode: 'pingloop', interval: 0.01 });
  guests.push(a);
  await a.waitFor(/VF:PINGLOOP-START/, 120_000);
  await waitUntil(() => pingReplies(a.output).length >= 50, 60_000, '50 replies before the first takeover');
  const blackouts: number[] = [];
  for (let k = 0; k < TAKEOVERS; k++) {
    const before = pingReplies(a.output).length;
    const next = VhostfwdProc.start([...args, '--takeover']);
    procs.push(next);
    const line = await next.waitFor('takeover step 5/5: polling');
    await next.waitFor('takeovers accepted');
    t.same(await cur.waitExit(), { code: 0, signal: null }, `takeover ${k + 1}: the old process exited 0`);
    blackouts.push(Number(line.blackoutMs));
    cur = next;
    await waitUntil(() => pingReplies(a.output).length >= before + 100, 60_000, `100 more replies after takeover ${k + 1}`);
  }
  // late replies come within a second; what was sent before that must all be answered
  await sleep(1500);
  const seqs = [...new Set(pingReplies(a.output))].sort((x, y) => x - y);
  const last = seqs[seqs.length - 1] - 100;
  const first = seqs[0];
  const missing: number[] = [];
  const have = new Set(seqs);
  for (let s = first; s <= last; s++) if (!have.has(s)) missing.push(s);
  t.ok(last - first > 500, `pings ${first}..${last} checked (${last - first + 1})`);
  t.same(missing, [], `0 pings lost across ${TAKEOVERS} takeovers`);
  t.comment(`blackout per takeover (ms): ${blackouts.join(', ')}`);
  for (const p of procs.slice(1)) {
    t.notOk(p.lines.some((l) => l.msg === 'frontend connected'), `process ${p.pid}: no frontend connected anew (both taken over)`);
    t.equal(p.lines.filter((l) => l.msg === 'frontend connection taken over').length, 2, `process ${p.pid}: both connections taken over`);
  }
  t.notMatch(a.output + b.output, /vhost.*(fail|error|disconnect)/i, 'QEMU reported no vhost-user failure or disconnect');
});

t.test('a QEMU live migration with a takeover in the middle of it completes, pings go on, the log kept', async (t) => {
  const dir = tmpDir('vhostfwd-tkmig-');
  const sock = (n: string): string => path.join(dir, `${n}.sock`);
  fs.writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({
    interfaces: [{ name: 'a', socket: sock('a') }, { name: 'b', socket: sock('b') }, { name: 'a2', socket: sock('a2') }],
    forwarding: { mode: 'bridge' },
    control: { socket: sock('control') },
  }));
  const args = ['--config', path.join(dir, 'cfg.json'), '--handover', sock('handover')];
  const procs: VhostfwdProc[] = [];
  const guests: QemuGuest[] = [];
  t.teardown(async () => {
    for (const g of guests) await g.kill();
    for (const p of procs) await p.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const cur = VhostfwdProc.start(args);
  procs.push(cur);
  await cur.waitFor('takeovers accepted');
  const mon = sock('mon');
  const mig = sock('mig');
  const common = { mac: '52:54:00:00:03:0a', ip: '10.0.3.1/24', peer: '10.0.3.2', mode: 'pingloop' as const, interval: 0.05 };
  const b = new QemuGuest({ name: 'B', socket: sock('b'), mac: '52:54:00:00:03:0b', ip: '10.0.3.2/24', peer: '10.0.3.1', mode: 'serve' });
  guests.push(b);
  const src = new QemuGuest({ name: 'A', socket: sock('a'), monitor: mon, ...common });
  guests.push(src);
  await src.waitFor(/VF:PINGLOOP-START/, 120_000);
  await waitUntil(() => pingReplies(src.output).length >= 20, 60_000, '20 replies before the migration');
  const dst = new QemuGuest({ name: "A'", socket: sock('a2'), incoming: mig, ...common });
  guests.push(dst);
  await waitUntil(() => fs.existsSync(mig) && cur.lines.filter((l) => l.msg === 'frontend connected').length >= 3, 60_000, 'the destination connected and listening');
  // slow enough that the takeover lands in the middle: the guest's non-zero pages at 8 MB/s take some seconds
  await src.monitor('migrate_set_parameter max-bandwidth 8M');
  // -d: the monitor answers at once (without it HMP waits for the end)
  await src.monitor(`migrate -d unix:${mig}`);
  await waitUntil(() => cur.lines.some((l) => l.msg === 'dirty log set'), 30_000, 'the source set its dirty log');
  await sleep(500);
  const mid = await src.monitor('info migrate');
  t.match(mid, /Migration status: active/, `the migration is running when the takeover starts (${(/Migration status: \S+/.exec(mid) ?? ['no status'])[0]})`);
  const next = VhostfwdProc.start([...args, '--takeover']);
  procs.push(next);
  const polling = await next.waitFor('takeover step 5/5: polling');
  t.same(await cur.waitExit(), { code: 0, signal: null }, 'the old process exited 0');
  const taken = next.lines.find((l) => l.msg === 'frontend connection taken over' && l.iface === 'a');
  t.equal(taken?.dirtyLog, true, "the source's device came over with QEMU's dirty log (the new process logs into it)");
  const during = await src.monitor('info migrate');
  t.match(during, /Migration status: active/, 'the migration still runs after the takeover');
  let info = '';
  const end = Date.now() + 120_000;
  while (Date.now() < end) {
    info = await src.monitor('info migrate');
    if (/Migration status: (completed|failed)/.test(info)) break;
    await sleep(200);
  }
  t.match(info, /Migration status: completed/, 'QEMU reports the migration completed');
  t.comment(`takeover blackout ${String(polling.blackoutMs)} ms; migration ${(/total time: (\d+) ms/.exec(info) ?? [])[1]} ms, downtime ${(/downtime: (\d+) ms/.exec(info) ?? [])[1]} ms`);
  const waitEnd = Date.now() + 30_000;
  while (Date.now() < waitEnd && pingReplies(dst.output).length < 20) await sleep(250);
  const after = pingReplies(dst.output);
  t.ok(after.length >= 20, `the migrated guest keeps pinging B (${after.length} replies on the destination)`);
  const all = new Set([...pingReplies(src.output), ...after]);
  let lost = 0;
  for (let s = Math.min(...all); s <= Math.max(...all); s++) if (!all.has(s)) lost++;
  t.ok(lost <= 2, `at most 2 pings lost across the migration (as without a takeover; lost ${lost})`);
  t.ok(next.lines.some((l) => l.msg === 'frontend connected' && l.iface === 'a2') === false, 'the destination was taken over too, not reconnected');
});
