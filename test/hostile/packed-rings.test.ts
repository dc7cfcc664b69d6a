/**
 * Hostile guests at the ring level for PACKED virtqueues (issue 19), unit level: every rule
 * of the split ring's list (README.md, rings.test.ts) that applies to a packed ring, written
 * as raw descriptors with the packed driver's helpers, then one TX burst (dequeueBurst) or
 * one RX burst (enqueueBurst, from a source frame of one segment: the inline fast path
 * first; and of two segments: the general path). Each case must end in a GuestError whose
 * reason is the rule's exact text, with NOTHING written to the guest (its whole memory, the
 * ring included, equals the snapshot taken before the burst) and the queue state not
 * advanced (the object's indices and the ctrl words GET_VRING_BASE reads). Descriptors the
 * flags say are not available (the AVAIL / USED bits against the wrap counter) must not be
 * taken at all: no error, nothing consumed, nothing written.
 */
import t from 'tap';
import { PacketBatch } from '../../src/workers/packet-batch';
import { GuestError } from '../../src/workers/guest-error';
import { packedIndex } from '../../src/protocol/ring-layout';
import { CTRL_LAST_AVAIL, CTRL_LAST_USED, CTRL_SIGNALLED_USED, QueueFeatures, ST_DROP_NO_BUF } from '../../src/shared/types';
import { DESC_SIZE, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE } from '../../src/protocol/constants';
import { R0_SIZE, R1_SIZE, eq, layout, makeGuest, pattern } from '../../kit/vq-harness';
import { F_AVAIL, F_USED, PQueue, makePacked } from './packed-kit';

const NEXT = VRING_DESC_F_NEXT;
const WRITE = VRING_DESC_F_WRITE;
const INDIRECT = VRING_DESC_F_INDIRECT;
/** guest memory is [0, MEM_END): R0 then R1, adjacent in gpa but two regions */
const MEM_END = R0_SIZE + R1_SIZE;

const batch = new PacketBatch(32);

/** The slot k descriptors after the driver's next one, and the avail bits for that slot's lap. */
function at(q: PQueue, k: number): { slot: number; bits: number } {
  const s = q.drv.next + k;
  const lap = s >= q.drv.size ? q.drv.wrap ^ 1 : q.drv.wrap;
  return { slot: s % q.drv.size, bits: q.drv.availBits(lap) };
}

/** Write descriptor k of a chain at the driver's next slot, with that slot's avail bits. */
function put(q: PQueue, k: number, addr: number, len: number, id: number, flags: number): void {
  const { slot, bits } = at(q, k);
  q.drv.writeDesc(slot, addr, len, id, bits | flags);
}

/** A good TX buffer: 12-byte header (zeros) and a 60-byte frame. */
function txBuf(q: PQueue, len = 72): number {
  const b = new Uint8Array(len);
  b.set(pattern(len - 12, 5), 12);
  const gpa = q.drv.alloc(len);
  q.drv.write(gpa, b);
  return gpa;
}

function rxBuf(q: PQueue, len = 2048): number {
  const gpa = q.drv.alloc(len);
  q.g.mem8.fill(0xee, gpa, gpa + len);
  return gpa;
}

/** An indirect table of (addr, len, flags) entries in the driver's buffer arena. */
function table(q: PQueue, entries: Array<[number, number, number]>): number {
  const gpa = q.drv.alloc(DESC_SIZE * Math.max(1, entries.length));
  const dv = new DataView(q.g.sab);
  entries.forEach(([a, l, f], k) => {
    const o = gpa + DESC_SIZE * k;
    dv.setUint32(o, a % 0x1_0000_0000, true);
    dv.setUint32(o + 4, Math.floor(a / 0x1_0000_0000), true);
    dv.setUint32(o + 8, l, true);
    dv.setUint16(o + 12, 0, true);
    dv.setUint16(o + 14, f, true);
  });
  return gpa;
}

interface HCase {
  name: string;
  dir: 'tx' | 'rx';
  /** the GuestError's reason; null: the descriptor is not available and must not be taken */
  reason: string | null;
  /** the message's detail (after the reason) */
  detail?: RegExp;
  features?: Partial<QueueFeatures>;
  size?: number;
  start?: number;
  wrap?: number;
  build: (q: PQueue) => void;
}

/** descriptors a TX case may hold: header + frame, or bare addresses */
const txCases: HCase[] = [
  { name: 'descriptor outside guest memory', dir: 'tx', reason: 'descriptor outside guest memory', detail: /addr 0x31000 len 72/, build: (q) => put(q, 0, MEM_END + 0x1000, 72, 0, 0) },
  { name: 'descriptor address near 2^64', dir: 'tx', reason: 'descriptor outside guest memory', build: (q) => put(q, 0, 2 ** 64 - 4096, 8192, 0, 0) },
  { name: 'descriptor 4 GiB above a good buffer', dir: 'tx', reason: 'descriptor outside guest memory', build: (q) => put(q, 0, txBuf(q) + 2 ** 32, 72, 0, 0) },
  { name: 'descriptor crossing the end of guest memory', dir: 'tx', reason: 'descriptor crosses a memory region end', detail: /addr 0x2fff0 len 72/, build: (q) => put(q, 0, MEM_END - 16, 72, 0, 0) },
  { name: 'descriptor straddling the R0/R1 boundary (adjacent regions)', dir: 'tx', reason: 'descriptor crosses a memory region end', detail: /addr 0x1fff0 len 72/, build: (q) => put(q, 0, R0_SIZE - 16, 72, 0, 0) },
  { name: 'descriptor length 0xffffffff', dir: 'tx', reason: 'descriptor crosses a memory region end', detail: /len 4294967295/, build: (q) => put(q, 0, txBuf(q), 0xffffffff, 0, 0) },
  { name: 'second descriptor of a chain outside guest memory', dir: 'tx', reason: 'descriptor outside guest memory', build: (q) => {
    put(q, 1, MEM_END + 0x800, 60, 0, 0);
    put(q, 0, txBuf(q, 12), 12, 0, NEXT);
  } },
  { name: 'zero-length descriptor outside guest memory', dir: 'tx', reason: 'descriptor outside guest memory', build: (q) => put(q, 0, MEM_END + 0x1000, 0, 0, 0) },
  { name: 'zero-length descriptor alone (no header)', dir: 'tx', reason: 'TX chain shorter than the virtio-net header', build: (q) => put(q, 0, txBuf(q), 0, 0, 0) },
  { name: 'chain shorter than the header (8 bytes)', dir: 'tx', reason: 'TX chain shorter than the virtio-net header', build: (q) => put(q, 0, txBuf(q), 8, 0, 0) },
  { name: 'chain shorter than the header (4 + 4 bytes)', dir: 'tx', reason: 'TX chain shorter than the virtio-net header', build: (q) => {
    const b = txBuf(q);
    put(q, 1, b + 4, 4, 0, 0);
    put(q, 0, b, 4, 0, NEXT);
  } },
  { name: 'chain longer than the ring (NEXT on every descriptor)', dir: 'tx', reason: 'descriptor chain longer than the queue size', build: (q) => {
    const b = txBuf(q);
    for (let k = q.drv.size - 1; k >= 0; k--) put(q, k, b, 72, 0, NEXT);
  } },
  { name: 'chain longer than the ring around the wrap (start slot 5)', dir: 'tx', reason: 'descriptor chain longer than the queue size', start: 5, build: (q) => {
    const b = txBuf(q);
    for (let k = q.drv.size - 1; k >= 0; k--) put(q, k, b, 72, 0, NEXT);
  } },
  { name: 'chain longer than the ring of zero-length descriptors, wrap counter 0', dir: 'tx', reason: 'descriptor chain longer than the queue size', start: 3, wrap: 0, build: (q) => {
    for (let k = q.drv.size - 1; k >= 0; k--) put(q, k, txBuf(q), 0, 0, NEXT);
  } },
  { name: 'buffer id = queue size (fast path)', dir: 'tx', reason: 'buffer id out of range', detail: /id 8 size 8/, build: (q) => put(q, 0, txBuf(q), 72, 8, 0) },
  { name: 'buffer id 0xffff (fast path)', dir: 'tx', reason: 'buffer id out of range', detail: /id 65535 size 8/, build: (q) => put(q, 0, txBuf(q), 72, 0xffff, 0) },
  { name: 'buffer id out of range in the last descriptor of a chain', dir: 'tx', reason: 'buffer id out of range', detail: /id 9 size 8/, build: (q) => {
    const b = txBuf(q);
    put(q, 1, b + 12, 60, 9, 0);
    put(q, 0, b, 12, 0, NEXT);
  } },
  { name: 'buffer id out of range on an indirect descriptor', dir: 'tx', reason: 'buffer id out of range', build: (q) => put(q, 0, table(q, [[txBuf(q), 72, 0]]), 16, 8, INDIRECT) },
  { name: 'writable descriptor in a TX ring (fast path)', dir: 'tx', reason: 'writable descriptor in TX chain', build: (q) => put(q, 0, txBuf(q), 72, 0, WRITE) },
  { name: 'writable descriptor second in a TX chain', dir: 'tx', reason: 'writable descriptor in TX chain', build: (q) => {
    const b = txBuf(q);
    put(q, 1, b + 12, 60, 0, WRITE);
    put(q, 0, b, 12, 0, NEXT);
  } },
  { name: 'writable entry in a TX indirect table', dir: 'tx', reason: 'writable descriptor in TX chain', build: (q) => {
    const b = txBuf(q);
    put(q, 0, table(q, [[b, 12, 0], [b + 12, 60, WRITE]]), 32, 0, INDIRECT);
  } },
  { name: 'indirect without VIRTIO_RING_F_INDIRECT_DESC', dir: 'tx', reason: 'indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC', features: { indirect: false }, build: (q) => put(q, 0, table(q, [[txBuf(q), 72, 0]]), 16, 0, INDIRECT) },
  { name: 'NEXT together with INDIRECT in the ring', dir: 'tx', reason: 'indirect descriptor with NEXT', build: (q) => {
    put(q, 1, txBuf(q), 72, 0, 0);
    put(q, 0, table(q, [[txBuf(q), 72, 0]]), 16, 0, INDIRECT | NEXT);
  } },
  { name: 'indirect descriptor second in a chain', dir: 'tx', reason: 'indirect descriptor inside a chain', build: (q) => {
    const b = txBuf(q);
    put(q, 1, table(q, [[b + 12, 60, 0]]), 16, 0, INDIRECT);
    put(q, 0, b, 12, 0, NEXT);
  } },
  { name: 'indirect inside indirect', dir: 'tx', reason: 'nested indirect descriptor', build: (q) => {
    const inner = table(q, [[txBuf(q), 72, 0]]);
    put(q, 0, table(q, [[inner, 16, INDIRECT]]), 16, 0, INDIRECT);
  } },
  { name: 'indirect inside indirect, second entry', dir: 'tx', reason: 'nested indirect descriptor', build: (q) => {
    const b = txBuf(q);
    const inner = table(q, [[b + 12, 60, 0]]);
    put(q, 0, table(q, [[b, 12, 0], [inner, 16, INDIRECT]]), 32, 0, INDIRECT);
  } },
  { name: 'indirect table length 0', dir: 'tx', reason: 'indirect table length not a non-zero multiple of 16', detail: /len 0$/, build: (q) => put(q, 0, table(q, [[txBuf(q), 72, 0]]), 0, 0, INDIRECT) },
  { name: 'indirect table length 24', dir: 'tx', reason: 'indirect table length not a non-zero multiple of 16', detail: /len 24$/, build: (q) => put(q, 0, table(q, [[txBuf(q), 72, 0], [0, 0, 0]]), 24, 0, INDIRECT) },
  { name: 'indirect table length 8', dir: 'tx', reason: 'indirect table length not a non-zero multiple of 16', build: (q) => put(q, 0, table(q, [[txBuf(q), 72, 0]]), 8, 0, INDIRECT) },
  { name: 'indirect table outside guest memory', dir: 'tx', reason: 'indirect table outside guest memory', detail: /addr 0x31000 len 32/, build: (q) => put(q, 0, MEM_END + 0x1000, 32, 0, INDIRECT) },
  { name: 'indirect table crossing the end of guest memory', dir: 'tx', reason: 'indirect table outside guest memory', build: (q) => put(q, 0, MEM_END - 16, 32, 0, INDIRECT) },
  { name: 'indirect table straddling the R0/R1 boundary', dir: 'tx', reason: 'indirect table outside guest memory', detail: /addr 0x1fff0 len 32/, build: (q) => put(q, 0, R0_SIZE - 16, 32, 0, INDIRECT) },
  { name: 'indirect table of 2^28 entries (length 0xfffffff0)', dir: 'tx', reason: 'indirect table outside guest memory', build: (q) => put(q, 0, table(q, [[txBuf(q), 72, 0]]), 0xfffffff0, 0, INDIRECT) },
  { name: 'indirect table with more entries than the queue size', dir: 'tx', reason: 'descriptor chain longer than the queue size', build: (q) => {
    const b = txBuf(q);
    put(q, 0, table(q, Array.from({ length: 9 }, (_, k): [number, number, number] => [b + 8 * k, 8, 0])), 9 * 16, 0, INDIRECT);
  } },
  { name: 'indirect table entry outside guest memory', dir: 'tx', reason: 'descriptor outside guest memory', build: (q) => {
    const b = txBuf(q);
    put(q, 0, table(q, [[b, 12, 0], [MEM_END + 0x40, 60, 0]]), 32, 0, INDIRECT);
  } },
  { name: 'indirect table entry straddling R0/R1', dir: 'tx', reason: 'descriptor crosses a memory region end', build: (q) => put(q, 0, table(q, [[R0_SIZE - 36, 72, 0]]), 16, 0, INDIRECT) },
  { name: 'indirect table entry of length 0xffffffff', dir: 'tx', reason: 'descriptor crosses a memory region end', build: (q) => put(q, 0, table(q, [[txBuf(q), 0xffffffff, 0]]), 16, 0, INDIRECT) },
  // flags that say "not available": nothing taken, no error
  { name: 'AVAIL = USED = 1 at wrap 1 (a used descriptor)', dir: 'tx', reason: null, build: (q) => q.drv.writeDesc(q.drv.next, txBuf(q), 72, 0, F_AVAIL | F_USED) },
  { name: 'AVAIL = USED = 0 at wrap 1 (never made available)', dir: 'tx', reason: null, build: (q) => q.drv.writeDesc(q.drv.next, txBuf(q), 72, 0, 0) },
  { name: 'AVAIL = 0, USED = 1 at wrap 1 (available for the next lap only)', dir: 'tx', reason: null, build: (q) => q.drv.writeDesc(q.drv.next, txBuf(q), 72, 0, F_USED) },
  { name: 'AVAIL = 1, USED = 0 at wrap 0 (available for the previous lap only)', dir: 'tx', reason: null, start: 2, wrap: 0, build: (q) => q.drv.writeDesc(q.drv.next, txBuf(q), 72, 0, F_AVAIL) },
  { name: 'AVAIL = USED = 0 at wrap 0 (a used descriptor)', dir: 'tx', reason: null, start: 2, wrap: 0, build: (q) => q.drv.writeDesc(q.drv.next, txBuf(q), 72, 0, 0) },
  { name: 'unavailable head carrying bad fields (outside memory, id 0xffff, INDIRECT|NEXT)', dir: 'tx', reason: null, build: (q) => q.drv.writeDesc(q.drv.next, MEM_END + 0x1000, 0xffffffff, 0xffff, F_USED | INDIRECT | NEXT | WRITE) },
];

const rxCases: HCase[] = [
  { name: 'readable descriptor in an RX ring', dir: 'rx', reason: 'readable descriptor in RX chain', build: (q) => put(q, 0, rxBuf(q), 2048, 0, 0) },
  { name: 'readable descriptor second in an RX chain', dir: 'rx', reason: 'readable descriptor in RX chain', build: (q) => {
    put(q, 1, rxBuf(q), 2048, 0, 0);
    put(q, 0, rxBuf(q), 2048, 0, WRITE | NEXT);
  } },
  { name: 'readable entry in an RX indirect table', dir: 'rx', reason: 'readable descriptor in RX chain', build: (q) => put(q, 0, table(q, [[rxBuf(q), 2048, WRITE], [rxBuf(q), 2048, 0]]), 32, 0, INDIRECT) },
  { name: 'writable descriptor outside guest memory', dir: 'rx', reason: 'descriptor outside guest memory', build: (q) => put(q, 0, MEM_END + 0x1000, 2048, 0, WRITE) },
  { name: 'writable descriptor near 2^64', dir: 'rx', reason: 'descriptor outside guest memory', build: (q) => put(q, 0, 2 ** 64 - 4096, 2048, 0, WRITE) },
  { name: 'writable descriptor crossing the end of memory', dir: 'rx', reason: 'descriptor crosses a memory region end', build: (q) => put(q, 0, MEM_END - 64, 2048, 0, WRITE) },
  { name: 'writable descriptor straddling R0/R1', dir: 'rx', reason: 'descriptor crosses a memory region end', build: (q) => put(q, 0, R0_SIZE - 64, 2048, 0, WRITE) },
  { name: 'writable descriptor crossing the end of memory after a good one (chain)', dir: 'rx', reason: 'descriptor crosses a memory region end', build: (q) => {
    put(q, 1, MEM_END - 8, 64, 0, WRITE);
    put(q, 0, rxBuf(q), 2048, 0, WRITE | NEXT);
  } },
  { name: 'RX chain longer than the ring', dir: 'rx', reason: 'descriptor chain longer than the queue size', build: (q) => {
    for (let k = q.drv.size - 1; k >= 0; k--) put(q, k, rxBuf(q, 16), 16, 0, WRITE | NEXT);
  } },
  { name: 'RX chain longer than the ring around the wrap, wrap counter 0', dir: 'rx', reason: 'descriptor chain longer than the queue size', start: 6, wrap: 0, build: (q) => {
    for (let k = q.drv.size - 1; k >= 0; k--) put(q, k, rxBuf(q, 16), 16, 0, WRITE | NEXT);
  } },
  { name: 'buffer id = queue size', dir: 'rx', reason: 'buffer id out of range', detail: /id 8 size 8/, build: (q) => put(q, 0, rxBuf(q), 2048, 8, WRITE) },
  { name: 'buffer id 0xffff', dir: 'rx', reason: 'buffer id out of range', build: (q) => put(q, 0, rxBuf(q), 2048, 0xffff, WRITE) },
  { name: 'buffer id out of range in the last descriptor of an RX chain', dir: 'rx', reason: 'buffer id out of range', build: (q) => {
    put(q, 1, rxBuf(q), 2048, 200, WRITE);
    put(q, 0, rxBuf(q), 2048, 0, WRITE | NEXT);
  } },
  { name: 'indirect without the feature (RX)', dir: 'rx', reason: 'indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC', features: { indirect: false }, build: (q) => put(q, 0, table(q, [[rxBuf(q), 2048, WRITE]]), 16, 0, INDIRECT | WRITE) },
  { name: 'NEXT together with INDIRECT (RX)', dir: 'rx', reason: 'indirect descriptor with NEXT', build: (q) => {
    put(q, 1, rxBuf(q), 2048, 0, WRITE);
    put(q, 0, table(q, [[rxBuf(q), 2048, WRITE]]), 16, 0, INDIRECT | NEXT);
  } },
  { name: 'indirect inside indirect (RX)', dir: 'rx', reason: 'nested indirect descriptor', build: (q) => {
    const inner = table(q, [[rxBuf(q), 2048, WRITE]]);
    put(q, 0, table(q, [[inner, 16, INDIRECT | WRITE]]), 16, 0, INDIRECT);
  } },
  { name: 'indirect second in an RX chain', dir: 'rx', reason: 'indirect descriptor inside a chain', build: (q) => {
    put(q, 1, table(q, [[rxBuf(q), 2048, WRITE]]), 16, 0, INDIRECT);
    put(q, 0, rxBuf(q), 16, 0, WRITE | NEXT);
  } },
  { name: 'indirect table length 24 (RX)', dir: 'rx', reason: 'indirect table length not a non-zero multiple of 16', build: (q) => put(q, 0, table(q, [[rxBuf(q), 2048, WRITE], [0, 0, 0]]), 24, 0, INDIRECT) },
  { name: 'indirect table length 0 (RX)', dir: 'rx', reason: 'indirect table length not a non-zero multiple of 16', build: (q) => put(q, 0, table(q, [[rxBuf(q), 2048, WRITE]]), 0, 0, INDIRECT) },
  { name: 'indirect table outside guest memory (RX)', dir: 'rx', reason: 'indirect table outside guest memory', build: (q) => put(q, 0, MEM_END + 0x100, 16, 0, INDIRECT) },
  { name: 'indirect table straddling R0/R1 (RX)', dir: 'rx', reason: 'indirect table outside guest memory', build: (q) => put(q, 0, R0_SIZE - 16, 32, 0, INDIRECT) },
  { name: 'indirect table entry crossing the end of memory (RX)', dir: 'rx', reason: 'descriptor crosses a memory region end', build: (q) => put(q, 0, table(q, [[MEM_END - 16, 2048, WRITE]]), 16, 0, INDIRECT) },
  { name: 'indirect table with more entries than the queue size (RX)', dir: 'rx', reason: 'descriptor chain longer than the queue size', build: (q) => {
    const b = rxBuf(q);
    put(q, 0, table(q, Array.from({ length: 9 }, (_, k): [number, number, number] => [b + 16 * k, 16, WRITE])), 9 * 16, 0, INDIRECT);
  } },
  { name: 'AVAIL = USED = 1 at wrap 1 (RX, used)', dir: 'rx', reason: null, build: (q) => q.drv.writeDesc(q.drv.next, rxBuf(q), 2048, 0, F_AVAIL | F_USED | WRITE) },
  { name: 'AVAIL = 0, USED = 1 at wrap 1 (RX, next lap)', dir: 'rx', reason: null, build: (q) => q.drv.writeDesc(q.drv.next, rxBuf(q), 2048, 0, F_USED | WRITE) },
  { name: 'AVAIL = 1, USED = 0 at wrap 0 (RX, previous lap)', dir: 'rx', reason: null, start: 7, wrap: 0, build: (q) => q.drv.writeDesc(q.drv.next, rxBuf(q), 2048, 0, F_AVAIL | WRITE) },
  { name: 'unavailable RX head carrying bad fields', dir: 'rx', reason: null, build: (q) => q.drv.writeDesc(q.drv.next, MEM_END + 0x1000, 0xffffffff, 0xffff, INDIRECT | NEXT) },
  { name: 'a ring of zero-length writable chains (RX): no room, nothing taken', dir: 'rx', reason: null, build: (q) => {
    for (let k = q.drv.size - 1; k >= 0; k--) put(q, k, rxBuf(q, 16), 0, k, WRITE);
  } },
];

/** Run one burst against the case's ring: the error (or null), and how many packets it took. */
function runBurst(c: HCase, q: PQueue, srcChunks: number): { err: unknown; n: number } {
  if (c.dir === 'tx') {
    try {
      return { err: null, n: q.vq.dequeueBurst(batch, 32) };
    } catch (e) {
      return { err: e, n: -1 };
    }
  }
  const src = makePacked(makeGuest(), { index: 1, size: 8 });
  src.drv.postTx(pattern(60, 3), { chunks: srcChunks });
  const n = src.vq.dequeueBurst(batch, 32);
  if (n !== 1) throw new Error('the source did not yield its frame');
  q.vq.acquire();
  try {
    const done = q.vq.enqueueBurst(src.g.gm, batch, null, n);
    q.vq.flush();
    q.vq.release();
    return { err: null, n: done };
  } catch (e) {
    // what the worker does with a GuestError: drop the burst, keep the ring's state as it was
    q.vq.abandon();
    return { err: e, n: -1 };
  }
}

for (const c of [...txCases, ...rxCases]) {
  // RX: the source frame in one segment (enqueueBurst's inline path first) and in two (the general path)
  for (const srcChunks of c.dir === 'rx' ? [1, 2] : [1]) {
    const label = `${c.dir.toUpperCase()}: ${c.name}${c.dir === 'rx' ? (srcChunks === 1 ? ' (fast path first)' : ' (general path)') : ''}`;
    t.test(label, async (t) => {
      const g = makeGuest();
      const q = makePacked(g, { index: c.dir === 'tx' ? 1 : 0, size: c.size ?? 8, features: c.features, start: c.start, wrap: c.wrap });
      c.build(q);
      const snap = g.mem8.slice();
      const state = [q.vq.lastAvailIdx, q.vq.lastUsedIdx, q.ctrl[CTRL_LAST_AVAIL], q.ctrl[CTRL_LAST_USED], q.ctrl[CTRL_SIGNALLED_USED]];
      const drops = q.stats[ST_DROP_NO_BUF];
      const { err, n } = runBurst(c, q, srcChunks);
      if (c.reason !== null) {
        t.ok(err instanceof GuestError, `a GuestError (got ${String(err)})`);
        if (err instanceof GuestError) {
          t.equal(err.reason, c.reason, 'the rule named exactly');
          if (c.detail) t.match(err.message, c.detail, 'the detail names the fields');
        }
      } else {
        t.equal(err, null, 'no error: the descriptor is simply not available');
        t.equal(n, 0, 'nothing taken');
        if (c.dir === 'rx') t.equal(q.stats[ST_DROP_NO_BUF], drops + 1, 'the frame dropped for want of a buffer');
      }
      let diff = 0;
      let first = -1;
      for (let k = 0; k < snap.length; k++) {
        if (snap[k] !== g.mem8[k]) {
          diff++;
          if (first < 0) first = k;
        }
      }
      t.equal(diff, 0, `nothing written to the guest (ring, buffers, background)${diff ? `: first at 0x${first.toString(16)}` : ''}`);
      t.same([q.vq.lastAvailIdx, q.vq.lastUsedIdx, q.ctrl[CTRL_LAST_AVAIL], q.ctrl[CTRL_LAST_USED], q.ctrl[CTRL_SIGNALLED_USED]], state, 'queue state not advanced');
    });
  }
}

// ---- controls and the cases the split ring accepts too: they must stay accepted (the checks above are not over-eager)

t.test('controls: a chain of exactly queue-size descriptors across the wrap, and an indirect table of queue-size entries, are taken', async (t) => {
  const g = makeGuest();
  const q = makePacked(g, { index: 1, size: 8, start: 5 });
  const b = txBuf(q, 12 + 8 * 7);
  // 8 descriptors: 12-byte header, then 7 x 8 bytes; NEXT on all but the last
  for (let k = 7; k >= 0; k--) put(q, k, k === 0 ? b : b + 12 + 8 * (k - 1), k === 0 ? 12 : 8, 3, k < 7 ? NEXT : 0);
  t.equal(q.vq.dequeueBurst(batch, 32), 1, 'the whole ring as one chain');
  t.equal(batch.pktLen[0], 56);
  q.vq.completeBurst(batch);
  t.equal(q.vq.lastAvailIdx, 5, 'one lap: slot 5, wrap counter flipped to 0');
  const dv = new DataView(g.sab);
  t.equal(dv.getUint16(layout(1).desc + 16 * 5 + 12, true), 3, 'the used element at the chain\'s first slot names its id');
  t.equal(dv.getUint16(layout(1).desc + 16 * 5 + 14, true), F_AVAIL | F_USED, 'with AVAIL = USED = 1 (wrap 1)');

  const g2 = makeGuest();
  const q2 = makePacked(g2, { index: 1, size: 8 });
  const b2 = txBuf(q2, 12 + 8 * 7);
  put(q2, 0, table(q2, Array.from({ length: 8 }, (_, k): [number, number, number] => [k === 0 ? b2 : b2 + 12 + 8 * (k - 1), k === 0 ? 12 : 8, 0])), 8 * 16, 0, INDIRECT);
  t.equal(q2.vq.dequeueBurst(batch, 32), 1, 'an indirect table of 8 entries');
  t.equal(batch.pktLen[0], 56);
});

t.test('a driver flipping the avail wrap mid-chain: only the first descriptor\'s flags make a chain available, the rest are taken with it (as DPDK)', async (t) => {
  // The driver writes the first descriptor's flags last; the device reads the chain's other
  // descriptors by position, whatever their AVAIL/USED bits say. Their bits flipped to "used"
  // or "next lap" change nothing: the chain is taken whole (its slots), byte-exact, and the
  // next burst starts after it.
  for (const mid of [F_AVAIL | F_USED, 0, F_USED]) {
    const g = makeGuest();
    const q = makePacked(g, { index: 1, size: 8, start: 6 });
    const frame = pattern(90, 4);
    const c = q.drv.postTx(frame, { chunks: 3 });
    // slots 7 and 0: flip their bits (slot 0 is already in the next lap: its wrap bits differ anyway)
    for (const s of [7, 0]) q.drv.writeDesc(s, ...descOf(g.sab, s), (q.drv.descFlags(s) & ~(F_AVAIL | F_USED)) | mid);
    t.equal(q.vq.dequeueBurst(batch, 32), 1, `mid-chain bits 0x${mid.toString(16)}: one packet`);
    const got = new Uint8Array(batch.pktLen[0]);
    let at = 0;
    for (let s = batch.segStart[0]; s < batch.segStart[0] + batch.segCount[0]; s++) {
      got.set(g.mem8.subarray(batch.segOffset[s] + (batch.segRegion[s] ? R0_SIZE : 0), batch.segOffset[s] + (batch.segRegion[s] ? R0_SIZE : 0) + batch.segLen[s]), at);
      at += batch.segLen[s];
    }
    t.ok(eq(got, frame), 'byte-exact');
    q.vq.completeBurst(batch);
    const dv = new DataView(g.sab);
    const o = layout(1).desc + 16 * 6;
    t.same([dv.getUint16(o + 12, true), dv.getUint16(o + 14, true)], [c.id, F_AVAIL | F_USED], 'one used element at the chain\'s first slot, its id');
    t.equal(q.vq.lastAvailIdx, 1, 'avail: slot 1 of the next lap (wrap 0): the chain took 3 slots');
    t.equal(q.vq.lastUsedIdx, 1, 'used: the same');
  }

  function descOf(sab: SharedArrayBuffer, s: number): [number, number, number] {
    const dv = new DataView(sab);
    const o = layout(1).desc + 16 * s;
    return [dv.getUint32(o, true) + dv.getUint32(o + 4, true) * 2 ** 32, dv.getUint32(o + 8, true), dv.getUint16(o + 12, true)];
  }
});

t.test('a buffer id the driver reuses while in flight is returned as given, twice (the split ring does not track heads either); no other id is ever written', async (t) => {
  const g = makeGuest();
  const q = makePacked(g, { index: 1, size: 8 });
  for (let k = 0; k < 3; k++) put(q, k, txBuf(q), 72, k === 2 ? 6 : 5, 0);
  t.equal(q.vq.dequeueBurst(batch, 32), 3);
  q.vq.completeBurst(batch);
  const dv = new DataView(g.sab);
  const ids = [0, 1, 2].map((s) => dv.getUint16(layout(1).desc + 16 * s + 12, true));
  const flags = [0, 1, 2].map((s) => dv.getUint16(layout(1).desc + 16 * s + 14, true));
  t.same(ids, [5, 5, 6], 'the used ids are the ones the driver gave, in order');
  t.same(flags, [F_AVAIL | F_USED, F_AVAIL | F_USED, F_AVAIL | F_USED], 'three used elements');
  t.equal(dv.getUint16(layout(1).desc + 16 * 3 + 14, true), 0, 'nothing past them');
});

t.test('RX: a descriptor of length 0xffffffff whose first bytes fit: the inline path writes only the frame (as the split ring), the general path refuses it', async (t) => {
  for (const chunks of [1, 2]) {
    const g = makeGuest();
    const q = makePacked(g, { index: 0, size: 8 });
    const b = rxBuf(q);
    put(q, 0, b, 0xffffffff, 0, WRITE);
    const snap = g.mem8.slice();
    const c: HCase = { name: '', dir: 'rx', reason: null, build: () => undefined };
    const { err, n } = runBurst(c, q, chunks);
    if (chunks === 1) {
      t.equal(err, null, 'inline path: no error');
      t.equal(n, 1, 'the frame written');
      const ring = layout(0).desc;
      const changed: number[] = [];
      for (let k = 0; k < snap.length; k++) {
        if (snap[k] === g.mem8[k]) continue;
        if (k >= b && k < b + 72) continue; // the header and the 60-byte frame
        if (k >= ring && k < ring + 16) continue; // the used element
        changed.push(k);
      }
      t.same(changed, [], 'nothing written but the 72 bytes at the buffer\'s start and the used element');
    } else {
      t.ok(err instanceof GuestError && err.reason === 'descriptor crosses a memory region end', `general path: ${String(err)}`);
      t.ok(eq(g.mem8, snap), 'nothing written');
    }
  }
});

t.test('a slot the device holds made available again (the next lap\'s bits) before it was used: refused, TX and RX, inline and general paths', async (t) => {
  // Deterministic form of the wrap-counter race (toctou-packed.test.ts): the device takes the
  // whole ring and has not published yet (the worker flushes RX once per acquire, TX in
  // completeBurst); the driver then marks slot 0 available for the next lap. Taking it would
  // put nine buffers in flight in a ring of eight.
  const SLOT_HELD = 'ring slot made available again before it was used';
  const held = (err: unknown): boolean => err instanceof GuestError && err.reason === SLOT_HELD;
  // TX: a burst takes all eight, then the driver re-marks slot 0 (one descriptor) or slots 0-1 (a chain of two)
  for (const chain of [false, true]) {
    const g = makeGuest();
    const q = makePacked(g, { index: 1, size: 8 });
    for (let k = 0; k < 8; k++) put(q, k, txBuf(q), 72, k, 0);
    t.equal(q.vq.dequeueBurst(batch, 32), 8, `TX${chain ? ' (chain)' : ''}: the whole ring taken`);
    const b = txBuf(q);
    if (chain) {
      q.drv.writeDesc(1, b + 12, 60, 1, F_USED);
      q.drv.writeDesc(0, b, 12, 1, F_USED | NEXT);
    } else {
      q.drv.writeDesc(0, b, 72, 0, F_USED);
    }
    const snap = g.mem8.slice();
    const second = new PacketBatch(32);
    let err: unknown = null;
    try {
      q.vq.dequeueBurst(second, 32);
    } catch (e) {
      err = e;
    }
    t.ok(held(err), `TX${chain ? ' (chain)' : ''}: ${String(err)}`);
    t.ok(eq(g.mem8, snap), 'nothing written');
  }
  // within one burst, no race needed: slots 0-6 taken, then a chain at slot 7 whose NEXT
  // runs on into slot 0, which the device holds (nine slots in flight)
  {
    const g = makeGuest();
    const q = makePacked(g, { index: 1, size: 8 });
    const b = txBuf(q);
    put(q, 7, b, 12, 7, NEXT);
    for (let k = 0; k < 7; k++) put(q, k, txBuf(q), 72, k, 0);
    const snap = g.mem8.slice();
    let err: unknown = null;
    try {
      q.vq.dequeueBurst(batch, 32);
    } catch (e) {
      err = e;
    }
    t.ok(held(err), `TX, a chain from slot 7 into held slot 0: ${String(err)}`);
    t.ok(eq(g.mem8, snap), 'nothing written');
    t.equal(q.vq.lastUsedIdx, packedIndex(0, 1), 'nothing returned');
  }
  {
    const g = makeGuest();
    const q = makePacked(g, { index: 0, size: 8 });
    put(q, 7, rxBuf(q, 16), 16, 7, WRITE | NEXT);
    for (let k = 0; k < 7; k++) put(q, k, rxBuf(q, 256), 256, k, WRITE);
    const src = makePacked(makeGuest(), { index: 1, size: 16 });
    for (let k = 0; k < 8; k++) src.drv.postTx(pattern(60, k));
    const n = src.vq.dequeueBurst(batch, 32);
    q.vq.acquire();
    let err: unknown = null;
    try {
      q.vq.enqueueBurst(src.g.gm, batch, null, n);
    } catch (e) {
      err = e;
    }
    q.vq.abandon();
    t.ok(held(err), `RX, a chain from slot 7 into held slot 0: ${String(err)}`);
  }
  // RX: eight frames fill the ring (not flushed), slot 0 re-marked, one more frame
  for (const chunks of [1, 2]) {
    const g = makeGuest();
    const q = makePacked(g, { index: 0, size: 8 });
    for (let k = 0; k < 8; k++) put(q, k, rxBuf(q, 256), 256, k, WRITE);
    const src = makePacked(makeGuest(), { index: 1, size: 16 });
    for (let k = 0; k < 8; k++) src.drv.postTx(pattern(60, k), { chunks });
    const n = src.vq.dequeueBurst(batch, 32);
    q.vq.acquire();
    t.equal(q.vq.enqueueBurst(src.g.gm, batch, null, n), 8, `RX (source in ${chunks}): the whole ring taken`);
    src.vq.completeBurst(batch);
    q.drv.writeDesc(0, rxBuf(q, 256), 256, 0, F_USED | WRITE);
    src.drv.postTx(pattern(60, 9), { chunks });
    const m = src.vq.dequeueBurst(batch, 32);
    const snap = g.mem8.slice();
    let err: unknown = null;
    try {
      q.vq.enqueueBurst(src.g.gm, batch, null, m);
    } catch (e) {
      err = e;
    }
    q.vq.abandon();
    t.ok(held(err), `RX (source in ${chunks}): ${String(err)}`);
    t.ok(eq(g.mem8, snap), 'nothing written by the refused frame');
  }
});
