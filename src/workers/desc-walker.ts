/**
 * Walks one descriptor chain (direct or through an indirect table), validating each
 * descriptor before anyone uses it. Iterator style so that no object is made per descriptor:
 * start(head), then next() until it returns false; the current descriptor is in the fields.
 *
 * Each 32-bit field (addr low, addr high, len, flags | next << 16) is read once, with one
 * load, and only that value is checked and used: the guest may rewrite the descriptor while
 * we read it (test/hostile/toctou). A DataView read is four byte loads until TurboFan
 * compiles it (measured: torn values from a racing writer), so a table whose fields are
 * 4-aligned (the ring always is; indirect tables nearly always) is read through the
 * region's Uint32Array, and only an unaligned one through the DataView. A torn value would
 * still be checked before use; whole ones keep what the backend acts on a value the guest
 * actually wrote.
 */
import { DESC_SIZE, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE } from '../protocol/constants';
import { GuestError } from './guest-error';
import { GuestMemory } from './guest-memory';

export class DescWalker {
  /** current descriptor, translated: region index, offset in it, length, device-writable */
  region = 0;
  off = 0;
  len = 0;
  writable = false;

  private readonly mem: GuestMemory;
  private readonly size: number;
  private readonly indirectOk: boolean;
  private readonly ringDv: DataView;
  private readonly ringU32: Uint32Array | null;
  private readonly ringOff: number;

  // walk state: the table's views (u32 null when its fields are not 4-aligned)
  private dv: DataView;
  private u32: Uint32Array | null;
  private tableOff = 0;
  private tableLen = 0;
  private idx = 0;
  private count = 0;
  private indirect = false;
  private done = true;

  constructor(mem: GuestMemory, descRegion: number, descOffset: number, size: number, indirectOk: boolean) {
    this.mem = mem;
    this.size = size;
    this.indirectOk = indirectOk;
    this.ringDv = mem.views[descRegion].dv;
    this.ringU32 = (descOffset & 3) === 0 ? mem.views[descRegion].u32 : null;
    this.ringOff = descOffset;
    this.dv = this.ringDv;
    this.u32 = this.ringU32;
  }

  /** Begin the chain at `head` (already checked < size by the caller). */
  start(head: number): void {
    this.dv = this.ringDv;
    this.u32 = this.ringU32;
    this.tableOff = this.ringOff;
    this.tableLen = this.size;
    this.idx = head;
    this.count = 0;
    this.indirect = false;
    this.done = false;
  }

  /** Load and validate the next descriptor of the chain; false once the chain has ended. */
  next(): boolean {
    if (this.done) return false;
    let o = this.tableOff + this.idx * DESC_SIZE;
    let fw = this.field(o, 3);
    if ((fw & VRING_DESC_F_INDIRECT) !== 0) {
      this.enterIndirect(o, fw & 0xffff);
      o = this.tableOff;
      fw = this.field(o, 3);
      if ((fw & VRING_DESC_F_INDIRECT) !== 0) throw new GuestError('nested indirect descriptor');
    }
    const flags = fw & 0xffff;
    // A chain longer than its table must revisit a descriptor: that is the loop check.
    if (++this.count > this.tableLen) {
      throw new GuestError(this.indirect ? 'indirect chain loop (longer than its table)' : 'descriptor chain loop (longer than the queue size)');
    }
    if (this.count > this.size) throw new GuestError('descriptor chain longer than the queue size');
    // addr is a u64; above 2^53 it rounds, but such an address is outside every region anyway.
    const addr = this.field(o, 0) + this.field(o, 1) * 0x1_0000_0000;
    const len = this.field(o, 2);
    const r = this.mem.translate(addr, len);
    if (r < 0) {
      throw this.mem.translate(addr, 0) < 0
        ? new GuestError('descriptor outside guest memory', `addr 0x${addr.toString(16)} len ${len}`)
        : new GuestError('descriptor crosses a memory region end', `addr 0x${addr.toString(16)} len ${len}`);
    }
    this.region = r;
    this.off = this.mem.off;
    this.len = len;
    this.writable = (flags & VRING_DESC_F_WRITE) !== 0;
    if ((flags & VRING_DESC_F_NEXT) !== 0) {
      const nxt = fw >>> 16;
      // Checked when taken, so a bad index is only an error if the chain really goes there.
      if (nxt >= this.tableLen) {
        throw new GuestError(this.indirect ? 'indirect next index out of range' : 'descriptor next index out of range', `next ${nxt}`);
      }
      this.idx = nxt;
    } else {
      this.done = true;
    }
    return true;
  }

  /**
   * Word k of the descriptor at table offset o (little endian, as the views are on our hosts),
   * one load. o / 4, not o >> 2: a table 2 GiB or more into its region is a double offset.
   */
  private field(o: number, k: number): number {
    const u = this.u32;
    return u !== null ? u[o / 4 + k] : this.dv.getUint32(o + 4 * k, true);
  }

  private enterIndirect(o: number, flags: number): void {
    if (this.indirect) throw new GuestError('nested indirect descriptor');
    if (!this.indirectOk) throw new GuestError('indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC');
    if ((flags & VRING_DESC_F_NEXT) !== 0) throw new GuestError('indirect descriptor with NEXT');
    const addr = this.field(o, 0) + this.field(o, 1) * 0x1_0000_0000;
    const len = this.field(o, 2);
    if (len === 0 || len % DESC_SIZE !== 0) throw new GuestError('indirect table length not a non-zero multiple of 16', `len ${len}`);
    const r = this.mem.translate(addr, len);
    if (r < 0) throw new GuestError('indirect table outside guest memory', `addr 0x${addr.toString(16)} len ${len}`);
    const v = this.mem.views[r];
    this.dv = v.dv;
    this.u32 = (this.mem.off & 3) === 0 ? v.u32 : null;
    this.tableOff = this.mem.off;
    this.tableLen = len / DESC_SIZE;
    this.idx = 0;
    this.indirect = true;
  }
}
