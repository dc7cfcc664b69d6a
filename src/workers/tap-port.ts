/**
 * A TAP uplink port on a worker (issue 22): the same per-burst interface as a guest's rings
 * (ring-format.ts), so the forwarding code (xconnect, bridge, VLANs, offloads) is unchanged.
 *
 *  - "TX" (index 1, frames from the kernel into the switch): dequeueBurst reads a burst from
 *    the TAP fd into this worker's slot buffer (native.tapRead: one call, one read(2) a frame,
 *    up to EAGAIN) and describes each frame in the PacketBatch in place: one segment, past its
 *    12-byte virtio-net header. The worker sleeps on the fd like on a kick eventfd.
 *  - "RX" (index 0, frames towards the kernel): enqueueBurst gathers each frame behind its
 *    header into a slot, and flush() writes the burst (native.tapWrite).
 *
 * The kernel's virtio-net header is untrusted like a guest's: its fields go through the
 * offload validator (offload.ts validateBurst) against what TUNSETOFFLOAD allowed (netBits:
 * CSUM, HOST_TSO4/6, HOST_ECN when offloads are on, else none), and a frame cut short, too
 * short for an Ethernet header or over a slot is dropped and counted; nothing is read or
 * written outside a slot. VIRTIO_NET_HDR_F_DATA_VALID (the kernel's "checksum already
 * verified" hint) is cleared: the hint is dropped, never trusted on.
 *
 * Towards the kernel the header crosses as it is where the TAP takes the offload (GUEST_CSUM,
 * GUEST_TSO4/6, GUEST_ECN: the kernel validates and handles those), otherwise the software
 * path of offload.ts completes the checksum or segments the frame through the RxFrameSink
 * hooks below. No allocation per frame: the slots, lengths and views are made once.
 */
import { native } from '../native';
import { CTRL_LOCK, QueueFeatures, ST_BURSTS, ST_BYTES, ST_DROP_NO_BUF, ST_DROP_TOO_BIG, ST_ERRORS, ST_PACKETS, VringDesc } from '../shared/types';
import type { CopyQueue } from './bulk-copy';
import { GuestMemory, RegionViews } from './guest-memory';
import { BAD_OFFLOAD_REASONS, MAX_OFFLOAD_FRAME, validateBurst } from './offload';
import { TSO } from './ordering';
import { BURST, PacketBatch } from './packet-batch';
import type { RingQueue } from './ring-format';
import { SlotWriter } from './slot-writer';

/** the virtio-net header on a TAP (struct virtio_net_hdr_mrg_rxbuf; TUNSETVNETHDRSZ 12) */
export const TAP_HDR = 12;
/** bytes per frame slot: the header and the largest frame with an offload, rounded up */
export const TAP_SLOT = (TAP_HDR + MAX_OFFLOAD_FRAME + 127) & ~127;
/** frames below this (header excluded) have no Ethernet header: dropped */
const MIN_FRAME = 14;
/** VIRTIO_NET_HDR_F_DATA_VALID: a receive hint, cleared */
const DATA_VALID = 2;

/** What a worker needs to build a TapQueue: the ring descriptor's uplink part. */
export interface TapDesc {
  kind: 'tap';
  fd: number;
}

/** Slots of the RX side: software segmentation of one GSO frame may need more than a burst's. */
const RX_SLOTS = BURST;

export class TapQueue extends SlotWriter implements RingQueue {
  readonly index: number;
  readonly size = RX_SLOTS;
  readonly ctrl: Int32Array;
  readonly stats: Float64Array;
  readonly features: QueueFeatures;
  bulk: CopyQueue | null = null;
  onBadOffload: ((reason: string, suppressed: number) => void) | null = null;
  /** the slot buffer as this worker's "guest memory": region 0, bulk-registered */
  readonly mem: GuestMemory;
  private readonly fd: number;
  private readonly slots: number;
  private readonly lens: Int32Array;
  protected readonly view: RegionViews;
  private readonly u8: Uint8Array;
  /** the buffer's id in this worker's copy table (tapRead / tapWrite take it) */
  private readonly id: number;
  // RX: frames queued in the slots, and the one being written (rxReserve .. rxCommit)
  private queued = 0;
  private badReportAt = -Infinity;
  private badSuppressed = 0;

  constructor(vd: VringDesc, tap: TapDesc) {
    super();
    this.index = vd.index;
    this.fd = tap.fd;
    this.features = { ...vd.features };
    this.ctrl = new Int32Array(vd.ctrl);
    this.stats = new Float64Array(vd.stats);
    this.slots = (vd.index & 1) === 1 ? BURST : RX_SLOTS;
    this.lens = new Int32Array(this.slots);
    const sab = new SharedArrayBuffer(this.slots * TAP_SLOT);
    this.mem = new GuestMemory([{ gpa: 0, size: sab.byteLength, uva: 0, sab, sabOffset: 0 }]);
    this.mem.enableBulk(native);
    this.view = this.mem.views[0];
    this.u8 = this.view.u8;
    this.id = (this.mem.bulkIds as Int32Array)[0];
  }

  /** Drop the copy table's reference to the slot buffer (the ring is detached). */
  dispose(): void {
    this.mem.dispose();
  }

  reload(): void {
    // no position: a TAP is read from wherever the kernel's queue is
  }

  setLogging(): void {
    // no guest memory behind a TAP: nothing to log
  }

  // ---------------------------------------------------------------- from the kernel

  dequeueBurst(batch: PacketBatch, max: number): number {
    batch.reset();
    if (max > batch.capacity) max = batch.capacity;
    if (max > this.slots) max = this.slots;
    const got = native.tapRead(this.fd, this.id, TAP_SLOT, max, this.lens);
    if (got === 0) return 0;
    const u8 = this.u8;
    const lens = this.lens;
    const stats = this.stats;
    let bytes = 0;
    for (let k = 0; k < got; k++) {
      const len = lens[k] - TAP_HDR;
      if (lens[k] > TAP_SLOT) {
        stats[ST_DROP_TOO_BIG]++; // cut to fit the slot
        continue;
      }
      if (len < MIN_FRAME) {
        stats[ST_ERRORS]++; // no room for an Ethernet header (or no header at all)
        continue;
      }
      const o = k * TAP_SLOT;
      const p = batch.count++;
      const s = batch.nSegs++;
      batch.head[p] = k;
      batch.pktLen[p] = len;
      batch.segStart[p] = s;
      batch.segCount[p] = 1;
      batch.segRegion[s] = 0;
      batch.segOffset[s] = o + TAP_HDR;
      batch.segLen[s] = len;
      const flags = u8[o] & ~DATA_VALID;
      const gt = u8[o + 1];
      batch.flags[p] = flags;
      batch.gsoType[p] = gt;
      if ((flags | gt) !== 0) {
        batch.hdrLen[p] = u8[o + 2] | (u8[o + 3] << 8);
        batch.gsoSize[p] = u8[o + 4] | (u8[o + 5] << 8);
        batch.csumStart[p] = u8[o + 6] | (u8[o + 7] << 8);
        batch.csumOffset[p] = u8[o + 8] | (u8[o + 9] << 8);
        batch.nOffload++;
      }
      bytes += len;
    }
    if (batch.nOffload > 0) this.checkOffloads(batch);
    const n = batch.count;
    if (n > 0) {
      stats[ST_PACKETS] += n;
      stats[ST_BYTES] += bytes;
      stats[ST_BURSTS]++;
    }
    // 0 when every frame read was dropped: a sleep that follows wakes at once while frames wait
    return n;
  }

  /** Frames whose header does not hold up leave the batch, counted and (once a second) reported. */
  private checkOffloads(batch: PacketBatch): void {
    // counted as received: validateBurst counts them again as dropped
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

  /** The slots are reused by the next read: every copy out of them must be done. */
  completeBurst(): boolean {
    this.bulk?.run();
    return false;
  }

  // ---------------------------------------------------------------- towards the kernel

  /** Several workers may write to one TAP: its counters are shared, so they take its lock. */
  acquire(): void {
    const ctrl = this.ctrl;
    while (Atomics.compareExchange(ctrl, CTRL_LOCK, 0, 1) !== 0) {
      // brief spin: the holder writes at most a burst
    }
  }

  release(): void {
    if (this.queued > 0) this.writeOut();
    if (TSO) this.ctrl[CTRL_LOCK] = 0;
    else Atomics.store(this.ctrl, CTRL_LOCK, 0);
  }

  abandon(): void {
    this.bulk?.discard();
    this.queued = 0;
    if (TSO) this.ctrl[CTRL_LOCK] = 0;
    else Atomics.store(this.ctrl, CTRL_LOCK, 0);
  }

  /** A slot for a frame of `len` bytes, its header's first 10 bytes from `hdr` (null: zeros). */
  rxReserve(len: number, hdr: Uint8Array | null): boolean {
    if (len + TAP_HDR > TAP_SLOT) {
      this.stats[ST_DROP_TOO_BIG]++;
      return false;
    }
    if (this.queued === this.slots) this.writeOut();
    const o = this.queued * TAP_SLOT;
    const u8 = this.u8;
    if (hdr === null) for (let k = 0; k < TAP_HDR; k++) u8[o + k] = 0;
    else {
      for (let k = 0; k < 10; k++) u8[o + k] = hdr[k];
      u8[o + 10] = 0;
      u8[o + 11] = 0;
    }
    this.wPos = o + TAP_HDR;
    this.wEnd = o + TAP_HDR + len;
    return true;
  }

  /** Overwrite frame byte `pos` (0 = first byte after the header) of the frame being written. */
  rxPoke(pos: number, value: number): void {
    const at = this.queued * TAP_SLOT + TAP_HDR + pos;
    if (at < this.wEnd) this.u8[at] = value;
  }

  rxCommit(len: number): void {
    this.lens[this.queued++] = TAP_HDR + len;
  }

  /** Write the queued frames to the kernel; what it cannot take now (EAGAIN) is dropped and counted. */
  private writeOut(): void {
    const n = this.queued;
    this.queued = 0;
    this.bulk?.run();
    const lens = this.lens;
    const sent = native.tapWrite(this.fd, this.id, TAP_SLOT, n, lens);
    const stats = this.stats;
    let ok = 0;
    let bytes = 0;
    for (let k = 0; k < sent; k++) {
      if (lens[k] < 0) stats[ST_ERRORS]++;
      else {
        ok++;
        bytes += lens[k] - TAP_HDR;
      }
    }
    stats[ST_PACKETS] += ok;
    stats[ST_BYTES] += bytes;
    stats[ST_DROP_NO_BUF] += n - sent;
  }

  flush(): boolean {
    if (this.queued > 0) this.writeOut();
    return false;
  }

  // ---------------------------------------------------------------- notifications

  /** The poller sleeps on the fd itself (readable = frames wait): nothing to ask for. */
  enableNotify(): boolean {
    return false;
  }

  disableNotify(): void {
    // nothing to turn off: the kernel wakes a poll(2) on the fd only while one sleeps there
  }

  get lastAvailIdx(): number {
    return 0;
  }

  get lastUsedIdx(): number {
    return 0;
  }
}
