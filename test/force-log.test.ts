/**
 * config forceLog without a frontend log (no SET_LOG_BASE, as with DPDK virtio-user): the
 * device allocates a log of its own, sized for the guest memory, and the workers really
 * mark pages into it (bench/run.ts measures this path as "vhostfwd + forced log").
 */
import t from 'tap';
import { SyntheticGuest, macOf } from '../src/frontend/guest';
import { startForwarder, withTwoGuests } from '../kit/env';
import { assertFlows, pump } from './helpers/traffic';

for (const forceLog of [true, false]) {
  t.test(`forceLog ${forceLog}, no SET_LOG_BASE: ${forceLog ? 'a backend-allocated log is written' : 'no log, no marks'}`, async (t) => {
    const env = await startForwarder(['a', 'b'], { forceLog });
    t.teardown(env.stop);
    const a = await SyntheticGuest.start({ socket: env.sock('a'), mac: macOf(1) });
    const b = await SyntheticGuest.start({ socket: env.sock('b'), mac: macOf(2) });
    t.teardown(() => {
      a.close();
      b.close();
    });
    assertFlows(t, await pump(a, b, 1000, [64, 1518]), 1000, 'traffic both ways');
    const marked = env.fwd.stats().reduce((s, q) => s + q.dirtyPages, 0);
    for (const itf of env.fwd.interfaces) {
      const d = itf.device!;
      t.equal(d.seen.get('SET_LOG_BASE') ?? 0, 0, `${itf.name}: the frontend sent no SET_LOG_BASE`);
      if (forceLog) {
        t.ok(d.log !== null, `${itf.name}: the device has a log`);
        t.ok(d.log!.size * 8 * 4096 >= d.mem.gpaEnd, `${itf.name}: the log (${d.log!.size} bytes) covers guest memory up to 0x${d.mem.gpaEnd.toString(16)}`);
        const bits = new Uint8Array(d.log!.sab, d.log!.offset, d.log!.size).reduce((n, x) => n + (x ? 1 : 0), 0);
        t.ok(bits > 0, `${itf.name}: bits set in it (${bits} non-zero bytes)`);
      } else {
        t.equal(d.log, null, `${itf.name}: no log`);
      }
    }
    if (forceLog) t.ok(marked > 0, `pages marked (${marked})`);
    else t.equal(marked, 0, 'no page marked');
  });
}

t.test('forced logging paused and resumed at run time: no bit while paused; after resuming, logged pages rebuild the guest memory', async (t) => {
  const { env, a, b } = await withTwoGuests(t, { forceLog: true }, { queueSize: 256 });
  assertFlows(t, await pump(a, b, 300, [64, 1518]), 300, 'before the pause');
  const dev = env.fwd.interfaces[1].device!;
  const logOf = (): Uint8Array => new Uint8Array(dev.log!.sab, dev.log!.offset, dev.log!.size);
  const marked = (): number => env.fwd.stats().reduce((s, q) => s + q.dirtyPages, 0);
  t.ok(logOf().some((x) => x !== 0), 'forced logging marks pages before the pause');

  await env.fwd.setForceLog(false);
  t.equal(env.fwd.pool.forceLogging, false, 'paused');
  logOf().fill(0); // as a frontend that fetched and cleared the log
  const before = marked();
  assertFlows(t, await pump(a, b, 1000, [64, 1518]), 1000, 'while paused');
  t.equal(logOf().reduce((n, x) => n + (x ? 1 : 0), 0), 0, 'no bit set while paused');
  t.equal(marked(), before, 'no page counted while paused');

  await env.fwd.setForceLog(true);
  b.trackGuestWrites();
  const image = Uint8Array.from(b.mem);
  const flows = await pump(a, b, 1000, [64, 1518, 256, 4000]);
  await b.stopRings();
  const log = logOf();
  const logged: number[] = [];
  for (let i = 0; i < log.length; i++) for (let k = 0; k < 8; k++) if (log[i] & (1 << k)) logged.push(i * 8 + k);
  for (const pg of new Set([...logged, ...b.guestDirty])) image.set(b.mem.subarray(pg * 4096, (pg + 1) * 4096), pg * 4096);
  let diff = 0;
  for (let k = 0; k < image.length; k++) if (image[k] !== b.mem[k]) diff++;
  assertFlows(t, flows, 1000, 'after resuming');
  t.equal(diff, 0, `snapshot + ${logged.length} logged pages + the guest's own equal live memory`);
  t.ok(logged.filter((p) => !b.guestDirty.has(p)).length > 0, 'pages written by the backend alone were logged (the check has teeth)');
  t.ok(logged.includes(b.ringGpa(0).used >> 12), 'the RX used ring page is logged (forced logging logs the used ring at its guest address)');
  t.ok(marked() > before, 'pages counted again');
});

t.test('setForceLog without config forceLog is refused by name', async (t) => {
  const env = await startForwarder(['a', 'b']);
  t.teardown(env.stop);
  await t.rejects(env.fwd.setForceLog(true), /forced logging is not configured/);
  t.equal(env.fwd.pool.forceLogging, false);
});
