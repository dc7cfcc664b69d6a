/**
 * CVE-2020-14375 class (descriptors re-read after validation) for PACKED virtqueues (issue
 * 19), as toctou.test.ts is for split rings: a second thread plays a guest vCPU rewriting,
 * field by field and as fast as it can, the descriptors of a packed ring (every slot) and the
 * entries of its indirect tables while the backend processes them. Each descriptor flips
 * between its good value and, in turn, values that are invalid: addresses crossing region
 * 0's end, region 1's end (into what is not guest memory), outside memory, 4 GiB above a good
 * buffer, a length of 4 GiB - 1, NEXT on (a chain running on around the ring), INDIRECT
 * (with NEXT, towards a table longer than the queue, nested inside a table), WRITE on a TX
 * descriptor or off an RX one, buffer ids out of range, and the wrap-counter games: the
 * AVAIL/USED bits saying "used", "not available" or "available for the next lap" (the last
 * makes a slot the device has taken in this burst look available again when it comes round).
 *
 * Both the fast paths (one descriptor per frame: dequeueBurst's and enqueueBurst's inline
 * loops) and the general path (chains of several descriptors, indirect tables, mergeable RX)
 * run, with the worker's bulk copy queue on. Whatever mix of old and new fields the backend
 * reads: only GuestError is thrown; on RX nothing is written outside the ring, the
 * posted buffers and the buffers a mix of whole fields describes (region 1, the bytes after
 * guest memory and the rest of region 0 stay as they were); on TX nothing from outside guest memory reaches the receiving guest and the
 * TX guest's memory is written only in its ring; after every burst that was not refused,
 * every chain taken was returned (the used index is back at the avail index). Bounded: a
 * minimum of rounds, then until both outcomes (accepted and refused) were seen, up to a
 * deadline.
 *
 * A mix of whole fields is a descriptor the guest could have written at that moment (the
 * racer writes field by field), and writing its buffer is no fault where it lies in guest
 * memory: a posted address with the next bad value's length is one, and failed a run here.
 * mixesOf lists them; the bad values are chosen so that none reaches region 1 and none is a
 * table but the real one (both checked). Fields are whole on both sides: one 32-bit store in
 * the racer, one load in the backend (desc-walker.ts: a DataView read is byte loads until it
 * is compiled, and byte mixes can land anywhere).
 */
import t from 'tap';
import { Worker } from 'node:worker_threads';
import { GuestError } from '../../src/workers/guest-error';
import { PacketBatch } from '../../src/workers/packet-batch';
import { CopyQueue } from '../../src/workers/bulk-copy';
import { native } from '../../src/native';
import { DESC_SIZE, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE } from '../../src/protocol/constants';
import { BACKGROUND, R0_SIZE, R1_SIZE, SAB_SIZE, type Guest, layout, makeGuest, pattern } from '../../kit/vq-harness';
import { Chain } from '../packed-driver';
import { F_AVAIL, F_USED, makePacked } from './packed-kit';

const NEXT = VRING_DESC_F_NEXT;
const WRITE = VRING_DESC_F_WRITE;
const INDIRECT = VRING_DESC_F_INDIRECT;
const MEM_END = R0_SIZE + R1_SIZE;

const RACER = `
const { workerData } = require('node:worker_threads');
const { sab, targets, stop, holdEvil, holdGood } = workerData;
const u32 = new Uint32Array(sab);
const u16 = new Uint16Array(sab);
const st = new Int32Array(stop);
// the four words of a descriptor (addr lo, addr hi, len, id | flags << 16) in varying orders,
// so that the backend can read any mix of old and new fields; each word whole (one store, as
// a vCPU writes a field: a DataView store is byte stores until compiled)
const ORDERS = [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1], [1, 3, 0, 2]];
let k = 0;
let flips = 0;
Atomics.store(st, 2, 1); // running
while (Atomics.load(st, 0) === 0) {
  for (const tg of targets) {
    const e = (k % (tg.evil.length / 4)) * 4;
    const order = ORDERS[k & 3];
    k++;
    for (const f of order) Atomics.store(u32, (tg.off >> 2) + f, tg.evil[e + f]);
    if ((k & 7) === 0) Atomics.store(u16, (tg.off + 14) >> 1, tg.good[3] >>> 16); // the flags alone back first
    for (let s = 0; s < holdEvil; s++) Atomics.load(st, 0); // hold the bad values a moment
    for (const f of order) Atomics.store(u32, (tg.off >> 2) + f, tg.good[f]);
    for (let s = 0; s < holdGood; s++) Atomics.load(st, 0);
    flips++;
  }
}
Atomics.store(st, 1, flips);
`;

interface Target {
  /** byte offset of a 16-byte descriptor in the SAB */
  off: number;
  /** its good value: addr lo, addr hi, len, id | flags << 16 */
  good: Uint32Array;
  /** the bad values, 4 words each, taken in turn */
  evil: Uint32Array;
}

/** The racer thread and the tally of outcomes (as toctou.test.ts). */
class Race {
  private worker: Worker | null = null;
  /** [0] stop, [1] flips at the end, [2] the racer is running */
  private readonly stop = new SharedArrayBuffer(12);
  accepted = 0;
  rejected = 0;
  readonly unexpected: string[] = [];
  readonly reasons = new Map<string, number>();

  get started(): boolean {
    return this.worker !== null;
  }

  /** Flip `targets` in turn; each bad value held for `holdEvil` spins, each good one for `holdGood`. */
  async start(sab: SharedArrayBuffer, targets: Target[], holdEvil = 30, holdGood = 0): Promise<void> {
    this.worker = new Worker(RACER, { eval: true, workerData: { sab, targets, stop: this.stop, holdEvil, holdGood } });
    const st = new Int32Array(this.stop);
    const end = Date.now() + 30000;
    while (Atomics.load(st, 2) === 0) {
      if (Date.now() > end) throw new Error('the racer thread did not start within 30 s');
      await new Promise((res) => setTimeout(res, 1));
    }
  }

  more(it: number, min: number, end: number): boolean {
    return it < min || ((this.accepted === 0 || this.rejected === 0) && Date.now() < end);
  }

  caught(e: unknown): void {
    if (e instanceof GuestError) {
      this.rejected++;
      this.reasons.set(e.reason, (this.reasons.get(e.reason) ?? 0) + 1);
    } else this.unexpected.push(String((e as Error).stack ?? e));
  }

  summary(): string {
    return [...this.reasons].map(([r, n]) => `${r} x${n}`).join('; ');
  }

  async finish(): Promise<number> {
    const st = new Int32Array(this.stop);
    Atomics.store(st, 0, 1);
    await new Promise((res) => this.worker!.once('exit', res));
    return Atomics.load(st, 1);
  }
}

/** The 4 words of the descriptor at byte `off` of the SAB. */
function descWords(sab: SharedArrayBuffer, off: number): Uint32Array {
  return Uint32Array.from(new Uint32Array(sab, off, 4));
}

/** The indirect table a ring slot points at (its addr field), and its entry count. */
function tableOf(sab: SharedArrayBuffer, descOff: number): { gpa: number; n: number } {
  const w = new Uint32Array(sab, descOff, 4);
  return { gpa: w[0], n: w[2] / DESC_SIZE };
}

/** [addr lo, addr hi, len, id | flags << 16] */
function d(addr: number, len: number, id: number, flags: number): number[] {
  return [addr % 2 ** 32, Math.floor(addr / 2 ** 32), len, (id & 0xffff) | ((flags & 0xffff) << 16)];
}

/** `good` with its address replaced by each of `addrs` in turn (length, id and flags kept) */
function addrOnly(good: Uint32Array, addrs: number[]): Uint32Array {
  return new Uint32Array(addrs.flatMap((a) => [a % 2 ** 32, Math.floor(a / 2 ** 32), good[2], good[3]]));
}

/** the raced ring's size */
const RING_SLOTS = 8;

/** What the racing fields can describe: [start, end) of buffers, and of indirect tables. */
interface Mixes {
  bufs: Array<[number, number]>;
  tables: Array<[number, number]>;
}

/**
 * Every descriptor that a mix of whole fields of one target can make (each field as the
 * racer left it: its good value or one of its bad ones) and that lies in guest memory: a
 * descriptor the guest could have written at that moment, whose buffer the backend may then
 * write (or whose table it may read). Zero lengths are left out: nothing is written there.
 */
function mixesOf(g: Guest, targets: Target[], size: number, table: { gpa: number; n: number }): Mixes {
  const out: Mixes = { bufs: [], tables: [] };
  const seen = new Set<string>();
  for (const tg of targets) {
    const field = (f: number): number[] => [...new Set([tg.good[f], ...tg.evil.filter((_, j) => j % 4 === f)])];
    for (const lo of field(0)) for (const hi of field(1)) for (const len of field(2)) for (const fw of field(3)) {
      const gpa = lo + hi * 2 ** 32;
      const flags = fw >>> 16;
      if (len === 0 || g.gm.translate(gpa, len) < 0) continue;
      const isTable = (flags & INDIRECT) !== 0;
      // a table the walker refuses (nested in a table, NEXT with it, a length no table has) is never read
      const inTable = tg.off >= table.gpa && tg.off < table.gpa + DESC_SIZE * table.n;
      if (isTable && (inTable || (flags & NEXT) !== 0 || len % DESC_SIZE !== 0 || len / DESC_SIZE > size)) continue;
      const key = `${isTable}:${gpa}:${len}`;
      if (seen.has(key)) continue;
      seen.add(key);
      (isTable ? out.tables : out.bufs).push([gpa, gpa + len]);
    }
  }
  return out;
}

const span = ([s, e]: [number, number]): string => `0x${s.toString(16)}..0x${e.toString(16)}`;

for (const focus of [false, true]) {
  t.test(`packed RX descriptors rewritten by a racing vCPU: writes stay in the ring and the posted buffers, or stop with a GuestError${focus ? ' (focused: the inline paths\' addresses, fast flips)' : ''}`, async (t) => {
  const a = makeGuest();
  const b = makeGuest();
  a.gm.enableBulk(native);
  b.gm.enableBulk(native);
  const bulk = new CopyQueue(native);
  const R1_PATTERN = 0xa7;
  b.mem8.fill(R1_PATTERN, R0_SIZE, MEM_END);
  const l = layout(0);
  const A = F_AVAIL;
  const batch = new PacketBatch();
  const race = new Race();
  const end = Date.now() + 40000;
  let region0: Uint8Array | null = null;
  let posted: Chain[] = [];
  let mixes: Mixes = { bufs: [], tables: [] };
  const stuck: string[] = [];
  let it = 0;
  for (; race.more(it, 2000, end); it++) {
    const tx = makePacked(a, { index: 1, size: 16 });
    const rx = makePacked(b, { index: 0, size: RING_SLOTS });
    tx.vq.bulk = bulk;
    rx.vq.bulk = bulk;
    // the whole ring posted, the same every round: one buffer (the inline path), a chain of
    // two, an indirect table of two, one buffer, a chain of three (mergeable RX runs on)
    posted = [
      rx.drv.postRx(2048),
      rx.drv.postRx(1024, { chunks: 2 }),
      rx.drv.postRx(1024, { chunks: 2, indirect: true }),
      rx.drv.postRx(2048),
      rx.drv.postRx(512, { chunks: 3 }),
    ];
    if (!race.started) {
      region0 = b.mem8.slice(0, R0_SIZE);
      const bufA = posted[0].bufs[0][0];
      const tbl = tableOf(b.sab, l.desc + DESC_SIZE * 3);
      // evil ring descriptors: each good flag word is WRITE (and NEXT inside chains) | AVAIL
      // The bad values keep every mix of fields (see mixesOf) either refused or a buffer in
      // region 0, and a table only where the table is: the addresses near a region end are
      // 8 bytes before it (every length is over 8, or 0), and no bad length is a table's
      // (16 to 128 bytes, a multiple of 16). The indirect slot's own bad values use the table's
      // address where the others use bufA: with its good length (32) and INDIRECT flag, bufA
      // would be a table read from a posted buffer, whose bytes (the frames written there)
      // could name any buffer in guest memory.
      const ringEvilAt = (good: number): Uint32Array => new Uint32Array([
        ...d(R0_SIZE - 8, 2048, 0, WRITE | A), // crosses the end of region 0
        ...d(MEM_END - 8, 2048, 1, WRITE | A), // crosses the end of region 1 (into what is not guest memory)
        ...d(SAB_SIZE - 0x1000, 2048, 2, WRITE | A), // outside guest memory
        ...d(good + 2 ** 32, 2048, 3, WRITE | A), // 4 GiB above a good buffer
        ...d(good, 0xffffffff, 4, WRITE | A), // 4 GiB - 1 long
        ...d(good, 72, 5, WRITE | NEXT | A), // NEXT: the chain runs on into the next slots
        ...d(good, 2048, 6, INDIRECT | A), // a "table" of 128 entries: longer than the queue
        ...d(tbl.gpa, 2048, 7, INDIRECT | NEXT | A), // indirect with NEXT
        ...d(good, 2048, 0, A), // readable, in an RX ring
        ...d(good, 2048, 8, WRITE | A), // buffer id = queue size
        ...d(good, 2048, 0xffff, WRITE | A), // buffer id 0xffff
        ...d(good, 2048, 1, WRITE | A | F_USED), // "used" at wrap 1
        ...d(good, 2048, 2, WRITE), // "not available"
        ...d(good, 2048, 3, WRITE | F_USED), // available for the next lap: looks available when the device comes round
        ...d(good, 0, 4, WRITE | A), // zero length
      ]);
      const tableEvil = new Uint32Array([
        ...d(MEM_END - 8, 1024, 0, WRITE), // crosses the end of memory
        ...d(R0_SIZE - 8, 1024, 0, WRITE), // crosses region 0's end
        ...d(SAB_SIZE - 0x800, 1024, 0, WRITE), // outside guest memory
        ...d(bufA, 1024, 0, 0), // readable
        ...d(tbl.gpa, 32, 0, INDIRECT | WRITE), // nested indirect (itself)
        ...d(bufA, 0xffffffff, 0, WRITE), // 4 GiB - 1 long
        ...d(bufA + 2 ** 32, 1024, 0, WRITE | NEXT), // 4 GiB above (NEXT means nothing in a packed table)
      ]);
      const targets: Target[] = [];
      if (focus) {
        // the one-buffer chains (slots 0 and 4, the inline path): only their addresses flip,
        // fast, so that a second read of the address after its check would be caught
        for (const s of [0, 4]) {
          const good = descWords(b.sab, l.desc + DESC_SIZE * s);
          targets.push({ off: l.desc + DESC_SIZE * s, good, evil: addrOnly(good, [R0_SIZE - 8, MEM_END - 8, SAB_SIZE - 0x1000]) });
        }
      } else {
        for (let s = 0; s < RING_SLOTS; s++) targets.push({ off: l.desc + DESC_SIZE * s, good: descWords(b.sab, l.desc + DESC_SIZE * s), evil: ringEvilAt(s === 3 ? tbl.gpa : bufA) });
        for (let e = 0; e < tbl.n; e++) targets.push({ off: tbl.gpa + DESC_SIZE * e, good: descWords(b.sab, tbl.gpa + DESC_SIZE * e), evil: tableEvil });
      }
      mixes = mixesOf(b, targets, RING_SLOTS, tbl);
      t.same(mixes.tables.filter(([s, e]) => s !== tbl.gpa || e !== tbl.gpa + DESC_SIZE * tbl.n).map(span), [], 'no mix of the racing fields is a table but the table');
      t.same(mixes.bufs.filter(([, e]) => e > R0_SIZE).map(span), [], 'no mix of the racing fields is a buffer outside region 0');
      await race.start(b.sab, targets, focus ? 3 : 30, focus ? 3 : 0);
    }
    // 12 frames for 8 slots: mergeable RX takes chains until the ring runs out, so the device
    // comes round to slots it has taken this burst (a slot the racer made "available for the
    // next lap" must not be taken twice); 60 B (the copy loop), 1000 B and 1500 B (the bulk
    // queue); every third of two TX descriptors (the general path)
    for (let k = 0; k < 12; k++) tx.drv.postTx(pattern([60, 1000, 300, 1500][k & 3], it + k), k % 3 === 2 ? { chunks: 2 } : {});
    const n = tx.vq.dequeueBurst(batch, 32);
    rx.vq.acquire();
    try {
      const done = rx.vq.enqueueBurst(a.gm, batch, null, n);
      rx.vq.flush();
      race.accepted += done;
      if (rx.vq.lastUsedIdx !== rx.vq.lastAvailIdx && stuck.length < 3) {
        stuck.push(`round ${it}: used ${rx.vq.lastUsedIdx.toString(16)} avail ${rx.vq.lastAvailIdx.toString(16)} after ${done} frames`);
      }
      rx.vq.release();
    } catch (e) {
      race.caught(e);
      rx.vq.abandon();
    }
    tx.vq.completeBurst(batch);
  }
  const flips = await race.finish();
  t.same(race.unexpected.slice(0, 3), [], 'only GuestError was thrown');
  t.same(stuck, [], 'every chain taken in a burst was returned in it (used index = avail index)');
  let r1Bad = 0;
  for (let k = R0_SIZE; k < MEM_END; k++) if (b.mem8[k] !== R1_PATTERN) r1Bad++;
  let bgBad = 0;
  for (let k = MEM_END; k < SAB_SIZE; k++) if (b.mem8[k] !== BACKGROUND) bgBad++;
  t.equal(r1Bad, 0, 'region 1 (no buffer there) untouched');
  t.equal(bgBad, 0, 'bytes after guest memory untouched');
  // region 0: the descriptor ring (the racer, the driver and the used elements), the device
  // event area, the posted buffers, the indirect table (the racer) and the buffers a mix of
  // the racing fields describes (a posted address with a bad length, say) may change;
  // nothing else
  const tbl = tableOf(b.sab, l.desc + DESC_SIZE * 3);
  const mayChange: Array<[number, number]> = [
    [l.desc, l.desc + DESC_SIZE * RING_SLOTS],
    [l.used, l.used + 4],
    [tbl.gpa, tbl.gpa + DESC_SIZE * 2],
    ...posted.flatMap((c) => c.bufs.map(([g, n]): [number, number] => [g, g + n])),
    ...mixes.bufs,
  ];
  const changed: number[] = [];
  for (let k = 0; k < R0_SIZE; k++) {
    if (mayChange.some(([s, e]) => k >= s && k < e)) continue;
    if (b.mem8[k] !== region0![k]) changed.push(k);
  }
  t.same(changed.slice(0, 8).map((k) => '0x' + k.toString(16)), [], `region 0 outside the ring, the table, the posted buffers and the mixes' buffers equals its snapshot (${changed.length} bytes differ)`);
  t.ok(flips > 0, `the racer ran: ${flips} flips in ${it} rounds`);
  t.ok(race.accepted > 0 && race.rejected > 0, `both outcomes happened: ${race.accepted} frames written, ${race.rejected} bursts refused (${race.summary()})`);
  a.gm.dispose();
  b.gm.dispose();
  });
}

for (const focus of [false, true]) {
  t.test(`packed TX descriptors rewritten by a racing vCPU: no byte from outside guest memory reaches the receiver${focus ? ' (focused: the inline paths\' addresses, fast flips)' : ''}`, async (t) => {
  // The TX inline path reads a descriptor's fields once, checks the address against the
  // region window and places the packet by that read; the walker (chains, indirect) reads
  // each descriptor once too. Bytes after guest A's memory hold a secret; guest B must never
  // receive a run of it, and A's memory may change only in its ring (the used elements).
  const a = makeGuest();
  const b = makeGuest();
  a.gm.enableBulk(native);
  b.gm.enableBulk(native);
  const bulk = new CopyQueue(native);
  const SECRET = 0xc3;
  a.mem8.fill(SECRET, MEM_END, SAB_SIZE);
  const l = layout(1);
  const A = F_AVAIL;
  const batch = new PacketBatch();
  const race = new Race();
  let leaked = 0;
  let received = 0;
  const stuck: string[] = [];
  const end = Date.now() + 40000;
  let snapA: Uint8Array | null = null;
  let it = 0;
  for (; race.more(it, 3000, end); it++) {
    const tx = makePacked(a, { index: 1, size: RING_SLOTS });
    const rx = makePacked(b, { index: 0, size: 16 });
    tx.vq.bulk = bulk;
    rx.vq.bulk = bulk;
    const rxChains = new Map<number, Chain>();
    for (let k = 0; k < 16; k++) {
      const c = rx.drv.postRx(1024);
      rxChains.set(c.id, c);
    }
    // 8 slots: one descriptor of 60 B (the inline copy loop) in region 0, one of 1000 B in
    // region 1 (the bulk queue; the window moves between regions), a chain of two, an indirect
    // table of two, one of 1000 B in region 0, a chain of two (the general path)
    tx.drv.postTx(pattern(60, it));
    const r1 = R0_SIZE + 0x1000;
    const f1 = pattern(1000, it + 1);
    a.mem8.fill(0, r1, r1 + 12);
    a.mem8.set(f1, r1 + 12);
    tx.drv.postChain([[r1, 1012]], false);
    tx.drv.postTx(pattern(300, it + 2), { chunks: 2 });
    tx.drv.postTx(pattern(500, it + 3), { chunks: 2, indirect: true });
    tx.drv.postTx(pattern(1000, it + 4));
    tx.drv.postTx(pattern(200, it + 5), { chunks: 2 });
    if (!race.started) {
      snapA = a.mem8.slice(0, MEM_END);
      const good = r1;
      const tbl = tableOf(a.sab, l.desc + DESC_SIZE * 4);
      const ringEvil = new Uint32Array([
        ...d(R0_SIZE - 64, 1012, 0, A), // crosses the end of region 0
        ...d(MEM_END - 64, 1012, 1, A), // crosses the end of region 1 into the secret
        ...d(MEM_END + 0x100, 1012, 2, A), // inside the secret (outside guest memory)
        ...d(good + 2 ** 32, 1012, 3, A), // 4 GiB above a good buffer
        ...d(good, 0xffffffff, 4, A), // 4 GiB - 1 long
        ...d(good, 0x7fffffff, 4, A), // 2 GiB - 1 long (the inline path's own bound)
        ...d(good, 1012, 5, WRITE | A), // writable, in a TX ring
        ...d(good, 64, 6, NEXT | A), // NEXT: the chain runs on
        ...d(MEM_END + 0x100, 32, 7, INDIRECT | A), // an indirect table in the secret
        ...d(MEM_END - 16, 32, 7, INDIRECT | A), // an indirect table crossing into the secret
        ...d(tbl.gpa, 32, 0, INDIRECT | NEXT | A), // indirect with NEXT
        ...d(good, 1012, 8, A), // buffer id = queue size
        ...d(good, 1012, 0xffff, A), // buffer id 0xffff
        ...d(good, 1012, 1, A | F_USED), // "used" at wrap 1
        ...d(good, 1012, 2, 0), // "not available"
        ...d(good, 1012, 3, F_USED), // available for the next lap: looks available when the device comes round
        ...d(good, 0, 4, A), // zero length
        ...d(good, 8, 5, A), // shorter than the header
      ]);
      const tableEvil = new Uint32Array([
        ...d(MEM_END - 16, 400, 0, 0), // crosses into the secret
        ...d(MEM_END + 0x200, 400, 0, 0), // the secret itself
        ...d(R0_SIZE - 16, 400, 0, 0), // crosses region 0's end
        ...d(good, 400, 0, WRITE), // writable
        ...d(tbl.gpa, 32, 0, INDIRECT), // nested indirect (itself)
        ...d(good, 0xffffffff, 0, 0), // 4 GiB - 1 long
      ]);
      const targets: Target[] = [];
      if (focus) {
        // the one-descriptor chains (slots 0, 1 in region 1, 5: the inline path): only their
        // addresses flip, fast, so that a second read of the address after its check would be caught
        for (const s of [0, 1, 5]) {
          const good = descWords(a.sab, l.desc + DESC_SIZE * s);
          targets.push({ off: l.desc + DESC_SIZE * s, good, evil: addrOnly(good, [MEM_END - 64, MEM_END + 0x100, R0_SIZE - 64]) });
        }
      } else {
        for (let s = 0; s < RING_SLOTS; s++) targets.push({ off: l.desc + DESC_SIZE * s, good: descWords(a.sab, l.desc + DESC_SIZE * s), evil: ringEvil });
        for (let e = 0; e < tbl.n; e++) targets.push({ off: tbl.gpa + DESC_SIZE * e, good: descWords(a.sab, tbl.gpa + DESC_SIZE * e), evil: tableEvil });
      }
      await race.start(a.sab, targets, focus ? 3 : 30, focus ? 3 : 0);
    }
    try {
      const n = tx.vq.dequeueBurst(batch, 32);
      rx.vq.acquire();
      race.accepted += rx.vq.enqueueBurst(a.gm, batch, null, n);
      rx.vq.flush();
      rx.vq.release();
      tx.vq.completeBurst(batch);
      if (tx.vq.lastUsedIdx !== tx.vq.lastAvailIdx && stuck.length < 3) {
        stuck.push(`round ${it}: used ${tx.vq.lastUsedIdx.toString(16)} avail ${tx.vq.lastAvailIdx.toString(16)} after ${n} frames`);
      }
    } catch (e) {
      race.caught(e);
    }
    // what B received: any 8 bytes of the secret in a row (pattern() never repeats a byte)
    for (const u of rx.drv.collectUsed()) {
      const c = rxChains.get(u.id);
      if (!c) continue;
      received++;
      let run = 0;
      for (const x of rx.drv.chainBytes(c, u.len)) {
        run = x === SECRET ? run + 1 : 0;
        if (run === 8) {
          leaked++;
          break;
        }
      }
    }
  }
  const flips = await race.finish();
  t.same(race.unexpected.slice(0, 3), [], 'only GuestError was thrown');
  t.equal(leaked, 0, `no packet carried bytes from outside guest memory (${received} received)`);
  t.same(stuck, [], 'every chain taken in a burst was returned in it (used index = avail index)');
  // A: only the descriptor ring (the racer, the driver, the used elements), the device event
  // area, the table and the TX buffers (the driver rewrites them each round, the same bytes
  // but the frames' patterns, which move with the round) may differ
  const tbl = tableOf(a.sab, l.desc + DESC_SIZE * 4);
  const mayChange: Array<[number, number]> = [
    [l.desc, l.desc + DESC_SIZE * RING_SLOTS],
    [l.used, l.used + 4],
    [tbl.gpa, tbl.gpa + DESC_SIZE * 2],
    [l.bufBase, l.bufEnd],
    [R0_SIZE + 0x1000, R0_SIZE + 0x1000 + 1012],
  ];
  const changed: number[] = [];
  for (let k = 0; k < MEM_END; k++) {
    if (mayChange.some(([s, e]) => k >= s && k < e)) continue;
    if (a.mem8[k] !== snapA![k]) changed.push(k);
  }
  t.same(changed.slice(0, 8).map((k) => '0x' + k.toString(16)), [], `TX guest: nothing written outside its ring and buffers (${changed.length} bytes differ)`);
  let secretBad = 0;
  for (let k = MEM_END; k < SAB_SIZE; k++) if (a.mem8[k] !== SECRET) secretBad++;
  t.equal(secretBad, 0, 'TX guest: the bytes after its memory untouched');
  t.ok(flips > 0, `the racer ran: ${flips} flips in ${it} rounds`);
  t.ok(race.accepted > 0 && race.rejected > 0, `both outcomes happened: ${race.accepted} packets delivered, ${race.rejected} bursts refused (${race.summary()})`);
  a.gm.dispose();
  b.gm.dispose();
  });
}

/**
 * Wrap-counter games alone: the racer flips only the AVAIL/USED bits of slots 0 and 1 of a
 * full ring, between "available for this lap" (as posted) and "available for the next lap".
 * A burst that takes every chain comes round to slot 0 with its wrap counter flipped, where
 * the flipped bits say "available" although the device has not returned that buffer yet: the
 * driver made a slot available twice. The device must not take a slot it holds (no more
 * buffers in flight than the ring has slots: their used elements would overwrite each other,
 * and the pending arrays have `size` entries), so such a burst stops with a GuestError; a
 * burst the racer left alone returns every chain it took. Two shapes: eight one-descriptor
 * chains (the inline paths), and a chain of two at slots 0-1 then six (the walker).
 */
for (const dir of ['tx', 'rx'] as const) {
  for (const shape of ['single', 'chain'] as const) {
    t.test(`packed ${dir.toUpperCase()}, ${shape === 'single' ? 'one-descriptor chains' : 'a chain of two first'}: a racing vCPU flipping the AVAIL/USED bits to the next lap's: no slot taken twice, every chain returned, only GuestError`, async (t) => {
      const a = makeGuest();
      const b = makeGuest();
      const batch = new PacketBatch();
      const race = new Race();
      const end = Date.now() + 30000;
      const l = layout(dir === 'tx' ? 1 : 0);
      const raced = dir === 'tx' ? a : b;
      const chains = shape === 'single' ? RING_SLOTS : RING_SLOTS - 1;
      const tooMany: string[] = [];
      const stuck: string[] = [];
      let it = 0;
      for (; race.more(it, 2000, end); it++) {
        const tx = makePacked(a, { index: 1, size: dir === 'tx' ? RING_SLOTS : 16 });
        const rx = makePacked(b, { index: 0, size: dir === 'rx' ? RING_SLOTS : 16 });
        // the raced ring full; the other with more than enough
        for (let k = 0; k < (dir === 'tx' ? chains : 12); k++) tx.drv.postTx(pattern(60 + 8 * k, it + k), dir === 'tx' && k === 0 && shape === 'chain' ? { chunks: 2 } : {});
        for (let k = 0; k < (dir === 'rx' ? chains : 16); k++) rx.drv.postRx(dir === 'rx' && k === 0 && shape === 'chain' ? 512 : 1024, dir === 'rx' && k === 0 && shape === 'chain' ? { chunks: 2 } : {});
        if (!race.started) {
          const targets: Target[] = [];
          for (const s of [0, 1]) {
            const good = descWords(raced.sab, l.desc + DESC_SIZE * s);
            // the same descriptor with AVAIL and USED swapped: available for the next lap (wrap 0)
            const evil = Uint32Array.from(good);
            evil[3] ^= (F_AVAIL | F_USED) << 16;
            targets.push({ off: l.desc + DESC_SIZE * s, good, evil });
          }
          // about half the time each way: the first read of a slot and the one a lap later can differ
          await race.start(raced.sab, targets, 60, 60);
        }
        const q = dir === 'tx' ? tx : rx;
        let taken = -1;
        try {
          const n = tx.vq.dequeueBurst(batch, 32);
          if (dir === 'tx') taken = n;
          rx.vq.acquire();
          try {
            const done = rx.vq.enqueueBurst(a.gm, batch, null, n);
            if (dir === 'rx') taken = done;
            rx.vq.flush();
            rx.vq.release();
          } catch (e) {
            rx.vq.abandon();
            throw e;
          }
          tx.vq.completeBurst(batch);
          race.accepted++;
          if (taken > chains && tooMany.length < 3) tooMany.push(`round ${it}: ${taken} chains from a ring of ${chains}`);
          if (q.vq.lastUsedIdx !== q.vq.lastAvailIdx && stuck.length < 3) {
            stuck.push(`round ${it}: used ${q.vq.lastUsedIdx.toString(16)} avail ${q.vq.lastAvailIdx.toString(16)} after ${taken} chains`);
          }
        } catch (e) {
          race.caught(e);
        }
      }
      const flips = await race.finish();
      t.same(race.unexpected.slice(0, 3), [], 'only GuestError was thrown');
      t.same(tooMany, [], 'no burst took more chains than the ring holds');
      t.same(stuck, [], 'every chain taken in a burst was returned in it (used index = avail index)');
      t.ok(flips > 0, `the racer ran: ${flips} flips in ${it} rounds`);
      t.ok(race.accepted > 0 && race.rejected > 0, `both outcomes happened: ${race.accepted} bursts through, ${race.rejected} refused (${race.summary()})`);
      t.same([...race.reasons.keys()].filter((r) => r !== 'ring slot made available again before it was used'), [], 'refused for that reason only');
    });
  }
}
