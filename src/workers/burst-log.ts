/**
 * The dirty-log marks of one ring's burst, for both ring formats (split virtqueue.ts, packed
 * packed-ring.ts): every guest write of the burst (packet bytes, headers, used elements,
 * used->idx or the used flags) is queued here while the burst runs and marked at once in
 * commit(), which the ring calls from its publish() right after the store that hands the
 * burst to the guest (used->idx, or the first used element's flags). A bit then follows
 * the write it covers, bulk copies included (they run at the start of publish()), and every
 * bit is out before the ring stops (bench/NOTES.md #19, #21).
 *
 * Two kinds of marks (the marker's cost is per mark, not per page):
 * - byte marks: pairs [log byte (page >> 3), mask of its 8 pages], the newest OR'ed into when
 *   the next buffer lands in the same byte. testpmd's mbufs cluster, so a 64 B burst leaves
 *   several times fewer distinct log bytes than page runs (NOTES.md #32);
 * - page runs: pairs [first page, last page] for what spans more (a 64 KiB buffer).
 *
 * The split ring's RX loop fills both arrays inline, in locals (reserve() makes room for one
 * mark of each kind per packet up front); everything else calls defer().
 */
import { LOG_PAGE } from '../protocol/constants';
import { ST_DIRTY_PAGES } from '../shared/types';
import { DirtyLog } from './dirty-log';

const PAGE_INV = 1 / LOG_PAGE;

export class BurstLog {
  /** page runs [first, last]: pairs, nMarks of them */
  marks = new Float64Array(128);
  nMarks = 0;
  /** [log byte, page mask]: pairs, nByteMarks of them */
  byteMarks = new Int32Array(128);
  nByteMarks = 0;
  /** log.pagesMarked at the last commit (ST_DIRTY_PAGES counts the difference) */
  private pagesSeen: number;

  constructor(readonly log: DirtyLog) {
    this.pagesSeen = log.pagesMarked;
  }

  /** Queue [gpa, gpa + len) (len > 0): byte marks when it spans under 64 pages, else one run. */
  defer(gpa: number, len: number): void {
    // x 2^-12 is exact in binary floating point, and cheaper than a division
    const p0 = Math.floor(gpa * PAGE_INV);
    const p1 = Math.floor((gpa + len - 1) * PAGE_INV);
    if (p1 < 0x1_0000_0000 && p1 - p0 < 64) {
      for (let p = p0; p <= p1; ) {
        const b = p >>> 3;
        const hi = p1 < b * 8 + 7 ? p1 : b * 8 + 7;
        this.byteMark(b, (0xff >>> (7 - (hi & 7))) & (0xff << (p & 7)));
        p = hi + 1;
      }
      return;
    }
    const n = this.nMarks;
    if (n * 2 === this.marks.length) this.growMarks(0);
    this.marks[n * 2] = p0;
    this.marks[n * 2 + 1] = p1;
    this.nMarks = n + 1;
  }

  /** OR `mask` into the newest byte mark when it is byte b's, else queue a new one. */
  byteMark(b: number, mask: number): void {
    const k = this.nByteMarks;
    const bm = this.byteMarks;
    if (k > 0 && bm[2 * k - 2] === b) {
      bm[2 * k - 1] |= mask;
      return;
    }
    if (2 * k + 2 > bm.length) this.growByteMarks(2 * k + 2);
    this.byteMarks[2 * k] = b;
    this.byteMarks[2 * k + 1] = mask;
    this.nByteMarks = k + 1;
  }

  /** Room for n more marks of each kind (the inline loop's one per packet): amortised, never per packet. */
  reserve(n: number): void {
    if (2 * (this.nMarks + n) > this.marks.length) this.growMarks(2 * (this.nMarks + n));
    if (2 * (this.nByteMarks + n) > this.byteMarks.length) this.growByteMarks(2 * (this.nByteMarks + n));
  }

  /**
   * Mark everything queued (`fenced`: the caller's seq-cst store was the barrier) and, when
   * logging, flush the log and count the pages into stats[ST_DIRTY_PAGES]. From publish()
   * only, right after the store that made the burst visible.
   */
  commit(logging: boolean, stats: Float64Array): void {
    if (this.nByteMarks > 0) this.log.markBytes(this.byteMarks, this.nByteMarks, true);
    this.nByteMarks = 0;
    if (this.nMarks > 0) this.log.markPageRuns(this.marks, this.nMarks, true);
    this.nMarks = 0;
    if (logging) {
      this.log.flush(true);
      stats[ST_DIRTY_PAGES] += this.log.pagesMarked - this.pagesSeen;
    }
    this.pagesSeen = this.log.pagesMarked;
  }

  /** Forget what is queued (a burst abandoned: the device is reset). */
  discard(): void {
    this.nMarks = 0;
    this.nByteMarks = 0;
  }

  private growMarks(min: number): void {
    const m = new Float64Array(grownLength(this.marks.length, min));
    m.set(this.marks);
    this.marks = m;
  }

  private growByteMarks(min: number): void {
    const m = new Int32Array(grownLength(this.byteMarks.length, min));
    m.set(this.byteMarks);
    this.byteMarks = m;
  }
}

/** Double `len` until it reaches `min` (at least once). */
function grownLength(len: number, min: number): number {
  let n = len * 2;
  while (n < min) n *= 2;
  return n;
}
