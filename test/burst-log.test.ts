/**
 * src/workers/burst-log.ts: the marks of a burst, queued as byte marks or page runs and set
 * in the log at commit(), for both ring formats. The expected bits are computed here from
 * the ranges, page by page, without the code under test.
 */
import t from 'tap';
import { BurstLog } from '../src/workers/burst-log';
import { DirtyLog } from '../src/workers/dirty-log';
import { ST_DIRTY_PAGES } from '../src/shared/types';
import { rng } from './helpers/rng';

const LOG_BYTES = 4096; // 32768 pages: 128 MiB of guest memory

function freshLog(): { log: DirtyLog; bytes: Uint8Array } {
  const sab = new SharedArrayBuffer(LOG_BYTES);
  const log = new DirtyLog();
  log.set({ sab, offset: 0, size: LOG_BYTES });
  return { log, bytes: new Uint8Array(sab) };
}

function expected(ranges: Array<[number, number]>): Uint8Array {
  const out = new Uint8Array(LOG_BYTES);
  for (const [gpa, len] of ranges) {
    for (let p = Math.floor(gpa / 4096); p <= Math.floor((gpa + len - 1) / 4096); p++) out[p >> 3] |= 1 << (p & 7);
  }
  return out;
}

function bits(b: Uint8Array): number[] {
  const out: number[] = [];
  for (let i = 0; i < b.length; i++) for (let k = 0; k < 8; k++) if (b[i] & (1 << k)) out.push(i * 8 + k);
  return out;
}

t.test('small writes become byte marks, neighbours in one log byte share one; nothing is set before commit', async (t) => {
  const { log, bytes } = freshLog();
  const bl = new BurstLog(log);
  bl.defer(0x1000 + 100, 64); // page 1
  bl.defer(0x3000 + 4000, 200); // pages 3..4: same log byte
  bl.defer(0x7000 + 10, 10); // page 7: same byte
  t.equal(bl.nByteMarks, 1, 'one byte mark for three buffers in log byte 0');
  t.equal(bl.nMarks, 0, 'no page run');
  bl.defer(0x9000, 12); // page 9: byte 1
  t.equal(bl.nByteMarks, 2);
  t.same(bits(bytes), [], 'no bit before commit');
  const stats = new Float64Array(32);
  bl.commit(true, stats);
  t.same(bits(bytes), [1, 3, 4, 7, 9], 'exactly the pages written');
  t.equal(stats[ST_DIRTY_PAGES] > 0, true, 'pages counted');
  t.equal(bl.nByteMarks, 0, 'queue empty after commit');
});

t.test('a write over 64 pages or more becomes one page run', async (t) => {
  const { log, bytes } = freshLog();
  const bl = new BurstLog(log);
  bl.defer(0x10_0000 + 5, 65 * 4096);
  t.equal(bl.nMarks, 1);
  t.equal(bl.nByteMarks, 0);
  bl.commit(true, new Float64Array(32));
  t.same(bytes, expected([[0x10_0000 + 5, 65 * 4096]]), 'pages 256..321 set, nothing else');
});

t.test('random bursts: the log equals the pages of every range, with the arrays grown past their first size', async (t) => {
  const r = rng(19);
  for (let round = 0; round < 20; round++) {
    const { log, bytes } = freshLog();
    const bl = new BurstLog(log);
    const ranges: Array<[number, number]> = [];
    const n = 1 + Math.floor(r() * 400); // past the arrays' first 64 pairs
    bl.reserve(n);
    for (let k = 0; k < n; k++) {
      const big = r() < 0.05;
      const len = big ? 1 + Math.floor(r() * 100 * 4096) : 1 + Math.floor(r() * 9000);
      const gpa = Math.floor(r() * (LOG_BYTES * 8 * 4096 - len));
      ranges.push([gpa, len]);
      bl.defer(gpa, len);
    }
    bl.commit(true, new Float64Array(32));
    t.same(bytes, expected(ranges), `round ${round}: ${n} ranges`);
  }
});

t.test('discard forgets the queued marks; a later commit sets only what came after', async (t) => {
  const { log, bytes } = freshLog();
  const bl = new BurstLog(log);
  bl.defer(0x5000, 10);
  bl.defer(0x100_0000, 70 * 4096);
  bl.discard();
  bl.defer(0x2000, 1);
  bl.commit(true, new Float64Array(32));
  t.same(bits(bytes), [2]);
});

t.test('byteMark from a ring: ORed into the newest mark of the same byte', async (t) => {
  const { log, bytes } = freshLog();
  const bl = new BurstLog(log);
  bl.byteMark(3, 0b0000_0001);
  bl.byteMark(3, 0b1000_0000);
  t.equal(bl.nByteMarks, 1);
  bl.byteMark(4, 0b10);
  bl.commit(false, new Float64Array(32));
  t.same(bits(bytes), [24, 31, 33], 'marked even when the ring is not logging now (queued while it was)');
});
