/**
 * Walks one descriptor chain (direct or through an indirect table), validating each
 * descriptor before anyone uses it. Iterator style so that no object is made per descriptor:
 * start(head), then next() until it returns false; the current descriptor is in the fields.
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
  private readonly ringOff: number;

  // walk state
  private dv: DataView;
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
    this.ringOff = descOffset;
    this.dv = this.ringDv;
  }

  /** Begin the chain at `head` (already checked < size by the caller). */
  start(head: number): void {
    this.dv = this.ringDv;
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
    let dv = this.dv;
    let flags = dv.getUint16(o + 12, true);
    if ((flags & VRING_DESC_F_INDIRECT) !== 0) {
      this.enterIndirect(o, flags);
      o = this.tableOff;
      dv = this.dv;
      flags = dv.getUint16(o + 12, true);
      if ((flags & VRING_DESC_F_INDIRECT) !== 0) throw new GuestError('nested indirect descriptor');
    }
    // A chain longer than its table must revisit a descriptor: that is the loop check.
    if (++this.count > this.tableLen) {
      throw new GuestError(this.indirect ? 'indirect chain loop (longer than its table)' : 'descriptor chain loop (longer than the queue size)');
    }
    if (this.count > this.size) throw new GuestError('descriptor chain longer than the queue size');
    // addr is a u64; above 2^53 it rounds, but such an address is outside every region anyway.
    const addr = dv.getUint32(o, true) + dv.getUint32(o + 4, true) * 0x1_0000_0000;
    const len = dv.getUint32(o + 8, true);
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
      const nxt = dv.getUint16(o + 14, true);
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

  private enterIndirect(o: number, flags: number): void {
    if (this.indirect) throw new GuestError('nested indirect descriptor');
    if (!this.indirectOk) throw new GuestError('indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC');
    if ((flags & VRING_DESC_F_NEXT) !== 0) throw new GuestError('indirect descriptor with NEXT');
    const dv = this.dv;
    const addr = dv.getUint32(o, true) + dv.getUint32(o + 4, true) * 0x1_0000_0000;
    const len = dv.getUint32(o + 8, true);
    if (len === 0 || len % DESC_SIZE !== 0) throw new GuestError('indirect table length not a non-zero multiple of 16', `len ${len}`);
    const r = this.mem.translate(addr, len);
    if (r < 0) throw new GuestError('indirect table outside guest memory', `addr 0x${addr.toString(16)} len ${len}`);
    this.dv = this.mem.views[r].dv;
    this.tableOff = this.mem.off;
    this.tableLen = len / DESC_SIZE;
    this.idx = 0;
    this.indirect = true;
  }
}
