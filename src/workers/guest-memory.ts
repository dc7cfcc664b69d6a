/**
 * One device's guest memory as seen by a worker: the regions the main thread mapped, with
 * typed-array views made once per mapping (never per packet).
 */
import { LOG_PAGE } from '../shared/constants';
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

  constructor(regions: readonly RegionDesc[]) {
    this.regions = regions;
    this.views = regions.map((r) => makeViews(r.sab, r.sabOffset, r.size));
    this.u8 = this.views.map((v) => v.u8);
    this.gpaStart = Float64Array.from(regions, (r) => r.gpa);
    this.gpaEnd = Float64Array.from(regions, (r) => r.gpa + r.size);
    this.pageBase = Float64Array.from(regions, (r) => Math.floor(r.gpa / LOG_PAGE));
    this.pageOff = Int32Array.from(regions, (r) => r.gpa % LOG_PAGE);
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
    for (r = 0; r < this.gpaStart.length; r++) {
      if (gpa >= this.gpaStart[r] && end <= this.gpaEnd[r]) {
        this.last = r;
        this.off = gpa - this.gpaStart[r];
        return r;
      }
    }
    return -1;
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
