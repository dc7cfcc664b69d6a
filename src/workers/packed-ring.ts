/**
 * One packed virtqueue, device side (virtio 1.1 2.8, VIRTIO_F_RING_PACKED), after DPDK
 * lib/vhost virtio_net.c (the packed paths) and QEMU hw/virtio/virtio.c.
 *
 * One ring of 16-byte descriptors (addr u64, len u32, id u16, flags u16) that the driver makes
 * available and the device hands back in place: a descriptor at slot i is available when its
 * AVAIL bit equals the device's avail wrap counter and its USED bit does not; the device
 * returns a buffer by writing, at the next used slot, its buffer id (the id of the chain's
 * last descriptor), the bytes written, and last the flags with AVAIL = USED = the used wrap
 * counter. A chain is consecutive descriptors linked by NEXT (across the end of the ring) or
 * one INDIRECT descriptor whose table holds them; the used index moves by the ring slots the
 * chain took. Event suppression: the driver area (vd.avail) says whether we notify, the
 * device area (vd.used) whether the driver kicks; each is { off_wrap u16, flags u16 }.
 *
 * Same contract as the split Virtqueue (ring-format.ts): every guest violation throws a named
 * GuestError before anything is written outside the guest's own buffers; no allocation per
 * packet (scratch grows amortised); used elements are written in publish(), after every
 * (bulk) copy, each element's flags stored after its id and length (a release store, or a
 * seq-cst one for the burst's last, the fence before the driver's event area is read).
 * Dirty logging: every byte written (buffers, headers, used elements, the device event area)
 * is marked at its guest-physical address, after the write it covers.
 *
 * State in ctrl (CTRL_LAST_AVAIL / CTRL_LAST_USED / CTRL_SIGNALLED_USED): index | wrap << 15,
 * the encoding of GET_VRING_BASE / SET_VRING_BASE for packed rings (QEMU, DPDK).
 */
import {
  DESC_SIZE, MAX_QUEUE_SIZE, RING_EVENT_FLAGS_DESC, RING_EVENT_FLAGS_DISABLE,
  RING_EVENT_FLAGS_ENABLE, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_PACKED_DESC_F_AVAIL,
  VRING_PACKED_DESC_F_USED,
} from '../protocol/constants';
import {
  CTRL_LAST_AVAIL, CTRL_LAST_USED, CTRL_LOCK, CTRL_SIGNALLED_USED, QueueFeatures, RingLocation, ST_BURSTS, ST_BYTES,
  ST_DROP_NO_BUF, ST_DROP_TOO_BIG, ST_PACKETS, VringDesc,
} from '../shared/types';
import { PACKED_EVENT_AREA, packedIndex } from '../protocol/ring-layout';
import { BurstLog } from './burst-log';
import { copyBytes, F64_EXACT } from './copy';
import { DirtyLog } from './dirty-log';
import { GuestError } from './guest-error';
import { GuestMemory, RegionViews, WIN_HI, WIN_LO, WIN_OFF, WIN_SPAN } from './guest-memory';
import { BAD_OFFLOAD_REASONS, HOST_OFFLOADS, validateBurst } from './offload';
import { TSO } from './ordering';
import { PacketBatch } from './packet-batch';
import type { RingQueue } from './ring-format';
import { needEvent, publishBurst, UsedPublisher } from './ring-core';
import { RxBuffers } from './rx-buffers';

const F_AVAIL = VRING_PACKED_DESC_F_AVAIL;
const F_USED = VRING_PACKED_DESC_F_USED;
const F_BOTH = F_AVAIL | F_USED;

export class PackedVirtqueue extends RxBuffers implements RingQueue, UsedPublisher {
  readonly index: number;
  readonly size: number;
  readonly isTx: boolean;
  readonly features: QueueFeatures;
  readonly mem: GuestMemory;
  readonly log: DirtyLog;
  readonly ctrl: Int32Array;
  readonly stats: Float64Array;
  onBadOffload: ((reason: string, suppressed: number) => void) | null = null;

  /** the descriptor ring: u32 [4i] addr lo, [4i+1] addr hi, [4i+2] len; u16 [8i+6] id, [8i+7] flags */
  private readonly d32: Uint32Array;
  private readonly d16: Uint16Array;
  /** driver event suppression area: [0] off_wrap, [1] flags (read) */
  private readonly drvEvt: Uint16Array;
  /** device event suppression area: [0] off_wrap, [1] flags (written) */
  private readonly devEvt: Uint16Array;
  private readonly descGpa: number;
  private readonly devEvtGpa: number;

  private lastAvail = 0;
  private availWrap = 1;
  private lastUsed = 0;
  private usedWrap = 1;
  /** used index (no wrap) at the last notification decision, as DPDK's signalled_used */
  private signalled = 0;
  private signalledValid = false;
  /** the burst being published (ring-core.ts): its first slot (lastUsed before it) and that slot's used flags */
  private pubFirst = 0;
  private pubFirstFlags = 0;
  private devFlags = -1;
  private notifyPending = false;

  /** chains taken and not yet returned: buffer id, bytes written, ring slots */
  private readonly pId: Uint16Array;
  private readonly pLen: Uint32Array;
  private readonly pCnt: Uint16Array;
  private nPend = 0;

  // the chain walker's output: the current descriptor, and the chain's id and slots at its end
  private wRegion = 0;
  private wOff = 0;
  private wLen = 0;
  private wWritable = false;
  private wId = 0;
  private wSlots = 0;
  // walk state
  private wSlot = 0;
  private wCount = 0;
  private wInd = -1;
  /** the table's Uint32Array when its entries are 4-aligned (one load per field), else null: its DataView */
  private wIndU32: Uint32Array | null = null;
  private wIndOff = 0;
  private wIndN = 0;
  private wIndK = 0;
  private wDone = true;

  // RX: the chains reserve() took for the frame being enqueued (their segments: RxBuffers)
  private chainFrom = 0;
  private nChains = 0;
  private readonly txHdr = new Uint8Array(12);

  /** the burst's log marks, marked in publish() after the copies ran (burst-log.ts) */
  private readonly blog: BurstLog;

  private badReportAt = -Infinity;
  private badSuppressed = 0;

  constructor(vd: VringDesc, mem: GuestMemory, log: DirtyLog) {
    super();
    const size = vd.size;
    // a packed ring need not be a power of two, but every frontend uses one and so do we
    if (!Number.isInteger(size) || size <= 0 || (size & (size - 1)) !== 0) {
      throw new GuestError('queue size not a power of two', `size ${size}`);
    }
    if (size > MAX_QUEUE_SIZE) throw new GuestError('queue size over 32768', `size ${size}`);
    this.index = vd.index;
    this.size = size;
    this.isTx = (vd.index & 1) === 1;
    this.features = { ...vd.features };
    this.mem = mem;
    this.log = log;
    this.ctrl = new Int32Array(vd.ctrl);
    this.stats = new Float64Array(vd.stats);
    checkArea(mem, 'descriptor ring', vd.desc, DESC_SIZE * size, 16);
    checkArea(mem, 'driver event area', vd.avail, PACKED_EVENT_AREA, 4);
    checkArea(mem, 'device event area', vd.used, PACKED_EVENT_AREA, 4);
    const dr = mem.regions[vd.desc.region];
    this.d32 = new Uint32Array(dr.sab, dr.sabOffset + vd.desc.offset, 4 * size);
    this.d16 = new Uint16Array(dr.sab, dr.sabOffset + vd.desc.offset, 8 * size);
    const ar = mem.regions[vd.avail.region];
    this.drvEvt = new Uint16Array(ar.sab, ar.sabOffset + vd.avail.offset, 2);
    const ur = mem.regions[vd.used.region];
    this.devEvt = new Uint16Array(ur.sab, ur.sabOffset + vd.used.offset, 2);
    this.descGpa = dr.gpa + vd.desc.offset;
    this.devEvtGpa = ur.gpa + vd.used.offset;
    this.pId = new Uint16Array(size);
    this.pLen = new Uint32Array(size);
    this.pCnt = new Uint16Array(size);
    this.loadState();
    this.blog = new BurstLog(log);
  }

  reload(): void {
    this.loadState();
  }

  private loadState(): void {
    const c = this.ctrl;
    const a = c[CTRL_LAST_AVAIL] & 0xffff;
    const u = c[CTRL_LAST_USED] & 0xffff;
    this.lastAvail = a & 0x7fff;
    this.availWrap = a >>> 15;
    this.lastUsed = u & 0x7fff;
    this.usedWrap = u >>> 15;
    if (this.lastAvail >= this.size || this.lastUsed >= this.size) {
      throw new GuestError('ring index out of range', `avail ${this.lastAvail} used ${this.lastUsed} size ${this.size}`);
    }
    const s = c[CTRL_SIGNALLED_USED];
    this.signalledValid = s >= 0;
    this.signalled = s & 0x7fff;
  }

  private storeState(): void {
    const c = this.ctrl;
    c[CTRL_LAST_AVAIL] = packedIndex(this.lastAvail, this.availWrap);
    c[CTRL_LAST_USED] = packedIndex(this.lastUsed, this.usedWrap);
    c[CTRL_SIGNALLED_USED] = this.signalledValid ? this.signalled : -1;
  }

  setLogging(logAll: boolean, _logUsedGpa: number): void {
    this.log.flush();
    this.features.logAll = logAll;
  }

  private get logging(): boolean {
    return this.features.logAll && this.log.active;
  }

  /** Indices as index | wrap << 15 (tests; RX: valid while acquired). */
  get lastAvailIdx(): number {
    return packedIndex(this.lastAvail, this.availWrap);
  }
  get lastUsedIdx(): number {
    return packedIndex(this.lastUsed, this.usedWrap);
  }

  /** Is the descriptor at `slot` available for wrap counter `wrap`? (flags read with acquire) */
  private isAvail(slot: number, wrap: number): boolean {
    const f = TSO ? this.d16[8 * slot + 7] : Atomics.load(this.d16, 8 * slot + 7);
    return ((f & F_AVAIL) !== 0) === (wrap === 1) && ((f & F_USED) !== 0) !== (wrap === 1);
  }

  // ---------------------------------------------------------------- chain walker

  /** Begin the chain whose first descriptor is at slot `slot` (available, checked by the caller). */
  private walkStart(slot: number): void {
    this.wSlot = slot;
    this.wCount = 0;
    this.wSlots = 0;
    this.wInd = -1;
    this.wDone = false;
  }

  /** The chain's next descriptor, validated, into wRegion/wOff/wLen/wWritable; false at its end. */
  private walkNext(): boolean {
    if (this.wDone) return false;
    const mem = this.mem;
    let addr: number;
    let len: number;
    let flags: number;
    if (this.wInd >= 0) {
      if (this.wIndK === this.wIndN) {
        this.wDone = true;
        return false;
      }
      const o = this.wIndOff + DESC_SIZE * this.wIndK++;
      // each field read with one load where it can be: the guest may rewrite the table as we
      // read it, and a DataView read is byte loads until compiled (desc-walker.ts)
      const u = this.wIndU32;
      if (u !== null) {
        const i = o / 4; // not o >> 2: a table 2 GiB or more into its region
        addr = u[i] + u[i + 1] * 0x1_0000_0000;
        len = u[i + 2];
        flags = u[i + 3] >>> 16;
      } else {
        const dv = mem.views[this.wInd].dv;
        addr = dv.getUint32(o, true) + dv.getUint32(o + 4, true) * 0x1_0000_0000;
        len = dv.getUint32(o + 8, true);
        flags = dv.getUint16(o + 14, true);
      }
      if ((flags & VRING_DESC_F_INDIRECT) !== 0) throw new GuestError('nested indirect descriptor');
      if (++this.wCount > this.size) throw new GuestError('descriptor chain longer than the queue size');
    } else {
      const s = this.wSlot;
      const w = 4 * s;
      flags = this.d16[8 * s + 7];
      addr = this.d32[w] + this.d32[w + 1] * 0x1_0000_0000;
      len = this.d32[w + 2];
      this.wId = this.d16[8 * s + 6];
      this.wSlots++;
      if (++this.wCount > this.size) throw new GuestError('descriptor chain longer than the queue size');
      this.wSlot = s + 1 === this.size ? 0 : s + 1;
      if ((flags & VRING_DESC_F_NEXT) === 0) this.wDone = true;
      if ((flags & VRING_DESC_F_INDIRECT) !== 0) {
        if (!this.features.indirect) throw new GuestError('indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC');
        if ((flags & VRING_DESC_F_NEXT) !== 0) throw new GuestError('indirect descriptor with NEXT');
        if (this.wCount > 1) throw new GuestError('indirect descriptor inside a chain');
        if (len === 0 || len % DESC_SIZE !== 0) throw new GuestError('indirect table length not a non-zero multiple of 16', `len ${len}`);
        const r = mem.translate(addr, len);
        if (r < 0) throw new GuestError('indirect table outside guest memory', `addr 0x${addr.toString(16)} len ${len}`);
        this.wInd = r;
        this.wIndU32 = (mem.off & 3) === 0 ? mem.views[r].u32 : null;
        this.wIndOff = mem.off;
        this.wIndN = len / DESC_SIZE;
        this.wIndK = 0;
        this.wCount = 0;
        this.wDone = false;
        if (this.wIndN > this.size) throw new GuestError('descriptor chain longer than the queue size');
        return this.walkNext();
      }
    }
    const r = mem.translate(addr, len);
    if (r < 0) {
      throw mem.translate(addr, 0) < 0
        ? new GuestError('descriptor outside guest memory', `addr 0x${addr.toString(16)} len ${len}`)
        : new GuestError('descriptor crosses a memory region end', `addr 0x${addr.toString(16)} len ${len}`);
    }
    this.wRegion = r;
    this.wOff = mem.off;
    this.wLen = len;
    this.wWritable = (flags & VRING_DESC_F_WRITE) !== 0;
    return true;
  }

  /** After the walk: the buffer id (its last ring descriptor's), checked. */
  private walkId(): number {
    const id = this.wId;
    if (id >= this.size) throw new GuestError('buffer id out of range', `id ${id} size ${this.size}`);
    return id;
  }

  /**
   * Ring slots taken and not yet returned were the device's avail index at (slot, wrap): at
   * most `size` unless the driver made available a slot the device holds (the used index is
   * where publish() last stopped).
   */
  private inFlight(slot: number, wrap: number): number {
    return slot - this.lastUsed + (wrap !== this.usedWrap ? this.size : 0);
  }

  private slotHeld(slot: number, wrap: number): never {
    throw new GuestError('ring slot made available again before it was used', `slot ${slot} wrap ${wrap}, ${this.inFlight(slot, wrap)} slots in flight, size ${this.size}`);
  }

  /** Move the avail index past `slots` descriptors (the wrap counter flips at the end). */
  private advanceAvail(slots: number): void {
    let a = this.lastAvail + slots;
    if (a >= this.size) {
      a -= this.size;
      this.availWrap ^= 1;
    }
    this.lastAvail = a;
  }

  // ---------------------------------------------------------------- guest TX (dequeue)

  dequeueBurst(batch: PacketBatch, max: number): number {
    batch.reset();
    const d16 = this.d16;
    // an empty poll (the busy loop's common case) reads one flags word and writes nothing
    {
      const f0 = TSO ? d16[8 * this.lastAvail + 7] : Atomics.load(d16, 8 * this.lastAvail + 7);
      if ((f0 & F_BOTH) !== (this.availWrap === 1 ? F_AVAIL : F_USED)) {
        if (!this.notifyPending) return 0;
      }
    }
    if (max > batch.capacity) max = batch.capacity;
    let bytes = 0;
    const d32 = this.d32;
    const size = this.size;
    const hdrLen = this.features.hdrLen;
    // the header's flags and gso_type only when the guest negotiated a host offload (split ring: same)
    const hostOffload = (this.features.netBits & HOST_OFFLOADS) !== 0;
    const mem = this.mem;
    const tso = TSO;
    // the last buffer's region as a window in locals (guest-memory.ts window(), as the split
    // ring's loops do): int32 math per descriptor, no double offsets (boxed when passed on)
    let cr = -1;
    let cHi = 0;
    let cLo = 0;
    let cSpan = 0;
    let cOff = 0;
    let cU8: Uint8Array | null = null;
    while (batch.nUsed < max) {
      const slot = this.lastAvail;
      const f = tso ? d16[8 * slot + 7] : Atomics.load(d16, 8 * slot + 7);
      const wrapBits = this.availWrap === 1 ? F_AVAIL : F_USED;
      if ((f & F_BOTH) !== wrapBits) break; // not available
      // Every slot taken and none returned yet, and the one after looks available: the driver
      // made available a slot the device holds (a racing vCPU flipping the wrap bits). Taking
      // it would put more buffers in flight than the ring has slots (pending arrays overrun,
      // used elements over each other): refused (issue 19, toctou-packed.test.ts).
      if (slot === this.lastUsed && this.availWrap !== this.usedWrap) this.slotHeld(slot, this.availWrap);
      // Fast path: one read-only descriptor holding header and data (what Linux and DPDK
      // send); anything else takes the validating walker (dequeueChain)
      const w = 4 * slot;
      const len = d32[w + 2];
      const id = d16[8 * slot + 6];
      const nS = batch.nSegs;
      if ((f & ~F_BOTH) === 0 && len > hdrLen && len < 0x8000_0000 && id < size && nS < batch.segCapacity) {
        const lo = d32[w];
        const hi = d32[w + 1] | 0;
        let d = (lo - cLo) | 0;
        if (hi !== cHi || d < 0 || d >= cSpan || len > cSpan - d) {
          cr = mem.windowAt(hi, lo | 0, len);
          if (cr >= 0) {
            const win = mem.win;
            cHi = win[WIN_HI];
            cLo = win[WIN_LO];
            cSpan = win[WIN_SPAN];
            cOff = win[WIN_OFF];
            d = (lo - cLo) | 0;
            cU8 = mem.views[cr].u8;
          } else {
            cSpan = 0;
          }
        }
        if (cr >= 0) {
          const r = cr;
          const off = (cOff + d) | 0;
          const u8 = cU8!;
          const p = batch.count;
          const fl = hostOffload ? u8[off] : 0;
          const gt = hostOffload ? u8[off + 1] : 0;
          // zero in the batch already (PacketBatch.reset): stored only when set
          if ((fl | gt) !== 0) {
            batch.flags[p] = fl;
            batch.gsoType[p] = gt;
            readNetHdr(batch, p, u8, off);
          }
          const n = len - hdrLen;
          batch.segRegion[nS] = r;
          batch.segOffset[nS] = off + hdrLen;
          batch.segLen[nS] = n;
          batch.nSegs = nS + 1;
          batch.head[p] = id;
          batch.pktLen[p] = n;
          batch.segStart[p] = nS;
          batch.segCount[p] = 1;
          batch.count = p + 1;
          batch.usedHead[batch.nUsed++] = id;
          const k = this.nPend++;
          this.pId[k] = id;
          this.pLen[k] = 0;
          this.pCnt[k] = 1;
          this.lastAvail = slot + 1 === size ? 0 : slot + 1;
          if (slot + 1 === size) this.availWrap ^= 1;
          bytes += n;
          continue;
        }
      }
      const got = this.dequeueChain(batch);
      if (got < 0) break;
      bytes += got;
    }
    if (batch.nOffload > 0) this.checkOffloads(batch);
    this.ctrl[CTRL_LAST_AVAIL] = packedIndex(this.lastAvail, this.availWrap);
    this.stats[ST_PACKETS] += batch.count;
    this.stats[ST_BYTES] += bytes;
    if (batch.count > 0) this.stats[ST_BURSTS]++;
    if (batch.count === 0 && batch.nUsed > 0) {
      if (this.completeBurst(batch)) this.notifyPending = true;
      batch.nUsed = 0;
    }
    return batch.count;
  }

  /** Walk and record the TX chain at lastAvail; -1 when it does not fit the batch (left for the next burst). */
  private dequeueChain(batch: PacketBatch): number {
    const hdrLen = this.features.hdrLen;
    const segMark = batch.nSegs;
    let hdrLeft = hdrLen;
    let total = 0;
    let overflow = false;
    this.walkStart(this.lastAvail);
    while (this.walkNext()) {
      if (this.wWritable) throw new GuestError('writable descriptor in TX chain', `slot ${this.lastAvail}`);
      let off = this.wOff;
      let len = this.wLen;
      if (hdrLeft > 0) {
        const skip = len < hdrLeft ? len : hdrLeft;
        const u8 = this.mem.views[this.wRegion].u8;
        const at = hdrLen - hdrLeft;
        for (let k = 0; k < skip; k++) this.txHdr[at + k] = u8[off + k];
        hdrLeft -= skip;
        off += skip;
        len -= skip;
      }
      if (len === 0 || overflow) continue;
      const s = batch.nSegs;
      if (s === batch.segCapacity) {
        overflow = true; // walked to its end all the same: its id and slots are needed
        continue;
      }
      batch.segRegion[s] = this.wRegion;
      batch.segOffset[s] = off;
      batch.segLen[s] = len;
      batch.nSegs = s + 1;
      total += len;
    }
    const id = this.walkId();
    if (this.inFlight(this.lastAvail, this.availWrap) + this.wSlots > this.size) this.slotHeld(this.lastAvail, this.availWrap);
    if (overflow) {
      batch.nSegs = segMark;
      if (batch.nUsed > 0) return -1;
      this.stats[ST_DROP_TOO_BIG]++;
      this.take(batch, id, 0);
      return 0;
    }
    if (hdrLeft > 0) throw new GuestError('TX chain shorter than the virtio-net header', `slot ${this.lastAvail}`);
    const p = batch.count++;
    if ((this.txHdr[0] | this.txHdr[1]) !== 0 && (this.features.netBits & HOST_OFFLOADS) !== 0) {
      batch.flags[p] = this.txHdr[0];
      batch.gsoType[p] = this.txHdr[1];
      readNetHdr(batch, p, this.txHdr, 0);
    }
    batch.head[p] = id;
    batch.pktLen[p] = total;
    batch.segStart[p] = segMark;
    batch.segCount[p] = batch.nSegs - segMark;
    this.take(batch, id, 0);
    return total;
  }

  /** A chain walked: to be returned (pending), avail index past it. */
  private take(batch: PacketBatch | null, id: number, len: number): void {
    const k = this.nPend++;
    this.pId[k] = id;
    this.pLen[k] = len;
    this.pCnt[k] = this.wSlots;
    if (batch !== null) batch.usedHead[batch.nUsed++] = id;
    this.advanceAvail(this.wSlots);
  }

  private checkOffloads(batch: PacketBatch): void {
    const bad = validateBurst(this.mem, batch, this.features.netBits, this.stats);
    if (bad === 0) return;
    const now = performance.now();
    if (now - this.badReportAt < 1000) {
      this.badSuppressed++;
      return;
    }
    this.badReportAt = now;
    this.onBadOffload?.(BAD_OFFLOAD_REASONS[bad], this.badSuppressed);
    this.badSuppressed = 0;
  }

  /** Return every chain of the burst (len 0). True: notify the guest. */
  completeBurst(_batch: PacketBatch): boolean {
    let notify = this.notifyPending;
    this.notifyPending = false;
    if (this.nPend === 0) return notify;
    if (this.publish()) notify = true;
    return notify;
  }

  // ---------------------------------------------------------------- guest RX (enqueue)

  acquire(): void {
    const ctrl = this.ctrl;
    while (Atomics.compareExchange(ctrl, CTRL_LOCK, 0, 1) !== 0) {
      // brief spin: the holder is copying at most one burst
    }
    this.loadState();
  }

  release(): void {
    if (this.nPend > 0) this.publish();
    this.storeState();
    if (TSO) this.ctrl[CTRL_LOCK] = 0;
    else Atomics.store(this.ctrl, CTRL_LOCK, 0);
  }

  abandon(): void {
    this.bulk?.discard();
    this.nPend = 0;
    this.blog.discard();
    if (TSO) this.ctrl[CTRL_LOCK] = 0;
    else Atomics.store(this.ctrl, CTRL_LOCK, 0);
  }

  enqueueBurst(srcMem: GuestMemory, batch: PacketBatch, pick: Uint16Array | null, count: number): number {
    let done = 0;
    const d16 = this.d16;
    const d32 = this.d32;
    const size = this.size;
    const mem = this.mem;
    const fast = this.features.hdrLen === 12;
    const bulk = this.bulk;
    const srcIds = srcMem.bulkIds;
    const dstIds = mem.bulkIds;
    const useBulk = bulk !== null && srcIds !== null && dstIds !== null;
    const logging = this.logging;
    const tso = TSO;
    const fWrite = VRING_DESC_F_WRITE;
    const f64Exact = F64_EXACT;
    let bytes = 0;
    let nFast = 0;
    let cr = -1;
    let cHi = 0;
    let cLo = 0;
    let cSpan = 0;
    let cOff = 0;
    let cV: RegionViews | null = null;
    for (let k = 0; k < count; k++) {
      const i = pick === null ? k : pick[k];
      // Fast path: a frame of one segment without offload flags into one writable
      // descriptor that holds the 12-byte header and the frame; else the general path
      if (fast && batch.segCount[i] === 1 && batch.flags[i] === 0) {
        const slot = this.lastAvail;
        const f = tso ? d16[8 * slot + 7] : Atomics.load(d16, 8 * slot + 7);
        const wrapBits = this.availWrap === 1 ? F_AVAIL : F_USED;
        const len = batch.pktLen[i];
        const w = 4 * slot;
        const dlen = d32[w + 2];
        const id = d16[8 * slot + 6];
        const need = len + 12;
        // (a full ring, every slot taken and none returned: reserve() refuses the next one)
        if ((f & F_BOTH) === wrapBits && (f & ~F_BOTH) === fWrite && dlen >= need && id < size && (slot !== this.lastUsed || this.availWrap === this.usedWrap)) {
          const lo = d32[w];
          const hi = d32[w + 1] | 0;
          let d = (lo - cLo) | 0;
          if (hi !== cHi || d < 0 || d >= cSpan || need > cSpan - d) {
            cr = mem.windowAt(hi, lo | 0, need);
            if (cr >= 0) {
              const win = mem.win;
              cHi = win[WIN_HI];
              cLo = win[WIN_LO];
              cSpan = win[WIN_SPAN];
              cOff = win[WIN_OFF];
              d = (lo - cLo) | 0;
              cV = mem.views[cr];
            } else {
              cSpan = 0;
            }
          }
          if (cr >= 0) {
            const r = cr;
            const off = (cOff + d) | 0;
            const v = cV!;
            const u32 = v.u32;
            if (u32 !== null && (off & 3) === 0) {
              const hw = off >> 2;
              // written only where it differs, as the split ring does (NOTES.md #11): the
              // buffer's last use often left these values, and a store pulls the line back
              // from the frontend's cache
              if (u32[hw] !== 0) u32[hw] = 0;
              if (u32[hw + 1] !== 0) u32[hw + 1] = 0;
              if (u32[hw + 2] !== 0x10000) u32[hw + 2] = 0x10000; // num_buffers = 1 (bytes 10..11, LE)
            } else {
              const u8 = v.u8;
              for (let b = 0; b < 12; b++) u8[off + b] = b === 10 ? 1 : 0;
            }
            const s = batch.segStart[i];
            const sr = batch.segRegion[s];
            const so = batch.segOffset[s];
            // Every copy goes through the bulk queue, 64 B ones too (as on split rings): the
            // inline stores into the frontend's RX buffers were the worker's cost (a loop
            // without those stores ran 2.3x as fast), and one memmove loop a burst at
            // publish() overlaps them: +80 % at 64 B (bench/NOTES.md #51). The inline copy
            // stays for memory the addon did not map (no bulk ids).
            if (useBulk) {
              bulk.add(srcIds[sr], srcMem.regions[sr].sabOffset + so, dstIds[r], mem.regions[r].sabOffset + off + 12, len);
            } else {
              const sv = srcMem.views[sr];
              const s32 = sv.u32;
              const dOff = off + 12;
              const d64 = v.f64;
              const s64 = sv.f64;
              if (f64Exact && d64 !== null && s64 !== null && ((dOff | so) & 7) === 0 && so < 0x7fff_ffff) {
                // 8-byte words (as the split ring's inline copy, NOTES.md #18): the first 64
                // bytes loads before stores, so the misses on the source lines overlap
                const dw = dOff >> 3;
                const sw = (so | 0) >> 3;
                const n = len >> 3;
                let q = 0;
                if (n >= 8) {
                  const w0 = s64[sw];
                  const w1 = s64[sw + 1];
                  const w2 = s64[sw + 2];
                  const w3 = s64[sw + 3];
                  const w4 = s64[sw + 4];
                  const w5 = s64[sw + 5];
                  const w6 = s64[sw + 6];
                  const w7 = s64[sw + 7];
                  d64[dw] = w0;
                  d64[dw + 1] = w1;
                  d64[dw + 2] = w2;
                  d64[dw + 3] = w3;
                  d64[dw + 4] = w4;
                  d64[dw + 5] = w5;
                  d64[dw + 6] = w6;
                  d64[dw + 7] = w7;
                  q = 8;
                }
                for (; q < n; q++) d64[dw + q] = s64[sw + q];
                const du8 = v.u8;
                const su8 = sv.u8;
                for (let j = n << 3; j < len; j++) du8[dOff + j] = su8[(so | 0) + j];
              } else if (u32 !== null && s32 !== null && ((dOff | so) & 3) === 0 && so < 0x7fff_ffff) {
                // word copy with int32 indices, inline (a call passed the offsets as doubles)
                const dw = dOff >> 2;
                const sw = (so | 0) >> 2;
                const n = len >>> 2;
                for (let j = 0; j < n; j++) u32[dw + j] = s32[sw + j];
                const du8 = v.u8;
                const su8 = sv.u8;
                for (let j = n << 2; j < len; j++) du8[dOff + j] = su8[(so | 0) + j];
              } else {
                copyBytes(v, dOff, sv, so, len);
              }
            }
            if (logging) this.blog.defer(mem.gpaOf(r, off), len + 12);
            const p = this.nPend++;
            this.pId[p] = id;
            this.pLen[p] = len + 12;
            this.pCnt[p] = 1;
            this.lastAvail = slot + 1 === size ? 0 : slot + 1;
            if (slot + 1 === size) this.availWrap ^= 1;
            bytes += len;
            nFast++;
            done++;
            continue;
          }
        }
      }
      if (this.enqueue(srcMem, batch, i, 0)) done++;
    }
    this.stats[ST_PACKETS] += nFast;
    this.stats[ST_BYTES] += bytes;
    if (done > 0) this.stats[ST_BURSTS]++;
    return done;
  }

  flush(): boolean {
    return this.nPend > 0 ? this.publish() : false;
  }

  /**
   * Walk (without writing) enough RX chains for hdrLen + len bytes and remember the buffers
   * and the chains (as pending, not yet counted). False and ST_DROP_NO_BUF when there is not
   * enough; the indices do not move then.
   */
  protected reserve(len: number): boolean {
    if (this.isTx) throw new Error(`enqueue on guest TX queue ${this.index}`);
    const mrg = this.features.mrgRxbuf;
    let left = this.features.hdrLen + len;
    let slot = this.lastAvail;
    let wrap = this.availWrap;
    let slots = 0;
    let nSeg = 0;
    let nChains = 0;
    const from = this.nPend;
    while (left > 0) {
      if (slots >= this.size || !this.isAvail(slot, wrap)) break;
      this.walkStart(slot);
      let got = 0;
      // every descriptor of the chain is walked (its id and slot count), bytes only as needed
      while (this.walkNext()) {
        if (!this.wWritable) throw new GuestError('readable descriptor in RX chain', `slot ${slot}`);
        const take = this.wLen < left ? this.wLen : left;
        if (take === 0) continue;
        if (nSeg === this.dSegLen.length) this.growSegs();
        this.dSegRegion[nSeg] = this.wRegion;
        this.dSegOff[nSeg] = this.wOff;
        this.dSegLen[nSeg] = take;
        nSeg++;
        left -= take;
        got += take;
      }
      const k = from + nChains;
      if (this.inFlight(slot, wrap) + this.wSlots > this.size) this.slotHeld(slot, wrap);
      this.pId[k] = this.walkId();
      this.pLen[k] = got;
      this.pCnt[k] = this.wSlots;
      nChains++;
      slots += this.wSlots;
      slot += this.wSlots;
      if (slot >= this.size) {
        slot -= this.size;
        wrap ^= 1;
      }
      if (!mrg) break;
    }
    if (left > 0) {
      this.stats[ST_DROP_NO_BUF]++;
      return false;
    }
    this.nDSeg = nSeg;
    this.chainFrom = from;
    this.nChains = nChains;
    this.wSeg = 0;
    this.wPos = 0;
    this.writeHeader(mrg ? nChains : 1);
    return true;
  }

  /** The reserved chains become pending used elements; their buffers are marked after the copies. */
  protected commit(len: number): void {
    if (this.logging) {
      const mem = this.mem;
      for (let s = 0; s < this.nDSeg; s++) this.blog.defer(mem.gpaOf(this.dSegRegion[s], this.dSegOff[s]), this.dSegLen[s]);
    }
    const from = this.chainFrom;
    for (let c = 0; c < this.nChains; c++) this.advanceAvail(this.pCnt[from + c]);
    this.nPend = from + this.nChains;
    this.stats[ST_PACKETS]++;
    this.stats[ST_BYTES] += len;
  }

  // ---------------------------------------------------------------- publish

  /** Hand the burst to the guest (ring-core.ts: bytes, used elements, the first one's flags, log bits, notify decision). */
  private publish(): boolean {
    return publishBurst(this, this.bulk, this.blog, this.logging, this.stats);
  }

  /**
   * ring-core step 2: every pending element's id and length, the flags of all but the
   * burst's first (stored in storeUsed, last, as DPDK's vhost flushes its shadow ring): the
   * driver reads used elements in order, so the whole burst becomes visible at once, and it
   * does not take the burst piecemeal while it is being written (small bursts, cache lines
   * bouncing). Each written element's 8 bytes of id, length and flags are logged.
   */
  writeUsed(logging: boolean): void {
    const n = this.nPend;
    this.nPend = 0;
    const d32 = this.d32;
    const d16 = this.d16;
    const size = this.size;
    // VIRTIO_F_IN_ORDER, TX: one used element for the whole burst, the id of its last buffer,
    // at the burst's first slot (the driver frees by position up to that id)
    const batchTx = this.isTx && this.features.inOrder && n > 1;
    let slot = this.lastUsed;
    let wrap = this.usedWrap;
    const first = slot;
    const pId = this.pId;
    const pLen = this.pLen;
    const pCnt = this.pCnt;
    this.pubFirst = first;
    this.pubFirstFlags = wrap === 1 ? F_BOTH : 0;
    for (let k = 0; k < n; k++) {
      if (!batchTx || k === n - 1) {
        const at = batchTx ? first : slot;
        d16[8 * at + 6] = pId[k];
        d32[4 * at + 2] = pLen[k];
        if (at !== first) {
          // a release store after the id and length (plain on x86, ordering.ts)
          if (TSO) d16[8 * at + 7] = wrap === 1 ? F_BOTH : 0;
          else Atomics.store(d16, 8 * at + 7, wrap === 1 ? F_BOTH : 0);
        }
        if (logging) this.blog.defer(this.descGpa + DESC_SIZE * at + 8, 8);
      }
      slot += pCnt[k];
      if (slot >= size) {
        slot -= size;
        wrap ^= 1;
      }
    }
    this.lastUsed = slot;
    this.usedWrap = wrap;
  }

  /**
   * ring-core step 3: the burst's first flags, seq-cst (after every element, and the fence
   * before the driver event area is read), `fenced` or not: a packed ring's decision window is
   * counted in slots within one lap of the ring, and a burst of long chains can move many
   * slots, so its decisions are not deferred (ring-core.ts) and are never provisional.
   */
  storeUsed(_fenced: boolean): void {
    Atomics.store(this.d16, 8 * this.pubFirst + 7, this.pubFirstFlags);
    if (this.isTx) this.ctrl[CTRL_LAST_USED] = packedIndex(this.lastUsed, this.usedWrap);
  }

  /** Decisions are never provisional here (storeUsed): nothing to decide again. */
  recheckNotify(): boolean {
    return false;
  }

  get notifyUnsure(): boolean {
    return false;
  }

  /** ring-core step 5, as DPDK's vhost_vring_call_packed: the driver's flags, with EVENT_IDX its off_wrap (always after the fence of storeUsed). */
  notifyDue(_fenced: boolean): boolean {
    const now = this.lastUsed;
    const ev = this.drvEvt;
    const flags = (TSO ? ev[1] : Atomics.load(ev, 1)) & 3;
    const prev = this.signalledValid ? this.signalled : this.pubFirst;
    this.signalled = now;
    this.signalledValid = true;
    if (this.isTx) this.ctrl[CTRL_SIGNALLED_USED] = this.signalled;
    if (flags !== RING_EVENT_FLAGS_DESC || !this.features.eventIdx) return flags !== RING_EVENT_FLAGS_DISABLE;
    const offWrap = TSO ? ev[0] : Atomics.load(ev, 0);
    // off and the previous position brought into one line of indices before `now` (the
    // spec's wrap counters), then the split ring's vring_need_event
    let off = offWrap & 0x7fff;
    let o = prev;
    if (now <= o) o -= this.size;
    if (this.usedWrap !== offWrap >>> 15) off -= this.size;
    return needEvent(off, now, o);
  }

  // ---------------------------------------------------------------- notifications

  /** Ask the guest to kick (RX: under acquire()). True when a buffer is available already. */
  enableNotify(): boolean {
    const ev = this.devEvt;
    if (this.features.eventIdx) {
      ev[0] = packedIndex(this.lastAvail, this.availWrap);
      Atomics.store(ev, 1, RING_EVENT_FLAGS_DESC);
      this.devFlags = RING_EVENT_FLAGS_DESC;
    } else {
      Atomics.store(ev, 1, RING_EVENT_FLAGS_ENABLE);
      this.devFlags = RING_EVENT_FLAGS_ENABLE;
    }
    if (this.logging) {
      this.log.markRange(this.devEvtGpa, PACKED_EVENT_AREA);
      this.log.flush();
    }
    // seq-cst store then load: the guest sees the request or we see its descriptor
    return this.isAvail(this.lastAvail, this.availWrap);
  }

  /** Busy polling again: ask the guest not to kick. */
  disableNotify(): void {
    if (this.devFlags === RING_EVENT_FLAGS_DISABLE) return;
    this.devFlags = RING_EVENT_FLAGS_DISABLE;
    this.devEvt[1] = RING_EVENT_FLAGS_DISABLE;
    if (this.logging) {
      this.log.markRange(this.devEvtGpa, PACKED_EVENT_AREA);
      this.log.flush();
    }
  }

}

function checkArea(mem: GuestMemory, name: string, loc: RingLocation, bytes: number, align: number): void {
  const r = mem.regions[loc.region];
  if (!r || !Number.isInteger(loc.offset) || loc.offset < 0 || loc.offset + bytes > r.size) {
    throw new GuestError(`${name} outside its region`, `region ${loc.region} offset ${loc.offset} bytes ${bytes}`);
  }
  if ((r.gpa + loc.offset) % align !== 0 || (r.sabOffset + loc.offset) % align !== 0) {
    throw new GuestError(`${name} not ${align}-aligned`, `gpa 0x${(r.gpa + loc.offset).toString(16)}`);
  }
}

function readNetHdr(batch: PacketBatch, p: number, u8: Uint8Array, o: number): void {
  batch.hdrLen[p] = u8[o + 2] | (u8[o + 3] << 8);
  batch.gsoSize[p] = u8[o + 4] | (u8[o + 5] << 8);
  batch.csumStart[p] = u8[o + 6] | (u8[o + 7] << 8);
  batch.csumOffset[p] = u8[o + 8] | (u8[o + 9] << 8);
  batch.nOffload++;
}
