/**
 * The guest memory table of one device: regions from SET_MEM_TABLE / ADD_MEM_REG, each
 * mmap'd from its fd at its mmap_offset and exposed as a SharedArrayBuffer for workers.
 * Translates both guest-physical addresses (descriptors) and frontend-virtual addresses
 * (ring addresses from SET_VRING_ADDR).
 *
 * Lifetime: the fd stays open with its region (a takeover hands it to the next process,
 * handover.ts) and is closed when the region leaves the table. The mapping is unmapped by
 * the SAB's deleter once no thread references it any more, so a worker that still holds
 * views after a reset can never touch unmapped memory.
 *
 * Repeats: QEMU 7.2 keeps one vhost_dev per queue pair on one socket and each of them
 * sends its own ADD_MEM_REG for every region (and REM_MEM_REG when it goes); newer QEMU
 * sends them once per device. An ADD_MEM_REG identical to a mapped region (guest address,
 * size, user address, mmap offset, and the same backing file by st_dev and st_ino) takes a
 * reference on that mapping instead of a second one; REM_MEM_REG drops one and the region
 * leaves the table with its last reference. Anything else that overlaps is refused.
 */
import { native } from '../native';
import { MAX_MEM_SLOTS } from '../protocol/constants';
import { RegionDesc, RingLocation } from '../shared/types';
import { FdStat } from '../native';
import { MemoryRegion, ProtocolError } from '../protocol/messages';
import { safeClose } from './connection';

export interface MappedRegion extends MemoryRegion {
  sab: SharedArrayBuffer;
  sabOffset: number;
  /** the backing file (fstat st_dev, st_ino) */
  dev: number;
  ino: number;
  /** the ADD_MEM_REGs this mapping stands for (one per QEMU 7.2 queue pair); 1 from SET_MEM_TABLE */
  refs: number;
  /** the backing file, kept open for a takeover (closed when the region leaves the table) */
  fd: number;
}

/** What `add` did: a new mapping, or one more reference on an identical mapped region. */
export interface AddResult {
  shared: boolean;
  /** the region's references after the add */
  refs: number;
  /** the region's index in the table */
  index: number;
}

const hex = (n: number): string => `0x${n.toString(16)}`;
const describe = (r: MemoryRegion): string =>
  `gpa ${hex(r.gpa)} size ${hex(r.size)} uva ${hex(r.uva)} mmap_offset ${hex(r.mmapOffset)}`;

const PAGE = 4096;

/** fstat(fd); on failure the fd is closed and a ProtocolError names the request. */
export function statFd(fd: number, req: string): FdStat {
  try {
    return native.fdStat(fd);
  } catch (e) {
    safeClose(fd);
    throw new ProtocolError(req, `fstat of the file descriptor failed: ${(e as Error).message}`);
  }
}

/**
 * Map one region from its fd. The fd is kept by the returned region on success and closed
 * on failure. `stat`: fdStat(fd) if already taken.
 */
export function mapRegion(r: MemoryRegion, fd: number, req: string, stat?: FdStat): MappedRegion {
  try {
    const st = stat ?? native.fdStat(fd);
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
    return { gpa: r.gpa, size: r.size, uva: r.uva, mmapOffset: r.mmapOffset, sab, sabOffset: lead, dev: st.dev, ino: st.ino, refs: 1, fd };
  } catch (e) {
    safeClose(fd);
    throw e;
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
      for (const m of mapped) safeClose(m.fd);
      throw e;
    }
    for (const r of this.regions) safeClose(r.fd);
    this.regions = mapped;
  }

  /**
   * ADD_MEM_REG. The fd is always consumed. A region identical to a mapped one (same
   * guest address, size, user address, mmap offset and backing file) is a repeat from
   * another queue pair: one more reference, no second mapping. A region overlapping a
   * mapped one in guest-physical or user address space in any other way is refused,
   * naming both regions.
   */
  add(def: MemoryRegion, fd: number, req: string): AddResult {
    const st = statFd(fd, req);
    const same = this.regions.findIndex(
      (r) => r.gpa === def.gpa && r.size === def.size && r.uva === def.uva && r.mmapOffset === def.mmapOffset && r.dev === st.dev && r.ino === st.ino,
    );
    if (same >= 0) {
      safeClose(fd);
      const r = this.regions[same];
      r.refs++;
      return { shared: true, refs: r.refs, index: same };
    }
    const clash = this.overlap(def, st);
    if (clash !== null) {
      safeClose(fd);
      throw new ProtocolError(req, clash);
    }
    if (this.regions.length >= MAX_MEM_SLOTS) {
      safeClose(fd);
      throw new ProtocolError(req, `all ${MAX_MEM_SLOTS} memory slots are in use`);
    }
    this.regions = [...this.regions, mapRegion(def, fd, req, st)];
    return { shared: false, refs: 1, index: this.regions.length - 1 };
  }

  /** Why `def` (backed by the file `st`) may not join the table, or null when it may. */
  private overlap(def: MemoryRegion, st: FdStat): string | null {
    for (let i = 0; i < this.regions.length; i++) {
      const r = this.regions[i];
      const gpa = def.gpa < r.gpa + r.size && r.gpa < def.gpa + def.size;
      const uva = def.uva < r.uva + r.size && r.uva < def.uva + def.size;
      if (!gpa && !uva) continue;
      const sameRange = def.gpa === r.gpa && def.size === r.size && def.uva === r.uva && def.mmapOffset === r.mmapOffset;
      const why = sameRange
        ? `the same range backed by a different file (dev ${st.dev} inode ${st.ino}; region ${i}: dev ${r.dev} inode ${r.ino})`
        : `new ${describe(def)}; region ${i}: ${describe(r)}`;
      return `regions ${i} and ${this.regions.length} overlap in ${gpa ? 'guest physical' : 'user address'} space: ${why}`;
    }
    return null;
  }

  /**
   * REM_MEM_REG: the region is matched by guest address, size and user address (QEMU
   * sends mmap_offset 0 and no fd). Drops one reference; the region leaves the table
   * (and is unmapped once no worker holds it) with its last. Returns the references left.
   */
  remove(def: MemoryRegion, req: string): number {
    const i = this.regions.findIndex((r) => r.gpa === def.gpa && r.size === def.size && r.uva === def.uva);
    if (i < 0) throw new ProtocolError(req, `no region at gpa ${hex(def.gpa)} size ${hex(def.size)} uva ${hex(def.uva)}`);
    const r = this.regions[i];
    r.refs--;
    if (r.refs === 0) {
      this.regions = this.regions.filter((_, j) => j !== i);
      safeClose(r.fd);
    }
    return r.refs;
  }

  clear(): void {
    for (const r of this.regions) safeClose(r.fd);
    this.regions = [];
  }

  /** A region handed over by the previous process (a takeover): mapped from `fd` with its references. */
  adopt(def: MemoryRegion, refs: number, fd: number, req: string): void {
    const m = mapRegion(def, fd, req);
    m.refs = refs;
    this.regions = [...this.regions, m];
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
