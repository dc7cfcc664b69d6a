/**
 * The side of the uplink queues (TAP, AF_PACKET, AF_XDP) that writes frames towards their
 * device. Each port gives a frame a flat slot of its own memory (rxReserve sets the cursor
 * wPos..wEnd in `view`, rxCommit hands the slot on); the burst loops, the offload hand-off,
 * the VLAN tag edit and the batched copies are written once, here. Guest rings (scattered
 * descriptor chains) have their own writers in virtqueue.ts and packed-ring.ts.
 */
import { BULK_MIN, type CopyQueue } from './bulk-copy';
import { copyBytes } from './copy';
import { GuestMemory, RegionViews } from './guest-memory';
import { enqueueBytesFrame, enqueueEditedFrames, enqueueFrame } from './frame-path';
import { PacketBatch } from './packet-batch';
import type { RxFrameSink } from './ring-format';
import { ST_BURSTS, QueueFeatures } from '../shared/types';
import { EDIT_POP, EDIT_PUSH, EDIT_TPID_AD, TPID_8021AD, TPID_8021Q } from './vlan';

export abstract class SlotWriter implements RxFrameSink {
  abstract readonly features: QueueFeatures;
  abstract readonly stats: Float64Array;
  abstract bulk: CopyQueue | null;
  /** the slot memory, whose SharedArrayBuffer offsets wPos and wEnd are (its sabOffset is 0) */
  protected abstract readonly view: RegionViews;
  /** the frame being written: the next byte and the end of its reserved length */
  protected wPos = 0;
  protected wEnd = 0;
  /**
   * The slot memory's id in the worker's bulk copier when frame copies of BULK_MIN bytes and
   * more join the burst's batch (one addon call; the port publishes its frames after the
   * batch ran), or -1: every copy at once.
   */
  protected copyId = -1;

  /** A device's queue has no driver to notify (ring-core.ts's provisional decisions are the guest rings'). */
  readonly notifyUnsure: boolean = false;
  recheckNotify(): boolean {
    return false;
  }

  abstract rxReserve(len: number, hdr: Uint8Array | null): boolean;
  abstract rxPoke(pos: number, value: number): void;
  abstract rxCommit(len: number): void;

  enqueueBurst(srcMem: GuestMemory, batch: PacketBatch, pick: Uint16Array | null, count: number): number {
    let done = 0;
    for (let k = 0; k < count; k++) if (this.enqueue(srcMem, batch, pick === null ? k : pick[k], 0)) done++;
    if (done > 0) this.stats[ST_BURSTS]++;
    return done;
  }

  enqueueEdited(srcMem: GuestMemory, batch: PacketBatch, pick: Uint16Array, count: number, edits: Int32Array): number {
    return enqueueEditedFrames(this, srcMem, batch, pick, count, edits);
  }

  enqueue(srcMem: GuestMemory, batch: PacketBatch, i: number, edit = 0): boolean {
    return enqueueFrame(this, srcMem, batch, i, edit);
  }

  enqueueBytes(src: Uint8Array, off: number, len: number): boolean {
    return enqueueBytesFrame(this, src, off, len);
  }

  rxPut(src: RegionViews, off: number, len: number): void {
    // the callers put exactly the reserved length; never past the slot either way
    if (len > this.wEnd - this.wPos) len = this.wEnd - this.wPos;
    if (len <= 0) return;
    copyBytes(this.view, this.wPos, src, off, len);
    this.wPos += len;
  }

  /** The whole of packet i, with its VLAN tag edit made (as Virtqueue.putPacket). */
  rxPutPacket(srcMem: GuestMemory, batch: PacketBatch, i: number, edit: number): void {
    const views = srcMem.views;
    const end = batch.segStart[i] + batch.segCount[i];
    if (edit === 0) {
      const bulk = this.bulk;
      const ids = srcMem.bulkIds;
      const batched = bulk !== null && ids !== null && this.copyId >= 0;
      for (let s = batch.segStart[i]; s < end; s++) {
        const r = batch.segRegion[s];
        let n = batch.segLen[s];
        if (batched && n >= BULK_MIN) {
          if (n > this.wEnd - this.wPos) n = this.wEnd - this.wPos;
          if (n <= 0) continue;
          // with the burst's other copies: the port publishes the frame after the batch ran
          bulk.add(ids[r], srcMem.regions[r].sabOffset + batch.segOffset[s], this.copyId, this.wPos, n);
          this.wPos += n;
        } else {
          this.rxPut(views[r], batch.segOffset[s], n);
        }
      }
      return;
    }
    const skipEnd = (edit & EDIT_POP) !== 0 ? 16 : 12;
    let pos = 0;
    for (let s = batch.segStart[i]; s < end; s++) {
      const v = views[batch.segRegion[s]];
      let off = batch.segOffset[s];
      let n = batch.segLen[s];
      if (pos < 12) {
        const k = n < 12 - pos ? n : 12 - pos;
        this.rxPut(v, off, k);
        pos += k;
        off += k;
        n -= k;
        if (pos === 12 && (edit & EDIT_PUSH) !== 0) this.putTag(edit);
      }
      if (n > 0 && pos < skipEnd) {
        const k = n < skipEnd - pos ? n : skipEnd - pos;
        pos += k;
        off += k;
        n -= k;
      }
      if (n > 0) {
        this.rxPut(v, off, n);
        pos += n;
      }
    }
  }

  /** The 802.1Q tag of an EDIT_PUSH edit after the MACs (if the slot has the room). */
  private putTag(edit: number): void {
    if (this.wEnd - this.wPos < 4) return;
    const tpid = (edit & EDIT_TPID_AD) !== 0 ? TPID_8021AD : TPID_8021Q;
    const u8 = this.view.u8;
    u8[this.wPos] = tpid >>> 8;
    u8[this.wPos + 1] = tpid & 0xff;
    u8[this.wPos + 2] = (edit >>> 8) & 0xff;
    u8[this.wPos + 3] = edit & 0xff;
    this.wPos += 4;
  }
}
