/**
 * config forceLog without a frontend log (no SET_LOG_BASE, as with DPDK virtio-user): the
 * device allocates a log of its own, sized for the guest memory, and the workers really
 * mark pages into it (bench/run.ts measures this path as "vhostfwd + forced log").
 */
import t from 'tap';
import { SyntheticGuest, macOf } from '../src/frontend/guest';
import { startForwarder } from './helpers/env';
import { pump } from './helpers/traffic';

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
    const flows = await pump(a, b, 200, [64, 1518]);
    t.ok(flows.ab.received > 10 && flows.ba.received > 10, 'traffic both ways');
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
