/**
 * The guest memory table of one device: regions from SET_MEM_TABLE / ADD_MEM_REG, each
 * mmap'd from its fd at its mmap_offset and exposed as a SharedArrayBuffer for workers.
 * Translates both guest-physical addresses (descriptors) and frontend-virtual addresses
 * (ring addresses from SET_VRING_ADDR).
 *
 * Lifetime: the fd is closed right after mmap (the mapping keeps the memory alive). The
 * mapping is unmapped by the SAB's deleter once no thread references it any more, so a
 * worker that still holds views after a reset can never touch unmapped memory.
 */
import { native } from '../native';
import { MAX_MEM_SLOTS } from '../shared/constants';
import { RegionDesc, RingLocation } from '../shared/types';
import { MemoryRegion, ProtocolError, checkNoOverlap } from './messages';
import { safeClose } from './connection';

export interface MappedRegion extends MemoryRegion {
  sab: SharedArrayBuffer;
  sabOffset: number;
}

const PAGE = 4096;

/** Map one region from its fd; the fd is always closed, success or not. */
export function mapRegion(r: MemoryRegion, fd: number, req: string): MappedRegion {
  try {
    const st = native.fdStat(fd);
    if (r.mmapOffset + r.size > st.size) {
      throw new ProtocolError(req, `region gpa 0x${r.gpa.toString(16)}: mmap_offset 0x${r.mmapOffset.toString(16)} + size 0x${r.size.toString(16)} exceeds the fd size 0x${st.size.toString(16)}`);
    }
    // mmap needs a page-aligned offset and (for hugetlbfs) a length in whole huge pages.
    const align = Math.max(PAGE, st.blksize > 0 ? st.blksize : PAGE);
    const base = Math.floor(r.mmapOffset / align) * align;
    const lead = r.mmapOffset - base;
    let len = Math.ceil((lead + r.size) / align) * align;
    if (base + len > st.size) len = lead + r.size; // last partial page of a regular file
    let sab: SharedArrayBuffer;
    try {
      sab = native.mmap(fd, len, base);
    } catch (e) {
      throw new ProtocolError(req, `mmap of region gpa 0x${r.gpa.toString(16)} failed: ${(e as Error).message}`);
    }
    return { ...r, sab, sabOffset: lead };
  } finally {
    safeClose(fd);
  }
}

export class MemoryTable {
  private regions: MappedRegion[] = [];

  get count(): number {
    return this.regions.length;
  }

  list(): readonly MappedRegion[] {
    return this.regions;
  }

  /** Replace the whole table (SET_MEM_TABLE). Every fd is consumed. */
  replace(defs: readonly MemoryRegion[], fds: readonly number[], req: string): void {
    const mapped: MappedRegion[] = [];
    try {
      defs.forEach((d, i) => mapped.push(mapRegion(d, fds[i], req)));
    } catch (e) {
      for (let i = mapped.length + 1; i < fds.length; i++) safeClose(fds[i]);
      throw e;
    }
    this.regions = mapped;
  }

  /** ADD_MEM_REG. */
  add(def: MemoryRegion, fd: number, req: string): void {
    if (this.regions.length >= MAX_MEM_SLOTS) {
      safeClose(fd);
      throw new ProtocolError(req, `all ${MAX_MEM_SLOTS} memory slots are in use`);
    }
    try {
      checkNoOverlap([...this.regions, def], req);
    } catch (e) {
      safeClose(fd);
      throw e;
    }
    this.regions = [...this.regions, mapRegion(def, fd, req)];
  }

  /** REM_MEM_REG: the region is matched by guest address, size and user address. */
  remove(def: MemoryRegion, req: string): void {
    const i = this.regions.findIndex((r) => r.gpa === def.gpa && r.size === def.size && r.uva === def.uva);
    if (i < 0) throw new ProtocolError(req, `no region at gpa 0x${def.gpa.toString(16)} size 0x${def.size.toString(16)}`);
    this.regions = this.regions.filter((_, j) => j !== i);
  }

  clear(): void {
    this.regions = [];
  }

  /** Location of [uva, uva+len) inside one region, or null. */
  fromUva(uva: number, len: number): RingLocation | null {
    for (let i = 0; i < this.regions.length; i++) {
      const r = this.regions[i];
      if (uva >= r.uva && uva + len <= r.uva + r.size) return { region: i, offset: uva - r.uva };
    }
    return null;
  }

  /** Location of [gpa, gpa+len) inside one region, or null. */
  fromGpa(gpa: number, len: number): RingLocation | null {
    for (let i = 0; i < this.regions.length; i++) {
      const r = this.regions[i];
      if (gpa >= r.gpa && gpa + len <= r.gpa + r.size) return { region: i, offset: gpa - r.gpa };
    }
    return null;
  }

  /** Frontend virtual address to guest physical (for logging ring writes when no log address is given). */
  uvaToGpa(uva: number): number {
    const loc = this.fromUva(uva, 1);
    return loc ? this.regions[loc.region].gpa + loc.offset : -1;
  }

  /** Highest guest physical address + 1 (the dirty log must cover it). */
  get gpaEnd(): number {
    return this.regions.reduce((m, r) => Math.max(m, r.gpa + r.size), 0);
  }

  /** Views for workers (SAB references only; structured-clone safe). */
  descs(): RegionDesc[] {
    return this.regions.map((r) => ({ gpa: r.gpa, size: r.size, uva: r.uva, sab: r.sab, sabOffset: r.sabOffset }));
  }

  /** Read a u16 at a frontend virtual address (used->idx when a ring (re)starts). */
  readU16(loc: RingLocation): number {
    const r = this.regions[loc.region];
    const dv = new DataView(r.sab, r.sabOffset + loc.offset, 2);
    return dv.getUint16(0, true);
  }
}
