/**
 * Property-based fuzzing of the two places a hostile peer feeds bytes into (fast-check,
 * seeded): the descriptor walker / Virtqueue over random rings in a plain SharedArrayBuffer,
 * and the message layer (Framer + Device.handle) of a live forwarder. Used by the bounded
 * runs in test/hostile/fuzz-*.test.ts and the long runs of bench/fuzz.ts (scripts/fuzz.sh);
 * the message layer's properties are in messages.ts next to this file.
 */
import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { GuestError } from '../../src/workers/guest-error';
import { Virtqueue } from '../../src/workers/virtqueue';
import { DirtyLog } from '../../src/workers/dirty-log';
import { PacketBatch, BURST } from '../../src/workers/packet-batch';
import { validate } from '../../src/workers/offload';
import { ST_CSUM_SW, ST_DROP_BAD_OFFLOAD, ST_GSO_PASSED, ST_GSO_SEGMENTED, ST_PACKETS } from '../../src/shared/types';
import { EDIT_POP, EDIT_PUSH } from '../../src/workers/vlan';
import { makeGuest, vringDesc, layout, R0_SIZE, R1_SIZE } from '../vq-harness';
import { GUEST_ALL, HOST_ALL, build } from '../offload-lib';

// The corpus is the suite's data (test/hostile/corpus/, replayed by the fuzz tests), read and
// written in the source tree: three levels up from dist/kit/fuzz/ is the repository root.
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
  /**
   * Offloads (absent in older corpus inputs: none). TX: the ring negotiated HOST_* and every
   * descriptor in the buffer area starts with `hdr` (a virtio-net header, by field), so the
   * walked chains carry it into validation. RX: the packet enqueued is a frame with an offload
   * (1 checksum, 2 TSO, 3 UFO, each with an IPv6 or VLAN variant by `pktLen`), handed over
   * (the ring took GUEST_*) or segmented into the hostile buffers, with tag edit `edit`.
   */
  hdr?: number[];
  offload?: number;
  guest?: boolean;
  edit?: number;
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
    hdr: fc.option(hdrArb, { nil: undefined }),
    offload: fc.option(fc.integer({ min: 1, max: 3 }), { nil: undefined }),
    guest: fc.boolean(),
    edit: fc.constantFrom(0, EDIT_PUSH | 10, EDIT_POP, EDIT_POP | EDIT_PUSH | 10),
  });
});

/**
 * walkerInputArb bent towards rings that hold up, so that offloads get far: a header and an
 * offload frame always, 3 in 4 descriptors in the buffer area, avail idx within the ring,
 * half the short descriptors lengthened (a header needs a frame behind it).
 * Hostile enough still (lengths, flags, next, tables stay random).
 */
export const offloadWalkerInputArb: fc.Arbitrary<WalkerInput> = fc
  .tuple(walkerInputArb, hdrArbLazy(), fc.integer({ min: 1, max: 3 }))
  .map(([inp, hdr, offload]) => ({
    ...inp,
    hdr,
    offload,
    availDelta: inp.availDelta % ((1 << inp.sizeLog) + 1),
    descs: inp.descs.map((d): RawDesc => [(d[0] & 3) !== 0 ? 0 : d[0], d[1], d[2] > 0x10000 ? d[2] & 0xfff : d[2] < 100 && (d[1] & 1) === 1 ? d[2] + 100 : d[2], d[3], d[4]]),
  }));

function hdrArbLazy(): fc.Arbitrary<number[]> {
  return fc.constant(null).chain(() => hdrArb);
}

const u16Arb = fc.oneof(fc.constantFrom(0, 1, 10, 12, 14, 16, 20, 34, 50, 54, 1448, 0xffff), fc.integer({ min: 0, max: 0xffff }));
const hdrBytes = ([fl, gt, hl, gs, cs, co]: number[]): number[] => [fl, gt, hl & 0xff, hl >> 8, gs & 0xff, gs >> 8, cs & 0xff, cs >> 8, co & 0xff, co >> 8, 0, 0];
/**
 * A virtio-net header by field (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset;
 * num_buffers 0): mostly plausible ones (NEEDS_CSUM, offsets where IPv4/IPv6 headers end,
 * with and without a tag), which reach deep into validation, and some noise.
 */
const hdrArb: fc.Arbitrary<number[]> = fc.oneof(
  {
    weight: 3,
    arbitrary: fc
      .tuple(fc.constantFrom(1, 1, 1, 0, 3), fc.constantFrom(0, 0, 1, 3, 4, 0x81), fc.constantFrom(0, 54, 58, 74), fc.constantFrom(0, 8, 64, 1448, 0xffff),
        fc.constantFrom(34, 38, 54, 58, 14, 10, 0, 0xfff0), fc.constantFrom(16, 6, 0, 1))
      .map(hdrBytes),
  },
  { weight: 1, arbitrary: fc.tuple(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 255 }), u16Arb, u16Arb, u16Arb, u16Arb).map(hdrBytes) },
);

/** The offload source of an RX run: a frame with its header in a guest of its own, in a batch as dequeue leaves it. */
function offloadSource(kind: number, variant: number): { gm: ReturnType<typeof makeGuest>['gm']; batch: PacketBatch } | null {
  const src = makeGuest();
  const v6 = (variant & 1) !== 0;
  const f = build({ v6, udp: kind === 3, vlan: (variant & 2) !== 0, optLen: kind === 2 ? 12 : 0, payload: new Uint8Array(200 + (variant % 1800)).fill(0xa5), gsoSize: kind === 1 ? undefined : 64 + (variant % 700) });
  const at = 0x8000;
  src.mem8.set(f.frame, at);
  const b = new PacketBatch(1);
  const h = new DataView(f.hdr.buffer);
  b.count = 1;
  b.nSegs = 2;
  // the frame in two segments, split at an odd byte
  const cut = 7 + (variant % 61);
  b.segRegion[0] = 0;
  b.segOffset[0] = at;
  b.segLen[0] = cut;
  b.segRegion[1] = 0;
  b.segOffset[1] = at + cut;
  b.segLen[1] = f.frame.length - cut;
  b.segStart[0] = 0;
  b.segCount[0] = 2;
  b.pktLen[0] = f.frame.length;
  b.flags[0] = f.hdr[0];
  b.gsoType[0] = f.hdr[1];
  b.hdrLen[0] = h.getUint16(2, true);
  b.gsoSize[0] = h.getUint16(4, true);
  b.csumStart[0] = h.getUint16(6, true);
  b.csumOffset[0] = h.getUint16(8, true);
  b.nOffload = 1;
  return validate(src.gm, b, 0, HOST_ALL) === 0 ? { gm: src.gm, batch: b } : null;
}

export interface WalkerOutcome {
  /** GuestError reason, or 'ok' */
  outcome: string;
  /** what became of the offload (none, refused, accepted, handed over, segmented, checksum completed) */
  offload: string;
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
  // TX offloads: the header at every buffer-area address a descriptor points at (the rings,
  // the tables and the region edges are left as they are)
  if (!inp.rx && inp.hdr) {
    for (const d of [...inp.descs, ...inp.tables.flat()]) {
      if (d[0] % 8 === 0) g.mem8.set(inp.hdr, resolveAddr(d[0], d[1], l.desc));
    }
  }
  inp.tables.forEach((tbl, k) => tbl.forEach((d, i) => writeDesc(TABLE_GPA[k] + 16 * i, d)));
  const start = inp.startIdx & 0xffff;
  dv.setUint16(l.avail, 0, true);
  dv.setUint16(l.avail + 2, (start + inp.availDelta) & 0xffff, true);
  for (let i = 0; i < size; i++) dv.setUint16(l.avail + 4 + 2 * ((start + i) & (size - 1)), inp.heads[i] & 0xffff, true);
  dv.setUint16(l.used, 0, true);
  dv.setUint16(l.used + 2, start, true);
  const netBits = inp.rx ? (inp.guest ? GUEST_ALL : 0) : inp.hdr ? HOST_ALL : 0;
  const vd = vringDesc(g, { index, size, startIdx: start, features: { indirect: inp.indirect, mrgRxbuf: inp.mrg, hdrLen: inp.mrg ? 12 : 10, netBits } });
  const source = inp.rx && inp.offload ? offloadSource(inp.offload, inp.pktLen) : null;
  const vq = new Virtqueue(vd, g.gm, new DirtyLog());
  const snapshot = g.mem8.slice();
  let outcome = 'ok';
  let offload = 'none';
  const batch = new PacketBatch(BURST);
  try {
    if (inp.rx) {
      const pkt = new Uint8Array(inp.pktLen).fill(0xee);
      vq.acquire();
      try {
        if (source) vq.enqueue(source.gm, source.batch, 0, inp.edit ?? 0);
        else vq.enqueueBytes(pkt, 0, pkt.length);
        vq.flush();
      } finally {
        vq.release();
      }
    } else {
      vq.dequeueBurst(batch, BURST);
      if (batch.nOffload > 0) offload = vq.stats[ST_DROP_BAD_OFFLOAD] > 0 ? 'refused' : 'accepted';
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
  if (inp.rx && source) {
    offload = vq.stats[ST_GSO_PASSED] > 0 || (inp.guest && vq.stats[ST_PACKETS] > 0) ? 'handed over' : vq.stats[ST_GSO_SEGMENTED] > 0 ? 'segmented' : vq.stats[ST_CSUM_SW] > 0 ? 'checksum completed' : 'not delivered';
  }
  return { outcome, offload };
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
