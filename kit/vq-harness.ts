/**
 * Test fixtures: a "guest" is one SharedArrayBuffer holding its memory at gpa 0, split into
 * two regions (R0 [0, 128K), R1 [128K, 192K)); bytes [192K, 256K) of the SAB are NOT mapped
 * guest memory and stay filled with a background pattern that nothing may touch.
 */
import { DriverRing } from '../src/frontend/driver-ring';
import { DirtyLog } from '../src/workers/dirty-log';
import { native } from '../src/native';
import { GuestMemory } from '../src/workers/guest-memory';
import { Virtqueue } from '../src/workers/virtqueue';
import {
  CTRL_INTS, CTRL_LAST_AVAIL, CTRL_LAST_USED, CTRL_SIGNALLED_USED, LogDesc, QueueFeatures, RegionDesc, RingLocation,
  STATS_SLOTS, VringDesc,
} from '../src/shared/types';

export const R0_SIZE = 0x20000;
export const R1_SIZE = 0x10000;
export const SAB_SIZE = 0x40000;
export const BACKGROUND = 0x5a;

export interface Guest {
  sab: SharedArrayBuffer;
  mem8: Uint8Array;
  regions: RegionDesc[];
  gm: GuestMemory;
}

export function makeGuest(): Guest {
  const sab = new SharedArrayBuffer(SAB_SIZE);
  const mem8 = new Uint8Array(sab);
  mem8.fill(BACKGROUND);
  const regions: RegionDesc[] = [
    { gpa: 0, size: R0_SIZE, uva: 0x7f0000000000, sab, sabOffset: 0 },
    { gpa: R0_SIZE, size: R1_SIZE, uva: 0x7f0000020000, sab, sabOffset: R0_SIZE },
  ];
  return { sab, mem8, regions, gm: new GuestMemory(regions) };
}

export const FEAT_MRG: QueueFeatures = { hdrLen: 12, mrgRxbuf: true, eventIdx: false, indirect: true, inOrder: false, logAll: false, netBits: 0 };

/**
 * Ring placements per queue slot q (0..3): desc, avail, used each in its own page from 0x1000,
 * then a buffer arena per slot from 0xD000 (18 KiB each); [0x1F000, 0x20000) stays background.
 */
export function layout(q: number): { desc: number; avail: number; used: number; bufBase: number; bufEnd: number } {
  const base = 0x1000 + q * 0x3000;
  return { desc: base, avail: base + 0x1000, used: base + 0x2000, bufBase: 0xd000 + q * 0x4800, bufEnd: 0xd000 + (q + 1) * 0x4800 };
}

export interface QueueSetup {
  index: number;
  size?: number;
  features?: Partial<QueueFeatures>;
  startIdx?: number;
  /** log the used ring (VHOST_VRING_F_LOG) */
  logUsed?: boolean;
  log?: LogDesc | null;
  /** override ring placements (gpa) */
  desc?: number;
  avail?: number;
  used?: number;
  slot?: number;
  bufBase?: number;
  bufEnd?: number;
  /** gpa of the guest SAB's first byte (a guest whose memory does not start at gpa 0) */
  gpaBase?: number;
  /** mark dirty pages through the addon's logRun, as the poller does (else DirtyLog's JavaScript path) */
  nativeLog?: boolean;
}

export interface Queue {
  vq: Virtqueue;
  drv: DriverRing;
  ctrl: Int32Array;
  stats: Float64Array;
  log: DirtyLog;
  vd: VringDesc;
}

function loc(g: Guest, gpa: number): RingLocation {
  const r = g.gm.translate(gpa, 1);
  if (r < 0) return { region: 0, offset: gpa };
  return { region: r, offset: g.gm.off };
}

/** The VringDesc the main thread would hand over (no Virtqueue constructed). */
export function vringDesc(g: Guest, s: QueueSetup): VringDesc {
  const size = s.size ?? 8;
  const l = layout(s.slot ?? (s.index & 1));
  const features = { ...FEAT_MRG, ...s.features };
  const ctrl = new SharedArrayBuffer(CTRL_INTS * 4);
  const c = new Int32Array(ctrl);
  c[CTRL_LAST_AVAIL] = c[CTRL_LAST_USED] = c[CTRL_SIGNALLED_USED] = s.startIdx ?? 0;
  const used = s.used ?? l.used;
  return {
    device: 1, port: 0, index: s.index, size,
    desc: loc(g, s.desc ?? l.desc), avail: loc(g, s.avail ?? l.avail), used: loc(g, used),
    logUsedGpa: s.logUsed ? used : -1,
    kickFd: -1, callFd: -1, features,
    ctrl, stats: new SharedArrayBuffer(STATS_SLOTS * 8),
  };
}

export function makeQueue(g: Guest, s: QueueSetup): Queue {
  const size = s.size ?? 8;
  const l = layout(s.slot ?? (s.index & 1));
  const vd = vringDesc(g, s);
  const drv = new DriverRing(g.mem8, {
    size, descGpa: s.desc ?? l.desc, availGpa: s.avail ?? l.avail, usedGpa: s.used ?? l.used,
    bufBase: s.bufBase ?? l.bufBase, bufEnd: s.bufEnd ?? l.bufEnd, gpaBase: s.gpaBase,
    hdrLen: vd.features.hdrLen, mrgRxbuf: vd.features.mrgRxbuf, startIdx: s.startIdx,
    // IN_ORDER changes what the device writes on TX only (Virtqueue.completeBurst)
    inOrder: vd.features.inOrder && (s.index & 1) === 1,
  });
  const log = new DirtyLog();
  if (s.nativeLog === true) log.enableNative(native);
  log.set(s.log ?? null);
  const vq = new Virtqueue(vd, g.gm, log);
  return { vq, drv, ctrl: new Int32Array(vd.ctrl), stats: new Float64Array(vd.stats), log, vd };
}

export function pattern(len: number, seed: number): Uint8Array {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = (i * 7 + seed * 13 + (i >> 8)) & 0xff;
  return b;
}

export function eq(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
