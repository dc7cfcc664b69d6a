/**
 * The capability the project started from: QEMU live-migrates a running guest whose NIC
 * is served by vhostfwd. Guest A pings guest B through vhostfwd's bridge; A migrates to a
 * second QEMU process on its own vhostfwd socket; the migration completes, the destination
 * keeps pinging B, and at most 2 pings are lost.
 */
import t from 'tap';
import path from 'node:path';
import { startForwarder } from '../helpers/env';
import { QemuGuest, pingReplies } from './qemu';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('QEMU live migration of a pinging guest through the vhostfwd bridge', async (t) => {
  const env = await startForwarder(['a', 'b', 'a2'], { forwarding: { mode: 'bridge' } });
  const mon = path.join(env.dir, 'mon-src.sock');
  const mig = path.join(env.dir, 'mig.sock');
  const common = { mac: '52:54:00:00:00:0a', ip: '10.0.0.1/24', peer: '10.0.0.2', mode: 'pingloop' as const, interval: 0.1 };
  const b = new QemuGuest({ name: 'B', socket: env.sock('b'), mac: '52:54:00:00:00:0b', ip: '10.0.0.2/24', peer: '10.0.0.1', mode: 'serve' });
  const src = new QemuGuest({ name: 'A', socket: env.sock('a'), monitor: mon, ...common });
  let dst: QemuGuest | null = null;
  t.teardown(async () => {
    await src.kill();
    await dst?.kill();
    await b.kill();
    await env.stop();
  });
  await b.waitFor(/VF:SERVING/, 60000);
  await src.waitFor(/VF:PINGLOOP-START/, 90000);
  const srcDevice = env.fwd.interfaces[0].device;
  t.ok(srcDevice, 'source QEMU is connected');
  await sleep(2000);
  const before = pingReplies(src.output);
  t.ok(before.length >= 10, `A pings B before the migration (${before.length} replies)`);

  dst = new QemuGuest({ name: "A'", socket: env.sock('a2'), incoming: `${mig}`, ...common });
  await sleep(1500); // the destination QEMU connects its vhost-user socket and waits for the stream
  await src.monitor(`migrate unix:${mig}`);
  let info = '';
  const end = Date.now() + 60000;
  while (Date.now() < end) {
    info = await src.monitor('info migrate');
    if (/Migration status: (completed|failed)/.test(info)) break;
    await sleep(200);
  }
  t.match(info, /Migration status: completed/, 'QEMU reports the migration completed');
  const downtime = info.match(/downtime: (\d+) ms/);
  t.comment(`migration downtime ${downtime ? downtime[1] : '?'} ms`);
  // The source device saw what QEMU does for a vhost-user migration.
  const seen = srcDevice!.seen;
  t.comment(`requests on the source device: ${[...seen.entries()].map(([k, v]) => `${k}x${v}`).join(' ')}`);
  t.ok((seen.get('SET_FEATURES') ?? 0) >= 2, 'SET_FEATURES sent again (LOG_ALL on)');
  t.ok((seen.get('SET_LOG_BASE') ?? 0) >= 1, 'SET_LOG_BASE sent');
  t.ok((seen.get('GET_VRING_BASE') ?? 0) >= 2, 'GET_VRING_BASE stopped the rings');

  // The destination keeps pinging: its serial console carries the same ping process on.
  const lastSrcSeq = Math.max(...pingReplies(src.output));
  // TCG guests on a loaded 2-core machine: give the destination up to 20 s for 20 replies
  // (about 4 s when the machine is quiet); the loss check below still sees every sequence.
  const waitEnd = Date.now() + 20000;
  while (Date.now() < waitEnd && pingReplies(dst.output).length < 20) await sleep(250);
  const after = pingReplies(dst.output);
  t.ok(after.length >= 20, `the migrated guest keeps pinging B (${after.length} replies on the destination)`);
  const all = new Set([...pingReplies(src.output), ...after]);
  const maxSeq = Math.max(...all);
  const firstSeq = Math.min(...all);
  let lost = 0;
  for (let s = firstSeq; s <= maxSeq; s++) if (!all.has(s)) lost++;
  t.comment(`last reply seen on the source: seq ${lastSrcSeq}; replies ${all.size} of seq ${firstSeq}..${maxSeq}; lost ${lost}`);
  t.ok(lost <= 2, `at most 2 pings lost across the migration (lost ${lost})`);
  const dstDevice = env.fwd.interfaces[2].device;
  t.ok(dstDevice && (dstDevice.seen.get('SET_VRING_BASE') ?? 0) >= 2, 'the destination resumed its rings from SET_VRING_BASE');
});
