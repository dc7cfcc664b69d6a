/**
 * Issue 25 with QEMU: two QEMU 7.2 guests ping each other every 10 ms through the bridge of
 * the `vhostfwd run` process while it is taken over 5 times. The chardevs have no
 * reconnect: a backend that closed a connection would take the guest's link down for good.
 * Every ping sent before the last second is answered (ping's own sequence numbers), the new
 * processes never saw a frontend connect (they took the connections over) and QEMU never
 * renegotiated.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { tmpDir, waitUntil } from '../helpers/env';
import { QemuGuest, pingReplies } from '../kit/peers/qemu';
import { VhostfwdProc } from '../kit/vhostfwd-proc';

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
