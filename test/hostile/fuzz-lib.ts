/**
 * Property-based fuzzing of the two places a hostile peer feeds bytes into (fast-check,
 * seeded): the descriptor walker / Virtqueue over random rings in a plain SharedArrayBuffer,
 * and the message layer (Framer + Device.handle) of a live forwarder. Used by the bounded
 * runs in fuzz-*.test.ts and the long runs of bench/fuzz.ts (scripts/fuzz.sh).
 */
import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { GuestError } from '../../src/workers/guest-error';
import { Virtqueue } from '../../src/workers/virtqueue';
import { DirtyLog } from '../../src/workers/dirty-log';
import { PacketBatch, BURST } from '../../src/workers/packet-batch';
import { makeGuest, vringDesc, layout, R0_SIZE, R1_SIZE } from '../vq-harness';

const CORPUS_DIR = path.join(__dirname, '..', '..', '..', 'test', 'hostile', 'corpus');
export const FUZZ_SEED = Number(process.env.HOSTILE_FUZZ_SEED ?? 20240611);

// ------------------------------------------------------------------ (b) descriptor walker

/** [where, offset, len, flags, next]: `where` picks an address class (see resolveAddr). */
type RawDesc = [number, number, number, number, number];

export interface WalkerInput {
  rx: boolean;
  sizeLog: number;
  indirect: boolean;
  mrg: boolean;
  startIdx: number;
  /** avail->idx - last_avail (anything 0..65535; > size is a violation) */
  availDelta: number;
  heads: number[];
  descs: RawDesc[];
  /** up to two indirect tables, at TABLE_GPA[i] */
  tables: RawDesc[][];
  pktLen: number;
}

const TABLE_GPA = [0x18000, 0x18400];
const MEM_END = R0_SIZE + R1_SIZE;
const PATTERN = Uint8Array.from({ length: MEM_END }, (_, i) => (i * 31 + (i >> 9)) & 0xff);

/** Address classes: inside R0, across the R0/R1 boundary, at the end of R1, past the end, huge, a table, the rings. */
function resolveAddr(where: number, off: number, ringBase: number): number {
  switch (where % 8) {
    case 0: return 0xd000 + (off % 0x9000);
    case 1: return R0_SIZE - 64 + (off % 128);
    case 2: return MEM_END - 64 + (off % 128);
    case 3: return MEM_END + off;
    case 4: return 2 ** 64 - 4096 * (1 + (off % 16));
    case 5: return TABLE_GPA[off % 2] + 16 * (off % 4);
    case 6: return ringBase + (off % 0x3000);
    default: return off % MEM_END;
  }
}

const lenArb = fc.oneof(fc.constantFrom(0, 1, 11, 12, 13, 16, 24, 32, 64, 2048, 0xffffffff), fc.integer({ min: 0, max: 5000 }));
const flagsArb = fc.oneof(fc.integer({ min: 0, max: 7 }), fc.integer({ min: 0, max: 0xffff }));
const descArb = (size: number): fc.Arbitrary<RawDesc> =>
  fc.tuple(fc.integer({ min: 0, max: 7 }), fc.integer({ min: 0, max: 0x20000 }), lenArb, flagsArb, fc.oneof(fc.integer({ min: 0, max: size + 2 }), fc.integer({ min: 0, max: 0xffff })));

export const walkerInputArb: fc.Arbitrary<WalkerInput> = fc.integer({ min: 0, max: 4 }).chain((sizeLog) => {
  const size = 1 << sizeLog;
  return fc.record({
    rx: fc.boolean(),
    sizeLog: fc.constant(sizeLog),
    indirect: fc.boolean(),
    mrg: fc.boolean(),
    startIdx: fc.oneof(fc.constant(0), fc.constant(65535 - size), fc.integer({ min: 0, max: 65535 })),
    availDelta: fc.oneof({ weight: 5, arbitrary: fc.integer({ min: 0, max: size + 2 }) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 65535 }) }),
    heads: fc.array(fc.oneof({ weight: 9, arbitrary: fc.integer({ min: 0, max: size - 1 }) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) }), { minLength: size, maxLength: size }),
    descs: fc.array(descArb(size), { minLength: size, maxLength: size }),
    tables: fc.array(fc.array(descArb(6), { minLength: 1, maxLength: 6 }), { minLength: 0, maxLength: 2 }),
    pktLen: fc.integer({ min: 1, max: 3000 }),
  });
});

export interface WalkerOutcome {
  /** GuestError reason, or 'ok' */
  outcome: string;
}

/**
 * One run: lay the rings out, run a TX burst (dequeue + complete) or one RX enqueue, and check
 * (throws on violation): only GuestError is thrown; TX segments lie inside their region; no
 * byte outside guest memory changes; inside it, only the used ring (TX), or the used ring and
 * the device-writable buffers of the tables (RX), may change.
 */
export function runWalker(inp: WalkerInput): WalkerOutcome {
  const g = makeGuest();
  const size = 1 << inp.sizeLog;
  const index = inp.rx ? 0 : 1;
  const l = layout(index);
  // guest memory gets a pattern; bytes past MEM_END keep the background
  g.mem8.set(PATTERN);
  const dv = new DataView(g.sab);
  const writeDesc = (at: number, d: RawDesc) => {
    const addr = resolveAddr(d[0], d[1], l.desc);
    dv.setUint32(at, addr % 0x1_0000_0000, true);
    dv.setUint32(at + 4, Math.floor(addr / 0x1_0000_0000), true);
    dv.setUint32(at + 8, d[2] >>> 0, true);
    dv.setUint16(at + 12, d[3] & 0xffff, true);
    dv.setUint16(at + 14, d[4] & 0xffff, true);
  };
  inp.descs.forEach((d, i) => writeDesc(l.desc + 16 * i, d));
  inp.tables.forEach((tbl, k) => tbl.forEach((d, i) => writeDesc(TABLE_GPA[k] + 16 * i, d)));
  const start = inp.startIdx & 0xffff;
  dv.setUint16(l.avail, 0, true);
  dv.setUint16(l.avail + 2, (start + inp.availDelta) & 0xffff, true);
  for (let i = 0; i < size; i++) dv.setUint16(l.avail + 4 + 2 * ((start + i) & (size - 1)), inp.heads[i] & 0xffff, true);
  dv.setUint16(l.used, 0, true);
  dv.setUint16(l.used + 2, start, true);
  const vd = vringDesc(g, { index, size, startIdx: start, features: { indirect: inp.indirect, mrgRxbuf: inp.mrg, hdrLen: inp.mrg ? 12 : 10 } });
  const vq = new Virtqueue(vd, g.gm, new DirtyLog());
  const snapshot = g.mem8.slice();
  let outcome = 'ok';
  const batch = new PacketBatch(BURST);
  try {
    if (inp.rx) {
      const pkt = new Uint8Array(inp.pktLen).fill(0xee);
      vq.acquire();
      try {
        vq.enqueueBytes(pkt, 0, pkt.length);
        vq.flush();
      } finally {
        vq.release();
      }
    } else {
      vq.dequeueBurst(batch, BURST);
      for (let s = 0; s < batch.nSegs; s++) {
        const r = g.regions[batch.segRegion[s]];
        if (!r || batch.segOffset[s] < 0 || batch.segOffset[s] + batch.segLen[s] > r.size) {
          throw new Error(`TX segment ${s} outside its region: region ${batch.segRegion[s]} off ${batch.segOffset[s]} len ${batch.segLen[s]}`);
        }
      }
      vq.completeBurst(batch);
    }
  } catch (e) {
    if (!(e instanceof GuestError)) throw e;
    outcome = e.reason;
  }
  // what the device may have written
  const allowed: Array<[number, number]> = [[l.used, l.used + 6 + 8 * size]];
  if (inp.rx) {
    const add = (d: RawDesc) => {
      if ((d[3] & 2) === 0) return;
      const a = resolveAddr(d[0], d[1], l.desc);
      if (a < MEM_END) allowed.push([a, Math.min(MEM_END, a + (d[2] >>> 0))]);
    };
    inp.descs.forEach(add);
    inp.tables.forEach((tbl) => tbl.forEach(add));
  }
  // compare the gaps between the allowed ranges natively; bytes past MEM_END are never allowed
  allowed.sort((x, y) => x[0] - y[0]);
  const now = Buffer.from(g.sab);
  const was = Buffer.from(snapshot.buffer);
  let from = 0;
  const gap = (a: number, b: number) => {
    if (b <= a || now.compare(was, a, b, a, b) === 0) return;
    for (let i = a; i < b; i++) {
      if (now[i] !== was[i]) {
        throw new Error(i >= MEM_END ? `byte 0x${i.toString(16)} outside guest memory changed` : `byte 0x${i.toString(16)} changed outside the used ring and the writable buffers (${outcome})`);
      }
    }
  };
  for (const [a, b] of allowed) {
    gap(from, a);
    from = Math.max(from, b);
  }
  gap(from, g.mem8.length);
  return { outcome };
}

// ------------------------------------------------------------------ corpus

export function loadCorpus<T>(name: string): T[] {
  const file = path.join(CORPUS_DIR, name);
  if (!fs.existsSync(file)) return [];
  return JSON.parse(fs.readFileSync(file, 'utf8')) as T[];
}

export function saveCorpus<T>(name: string, items: T[]): void {
  fs.mkdirSync(CORPUS_DIR, { recursive: true });
  fs.writeFileSync(path.join(CORPUS_DIR, name), JSON.stringify(items, null, 0).replace(/\},\{/g, '},\n{') + '\n');
}
