/**
 * Packed queues over the test guests of kit/vq-harness.ts for the hostile packed-ring tests
 * (packed-rings.test.ts, toctou-packed.test.ts): a PackedVirtqueue with its PackedDriver
 * (test/packed-driver.ts) at the ring placements of layout(index & 1).
 */
import { PackedVirtqueue } from '../../src/workers/packed-ring';
import { packedIndex } from '../../src/protocol/ring-layout';
import { DirtyLog } from '../../src/workers/dirty-log';
import { CTRL_LAST_AVAIL, CTRL_LAST_USED, CTRL_SIGNALLED_USED, QueueFeatures } from '../../src/shared/types';
import { Guest, layout, vringDesc } from '../../kit/vq-harness';
import { PackedDriver } from '../packed-driver';

export interface PQueue {
  vq: PackedVirtqueue;
  drv: PackedDriver;
  ctrl: Int32Array;
  stats: Float64Array;
  g: Guest;
}

export const F_AVAIL = 1 << 7;
export const F_USED = 1 << 15;

export function makePacked(g: Guest, s: { index: number; size?: number; features?: Partial<QueueFeatures>; start?: number; wrap?: number }): PQueue {
  const size = s.size ?? 8;
  const l = layout(s.index & 1);
  const vd = vringDesc(g, { index: s.index, size, features: { packed: true, ...s.features } });
  const c = new Int32Array(vd.ctrl);
  c[CTRL_LAST_AVAIL] = c[CTRL_LAST_USED] = packedIndex(s.start ?? 0, s.wrap ?? 1);
  c[CTRL_SIGNALLED_USED] = -1;
  const drv = new PackedDriver(g.mem8, {
    size, descGpa: l.desc, drvGpa: l.avail, devGpa: l.used, bufBase: l.bufBase, bufEnd: l.bufEnd,
    hdrLen: vd.features.hdrLen, startIdx: s.start, startWrap: s.wrap,
  });
  const vq = new PackedVirtqueue(vd, g.gm, new DirtyLog());
  return { vq, drv, ctrl: c, stats: new Float64Array(vd.stats), g };
}
