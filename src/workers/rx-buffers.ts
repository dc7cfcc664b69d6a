/**
 * The frame-at-a-time RX path shared by both ring formats (issue 19): reserve -> segments ->
 * header, put, commit. A format takes the chains (reserve: split walks avail heads, packed
 * walks descriptors with wrap counters) and writes their used elements (commit); everything
 * between, the write cursor over the reserved segments, the virtio-net header, the copies
 * with their VLAN tag edit and the bulk queue, and the offload hooks (offload.ts), is here,
 * once. Each format's enqueueBurst keeps its own inline loop for the common one-buffer frame
 * (the per-packet code never crosses a class boundary) and hands everything else to enqueue().
 */
import type { QueueFeatures } from '../shared/types';
import { BULK_MIN, CopyQueue } from './bulk-copy';
import { copyBytes } from './copy';
import { GuestMemory, makeViews, RegionViews } from './guest-memory';
import { enqueueBytesFrame, enqueueEditedFrames, enqueueFrame } from './frame-path';
import { PacketBatch } from './packet-batch';
import { EDIT_POP, EDIT_PUSH, EDIT_TPID_AD, TPID_8021AD, TPID_8021Q } from './vlan';

/** The 4 bytes of a pushed 802.1Q tag, written here then copied like any source piece. */
const tagBytes = new Uint8Array(8);
const tagViews = makeViews(tagBytes.buffer, 0, 8);

function setTag(edit: number): void {
  const tpid = (edit & EDIT_TPID_AD) !== 0 ? TPID_8021AD : TPID_8021Q;
  tagBytes[0] = tpid >>> 8;
  tagBytes[1] = tpid & 0xff;
  tagBytes[2] = (edit >>> 8) & 0xff;
  tagBytes[3] = edit & 0xff;
}

export abstract class RxBuffers {
  abstract readonly features: QueueFeatures;
  abstract readonly stats: Float64Array;
  abstract readonly mem: GuestMemory;
  /** the worker's deferred bulk copies (null: copy at once, e.g. in unit tests) */
  bulk: CopyQueue | null = null;

  // the destination buffers reserved for the frame being enqueued, and the write cursor
  protected dSegRegion = new Uint16Array(64); // region index: up to MAX_MEM_SLOTS (509)
  protected dSegOff = new Float64Array(64);
  protected dSegLen = new Uint32Array(64);
  protected nDSeg = 0;
  protected wSeg = 0;
  protected wPos = 0;
  /** the virtio-net header's first 10 bytes for the next reserve() (null: zeros) */
  protected rxHdr: Uint8Array | null = null;

  /**
   * Take (without writing) enough chains for hdrLen + len bytes into the segments, then
   * writeHeader(). False and ST_DROP_NO_BUF when there is not enough; no index moves then.
   */
  protected abstract reserve(len: number): boolean;
  /** The reserved chains become used elements (published by flush); their buffers' pages are marked after the copies. */
  protected abstract commit(len: number): void;

  /** A burst with VLAN tag edits (vlan.ts), frame by frame (frame-path.ts). */
  enqueueEdited(srcMem: GuestMemory, batch: PacketBatch, pick: Uint16Array, count: number, edits: Int32Array): number {
    return enqueueEditedFrames(this, srcMem, batch, pick, count, edits);
  }

  /**
   * Copy packet i of `batch` (dequeued from a ring of `srcMem`) into this ring (frame-path.ts).
   * False, and ST_DROP_NO_BUF counted, when the guest posted too little buffer; nothing is
   * consumed then.
   */
  enqueue(srcMem: GuestMemory, batch: PacketBatch, i: number, edit = 0): boolean {
    return enqueueFrame(this, srcMem, batch, i, edit);
  }

  /** Enqueue a frame made by the backend itself (e.g. RARP). */
  enqueueBytes(src: Uint8Array, off: number, len: number): boolean {
    return enqueueBytesFrame(this, src, off, len);
  }

  // ---- offload hooks (src/workers/offload.ts): reserve, fill, commit one frame under acquire()

  /** reserve() with the virtio-net header's first 10 bytes taken from `hdr` (null: zeros) */
  rxReserve(len: number, hdr: Uint8Array | null): boolean {
    this.rxHdr = hdr;
    try {
      return this.reserve(len);
    } finally {
      this.rxHdr = null;
    }
  }

  rxPut(src: RegionViews, off: number, len: number): void {
    this.put(src, off, len);
  }

  /** The whole of packet i to the write cursor, with its VLAN tag edit (vlan.ts) made. */
  rxPutPacket(srcMem: GuestMemory, batch: PacketBatch, i: number, edit: number): void {
    this.putPacket(srcMem, batch, i, edit);
  }

  /** Overwrite frame byte `pos` (0 = first byte after the header) of the reserved buffers. */
  rxPoke(pos: number, value: number): void {
    // the frame's bytes may still sit in the worker's bulk queue: run it first, or the queued
    // copy lands over this byte later (a software checksum towards a guest without GUEST_CSUM)
    this.bulk?.run();
    let p = pos + this.features.hdrLen;
    for (let s = 0; s < this.nDSeg; s++) {
      if (p < this.dSegLen[s]) {
        this.mem.views[this.dSegRegion[s]].u8[this.dSegOff[s] + p] = value;
        return;
      }
      p -= this.dSegLen[s];
    }
  }

  rxCommit(len: number): void {
    this.commit(len);
  }

  // ---- the write cursor

  /** The virtio-net header (first 10 bytes from rxHdr or zeros), num_buffers at byte 10 when there. */
  protected writeHeader(numBuffers: number): void {
    const hdrLen = this.features.hdrLen;
    // Fast path: the first buffer holds the whole header at a 4-aligned offset (every real
    // driver): three word stores instead of twelve byte stores through the cursor.
    const rxHdr = this.rxHdr;
    if (rxHdr === null && hdrLen === 12 && this.dSegLen[0] >= 12 && this.wPos === 0 && this.wSeg === 0) {
      const v = this.mem.views[this.dSegRegion[0]];
      const off = this.dSegOff[0];
      if (v.u32 !== null && (off & 3) === 0) {
        const w = off / 4;
        v.u32[w] = 0;
        v.u32[w + 1] = 0;
        v.u32[w + 2] = numBuffers << 16; // little endian: num_buffers is bytes 10..11
        this.wPos = 12;
        return;
      }
    }
    for (let b = 0; b < hdrLen; b++) {
      const v = b === 10 ? numBuffers & 0xff : b === 11 ? numBuffers >>> 8 : rxHdr !== null ? rxHdr[b] : 0;
      while (this.wPos === this.dSegLen[this.wSeg]) {
        this.wSeg++;
        this.wPos = 0;
      }
      this.mem.views[this.dSegRegion[this.wSeg]].u8[this.dSegOff[this.wSeg] + this.wPos] = v;
      this.wPos++;
    }
  }

  /**
   * src[off, off + len) to the write cursor (space was reserved). From a guest region
   * (`srcMem`, `srcRegion`), pieces of BULK_MIN bytes and more join the bulk queue, which
   * publish() runs before the used elements become visible.
   */
  protected put(src: RegionViews, off: number, len: number, srcMem: GuestMemory | null = null, srcRegion = -1): void {
    const mem = this.mem;
    const views = mem.views;
    const bulk = this.bulk;
    const batched = bulk !== null && srcMem !== null && srcMem.bulkIds !== null && mem.bulkIds !== null;
    while (len > 0) {
      let room = this.dSegLen[this.wSeg] - this.wPos;
      if (room === 0) {
        this.wSeg++;
        this.wPos = 0;
        room = this.dSegLen[this.wSeg];
      }
      const n = len < room ? len : room;
      const dr = this.dSegRegion[this.wSeg];
      const dOff = this.dSegOff[this.wSeg] + this.wPos;
      if (batched && n >= BULK_MIN) {
        bulk.add(srcMem.bulkIds![srcRegion], srcMem.regions[srcRegion].sabOffset + off, mem.bulkIds![dr], mem.regions[dr].sabOffset + dOff, n);
      } else {
        copyBytes(views[dr], dOff, src, off, n);
      }
      this.wPos += n;
      off += n;
      len -= n;
    }
  }

  /**
   * Packet i of `batch` to the write cursor (reserve()d for its length as delivered), with its
   * tag edit made in the same pass over any segmentation of the source: bytes [0, 12) (the
   * MACs), then the pushed tag, then the rest past a popped source tag [12, 16).
   */
  protected putPacket(srcMem: GuestMemory, batch: PacketBatch, i: number, edit: number): void {
    const views = srcMem.views;
    const end = batch.segStart[i] + batch.segCount[i];
    if (edit === 0) {
      for (let s = batch.segStart[i]; s < end; s++) {
        const r = batch.segRegion[s];
        this.put(views[r], batch.segOffset[s], batch.segLen[s], srcMem, r);
      }
      return;
    }
    const skipEnd = (edit & EDIT_POP) !== 0 ? 16 : 12;
    let pos = 0;
    if ((edit & EDIT_PUSH) !== 0) setTag(edit);
    for (let s = batch.segStart[i]; s < end; s++) {
      const r = batch.segRegion[s];
      const v = views[r];
      let off = batch.segOffset[s];
      let n = batch.segLen[s];
      if (pos < 12) {
        const k = n < 12 - pos ? n : 12 - pos;
        this.put(v, off, k);
        pos += k;
        off += k;
        n -= k;
        if (pos === 12 && (edit & EDIT_PUSH) !== 0) this.put(tagViews, 0, 4);
      }
      if (n > 0 && pos < skipEnd) {
        const k = n < skipEnd - pos ? n : skipEnd - pos;
        pos += k;
        off += k;
        n -= k;
      }
      if (n > 0) {
        this.put(v, off, n, srcMem, r);
        pos += n;
      }
    }
  }

  /** Pathological guests (tiny buffers): grow the scratch, amortised, never per packet. */
  protected growSegs(): void {
    const n = this.dSegLen.length * 2;
    const r = new Uint16Array(n);
    const o = new Float64Array(n);
    const l = new Uint32Array(n);
    r.set(this.dSegRegion);
    o.set(this.dSegOff);
    l.set(this.dSegLen);
    this.dSegRegion = r;
    this.dSegOff = o;
    this.dSegLen = l;
  }
}
