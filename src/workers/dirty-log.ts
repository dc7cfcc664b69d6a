/**
 * Dirty page log (VHOST_F_LOG_ALL, SET_LOG_BASE): bit n of the log = guest page n (gpa >> 12),
 * byte n >> 3, bit n & 7. The frontend reads (and clears) the log concurrently during live
 * migration, so every set is an atomic OR.
 */
import { LOG_PAGE } from '../protocol/constants';
import { LogDesc } from '../shared/types';
import { TSO } from './ordering';

/**
 * Direct-mapped cache slots for dirty 32-bit words, per burst: consecutive buffers and used
 * entries mostly hit the same words, so one Atomics.or per word per burst instead of one per
 * page mark (bench/copy.ts measures it, bench/NOTES.md); the saving grows when the frontend
 * is reading the same cache lines (fewer locked RMWs to bounce).
 */
const CACHE_SLOTS = 256;

/** set bits of each byte value */
const POPCOUNT8 = Uint8Array.from({ length: 256 }, (_, v) => {
  let c = 0;
  for (let x = v; x !== 0; x >>= 1) c += x & 1;
  return c;
});


/** The addon's page marking (logBind / logRun / logUnbind): one call per burst. */
export interface LogMarker {
  logBind(log: Uint8Array, runs: Float64Array): number;
  logUnbind(id: number): void;
  logRun(id: number, count: number, fenced: boolean): number;
}

export class DirtyLog {
  /** true while a log is set: callers also need QueueFeatures.logAll to log. */
  active = false;
  /** page marks made: a page counts once per mark covering it (neighbouring buffers of a burst share one; later bursts count again); feeds ST_DIRTY_PAGES. */
  pagesMarked = 0;
  /** page marks dropped because the page lies beyond the log (control plane should have refused). */
  pagesBeyondLog = 0;

  private bytes: Uint8Array | null = null;
  /** word view when the log start is 4-aligned in its SAB (LE host: word bit k = page 32w+k). */
  private words: Int32Array | null = null;
  private nPages = 0;
  private readonly useCache: boolean;
  private readonly cacheWord = new Int32Array(CACHE_SLOTS).fill(-1);
  private readonly cacheBits = new Int32Array(CACHE_SLOTS);
  /** the slots in use, so flush() visits only those (it runs at every publish) */
  private readonly usedSlots = new Int32Array(CACHE_SLOTS);
  private cacheUsed = 0;
  /** markPageRuns through the addon (enableNative): its binding of the log and a run array */
  private marker: LogMarker | null = null;
  private bound = -1;
  private boundRuns: Float64Array | null = null;

  constructor(useCache = true) {
    this.useCache = useCache;
  }

  /**
   * Let markPageRuns set bits in the addon, one call per burst (NOTES.md #21); the
   * JavaScript path stays for runs it refuses (pages beyond the log) and without the addon.
   */
  enableNative(marker: LogMarker): void {
    this.unbind();
    this.marker = marker;
  }

  private unbind(): void {
    if (this.bound >= 0) this.marker!.logUnbind(this.bound);
    this.bound = -1;
    this.boundRuns = null;
  }

  /** Swap the log (or clear it with null). Call at a burst boundary: flushes cached bits first. */
  set(log: LogDesc | null): void {
    this.flush();
    this.unbind();
    if (log === null || log.size <= 0) {
      this.bytes = null;
      this.words = null;
      this.nPages = 0;
      this.active = false;
      return;
    }
    this.bytes = new Uint8Array(log.sab, log.offset, log.size);
    this.words = log.offset % 4 === 0 && log.size >= 4 ? new Int32Array(log.sab, log.offset, log.size >>> 2) : null;
    // Pages past the last whole word are set byte-wise; cap keeps page numbers in uint32 range
    // (a log for 16 TiB of guest memory), so >>> stays exact.
    this.nPages = Math.min(log.size * 8, 0x1_0000_0000);
    this.active = true;
  }

  /** Mark every page touched by [gpa, gpa + len). */
  markRange(gpa: number, len: number): void {
    if (len <= 0 || !this.active) return;
    // Division, not >>: guest addresses exceed 32 bits.
    const first = Math.floor(gpa / LOG_PAGE);
    const last = Math.floor((gpa + len - 1) / LOG_PAGE);
    for (let p = first; p <= last; p++) this.markPage(p);
  }

  /**
   * Mark page runs first..last (pairs in `runs`, page numbers: gpa >> 12), n pairs, for a
   * whole burst at once: runs of pages in one 32-page log word are gathered in locals and
   * handed to the word cache once (NOTES.md #14), instead of a cache lookup per page. The
   * hot loops compute page numbers with integer shifts per region (NOTES.md #16), so no
   * division per buffer is left here. With enableNative the addon sets the bits straight in
   * the log in one call (NOTES.md #21: a burst's pages scattered over many log words, as a
   * frontend's mbuf pool scatters them, cost about three times as much here); it refuses a
   * burst that reaches past the log, which then takes the JavaScript path below.
   */
  markPageRuns(runs: Float64Array, n: number, fenced = false): void {
    if (!this.active || n === 0) return;
    const marker = this.marker;
    if (marker !== null) {
      // `fenced`: the caller's seq-cst store just before is the barrier (publish, as flush(true))
      if (runs !== this.boundRuns) {
        this.unbind();
        this.bound = marker.logBind(this.bytes!, runs);
        this.boundRuns = runs;
      }
      const r = marker.logRun(this.bound, n, fenced);
      if (r >= 0) {
        this.pagesMarked += r;
        return;
      }
      // refused whole (a page beyond the log): the path below marks the rest and counts those
    }
    const nPages = this.nPages;
    const wordWise = this.words !== null;
    let curWord = -1;
    let curBits = 0;
    let marked = 0;
    for (let k = 0; k < n; k++) {
      const first = runs[2 * k];
      const last = runs[2 * k + 1];
      for (let p = first; p <= last; p++) {
        if (p >= nPages || !wordWise) {
          this.markPage(p); // beyond the log, or a byte-wise log: the general path
          continue;
        }
        marked++;
        const w = p >>> 5;
        if (w !== curWord) {
          if (curWord >= 0) this.orWord(curWord, curBits);
          curWord = w;
          curBits = 0;
        }
        curBits |= 1 << (p & 31);
      }
    }
    if (curWord >= 0) this.orWord(curWord, curBits);
    this.pagesMarked += marked;
  }

  /**
   * Mark log bytes: n pairs [byte index, mask of its pages] in `marks` (the RX loop gathers a
   * burst's buffers per log byte, virtqueue.ts byteMarks). A burst leaves a handful of
   * them, so this runs in JavaScript with no addon call (the call alone cost more than the work).
   * `fenced` (the caller's seq-cst store just before, as publish's store of used->idx): on
   * x86 (TSO) a byte is then read with a plain load, which stays after that store, so every
   * byte the burst wrote is visible before a bit is looked at (the argument of flush()), and
   * only a missing bit costs an Atomics.or; elsewhere every mark is an Atomics.or. Pages of
   * a byte beyond the log are counted in pagesBeyondLog and dropped, as markPage does.
   */
  markBytes(marks: Int32Array, n: number, fenced = false): void {
    if (!this.active) return;
    const log = this.bytes!;
    const size = log.length;
    const look = TSO && fenced;
    let marked = 0;
    for (let k = 0; k < n; k++) {
      const b = marks[2 * k];
      const m = marks[2 * k + 1] & 0xff;
      if (b < 0 || b >= size) {
        this.pagesBeyondLog += POPCOUNT8[m]; // the control plane should have refused this log
        continue;
      }
      marked += POPCOUNT8[m];
      if (!look || (log[b] & m) !== m) Atomics.or(log, b, m);
    }
    this.pagesMarked += marked;
  }

  /** OR bits into log word w through the per-burst cache (words view present, w in range). */
  private orWord(w: number, bits: number): void {
    const words = this.words!;
    if (w >= words.length) {
      // the tail past the last whole word: byte-wise
      for (let b = 0; b < 32; b++) if ((bits & (1 << b)) !== 0) Atomics.or(this.bytes!, (w * 32 + b) >>> 3, 1 << ((w * 32 + b) & 7));
      return;
    }
    if (!this.useCache) {
      Atomics.or(words, w, bits);
      return;
    }
    const slot = w & (CACHE_SLOTS - 1);
    const cw = this.cacheWord[slot];
    if (cw === w) {
      this.cacheBits[slot] |= bits;
      return;
    }
    if (cw >= 0) Atomics.or(words, cw, this.cacheBits[slot]);
    else this.usedSlots[this.cacheUsed++] = slot;
    this.cacheWord[slot] = w;
    this.cacheBits[slot] = bits;
  }

  markPage(page: number): void {
    if (page >= this.nPages) {
      this.pagesBeyondLog++;
      return;
    }
    this.pagesMarked++;
    const w = page >>> 5;
    const words = this.words;
    if (words !== null && w < words.length) {
      const bit = 1 << (page & 31);
      if (this.useCache) {
        const slot = w & (CACHE_SLOTS - 1);
        const cw = this.cacheWord[slot];
        if (cw === w) {
          this.cacheBits[slot] |= bit;
          return;
        }
        if (cw >= 0) Atomics.or(words, cw, this.cacheBits[slot]);
        else this.usedSlots[this.cacheUsed++] = slot;
        this.cacheWord[slot] = w;
        this.cacheBits[slot] = bit;
        return;
      }
      Atomics.or(words, w, bit);
      return;
    }
    Atomics.or(this.bytes!, page >>> 3, 1 << (page & 7));
  }

  /**
   * Write cached bits to the log, after every write they cover (bits follow bytes), before
   * the ring stops. A word that already holds all its bits is left alone (NOTES.md #17): in
   * a migration QEMU clears each word once per sync round while a busy ring dirties the same
   * pages burst after burst, and a locked OR per word per burst was most of the log's cost.
   *
   * Why skipping is safe: QEMU takes a word with an atomic exchange and only then reads the
   * pages. A full barrier comes first (the first OR below, a locked instruction on x86 and a
   * seq-cst RMW elsewhere; or, with `fenced`, the caller's seq-cst store just before, as
   * publish() stores used->idx), so every byte the burst wrote is visible before any word is
   * read here. If a read still sees our bit, QEMU's exchange comes later, and QEMU's later
   * page reads see the new bytes; if QEMU cleared it first, the read sees 0 and we OR again.
   */
  flush(fenced = false): void {
    const n = this.cacheUsed;
    if (n === 0) return;
    this.cacheUsed = 0;
    const words = this.words!;
    const cacheWord = this.cacheWord;
    const cacheBits = this.cacheBits;
    const usedSlots = this.usedSlots;
    let k = 0;
    if (!fenced) {
      const s0 = usedSlots[0];
      Atomics.or(words, cacheWord[s0], cacheBits[s0]); // also the barrier
      cacheWord[s0] = -1;
      k = 1;
    }
    for (; k < n; k++) {
      const s = usedSlots[k];
      const w = cacheWord[s];
      const bits = cacheBits[s];
      // x86 keeps loads after the locked OR; other CPUs get an acquire load (Atomics.load)
      const cur = TSO ? words[w] : Atomics.load(words, w);
      if ((cur & bits) !== bits) Atomics.or(words, w, bits);
      cacheWord[s] = -1;
    }
  }
}
