/**
 * One split virtqueue, device side (virtio 1.x 2.7), after DPDK lib/vhost virtio_net.c.
 *
 * Guest TX (odd index): dequeueBurst() records packets in place into a PacketBatch, the caller
 * forwards them, completeBurst() returns the heads. Guest RX (even index): under acquire() /
 * release() (several workers may feed one RX ring), enqueue() copies a packet from another
 * guest's memory into posted buffers, flush() publishes used->idx.
 *
 * Rules: every guest violation throws GuestError before anything is written outside the
 * guest's own buffers; no allocation per packet; Atomics only where ordering against the guest
 * matters (avail->idx load, used->idx store, notification fields, the RX lock).
 */
import { LOG_PAGE, MAX_QUEUE_SIZE, VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY, VRING_DESC_F_WRITE } from '../protocol/constants';
import {
  CTRL_LAST_AVAIL, CTRL_LAST_USED, CTRL_LOCK, CTRL_NOTIFY_UNSURE, CTRL_SIGNALLED_USED, QueueFeatures, RingLocation,
  ST_BURSTS, ST_BYTES, ST_DROP_NO_BUF, ST_DROP_TOO_BIG, ST_PACKETS, VringDesc,
} from '../shared/types';
import { availRingBytes, descTableBytes, usedRingBytes } from '../protocol/ring-layout';
import { copyBytes, COPY_LOOP_MAX, F64_EXACT } from './copy';
import { BurstLog } from './burst-log';
import { DescWalker } from './desc-walker';
import { DirtyLog } from './dirty-log';
import { GuestError } from './guest-error';
import { GuestMemory, RegionViews, WIN_HI, WIN_LO, WIN_OFF, WIN_SPAN } from './guest-memory';
import { TSO } from './ordering';
import { PacketBatch } from './packet-batch';
import type { RingQueue } from './ring-format';
import { RxBuffers } from './rx-buffers';
import { fence, needEvent, notifyChecks, publishBurst, UNSURE_SPAN, UsedPublisher } from './ring-core';
import { BAD_OFFLOAD_REASONS, HOST_OFFLOADS, validateBurst } from './offload';

export { GuestError } from './guest-error';

/** 1 / LOG_PAGE: page numbers by an exact multiplication (a power of two), not a division */
const PAGE_INV = 1 / LOG_PAGE;

export class Virtqueue extends RxBuffers implements RingQueue, UsedPublisher {
  readonly index: number;
  readonly size: number;
  readonly isTx: boolean;
  readonly features: QueueFeatures;
  readonly mem: GuestMemory;
  readonly log: DirtyLog;
  readonly ctrl: Int32Array;
  readonly stats: Float64Array;

  /** avail: [flags, idx, ring[size], used_event] */
  private readonly avail16: Uint16Array;
  /** used as u16: [flags, idx, ..., avail_event at 2 + 4 * size] */
  private readonly used16: Uint16Array;
  /** used as u32: element k = [1 + 2k] id, [2 + 2k] len */
  private readonly used32: Uint32Array;
  private readonly mask: number;
  private logUsedGpa: number;
  /**
   * The used ring's log byte and bit when the whole ring (flags, idx, the entries,
   * avail_event) lies in one page, else -1: then every publish marks just that page
   * (it wrote there), one byte mark instead of the entries' range and used->idx (two or
   * three BurstLog.defer calls a publish: per-burst costs weigh with partial bursts).
   * Rings from QEMU and DPDK are page-aligned: 2054 bytes for 256 entries.
   */
  private usedLogByte = -1;
  private usedLogMask = 0;
  private readonly walker: DescWalker;
  /** the descriptor table as u32 words for the fast paths (null when not 4-aligned in its SAB) */
  private readonly desc32: Uint32Array | null;

  // Ring state: owned by the TX worker, or loaded by acquire() for RX.
  private lastAvail = 0;
  private lastUsed = 0;
  private signalled = 0;
  /** the "do not notify" since `signalled` was read without a fence (ring-core.ts): decide again */
  private unsure = false;
  /** last avail->idx read (validated), so RX reloads it only when it runs short */
  private availIdx = 0;
  private usedFlags = 0;
  /** used entries written but used->idx not yet stored */
  private unpublished = false;
  /** a notification decided while completing dropped-only bursts, reported by the next completeBurst */
  private notifyPending = false;
  /** the burst's log marks, marked in publish() after the (bulk) copies ran (burst-log.ts) */
  private readonly blog: BurstLog;
  /** RX: first used entry not yet logged (entries are logged per burst in publish) */
  private usedLogFrom = 0;

  // RX: the chains reserve() took for the packet being enqueued (their segments: RxBuffers)
  private chainHead: Uint16Array | null = null;
  private chainLen: Uint32Array | null = null;
  private nChains = 0;

  // ---- offloads (src/workers/offload.ts)
  /** TX: the header of a chain, gathered while its descriptors are walked */
  private readonly txHdr = new Uint8Array(12);
  /** TX: frames dropped for a bad header are reported (worker log) at most once a second */
  onBadOffload: ((reason: string, suppressed: number) => void) | null = null;
  private badReportAt = -Infinity;
  private badSuppressed = 0;

  constructor(vd: VringDesc, mem: GuestMemory, log: DirtyLog) {
    super();
    const size = vd.size;
    if (!Number.isInteger(size) || size <= 0 || (size & (size - 1)) !== 0) {
      throw new GuestError('queue size not a power of two', `size ${size}`);
    }
    if (size > MAX_QUEUE_SIZE) throw new GuestError('queue size over 32768', `size ${size}`);
    this.index = vd.index;
    this.size = size;
    this.mask = size - 1;
    this.isTx = (vd.index & 1) === 1;
    this.features = { ...vd.features };
    this.mem = mem;
    this.log = log;
    this.logUsedGpa = vd.logUsedGpa;
    this.placeUsedLog();
    this.ctrl = new Int32Array(vd.ctrl);
    this.stats = new Float64Array(vd.stats);

    const eventIdx = vd.features.eventIdx;
    checkRing(mem, 'desc', vd.desc, descTableBytes(size), 16);
    checkRing(mem, 'avail', vd.avail, availRingBytes(size, eventIdx), 2);
    checkRing(mem, 'used', vd.used, usedRingBytes(size, eventIdx), 4);
    const a = mem.regions[vd.avail.region];
    const u = mem.regions[vd.used.region];
    // the event fields (used_event at avail16[2 + size], avail_event at used16[2 + 4 * size])
    // are in the views only with EVENT_IDX, and only read or written then
    this.avail16 = new Uint16Array(a.sab, sabOffset(a.sabOffset + vd.avail.offset, 2, 'avail'), availRingBytes(size, eventIdx) / 2);
    this.used16 = new Uint16Array(u.sab, sabOffset(u.sabOffset + vd.used.offset, 4, 'used'), usedRingBytes(size, eventIdx) / 2);
    this.used32 = new Uint32Array(u.sab, u.sabOffset + vd.used.offset, 1 + 2 * size);
    this.walker = new DescWalker(mem, vd.desc.region, vd.desc.offset, size, vd.features.indirect);
    const dr = mem.regions[vd.desc.region];
    const dAbs = dr.sabOffset + vd.desc.offset;
    this.desc32 = dAbs % 4 === 0 ? new Uint32Array(dr.sab, dAbs, 4 * size) : null;

    this.reload();
    this.blog = new BurstLog(log);
  }

  reload(): void {
    this.lastAvail = this.ctrl[CTRL_LAST_AVAIL] & 0xffff;
    this.lastUsed = this.ctrl[CTRL_LAST_USED] & 0xffff;
    this.signalled = this.ctrl[CTRL_SIGNALLED_USED] & 0xffff;
    this.unsure = this.ctrl[CTRL_NOTIFY_UNSURE] !== 0;
    this.availIdx = this.lastAvail;
    this.usedLogFrom = this.lastUsed;
  }

  /**
   * Turn dirty logging on or off in place (migration start/end, a new log base, a new
   * log address for the used ring) without stopping the ring: called between bursts.
   */
  setLogging(logAll: boolean, logUsedGpa: number): void {
    this.log.flush();
    this.features.logAll = logAll;
    this.logUsedGpa = logUsedGpa;
    this.placeUsedLog();
  }

  private placeUsedLog(): void {
    this.usedLogByte = -1;
    this.usedLogMask = 0;
    if (this.logUsedGpa < 0) return;
    const first = Math.floor(this.logUsedGpa * PAGE_INV);
    const last = Math.floor((this.logUsedGpa + usedRingBytes(this.size, this.features.eventIdx) - 1) * PAGE_INV);
    if (first !== last || first >= 0x1_0000_0000) return;
    this.usedLogByte = first >>> 3;
    this.usedLogMask = 1 << (first & 7);
  }

  private get logging(): boolean {
    return this.features.logAll && this.log.active;
  }

  // ---------------------------------------------------------------- guest TX (dequeue)

  /**
   * Record up to `max` packets from the avail ring into `batch` (reset first). Returns the
   * number of packets; completeBurst(batch) must follow once they have been copied out.
   */
  dequeueBurst(batch: PacketBatch, max: number): number {
    batch.reset();
    const avail = this.loadAvailIdx();
    let pending = (avail - this.lastAvail) & 0xffff;
    if (pending === 0) return 0;
    if (max > batch.capacity) max = batch.capacity;
    if (pending > max) pending = max;
    const hdrLen = this.features.hdrLen;
    const avail16 = this.avail16;
    const mask = this.mask;
    const size = this.size;
    const t = this.desc32;
    const mem = this.mem;
    let idx = this.lastAvail;
    let bytes = 0;
    // The region of the last buffer, in locals: consecutive buffers are nearly always in
    // the same region, and translate() was not inlined here (it showed in the 64 B loop). As its
    // window (GuestMemory.window): a descriptor is checked and placed with int32 math.
    let cr = -1;
    let cHi = 0;
    let cLo = 0;
    let cSpan = 0;
    let cOff = 0;
    let cU8: Uint8Array | null = null;
    // offloads: each packet's flags and gso_type (the rest of the header only when non-zero),
    // when the guest negotiated a host offload at all
    const hostOffload = (this.features.netBits & HOST_OFFLOADS) !== 0;
    const hFlags = batch.flags;
    const hGso = batch.gsoType;
    // The batch's arrays and counters in locals (written back before dequeueChain and at the
    // end): in the loop TurboFan reloaded each array from `batch` with its map check and
    // bounds for every store, nine a packet (annotation, NOTES.md #23).
    const segRegion = batch.segRegion;
    const segOffset = batch.segOffset;
    const segLen = batch.segLen;
    const pHead = batch.head;
    const pktLen = batch.pktLen;
    const segStart = batch.segStart;
    const segCount = batch.segCount;
    const usedHead = batch.usedHead;
    const segCap = batch.segCapacity;
    let nSegs = batch.nSegs;
    let count = batch.count;
    let nUsed = batch.nUsed;
    for (let k = 0; k < pending; k++) {
      const head = avail16[2 + (idx & mask)];
      if (head >= size) throw new GuestError('avail ring head out of range', `head ${head}`);
      // Fast path: one read-only descriptor holding header and data (ANY_LAYOUT, what
      // Linux and DPDK send). Anything else goes through the validating walker
      // (dequeueChain, kept out of this loop so that the loop stays small enough for
      // TurboFan to inline what it calls: NOTES.md #13).
      if (t !== null && nSegs < segCap) {
        const w = head * 4;
        // a length of 2 GiB or more turns negative here and takes the walker
        const dlen = t[w + 2] | 0;
        if ((t[w + 3] & 0xffff) === 0 && dlen > hdrLen) {
          // the address read once, as in enqueueBurst; the test is inWindow() (guest-memory.ts),
          // written out here and there because a call in these loops was not inlined (NOTES #12)
          const lo = t[w];
          const hiWord = t[w + 1];
          const hi = hiWord | 0;
          let d = (lo - cLo) | 0;
          if (hi !== cHi || d < 0 || d >= cSpan || dlen > cSpan - d) {
            cr = mem.windowAt(hi, lo | 0, dlen);
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
            const len = dlen - hdrLen;
            // the virtio-net header: flags and gso_type, zero unless the guest asks for an
            // offload; then the rest of it (offload.ts validates it after the loop)
            if (hostOffload) {
              const ho = cOff + d;
              const fl = cU8![ho];
              const gt = cU8![ho + 1];
              // zero in the batch already (PacketBatch.reset): stored only when set
              if ((fl | gt) !== 0) {
                hFlags[count] = fl;
                hGso[count] = gt;
                readNetHdr(batch, count, cU8!, ho);
              }
            }
            segRegion[nSegs] = cr;
            segOffset[nSegs] = cOff + d + hdrLen;
            segLen[nSegs] = len;
            pHead[count] = head;
            pktLen[count] = len;
            segStart[count] = nSegs;
            segCount[count] = 1;
            usedHead[nUsed] = head;
            nSegs++;
            count++;
            nUsed++;
            bytes += len;
            idx = (idx + 1) & 0xffff;
            continue;
          }
        }
      }
      batch.nSegs = nSegs;
      batch.count = count;
      batch.nUsed = nUsed;
      const got = this.dequeueChain(batch, head);
      nSegs = batch.nSegs;
      count = batch.count;
      nUsed = batch.nUsed;
      if (got < 0) break; // did not fit: left for the next burst
      bytes += got;
      idx = (idx + 1) & 0xffff;
    }
    batch.nSegs = nSegs;
    batch.count = count;
    batch.nUsed = nUsed;
    // offloads: frames whose header does not hold up leave the batch (their heads are returned)
    if (batch.nOffload > 0) this.checkOffloads(batch);
    this.lastAvail = idx;
    // The main thread reads it for GET_VRING_BASE after this worker stopped.
    this.ctrl[CTRL_LAST_AVAIL] = idx;
    this.stats[ST_PACKETS] += batch.count;
    this.stats[ST_BYTES] += bytes;
    if (batch.count > 0) this.stats[ST_BURSTS]++;
    if (batch.count === 0 && batch.nUsed > 0) {
      // Only dropped chains: callers skip completeBurst for an empty burst, so return them now.
      if (this.completeBurst(batch)) this.notifyPending = true;
      batch.nUsed = 0;
    }
    return batch.count;
  }

  /**
   * Any TX chain (several descriptors, indirect tables, the header in its own buffer): walk
   * and validate it, record it in `batch`. Returns the payload bytes recorded (0 for a chain
   * dropped as too big, whose head is still returned), or -1 when it does not fit in what is
   * left of the batch (nothing recorded: the next burst takes it).
   */
  private dequeueChain(batch: PacketBatch, head: number): number {
    const w = this.walker;
    const segMark = batch.nSegs;
    let hdrLeft = this.features.hdrLen;
    let total = 0;
    let overflow = false;
    w.start(head);
    while (w.next()) {
      if (w.writable) throw new GuestError('writable descriptor in TX chain', `head ${head}`);
      let off = w.off;
      let len = w.len;
      if (hdrLeft > 0) {
        // ANY_LAYOUT: the header may share a buffer with data or span several.
        const skip = len < hdrLeft ? len : hdrLeft;
        const u8 = this.mem.views[w.region].u8;
        const at = this.features.hdrLen - hdrLeft;
        for (let k = 0; k < skip; k++) this.txHdr[at + k] = u8[off + k];
        hdrLeft -= skip;
        off += skip;
        len -= skip;
      }
      if (len === 0) continue;
      const s = batch.nSegs;
      if (s === batch.segCapacity) {
        overflow = true;
        break;
      }
      batch.segRegion[s] = w.region;
      batch.segOffset[s] = off;
      batch.segLen[s] = len;
      batch.nSegs = s + 1;
      total += len;
    }
    if (overflow) {
      batch.nSegs = segMark;
      // Leave it for the next burst unless it cannot fit even in an empty batch.
      if (batch.nUsed > 0) return -1;
      this.stats[ST_DROP_TOO_BIG]++;
      batch.usedHead[batch.nUsed++] = head;
      return 0;
    }
    if (hdrLeft > 0) throw new GuestError('TX chain shorter than the virtio-net header', `head ${head}`);
    const p = batch.count++;
    if ((this.txHdr[0] | this.txHdr[1]) !== 0 && (this.features.netBits & HOST_OFFLOADS) !== 0) {
      batch.flags[p] = this.txHdr[0];
      batch.gsoType[p] = this.txHdr[1];
      readNetHdr(batch, p, this.txHdr, 0);
    }
    batch.head[p] = head;
    batch.pktLen[p] = total;
    batch.segStart[p] = segMark;
    batch.segCount[p] = batch.nSegs - segMark;
    batch.usedHead[batch.nUsed++] = head;
    return total;
  }

  /** Validate the burst's offload headers; drop, count and (rate-limited) report the bad ones. */
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

  /** Return every head of the burst (used len 0), publish used->idx. True: notify the guest. */
  completeBurst(batch: PacketBatch): boolean {
    // TX buffers go back to the guest: every copy out of them must be done.
    this.bulk?.run();
    const n = batch.nUsed;
    let notify = this.notifyPending;
    this.notifyPending = false;
    if (n === 0) return notify;
    const u32 = this.used32;
    const mask = this.mask;
    const first = this.lastUsed;
    // VIRTIO_F_IN_ORDER: the device may return a batch with one used entry, the id of its
    // last chain, and move used->idx past the whole batch (virtio 1.1, "In-order use of
    // descriptors"): the driver knows the rest by position. A TX entry's length is always 0.
    // (RX keeps every entry: each carries its chain's length.)
    const from = this.features.inOrder ? n - 1 : 0;
    for (let k = from; k < n; k++) {
      const e = 1 + 2 * ((first + k) & mask);
      const head = batch.usedHead[k];
      // written only where it differs: see enqueueBurst
      if (u32[e] !== head) u32[e] = head;
      if (u32[e + 1] !== 0) u32[e + 1] = 0;
    }
    // logged in publish(), with the burst's other marks (the skipped entries too: a superset)
    this.lastUsed = (first + n) & 0xffff;
    this.ctrl[CTRL_LAST_USED] = this.lastUsed;
    this.unpublished = true;
    if (this.publish()) notify = true;
    return notify;
  }

  // ---------------------------------------------------------------- guest RX (enqueue)

  /** Take the RX ring (spin lock in ctrl) and load its indices. Holders never block inside. */
  acquire(): void {
    const ctrl = this.ctrl;
    while (Atomics.compareExchange(ctrl, CTRL_LOCK, 0, 1) !== 0) {
      // brief spin: the holder is copying at most one burst
    }
    this.lastAvail = ctrl[CTRL_LAST_AVAIL] & 0xffff;
    this.lastUsed = ctrl[CTRL_LAST_USED] & 0xffff;
    this.signalled = ctrl[CTRL_SIGNALLED_USED] & 0xffff;
    this.unsure = ctrl[CTRL_NOTIFY_UNSURE] !== 0;
    this.availIdx = this.lastAvail;
    this.usedLogFrom = this.lastUsed;
  }

  /** Store the indices back and unlock. Call flush() first (else used->idx is published here, unsignalled). */
  release(): void {
    if (this.unpublished) this.publish();
    const ctrl = this.ctrl;
    ctrl[CTRL_LAST_AVAIL] = this.lastAvail;
    ctrl[CTRL_LAST_USED] = this.lastUsed;
    ctrl[CTRL_SIGNALLED_USED] = this.signalled;
    ctrl[CTRL_NOTIFY_UNSURE] = this.unsure ? 1 : 0;
    // the unlock is a release: a plain store on x86 (ordering.ts), where the stores above and
    // every access of the critical section stay before it
    if (TSO) ctrl[CTRL_LOCK] = 0;
    else Atomics.store(ctrl, CTRL_LOCK, 0);
  }

  /**
   * Unlock after a guest error inside acquire() .. release(): nothing more is written to the
   * guest (queued copies dropped, used->idx not published, indices not stored back). The
   * ring is about to be detached and its device reset.
   */
  abandon(): void {
    this.bulk?.discard();
    this.unpublished = false;
    if (TSO) this.ctrl[CTRL_LOCK] = 0;
    else Atomics.store(this.ctrl, CTRL_LOCK, 0);
  }

  /**
   * Copy `count` packets of `batch` into this ring: packets pick[0..count) or, with pick
   * null, packets 0..count-1. Returns how many were enqueued (the rest counted as
   * ST_DROP_NO_BUF). The per-burst form of enqueue(): ring views, features and counters live
   * in locals for the whole burst (bench/NOTES.md #8), and the common case (12-byte header,
   * one writable descriptor per packet, one source segment) is handled inline; anything else
   * goes through enqueue(), which validates and names every guest error.
   */
  enqueueBurst(srcMem: GuestMemory, batch: PacketBatch, pick: Uint16Array | null, count: number): number {
    const t = this.desc32;
    // With or without MRG_RXBUF: a packet that fits one descriptor is written the same way
    // (num_buffers = 1, which a device without MRG_RXBUF must write too); the 10-byte header
    // of legacy drivers without either feature takes the general path
    const fastRing = t !== null && this.features.hdrLen === 12;
    const avail16 = this.avail16;
    const used32 = this.used32;
    const mask = this.mask;
    const size = this.size;
    const mem = this.mem;
    const views = mem.views;
    const srcViews = srcMem.views;
    const bulk = this.bulk;
    const srcIds = srcMem.bulkIds;
    const dstIds = mem.bulkIds;
    const useBulk = bulk !== null && srcIds !== null && dstIds !== null;
    const logging = this.logging;
    // Imported constants in locals: compiled to CommonJS, each is a property load from the
    // module's exports object with its map check, per packet (annotation, NOTES.md #23).
    const fWrite = VRING_DESC_F_WRITE;
    const f64Exact = F64_EXACT;
    const loopMax = COPY_LOOP_MAX;
    const tso = TSO;
    let la = this.lastAvail;
    let lu = this.lastUsed;
    let ai = this.availIdx;
    // the last destination region, in locals (see dequeueBurst), with its log page math
    let cr = -1;
    let cStart = 0;
    let cHi = 0;
    let cLo = 0;
    let cSpan = 0;
    let cOff = 0;
    let cPage = 0;
    let cPageOff = 0;
    // ... and its views, and the last source region's: one lookup per region change, not
    // per packet (views[r].u32 was an array load, a map check and a field load each)
    let cU32: Uint32Array | null = null;
    let cF64: Float64Array | null = null;
    let cU8: Uint8Array | null = null;
    let sr0 = -1;
    let sF64: Float64Array | null = null;
    let sU8: Uint8Array | null = null;
    let sView: RegionViews | null = null;
    // the batch's arrays in locals (as in dequeueBurst)
    const segCount = batch.segCount;
    const segStart = batch.segStart;
    const segRegion = batch.segRegion;
    const segOffset = batch.segOffset;
    const pktLen = batch.pktLen;
    const hFlags = batch.flags;
    // no packet of the burst has an offload (the usual case): no per-packet look at its flags
    const anyOffload = batch.nOffload > 0;
    let done = 0;
    let fastPkts = 0;
    let fastBytes = 0;
    // the burst's log marks, in locals: room for one page run per packet made up front
    const blog = this.blog;
    if (logging) blog.reserve(count);
    let marks = blog.marks;
    let nm = blog.nMarks;
    // ... and the byte marks, the newest in locals until a buffer lands in another log byte
    let bm = blog.byteMarks;
    let nb = blog.nByteMarks;
    let lb = -1;
    let lm = 0;
    for (let k = 0; k < count; k++) {
      const i = pick === null ? k : pick[k];
      // a frame with an offload (NEEDS_CSUM; every GSO frame has it) takes enqueue()
      fast: if (fastRing && segCount[i] === 1 && (!anyOffload || hFlags[i] === 0)) {
        if (la === ai) {
          const a = tso ? avail16[1] : Atomics.load(avail16, 1);
          if (((a - la) & 0xffff) > size) break fast; // the general path raises the error
          ai = a;
          if (la === a) break fast; // no buffer: the general path counts the drop
        }
        const head = avail16[2 + (la & mask)];
        if (head >= size) break fast;
        const w = head * 4;
        if ((t[w + 3] & 0xffff) !== fWrite) break fast;
        const len = pktLen[i];
        const need = len + 12;
        if (t[w + 2] < need) break fast;
        // in the last region's window (GuestMemory.window): int32 math only. The address is
        // read once: the guest may rewrite the descriptor while we look (test/hostile/toctou).
        const lo = t[w];
        const hiWord = t[w + 1];
        const hi = hiWord | 0;
        let d = (lo - cLo) | 0;
        if (hi !== cHi || d < 0 || d >= cSpan || need > cSpan - d) {
          cr = mem.windowAt(hi, lo | 0, need);
          if (cr < 0) {
            cSpan = 0;
            break fast;
          }
          const win = mem.win;
          cHi = win[WIN_HI];
          cLo = win[WIN_LO];
          cSpan = win[WIN_SPAN];
          cOff = win[WIN_OFF];
          d = (lo - cLo) | 0;
          cStart = mem.gpaStart[cr];
          cPage = mem.pageBase[cr];
          cPageOff = mem.pageOff[cr];
          const cv = views[cr];
          cU32 = cv.u32;
          cF64 = cv.f64;
          cU8 = cv.u8;
        }
        const r = cr;
        const off = cOff + d; // < WINDOW_OFF_MAX + 2^16: an int32
        const u32 = cU32;
        if (u32 === null || (off & 3) !== 0) break fast;
        const hw = (off | 0) >> 2;
        // Written only where it differs (as DPDK does): the header line usually holds these
        // values already (this buffer's last use), and a store would pull the line back
        // from the frontend's cache (an RFO per packet: the loop's main stall, NOTES.md #11).
        if (u32[hw] !== 0) u32[hw] = 0;
        if (u32[hw + 1] !== 0) u32[hw + 1] = 0;
        if (u32[hw + 2] !== 0x10000) u32[hw + 2] = 0x10000; // num_buffers = 1 (bytes 10..11, LE)
        const s = segStart[i];
        const sr = segRegion[s];
        if (sr !== sr0) {
          sr0 = sr;
          sView = srcViews[sr];
          sF64 = sView.f64;
          sU8 = sView.u8;
        }
        // Every copy through the bulk queue (one memmove loop a burst at publish()), 64 B ones
        // too: +25 % at 64 B in the testpmd loop, every round (bench/NOTES.md #51; #20 and #23
        // had measured no gain, before packed rings showed where the inline stores cost).
        // The inline copy stays for memory the addon did not map (no bulk ids).
        if (useBulk) {
          bulk.add(srcIds[sr], srcMem.regions[sr].sabOffset + segOffset[s], dstIds[r], mem.regions[r].sabOffset + off + 12, len);
        } else {
          // The common small copy inline (8-byte words, both sides 8-aligned, as DPDK lays
          // out its buffers): in the worker TurboFan did not inline copyBytes here, and the
          // call showed in the 64 B loop (bench/NOTES.md #12). Everything else: copyBytes.
          const so = segOffset[s];
          const d64 = cF64;
          const s64 = sF64;
          const di = off + 12;
          if (f64Exact && d64 !== null && s64 !== null && len <= loopMax && so < 0x7fff_ffff && ((di | so) & 7) === 0) {
            const dw = di >> 3;
            const sw = (so | 0) >> 3;
            const n = len >> 3;
            let q = 0;
            if (n >= 8) {
              // the first 64 bytes straight-line, loads before stores: one map and bounds
              // check per view instead of one per word (the loop re-checks after its stack
              // check), and the misses on the source line overlap (NOTES.md #18)
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
            if ((len & 7) !== 0) {
              const d8 = cU8!;
              const s8 = sU8!;
              for (let q = n << 3; q < len; q++) d8[di + q] = s8[(so | 0) + q];
            }
          } else {
            copyBytes(views[r], di, sView!, so, len);
          }
        }
        // Marked in publish(), after the bulk copies ran (bits follow bytes), all at once:
        // the log code stays out of this loop, which then stays small enough to inline the copy.
        if (logging) {
          // pages of [off, off + 12 + len): integer shifts, exact while a + len + 11 < 2^32
          // (off < 2^31 by the window; a buffer of over 2 GiB takes the division)
          const a = cPageOff + off;
          const p0 = cPage + (a >>> 12);
          const p1 = cPage + ((a + len + 11) >>> 12);
          const b = p1 >>> 3;
          if (len < 0x7fff_0000 && p1 < 0x1_0000_0000 && p0 >>> 3 === b) {
            // the buffer's pages lie in one log byte (pages below 2^32, where the log ends
            // at the latest: >>> and & are exact): OR'ed into the pending byte mark
            const m = (0xff >>> (7 - (p1 & 7))) & (0xff << (p0 & 7));
            if (b === lb) {
              lm |= m;
            } else {
              if (lb >= 0) {
                bm[2 * nb] = lb;
                bm[2 * nb + 1] = lm;
                nb++;
              }
              lb = b;
              lm = m;
            }
          } else if (len < 0x7fff_0000) {
            // a buffer starting in the page where the last run ends extends that run: a
            // frontend's neighbouring buffers often share a page, and each run costs the
            // the addon's marking loop (bench/NOTES.md #29)
            if (nm > 0 && marks[2 * nm - 1] === p0) {
              marks[2 * nm - 1] = p1;
            } else {
              marks[2 * nm] = p0;
              marks[2 * nm + 1] = p1;
              nm++;
            }
          } else {
            blog.nMarks = nm;
            blog.nByteMarks = nb;
            blog.defer(cStart + off, len + 12);
            blog.reserve(count - k);
            marks = blog.marks;
            nm = blog.nMarks;
            bm = blog.byteMarks;
            nb = blog.nByteMarks;
          }
        }
        const e = 1 + 2 * (lu & mask);
        // Same for the used entry: a ring refilled in order gets the same id and length back.
        if (used32[e] !== head) used32[e] = head;
        if (used32[e + 1] !== len + 12) used32[e + 1] = len + 12;
        // Used entries are logged once per burst in publish().
        lu = (lu + 1) & 0xffff;
        la = (la + 1) & 0xffff;
        fastPkts++;
        fastBytes += len;
        done++;
        continue;
      }
      // General path: hand the ring state over, and take it back.
      if (lb >= 0) {
        bm[2 * nb] = lb;
        bm[2 * nb + 1] = lm;
        nb++;
        lb = -1;
      }
      this.lastAvail = la;
      this.lastUsed = lu;
      this.availIdx = ai;
      blog.nMarks = nm;
      blog.nByteMarks = nb;
      if (fastPkts > 0) this.unpublished = true;
      if (this.enqueue(srcMem, batch, i)) done++;
      la = this.lastAvail;
      lu = this.lastUsed;
      ai = this.availIdx;
      // the general path may have queued marks of its own (BurstLog.defer), or grown the arrays:
      // take them back, with room again for one mark per packet left
      if (logging) blog.reserve(count - k);
      marks = blog.marks;
      nm = blog.nMarks;
      bm = blog.byteMarks;
      nb = blog.nByteMarks;
    }
    if (lb >= 0) {
      bm[2 * nb] = lb;
      bm[2 * nb + 1] = lm;
      nb++;
    }
    this.lastAvail = la;
    this.lastUsed = lu;
    this.availIdx = ai;
    blog.nMarks = nm;
    blog.nByteMarks = nb;
    if (fastPkts > 0) {
      this.unpublished = true;
      this.stats[ST_PACKETS] += fastPkts;
      this.stats[ST_BYTES] += fastBytes;
    }
    if (done > 0) this.stats[ST_BURSTS]++;
    return done;
  }

  /** Publish used->idx (after the entries and the log). True: notify the guest. */
  flush(): boolean {
    return this.unpublished ? this.publish() : false;
  }

  // ---------------------------------------------------------------- notifications

  /**
   * The poller is about to sleep: ask the guest to kick (RX rings: call under acquire()). Returns true when avail already moved
   * (work arrived before the request was visible: do not sleep).
   */
  enableNotify(): boolean {
    if (this.features.eventIdx) {
      Atomics.store(this.used16, 2 + 4 * this.size, this.lastAvail);
      this.logUsedField(4 + 8 * this.size);
    } else {
      this.usedFlags &= ~VRING_USED_F_NO_NOTIFY;
      Atomics.store(this.used16, 0, this.usedFlags);
      this.logUsedField(0);
    }
    if (this.logging) this.log.flush();
    // seq-cst store then load: the guest either sees the request or we see its new avail idx
    // (on x86 the xchg is the fence and a plain load after it is enough: ordering.ts).
    const a = TSO ? this.avail16[1] : Atomics.load(this.avail16, 1);
    return ((a - this.lastAvail) & 0xffff) !== 0;
  }

  /** Busy polling again: ask the guest not to kick. */
  disableNotify(): void {
    // With EVENT_IDX the guest ignores used->flags; an avail_event left behind costs one kick.
    if (this.features.eventIdx) return;
    if ((this.usedFlags & VRING_USED_F_NO_NOTIFY) !== 0) return;
    this.usedFlags |= VRING_USED_F_NO_NOTIFY;
    this.used16[0] = this.usedFlags;
    this.logUsedField(0);
    if (this.logging) this.log.flush();
  }

  /** Indices for tests and GET_VRING_BASE-like reads (RX: valid while acquired). */
  get lastAvailIdx(): number {
    return this.lastAvail;
  }
  get lastUsedIdx(): number {
    return this.lastUsed;
  }

  // ---------------------------------------------------------------- internals

  /** avail->idx, an acquire (ordering.ts), validated against the size (the guest may not run ahead). */
  private loadAvailIdx(): number {
    const a = TSO ? this.avail16[1] : Atomics.load(this.avail16, 1);
    if (((a - this.lastAvail) & 0xffff) > this.size) {
      throw new GuestError('avail idx more than queue size ahead', `avail ${a} last ${this.lastAvail} size ${this.size}`);
    }
    return a;
  }

  private availHead(idx: number): number {
    const head = this.avail16[2 + (idx & this.mask)];
    if (head >= this.size) throw new GuestError('avail ring head out of range', `head ${head}`);
    return head;
  }

  /**
   * Walk (without writing) enough RX chains for hdrLen + len bytes and remember the buffers.
   * False and ST_DROP_NO_BUF when there is not enough; no index moves then.
   */
  protected reserve(len: number): boolean {
    if (this.isTx) throw new Error(`enqueue on guest TX queue ${this.index}`);
    if (this.chainHead === null) {
      this.chainHead = new Uint16Array(this.size);
      this.chainLen = new Uint32Array(this.size);
    }
    const chainHead = this.chainHead;
    const chainLen = this.chainLen!;
    const mrg = this.features.mrgRxbuf;
    const w = this.walker;
    let left = this.features.hdrLen + len;
    let idx = this.lastAvail;
    let nSeg = 0;
    let nChains = 0;
    while (left > 0) {
      if (idx === this.availIdx) {
        this.availIdx = this.loadAvailIdx();
        if (idx === this.availIdx) break;
      }
      const head = this.availHead(idx);
      let got = 0;
      w.start(head);
      // Stop at the bytes needed: descriptors after that are neither read nor written.
      while (left > 0 && w.next()) {
        if (!w.writable) throw new GuestError('readable descriptor in RX chain', `head ${head}`);
        const take = w.len < left ? w.len : left;
        if (take === 0) continue;
        if (nSeg === this.dSegLen.length) this.growSegs();
        this.dSegRegion[nSeg] = w.region;
        this.dSegOff[nSeg] = w.off;
        this.dSegLen[nSeg] = take;
        nSeg++;
        left -= take;
        got += take;
      }
      chainHead[nChains] = head;
      chainLen[nChains] = got;
      nChains++;
      idx = (idx + 1) & 0xffff;
      if (!mrg) break;
    }
    if (left > 0) {
      this.stats[ST_DROP_NO_BUF]++;
      return false;
    }
    this.nDSeg = nSeg;
    this.nChains = nChains;
    this.wSeg = 0;
    this.wPos = 0;
    this.writeHeader(mrg ? nChains : 1);
    return true;
  }

  /** Write the used entries (published by flush), advance; the buffers are marked in publish(), after their (bulk) copies. */
  protected commit(len: number): void {
    if (this.logging) {
      const mem = this.mem;
      for (let s = 0; s < this.nDSeg; s++) this.blog.defer(mem.gpaOf(this.dSegRegion[s], this.dSegOff[s]), this.dSegLen[s]);
    }
    const u32 = this.used32;
    const mask = this.mask;
    const first = this.lastUsed;
    const n = this.nChains;
    const chainHead = this.chainHead!;
    const chainLen = this.chainLen!;
    for (let c = 0; c < n; c++) {
      const e = 1 + 2 * ((first + c) & mask);
      u32[e] = chainHead[c];
      u32[e + 1] = chainLen[c];
    }
    this.lastUsed = (first + n) & 0xffff;
    this.lastAvail = (this.lastAvail + n) & 0xffff;
    this.unpublished = true;
    this.stats[ST_PACKETS]++;
    this.stats[ST_BYTES] += len;
  }

  /** Store used->idx after the entries and the log bits, then decide on notifying. */
  /** Hand the burst to the guest (ring-core.ts: bytes, used log spans, used->idx, log bits, notify decision). */
  private publish(): boolean {
    return publishBurst(this, this.bulk, this.blog, this.logging, this.stats);
  }

  /**
   * ring-core step 2. The used entries are in place already (the burst loops wrote them);
   * those written since the last publish and used->idx (stored next) join the burst's buffer
   * marks (one byte mark when the ring lies in one page, NOTES.md #33).
   */
  writeUsed(logging: boolean): void {
    if (logging && this.logUsedGpa >= 0) {
      if (this.usedLogByte >= 0) {
        this.blog.byteMark(this.usedLogByte, this.usedLogMask);
      } else {
        this.deferUsedElems(this.usedLogFrom, (this.lastUsed - this.usedLogFrom) & 0xffff);
        this.blog.defer(this.logUsedGpa + 2, 2);
      }
    }
    this.usedLogFrom = this.lastUsed;
  }

  /**
   * ring-core step 3: used->idx. Fenced: seq-cst (the barrier of the marking and of the event
   * check, NOTES.md #19, #21). Else (x86 only) a plain store, a release: the entries and the
   * bytes before it are plain stores, which x86 keeps in order (ordering.ts).
   */
  storeUsed(fenced: boolean): void {
    if (fenced) Atomics.store(this.used16, 1, this.lastUsed);
    else this.used16[1] = this.lastUsed;
    this.unpublished = false;
  }

  /** ring-core step 5: used_event with EVENT_IDX, else VRING_AVAIL_F_NO_INTERRUPT. */
  notifyDue(fenced: boolean): boolean {
    const now = this.lastUsed;
    // As vhost does: "old" is used->idx at the previous decision, so the guest's used_event
    // is compared against exactly the entries published since (a provisional "no" keeps it).
    const old = this.signalled;
    let due = false;
    if (now !== old) {
      // Fenced: after the seq-cst store, an Atomics.load (a plain load could pass the store on
      // ARM64); on x86 the xchg is the fence and a plain load after it cannot pass it. Not
      // fenced (x86 only): a plain load that may pass the store, so a "no" is provisional.
      if (this.features.eventIdx) due = needEvent(TSO ? this.avail16[2 + this.size] : Atomics.load(this.avail16, 2 + this.size), now, old);
      else due = ((TSO ? this.avail16[0] : Atomics.load(this.avail16, 0)) & VRING_AVAIL_F_NO_INTERRUPT) === 0;
      if (!due && !fenced) {
        if (((now - old) & 0xffff) > UNSURE_SPAN) {
          fence();
          return this.notifyDue(true);
        }
        if (!this.unsure) {
          this.unsure = true;
          if (this.isTx) this.ctrl[CTRL_NOTIFY_UNSURE] = 1;
        }
        notifyChecks.due++;
        return false;
      }
    }
    this.signalled = now;
    if (this.unsure) {
      this.unsure = false;
      if (this.isTx) this.ctrl[CTRL_NOTIFY_UNSURE] = 0;
    }
    // RX state goes back to ctrl in release(); TX has no lock, so keep ctrl current here.
    if (this.isTx) this.ctrl[CTRL_SIGNALLED_USED] = now;
    return due;
  }

  /**
   * A provisional "do not notify" (ring-core.ts) decided again, after a fence (the poller's
   * sweep; RX: under acquire(), whose locked compare-exchange is the fence for the stores of
   * every earlier holder). True: notify the guest now.
   */
  recheckNotify(): boolean {
    return this.unsure ? this.notifyDue(true) : false;
  }

  /** A provisional decision waits for recheckNotify() (RX: as of the last release(), read without the lock). */
  get notifyUnsure(): boolean {
    return this.ctrl[CTRL_NOTIFY_UNSURE] !== 0;
  }

  /** Queue n used elements from ring index `first` for the burst log (two runs when they wrap). */
  private deferUsedElems(first: number, n: number): void {
    if (n === 0) return;
    const slot = first & this.mask;
    const till = slot + n <= this.size ? n : this.size - slot;
    this.blog.defer(this.logUsedGpa + 4 + 8 * slot, 8 * till);
    if (till < n) this.blog.defer(this.logUsedGpa + 4, 8 * (n - till));
  }

  private logUsedField(off: number): void {
    if (this.logUsedGpa >= 0 && this.logging) this.log.markRange(this.logUsedGpa + off, 2);
  }

}

function checkRing(mem: GuestMemory, name: string, loc: RingLocation, bytes: number, align: number): void {
  const r = mem.regions[loc.region];
  if (!r || !Number.isInteger(loc.offset) || loc.offset < 0 || loc.offset + bytes > r.size) {
    throw new GuestError(`${name} ring outside its region`, `region ${loc.region} offset ${loc.offset} bytes ${bytes}`);
  }
  if ((r.gpa + loc.offset) % align !== 0) {
    throw new GuestError(`${name} ring not ${align}-aligned`, `gpa 0x${(r.gpa + loc.offset).toString(16)}`);
  }
}

/** Typed-array views need the ring aligned inside the SAB too (mmap offsets normally are). */
function sabOffset(off: number, align: number, name: string): number {
  if (off % align !== 0) throw new Error(`${name} ring not ${align}-aligned inside its mapping`);
  return off;
}

/** The rest of a TX packet's virtio-net header (little endian), once flags or gso_type is set. */
function readNetHdr(batch: PacketBatch, p: number, u8: Uint8Array, o: number): void {
  batch.hdrLen[p] = u8[o + 2] | (u8[o + 3] << 8);
  batch.gsoSize[p] = u8[o + 4] | (u8[o + 5] << 8);
  batch.csumStart[p] = u8[o + 6] | (u8[o + 7] << 8);
  batch.csumOffset[p] = u8[o + 8] | (u8[o + 9] << 8);
  batch.nOffload++;
}
