/**
 * An AF_PACKET uplink port on a worker (issue 22): the socket's TPACKET_V2 rings, mapped by
 * the main thread into one SharedArrayBuffer (RX ring, then TX ring), walked in place with
 * the per-burst interface of ring-format.ts (as tap-port.ts), so forwarding is unchanged.
 *
 *  - "TX" (index 1, frames from the device): dequeueBurst takes the frames the kernel handed
 *    over (tp_status & TP_STATUS_USER) and describes each in place: no copy here, the
 *    destination's enqueue is the one copy. completeBurst hands them back (TP_STATUS_KERNEL),
 *    after every deferred copy out of them ran. The worker sleeps on the socket (POLLIN:
 *    a frame is the user's). A VLAN tag the kernel took out into tp_vlan_tci is put back as
 *    a 4-byte segment from a scratch buffer (region 1), so the frame forwarded is the frame
 *    that arrived.
 *  - "RX" (index 0, frames towards the device): each frame is written behind its 10-byte
 *    virtio-net header into the next TX ring frame that is TP_STATUS_AVAILABLE and marked
 *    TP_STATUS_SEND_REQUEST; release() kicks the kernel (send(2), MSG_DONTWAIT) once a burst.
 *    A full ring drops and counts (no buffer). Several workers may send: the ring's head
 *    lives in ctrl and moves under the ring's lock.
 *
 * A multi-queue port (config queues) is one such socket per queue pair, in a PACKET_FANOUT
 * group: each queue's rings are a PacketQueue of their own, ring indices 2q and 2q + 1.
 *
 * Everything in a ring frame's header is checked against the frame's bounds before use (the
 * kernel writes it, the wire decides its contents); the virtio-net header (PACKET_VNET_HDR)
 * goes through the offload validator as a guest's does, DATA_VALID cleared.
 */
import { native } from '../native';
import { CTRL_LAST_AVAIL, CTRL_LOCK, QueueFeatures, ST_BURSTS, ST_BYTES, ST_DROP_NO_BUF, ST_DROP_TOO_BIG, ST_ERRORS, ST_PACKETS, VringDesc } from '../shared/types';
import { BULK_MIN, type CopyQueue } from './bulk-copy';
import { copyBytes, F64_EXACT } from './copy';
import { GuestMemory, RegionViews } from './guest-memory';
import { BAD_OFFLOAD_REASONS, validateBurst } from './offload';
import { TSO } from './ordering';
import { BURST, PacketBatch } from './packet-batch';
import type { RingQueue } from './ring-format';
import { SlotWriter } from './slot-writer';
import { TPID_8021Q } from './vlan';

/** The ring's geometry, from native.packetOpen (the ring SAB is RX then TX, ringBytes each). */
export interface PacketDesc {
  kind: 'af_packet';
  fd: number;
  ring: SharedArrayBuffer;
  ringBytes: number;
  frameSize: number;
  frames: number;
  /** where a TX frame's data starts in its slot */
  txData: number;
  /** the RX frame header's size (struct tpacket2_hdr, aligned) */
  hdrLen: number;
}

// linux/if_packet.h
const TP_STATUS_USER = 1;
const TP_STATUS_COPY = 1 << 1;
const TP_STATUS_VLAN_VALID = 1 << 4;
const TP_STATUS_VLAN_TPID_VALID = 1 << 6;
const TP_STATUS_AVAILABLE = 0;
const TP_STATUS_SEND_REQUEST = 1;
/** sockaddr_ll.sll_pkttype (after the frame header): a frame going out of the device */
const PACKET_OUTGOING = 4;
/** struct virtio_net_hdr (PACKET_VNET_HDR: 10 bytes) */
const VNET = 10;
const DATA_VALID = 2;

export class PacketQueue extends SlotWriter implements RingQueue {
  readonly index: number;
  readonly size: number;
  readonly ctrl: Int32Array;
  readonly stats: Float64Array;
  readonly features: QueueFeatures;
  bulk: CopyQueue | null = null;
  onBadOffload: ((reason: string, suppressed: number) => void) | null = null;
  /** region 0: the rings; region 1: the re-inserted VLAN tags of a burst */
  readonly mem: GuestMemory;
  private readonly fd: number;
  private readonly d: PacketDesc;
  private readonly u8: Uint8Array;
  private readonly u16: Uint16Array;
  private readonly u32: Uint32Array;
  private readonly i32: Int32Array;
  protected readonly view: RegionViews;
  private readonly tags: Uint8Array;
  private readonly mask: number;
  /** RX ring frames taken by the burst, handed back by completeBurst */
  private readonly taken: Int32Array = new Int32Array(BURST);
  private nTaken = 0;
  private head = 0;
  // TX: the frame being written
  private wSlot = 0;
  private queued = 0;
  /**
   * The TX frames written since the last kick, by slot offset: their status words go to
   * SEND_REQUEST in kick(), after the burst's deferred copies ran (the kernel reads a TX
   * frame only inside send(2)), so a burst's copies are one addon call, as on guest rings
   */
  private readonly sent: Int32Array;
  private badReportAt = -Infinity;
  private badSuppressed = 0;

  constructor(vd: VringDesc, d: PacketDesc) {
    super();
    this.index = vd.index;
    this.d = d;
    this.fd = d.fd;
    this.size = d.frames;
    this.mask = d.frames - 1;
    this.features = { ...vd.features };
    this.ctrl = new Int32Array(vd.ctrl);
    this.stats = new Float64Array(vd.stats);
    if (d.ring.byteLength < 2 * d.ringBytes || d.frames * d.frameSize > d.ringBytes || (d.frameSize & 3) !== 0) throw new Error('AF_PACKET ring geometry does not fit its mapping');
    const tags = new SharedArrayBuffer(4 * BURST);
    this.mem = new GuestMemory([
      { gpa: 0, size: d.ring.byteLength, uva: 0, sab: d.ring, sabOffset: 0 },
      { gpa: d.ring.byteLength, size: tags.byteLength, uva: 0, sab: tags, sabOffset: 0 },
    ]);
    this.mem.enableBulk(native);
    this.view = this.mem.views[0];
    // TX frames' copies batched: kick() publishes the frames after the batch ran
    this.copyId = (this.mem.bulkIds as Int32Array)[0];
    this.sent = new Int32Array(this.size);
    this.u8 = this.view.u8;
    this.u16 = new Uint16Array(d.ring);
    this.u32 = new Uint32Array(d.ring);
    this.i32 = new Int32Array(d.ring);
    this.tags = this.mem.views[1].u8;
    this.head = this.ctrl[CTRL_LAST_AVAIL] & this.mask;
  }

  dispose(): void {
    this.mem.dispose();
  }

  /** The ring's head from ctrl again (a ring built parked goes live). */
  reload(): void {
    this.head = this.ctrl[CTRL_LAST_AVAIL] & this.mask;
  }

  setLogging(): void {
    // no guest memory behind a packet socket: nothing to log
  }

  // ---------------------------------------------------------------- from the device

  dequeueBurst(batch: PacketBatch, max: number): number {
    batch.reset();
    if (this.nTaken > 0) this.handBack();
    if (max > batch.capacity) max = batch.capacity;
    // At most one lap: the frames taken in this burst go back to the kernel after it, so a
    // ring smaller than the burst, full, would come round to them still marked as the user's
    // and take each again (a 16-frame ring delivered every frame twice).
    if (max > this.mask + 1) max = this.mask + 1;
    const fs = this.d.frameSize;
    const u8 = this.u8;
    const u16 = this.u16;
    const u32 = this.u32;
    const stats = this.stats;
    const minMac = this.d.hdrLen + VNET;
    let bytes = 0;
    while (this.nTaken < max) {
      const o = this.head * fs;
      const status = TSO ? this.i32[o >> 2] : Atomics.load(this.i32, o >> 2);
      if ((status & TP_STATUS_USER) === 0) break;
      this.taken[this.nTaken++] = o;
      this.head = (this.head + 1) & this.mask;
      const len = u32[(o >> 2) + 1];
      const snap = u32[(o >> 2) + 2];
      const mac = u16[(o >> 1) + 6];
      if (mac < minMac || mac + snap > fs || snap > len) {
        stats[ST_ERRORS]++; // a header that does not fit its frame
        continue;
      }
      if (len > snap || (status & TP_STATUS_COPY) !== 0) {
        stats[ST_DROP_TOO_BIG]++; // cut to fit the ring frame
        continue;
      }
      if (snap < 14) {
        stats[ST_ERRORS]++;
        continue;
      }
      // A socket of a fanout group (queues > 1) receives through the group's hook, which
      // before Linux 6.9 (PACKET_FANOUT_FLAG_IGNORE_OUTGOING) also hands over what the host
      // sends out of the device: not ours to forward, as PACKET_IGNORE_OUTGOING keeps it from
      // a lone socket. Handed back uncounted.
      if (u8[o + this.d.hdrLen + 10] === PACKET_OUTGOING) continue;
      const h = o + mac - VNET;
      const flags = u8[h] & ~DATA_VALID;
      const gt = u8[h + 1];
      const p = batch.count++;
      batch.head[p] = 0;
      batch.segStart[p] = batch.nSegs;
      let plen = snap;
      if ((status & TP_STATUS_VLAN_VALID) !== 0) {
        // the tag the kernel took out goes back in: MACs, the tag, the rest
        const tpid = (status & TP_STATUS_VLAN_TPID_VALID) !== 0 ? u16[(o >> 1) + 13] : TPID_8021Q;
        const tci = u16[(o >> 1) + 12];
        const t = 4 * p;
        this.tags[t] = tpid >>> 8;
        this.tags[t + 1] = tpid & 0xff;
        this.tags[t + 2] = tci >>> 8;
        this.tags[t + 3] = tci & 0xff;
        this.seg(batch, 0, o + mac, 12);
        this.seg(batch, 1, t, 4);
        this.seg(batch, 0, o + mac + 12, snap - 12);
        batch.segCount[p] = 3;
        plen += 4;
      } else {
        this.seg(batch, 0, o + mac, snap);
        batch.segCount[p] = 1;
      }
      batch.pktLen[p] = plen;
      batch.flags[p] = flags;
      batch.gsoType[p] = gt;
      if ((flags | gt) !== 0) {
        const shift = plen - snap; // offsets move behind a re-inserted tag
        const hl = u8[h + 2] | (u8[h + 3] << 8);
        batch.hdrLen[p] = hl === 0 ? 0 : hl + shift;
        batch.gsoSize[p] = u8[h + 4] | (u8[h + 5] << 8);
        batch.csumStart[p] = (u8[h + 6] | (u8[h + 7] << 8)) + shift;
        batch.csumOffset[p] = u8[h + 8] | (u8[h + 9] << 8);
        batch.nOffload++;
      }
      bytes += plen;
    }
    this.ctrl[CTRL_LAST_AVAIL] = this.head;
    if (batch.nOffload > 0) this.checkOffloads(batch);
    const n = batch.count;
    if (n > 0) {
      stats[ST_PACKETS] += n;
      stats[ST_BYTES] += bytes;
      stats[ST_BURSTS]++;
    } else if (this.nTaken > 0) {
      this.handBack(); // every frame taken was dropped: completeBurst will not be called
    }
    return n;
  }

  private seg(batch: PacketBatch, region: number, off: number, len: number): void {
    const s = batch.nSegs++;
    batch.segRegion[s] = region;
    batch.segOffset[s] = off;
    batch.segLen[s] = len;
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

  /** The burst's frames go back to the kernel once every copy out of them ran. */
  private handBack(): void {
    this.bulk?.run();
    const i32 = this.i32;
    for (let k = 0; k < this.nTaken; k++) {
      if (TSO) i32[this.taken[k] >> 2] = 0;
      else Atomics.store(i32, this.taken[k] >> 2, 0);
    }
    this.nTaken = 0;
  }

  completeBurst(): boolean {
    this.handBack();
    return false;
  }

  // ---------------------------------------------------------------- towards the device

  acquire(): void {
    const ctrl = this.ctrl;
    while (Atomics.compareExchange(ctrl, CTRL_LOCK, 0, 1) !== 0) {
      // brief spin: the holder writes at most a burst
    }
    this.head = ctrl[CTRL_LAST_AVAIL] & this.mask;
  }

  release(): void {
    if (this.queued > 0) this.kick();
    this.ctrl[CTRL_LAST_AVAIL] = this.head;
    if (TSO) this.ctrl[CTRL_LOCK] = 0;
    else Atomics.store(this.ctrl, CTRL_LOCK, 0);
  }

  abandon(): void {
    this.bulk?.discard();
    // frames written but not published stay AVAILABLE; the head (not stored back) rewinds
    this.queued = 0;
    if (TSO) this.ctrl[CTRL_LOCK] = 0;
    else Atomics.store(this.ctrl, CTRL_LOCK, 0);
  }

  private kick(): void {
    this.bulk?.run();
    const i32 = this.i32;
    const sent = this.sent;
    const n = this.queued;
    for (let k = 0; k < n; k++) {
      if (TSO) i32[sent[k] >> 2] = TP_STATUS_SEND_REQUEST;
      else Atomics.store(i32, sent[k] >> 2, TP_STATUS_SEND_REQUEST);
    }
    this.queued = 0;
    if (native.packetKick(this.fd) < 0) this.stats[ST_ERRORS]++;
  }

  /**
   * The burst towards the device in one loop for the common frame (one source segment, no
   * offload flag): the ring frame's status, the zeroed virtio-net header, the copy (8-byte
   * words inline below BULK_MIN, the bulk queue above) and tp_len, with the ring's state in
   * locals; anything else, and a frame the kernel still holds, through enqueue()
   * (SlotWriter), which counts the drops. As the AF_XDP port's (bench/NOTES.md #50).
   */
  override enqueueBurst(srcMem: GuestMemory, batch: PacketBatch, pick: Uint16Array | null, count: number): number {
    const d = this.d;
    const fsz = d.frameSize;
    const base = d.ringBytes;
    const txData = d.txData;
    const mask = this.mask;
    const size = this.size;
    const u8 = this.u8;
    const u32 = this.u32;
    const i32 = this.i32;
    const view = this.view;
    const d64 = view.f64;
    const sent = this.sent;
    const bulk = this.bulk;
    const srcIds = srcMem.bulkIds;
    const useBulk = bulk !== null && srcIds !== null && this.copyId >= 0;
    const srcViews = srcMem.views;
    const segCount = batch.segCount;
    const segStart = batch.segStart;
    const segRegion = batch.segRegion;
    const segOffset = batch.segOffset;
    const pktLen = batch.pktLen;
    const flags = batch.flags;
    const anyOffload = batch.nOffload > 0;
    const bulkMin = BULK_MIN;
    const tso = TSO;
    let head = this.head;
    let done = 0;
    let bytes = 0;
    let fast = 0;
    for (let k = 0; k < count; k++) {
      const i = pick === null ? k : pick[k];
      const len = pktLen[i];
      const o = base + head * fsz;
      if (segCount[i] !== 1 || (anyOffload && flags[i] !== 0) || txData + VNET + len > fsz || (tso ? i32[o >> 2] : Atomics.load(i32, o >> 2)) !== TP_STATUS_AVAILABLE) {
        // the general path, with the ring state handed over and taken back
        this.head = head;
        if (this.enqueue(srcMem, batch, i, 0)) done++;
        head = this.head;
        continue;
      }
      const h = o + txData;
      for (let b = 0; b < VNET; b++) if (u8[h + b] !== 0) u8[h + b] = 0;
      const at = h + VNET;
      const s = segStart[i];
      const sr = segRegion[s];
      const so = segOffset[s];
      if (useBulk && len >= bulkMin) {
        bulk.add(srcIds[sr], srcMem.regions[sr].sabOffset + so, this.copyId, at, len);
      } else {
        const sv = srcViews[sr];
        const s64 = sv.f64;
        if (F64_EXACT && d64 !== null && s64 !== null && ((at | so) & 7) === 0 && so < 0x7fff_ffff && at < 0x7fff_ffff) {
          const dw = at >> 3;
          const sw = (so | 0) >> 3;
          const n = len >> 3;
          for (let q = 0; q < n; q++) d64[dw + q] = s64[sw + q];
          const s8 = sv.u8;
          for (let q = n << 3; q < len; q++) u8[at + q] = s8[(so | 0) + q];
        } else {
          copyBytes(view, at, sv, so, len);
        }
      }
      u32[(o >> 2) + 1] = VNET + len;
      sent[this.queued++] = o; // published by kick()
      head = (head + 1) & mask;
      bytes += len;
      fast++;
      done++;
      if (this.queued === size) {
        // a ring's worth queued: send them now, the next frames may need the room
        this.head = head;
        this.kick();
      }
    }
    this.head = head;
    if (fast > 0) {
      this.stats[ST_PACKETS] += fast;
      this.stats[ST_BYTES] += bytes;
    }
    if (done > 0) this.stats[ST_BURSTS]++;
    return done;
  }

  rxReserve(len: number, hdr: Uint8Array | null): boolean {
    const d = this.d;
    if (d.txData + VNET + len > d.frameSize) {
      this.stats[ST_DROP_TOO_BIG]++;
      return false;
    }
    const o = d.ringBytes + this.head * d.frameSize;
    const status = TSO ? this.i32[o >> 2] : Atomics.load(this.i32, o >> 2);
    if (status !== TP_STATUS_AVAILABLE) {
      this.stats[ST_DROP_NO_BUF]++;
      return false;
    }
    const u8 = this.u8;
    const h = o + d.txData;
    if (hdr === null) for (let k = 0; k < VNET; k++) u8[h + k] = 0;
    else for (let k = 0; k < VNET; k++) u8[h + k] = hdr[k];
    this.wSlot = o;
    this.wPos = h + VNET;
    this.wEnd = h + VNET + len;
    return true;
  }

  rxPoke(pos: number, value: number): void {
    // the frame's bytes may still sit in the worker's bulk queue (copies of BULK_MIN bytes and
    // more run before publishing): run it first, or the queued copy lands over this byte later
    // (a software checksum of a TCP frame towards a port without checksum offload)
    this.bulk?.run();
    const at = this.wSlot + this.d.txData + VNET + pos;
    if (at < this.wEnd) this.u8[at] = value;
  }

  rxCommit(len: number): void {
    const o = this.wSlot;
    this.u32[(o >> 2) + 1] = VNET + len;
    this.sent[this.queued] = o; // published by kick()
    this.head = (this.head + 1) & this.mask;
    this.queued++;
    this.stats[ST_PACKETS]++;
    this.stats[ST_BYTES] += len;
    // a ring's worth queued: send them now, the next frames may need the room
    if (this.queued === this.size) this.kick();
  }

  flush(): boolean {
    if (this.queued > 0) this.kick();
    return false;
  }

  // ---------------------------------------------------------------- notifications

  /** Before sleeping: clear a pending socket error (the device went down), which would keep poll(2) ready. */
  enableNotify(): boolean {
    if (native.packetError(this.fd) !== 0) this.stats[ST_ERRORS]++;
    return false;
  }

  disableNotify(): void {
    // nothing to turn off
  }

  get lastAvailIdx(): number {
    return this.head;
  }

  get lastUsedIdx(): number {
    return this.head;
  }
}
