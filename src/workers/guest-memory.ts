/**
 * One device's guest memory as seen by a worker: the regions the main thread mapped, with
 * typed-array views made once per mapping (never per packet).
 */
import { LOG_PAGE } from '../protocol/constants';
import { RegionDesc } from '../shared/types';
import { BulkCopier } from './bulk-copy';

/** The views over one region, all starting at the region's first byte. */
export interface RegionViews {
  u8: Uint8Array;
  /** Buffer over the same bytes: Buffer.copy is a native memmove that allocates nothing. */
  buf: Buffer;
  /** null when the region start is not 2- / 4-aligned inside its SAB. */
  u16: Uint16Array | null;
  u32: Uint32Array | null;
  /** null when the region start is not 8-aligned inside its SAB (copy.ts: 8 bytes per load/store) */
  f64: Float64Array | null;
  /** little-endian field access at any alignment (descriptors, indirect tables). */
  dv: DataView;
}

export function makeViews(sab: SharedArrayBuffer | ArrayBuffer, offset: number, size: number): RegionViews {
  return {
    u8: new Uint8Array(sab, offset, size),
    buf: Buffer.from(sab, offset, size),
    u16: offset % 2 === 0 ? new Uint16Array(sab, offset, Math.floor(size / 2)) : null,
    u32: offset % 4 === 0 ? new Uint32Array(sab, offset, Math.floor(size / 4)) : null,
    f64: offset % 8 === 0 ? new Float64Array(sab, offset, Math.floor(size / 8)) : null,
    dv: new DataView(sab, offset, size),
  };
}

/** Region offsets in a window stay below this, so offset + packet length fits an int32. */
export const WINDOW_OFF_MAX = 0x7ff0_0000;
export const WIN_HI = 0;
export const WIN_LO = 1;
export const WIN_SPAN = 2;
export const WIN_OFF = 3;

/**
 * The window of region [start, end) for a buffer [gpa, gpa + len) inside it (see
 * GuestMemory.win): false, `out` untouched, when the buffer is not inside the window (it
 * crosses a 4 GiB line, or reaches past region offset WINDOW_OFF_MAX).
 */
export function windowOf(start: number, end: number, gpa: number, len: number, out: Int32Array): boolean {
  const base = Math.floor(gpa / 0x1_0000_0000) * 0x1_0000_0000;
  const ws = start > base ? start : base;
  let we = end;
  if (we > base + 0x1_0000_0000) we = base + 0x1_0000_0000;
  if (we > start + WINDOW_OFF_MAX) we = start + WINDOW_OFF_MAX;
  if (!(len >= 0 && gpa >= ws && gpa + len <= we)) return false;
  out[WIN_HI] = base / 0x1_0000_0000; // as int32, as the loops read `t[w + 1] | 0`
  out[WIN_LO] = ws - base;
  out[WIN_SPAN] = we - ws;
  out[WIN_OFF] = ws - start;
  return true;
}

/** The hot loops' test (virtqueue.ts) of a buffer (hi, lo = its gpa's 32-bit halves, len) against a window. */
export function inWindow(win: Int32Array, hi: number, lo: number, len: number): boolean {
  const d = (lo - win[WIN_LO]) | 0;
  return (hi | 0) === win[WIN_HI] && d >= 0 && d < win[WIN_SPAN] && len <= win[WIN_SPAN] - d;
}

export class GuestMemory {
  readonly regions: readonly RegionDesc[];
  readonly views: RegionViews[];
  /** views[i].u8, kept as a plain array for callers that only read bytes. */
  readonly u8: Uint8Array[];
  /** Offset inside the region found by the last successful translate(). */
  off = 0;
  /** [gpaStart[r], gpaEnd[r]) is region r: hot loops keep the last hit in locals (virtqueue.ts) */
  readonly gpaStart: Float64Array;
  readonly gpaEnd: Float64Array;
  /**
   * Dirty-log page of byte `off` of region r is pageBase[r] + ((pageOff[r] + off) >>> 12)
   * for off < 2^31: integer shifts in the hot loops instead of a division of a 48-bit gpa.
   */
  readonly pageBase: Float64Array;
  readonly pageOff: Int32Array;
  private last = 0;
  /**
   * Region indices ordered by guest address, and their starts in that order: a miss of the
   * last hit is a binary search, so a guest with hundreds of slots (memory hot-plug,
   * virtio-mem: up to MAX_MEM_SLOTS) costs log2(n) compares per miss, not n.
   */
  private readonly byGpa: Int32Array;
  private readonly sortedStart: Float64Array;

  constructor(regions: readonly RegionDesc[]) {
    this.regions = regions;
    this.views = regions.map((r) => makeViews(r.sab, r.sabOffset, r.size));
    this.u8 = this.views.map((v) => v.u8);
    this.gpaStart = Float64Array.from(regions, (r) => r.gpa);
    this.gpaEnd = Float64Array.from(regions, (r) => r.gpa + r.size);
    this.pageBase = Float64Array.from(regions, (r) => Math.floor(r.gpa / LOG_PAGE));
    this.pageOff = Int32Array.from(regions, (r) => r.gpa % LOG_PAGE);
    this.byGpa = Int32Array.from(regions.keys()).sort((a, b) => regions[a].gpa - regions[b].gpa);
    this.sortedStart = Float64Array.from(this.byGpa, (i) => regions[i].gpa);
  }

  /**
   * Region index whose [gpa, gpa + size) contains all of [gpa, gpa + len), or -1; the offset
   * inside the region is left in `this.off`. A buffer crossing a region end is invalid even if
   * the next region is adjacent: its bytes need not be adjacent in any mapping.
   */
  translate(gpa: number, len: number): number {
    const end = gpa + len;
    let r = this.last;
    if (r < this.gpaStart.length && gpa >= this.gpaStart[r] && end <= this.gpaEnd[r] && len >= 0) {
      this.off = gpa - this.gpaStart[r];
      return r;
    }
    if (len < 0) return -1;
    // the last region starting at or below gpa is the only one that can hold it (regions
    // never overlap: MemoryTable refuses that)
    const starts = this.sortedStart;
    let lo = 0;
    let hi = starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (starts[mid] <= gpa) lo = mid + 1;
      else hi = mid;
    }
    if (lo === 0) return -1;
    r = this.byGpa[lo - 1];
    if (end > this.gpaEnd[r]) return -1;
    this.last = r;
    this.off = gpa - this.gpaStart[r];
    return r;
  }

  /**
   * The hot loops' integer view of a region (virtqueue.ts, NOTES.md #23): `window(gpa, len)`
   * finds the region holding [gpa, gpa + len) like translate(), and leaves in `win` the part
   * of that region inside gpa's 4 GiB span whose region offsets stay below WINDOW_OFF_MAX:
   * [WIN_HI] = gpa's high 32 bits and [WIN_LO] = the window start's low 32 bits (both as
   * int32), [WIN_SPAN] = its length, [WIN_OFF] = the region offset of its start. A buffer at
   * (hi, lo) then lies in the window iff hi === WIN_HI and d = (lo - WIN_LO) | 0 satisfies
   * 0 <= d < WIN_SPAN and len <= WIN_SPAN - d, all int32 math, and its region offset is
   * WIN_OFF + d < 2^31: no double arithmetic per descriptor. -1 (win untouched) when there is
   * no such region or [gpa, gpa + len) is not inside the window: the caller's general path
   * handles those buffers.
   */
  readonly win = new Int32Array(4);

  window(gpa: number, len: number): number {
    const r = this.translate(gpa, len);
    if (r < 0 || !windowOf(this.gpaStart[r], this.gpaEnd[r], gpa, len, this.win)) return -1;
    return r;
  }

  /**
   * window() of the gpa whose 32-bit halves are `hi` and `lo`, passed as int32 (`x | 0`): the
   * hot loops call this once a burst, and TurboFan did not inline it there, so a double
   * argument (a 48-bit gpa) was boxed into a HeapNumber on every call, the worker's only
   * allocation in the loop (`--trace-allocation-stack-interval`, NOTES.md #28). Int32
   * arguments travel as Smis.
   */
  windowAt(hi: number, lo: number, len: number): number {
    return this.window((hi >>> 0) * 0x1_0000_0000 + (lo >>> 0), len);
  }

  /** per region: id in the worker's bulk-copy table, or -1 (see bulk-copy.ts) */
  bulkIds: Int32Array | null = null;
  private copier: BulkCopier | null = null;

  /** Register the regions with the addon's bulk copier (worker threads only). */
  enableBulk(copier: BulkCopier): void {
    if (this.bulkIds) return;
    this.copier = copier;
    this.bulkIds = Int32Array.from(this.regions, (r) => copier.copyRegister(r.sab));
  }

  /** Drop the copier's references (the ring is gone; its queue was run at its last publish). */
  dispose(): void {
    if (this.bulkIds && this.copier) for (const id of this.bulkIds) this.copier.copyUnregister(id);
    this.bulkIds = null;
  }

  /** Guest physical address of byte `off` of region `r` (for dirty logging). */
  gpaOf(r: number, off: number): number {
    return this.gpaStart[r] + off;
  }
}
