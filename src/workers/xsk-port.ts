/**
 * An AF_XDP uplink port on a worker (issue 22): the XDP socket's UMEM and its four rings,
 * each mapped by the main thread into a SharedArrayBuffer (addon/xdp.cc, the mmap bridge),
 * walked here with Atomics on their producer and consumer words: no addon call per frame,
 * the same per-burst interface as every other ring (ring-format.ts).
 *
 *  - "TX" (index 1, frames from the device): dequeueBurst takes the RX ring's descriptors
 *    and describes each frame in place in the UMEM (the destination's enqueue is the one
 *    copy); completeBurst, once every deferred copy ran, hands the frames' chunks back on the
 *    fill ring (and wakes the driver if the fill ring asks: XDP_RING_NEED_WAKEUP). The worker
 *    sleeps on the socket (POLLIN: the RX ring has frames).
 *  - "RX" (index 0, frames towards the device): each frame is copied into a free TX frame
 *    (the top of the pool's TX stack), the descriptors published once a burst (release), then
 *    a sendto() kick only when the TX ring says XDP_RING_NEED_WAKEUP (copy mode: always); the
 *    completion ring's frames go back on the stack. Several workers may send: the ring's lock
 *    is in ctrl, its position in the ring itself, the stack in the pool.
 *
 * Few frames, reused hot (bench/NOTES.md #53): a ring walked FIFO touches every one of its
 * frames in turn, a TLB entry (two 2 KiB chunks a page) and cache lines each, on our side and
 * on the kernel's (copy mode reaches the UMEM through a vmap of 4 KiB pages even when the
 * UMEM is in huge pages). So TX frames come off a stack, the frame the kernel completed last
 * first, and the fill ring is kept shallow while the worker polls (FILL_BUSY chunks; the rest
 * wait on the pool's RX stack, the chunk handed back last on top) and filled to the last
 * chunk before the worker sleeps (enableNotify), when a burst from the wire may come with no
 * one to refill it. 4096 frames in FIFO rings ran 0.90-0.94x DPDK's net_af_xdp at 64 B.
 *
 * No virtio-net header crosses an XDP socket: the port's features carry no offloads, so a
 * guest's frame with a partial checksum or GSO goes through the software path of offload.ts
 * (completed, segmented) before it reaches rxReserve, as towards a guest without offloads.
 *
 * The kernel writes the RX ring, the wire decides what is in it: a descriptor whose address
 * is outside the RX half of the UMEM, or whose frame crosses its chunk or is shorter than an
 * Ethernet header, is dropped and counted (ST_ERRORS); nothing is read or written outside the
 * UMEM. A chunk whose address was bad is not handed back (it is not one of ours).
 */
import { native } from '../native';
import { CTRL_LOCK, QueueFeatures, ST_BURSTS, ST_BYTES, ST_DROP_NO_BUF, ST_DROP_TOO_BIG, ST_ERRORS, ST_PACKETS, VringDesc, XSK_POOL_RX_TOP, XSK_POOL_STACKS, XSK_POOL_TX_TOP, XskDesc, XskRing } from '../shared/types';
import { BULK_MIN, type CopyQueue } from './bulk-copy';
import { copyBytes, F64_EXACT } from './copy';
import { GuestMemory, RegionViews } from './guest-memory';
import { BURST, PacketBatch } from './packet-batch';
import type { RingQueue } from './ring-format';
import { SlotWriter } from './slot-writer';

/** linux/if_xdp.h: a ring's flags word asks for a syscall */
const XDP_RING_NEED_WAKEUP = 1;
/** copy mode sends at most this many frames per sendto() (the kernel's TX_BATCH_SIZE) */
const KERNEL_TX_BATCH = 32;
const MIN_FRAME = 14;
/** chunks in the fill ring while the worker polls: four bursts (the kernel's copy mode delivers 32 a kick) */
const FILL_BUSY = 4 * BURST;

/**
 * XskDesc.pool for a new socket: no spare RX chunk (the main thread puts every one in the
 * fill ring), every TX frame free, the lowest on top.
 */
export function newXskPool(entries: number, frameSize: number): SharedArrayBuffer {
  const pool = new SharedArrayBuffer(4 * (XSK_POOL_STACKS + 2 * entries));
  const words = new Int32Array(pool);
  const txStack = XSK_POOL_STACKS + entries;
  for (let k = 0; k < entries; k++) words[txStack + k] = (2 * entries - 1 - k) * frameSize;
  words[XSK_POOL_RX_TOP] = 0;
  words[XSK_POOL_TX_TOP] = entries;
  return pool;
}

/** A ring's words as Uint32Array indices. */
class Ring {
  readonly u32: Uint32Array;
  readonly prod: number;
  readonly cons: number;
  readonly flags: number;
  readonly desc: number;
  constructor(r: XskRing) {
    if ((r.producer | r.consumer | r.flags | r.desc) & 3 || r.desc >= r.sab.byteLength) throw new Error('AF_XDP ring offsets do not fit their mapping');
    this.u32 = new Uint32Array(r.sab);
    this.prod = r.producer >> 2;
    this.cons = r.consumer >> 2;
    this.flags = r.flags >> 2;
    this.desc = r.desc >> 2;
  }
}

export class XskQueue extends SlotWriter implements RingQueue {
  readonly index: number;
  readonly size: number;
  readonly ctrl: Int32Array;
  readonly stats: Float64Array;
  readonly features: QueueFeatures;
  bulk: CopyQueue | null = null;
  onBadOffload: ((reason: string, suppressed: number) => void) | null = null;
  /** region 0: the UMEM */
  readonly mem: GuestMemory;
  private readonly fd: number;
  private readonly fs: number;
  private readonly mask: number;
  /** bytes of the UMEM's RX half (frames below it are the fill ring's) */
  private readonly rxBytes: number;
  protected readonly view: RegionViews;
  private readonly rx: Ring;
  private readonly tx: Ring;
  private readonly fill: Ring;
  private readonly comp: Ring;
  /** chunks taken by the burst, handed back to the fill ring by completeBurst */
  private readonly taken: Uint32Array = new Uint32Array(BURST);
  private nTaken = 0;
  /** XskDesc.pool: the RX spare stack at rxStack, the TX free stack at txStack, their depths in words 0 and 1 */
  private readonly pool: Int32Array;
  private readonly rxStack = XSK_POOL_STACKS;
  private readonly txStack: number;
  /** the fill ring's depth to keep: FILL_BUSY while polling, every chunk before a sleep */
  private fillTo: number;
  // TX: our producer (read from the ring under the lock), the completion consumer, the frame being written
  private txProd = 0;
  private compCons = 0;
  private published = 0;
  private wSlot = 0;

  constructor(vd: VringDesc, d: XskDesc) {
    super();
    this.index = vd.index;
    this.fd = d.fd;
    this.fs = d.frameSize;
    this.size = d.entries;
    this.mask = d.entries - 1;
    this.features = { ...vd.features };
    this.ctrl = new Int32Array(vd.ctrl);
    this.stats = new Float64Array(vd.stats);
    if (d.entries * 2 !== d.frames || (d.entries & this.mask) !== 0 || (d.frameSize & (d.frameSize - 1)) !== 0 || d.umem.byteLength < d.frames * d.frameSize) throw new Error('AF_XDP UMEM geometry does not fit its mapping');
    this.rx = new Ring(d.rx);
    this.tx = new Ring(d.tx);
    this.fill = new Ring(d.fill);
    this.comp = new Ring(d.comp);
    const rings: Array<[Ring, number]> = [[this.rx, 4], [this.tx, 4], [this.fill, 2], [this.comp, 2]];
    for (const [r, words] of rings) if (r.desc + words * d.entries > r.u32.length) throw new Error('AF_XDP ring descriptors do not fit their mapping');
    this.rxBytes = d.entries * d.frameSize;
    this.fillTo = FILL_BUSY < d.entries ? FILL_BUSY : d.entries;
    this.pool = new Int32Array(d.pool);
    this.txStack = XSK_POOL_STACKS + d.entries;
    if (this.pool.length < this.txStack + d.entries) throw new Error('AF_XDP frame pool does not fit its rings');
    this.mem = new GuestMemory([{ gpa: 0, size: d.umem.byteLength, uva: 0, sab: d.umem, sabOffset: 0 }]);
    this.mem.enableBulk(native);
    this.view = this.mem.views[0];
    // TX frames' copies batched: publish() hands the descriptors over after the batch ran
    this.copyId = (this.mem.bulkIds as Int32Array)[0];
  }

  dispose(): void {
    this.mem.dispose();
  }

  reload(): void {
    // the positions live in the rings themselves
  }

  setLogging(): void {
    // no guest memory behind an XDP socket: nothing to log
  }

  // ---------------------------------------------------------------- from the device

  dequeueBurst(batch: PacketBatch, max: number): number {
    batch.reset();
    if (this.nTaken > 0) this.handBack();
    if (max > batch.capacity) max = batch.capacity;
    const rx = this.rx;
    const u32 = rx.u32;
    const cons = u32[rx.cons];
    let avail = (Atomics.load(u32, rx.prod) - cons) >>> 0;
    if (avail === 0) return 0;
    if (avail > max) avail = max;
    const fs = this.fs;
    const rxBytes = this.rxBytes;
    const stats = this.stats;
    let bytes = 0;
    for (let k = 0; k < avail; k++) {
      const d = rx.desc + 4 * ((cons + k) & this.mask);
      const addr = u32[d];
      const len = u32[d + 2];
      if (u32[d + 1] !== 0 || addr >= rxBytes) {
        stats[ST_ERRORS]++; // not a chunk of the fill ring's half: not ours to read, nor to hand back
        continue;
      }
      const chunk = addr & ~(fs - 1);
      this.taken[this.nTaken++] = chunk;
      if (len < MIN_FRAME || addr - chunk + len > fs) {
        stats[ST_ERRORS]++; // no Ethernet header, or a frame past its chunk
        continue;
      }
      const p = batch.count++;
      const s = batch.nSegs++;
      batch.head[p] = 0;
      batch.pktLen[p] = len;
      batch.segStart[p] = s;
      batch.segCount[p] = 1;
      batch.segRegion[s] = 0;
      batch.segOffset[s] = addr;
      batch.segLen[s] = len;
      bytes += len;
    }
    // the RX ring's slots are free again; the frames stay ours until the fill ring has them
    Atomics.store(u32, rx.cons, (cons + avail) >>> 0);
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

  /**
   * The burst's chunks, once every copy out of them ran, go on the pool's RX stack, and the
   * fill ring is topped up to fillTo from the stack's top: the chunks just used, still in the
   * caches and the TLB, are the next the kernel fills.
   */
  private handBack(): void {
    this.bulk?.run();
    const pool = this.pool;
    const base = this.rxStack;
    let top = pool[XSK_POOL_RX_TOP];
    // never past its half: only a ring that hands one chunk out twice could fill it
    for (let k = 0; k < this.nTaken; k++) {
      if (top < this.size) pool[base + top++] = this.taken[k];
      else this.stats[ST_ERRORS]++;
    }
    this.nTaken = 0;
    const f = this.fill;
    const u32 = f.u32;
    const prod = u32[f.prod];
    const want = this.fillTo - ((prod - Atomics.load(u32, f.cons)) >>> 0);
    const n = want < top ? want : top;
    for (let k = 0; k < n; k++) {
      const d = f.desc + 2 * ((prod + k) & this.mask);
      u32[d] = pool[base + --top];
      u32[d + 1] = 0;
    }
    pool[XSK_POOL_RX_TOP] = top;
    if (n <= 0) return;
    Atomics.store(u32, f.prod, (prod + n) >>> 0);
    if ((Atomics.load(u32, f.flags) & XDP_RING_NEED_WAKEUP) !== 0 && native.xdpWakeRx(this.fd) < 0) this.stats[ST_ERRORS]++;
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
    this.txProd = this.published = this.tx.u32[this.tx.prod];
    this.reap();
  }

  /**
   * The completion ring: every frame the kernel is done with goes back on the pool's TX stack
   * (and frees a TX slot). An address that is not a TX frame is counted and not kept: the
   * stack only ever holds frames of the TX half.
   */
  private reap(): void {
    const c = this.comp;
    const u32 = c.u32;
    const prod = Atomics.load(u32, c.prod);
    let cons = u32[c.cons];
    if (prod !== cons) {
      const pool = this.pool;
      const base = this.txStack;
      const lo = this.rxBytes;
      const hi = 2 * lo;
      const fs = this.fs;
      let top = pool[XSK_POOL_TX_TOP];
      for (; cons !== prod; cons = (cons + 1) >>> 0) {
        const d = c.desc + 2 * (cons & this.mask);
        const addr = u32[d];
        if (u32[d + 1] !== 0 || addr < lo || addr >= hi || (addr & (fs - 1)) !== 0 || top >= this.size) this.stats[ST_ERRORS]++;
        else pool[base + top++] = addr;
      }
      pool[XSK_POOL_TX_TOP] = top;
      Atomics.store(u32, c.cons, prod);
    }
    this.compCons = prod;
  }

  release(): void {
    this.publish();
    Atomics.store(this.ctrl, CTRL_LOCK, 0);
  }

  abandon(): void {
    this.bulk?.discard();
    Atomics.store(this.ctrl, CTRL_LOCK, 0);
  }

  /** The frames written go to the kernel: the descriptors after their bytes, then a kick if the ring asks for one. */
  private publish(): void {
    const queued = (this.txProd - this.published) >>> 0;
    if (queued === 0) return;
    this.bulk?.run();
    const tx = this.tx;
    Atomics.store(tx.u32, tx.prod, this.txProd);
    this.published = this.txProd;
    if ((Atomics.load(tx.u32, tx.flags) & XDP_RING_NEED_WAKEUP) !== 0 && native.xdpKick(this.fd, Math.ceil(queued / KERNEL_TX_BATCH) + 1) < 0) this.stats[ST_ERRORS]++;
  }

  /**
   * The burst towards the device in one loop for the common frame (one source segment, no
   * offload flag): the TX slot, the copy (8-byte words inline below BULK_MIN, the bulk queue
   * above) and the descriptor, with the ring's state in locals; anything else, and a full
   * ring, through enqueue() (SlotWriter: rxReserve, rxPutPacket, rxCommit), which counts the
   * drops. The per-frame calls of that path were the difference at 64 B (bench/NOTES.md #50).
   */
  override enqueueBurst(srcMem: GuestMemory, batch: PacketBatch, pick: Uint16Array | null, count: number): number {
    const tx = this.tx;
    const t32 = tx.u32;
    const desc = tx.desc;
    const mask = this.mask;
    const size = this.size;
    const fs = this.fs;
    const view = this.view;
    const d64 = view.f64;
    const d8 = view.u8;
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
    const pool = this.pool;
    const txStack = this.txStack;
    let top = pool[XSK_POOL_TX_TOP];
    let prod = this.txProd;
    let done = 0;
    let bytes = 0;
    let fast = 0;
    for (let k = 0; k < count; k++) {
      const i = pick === null ? k : pick[k];
      const len = pktLen[i];
      if (segCount[i] !== 1 || (anyOffload && flags[i] !== 0) || len > fs || len < MIN_FRAME || ((prod - this.compCons) >>> 0) >= size || top === 0) {
        // the general path, with the ring state handed over and taken back
        this.txProd = prod;
        pool[XSK_POOL_TX_TOP] = top;
        if (this.enqueue(srcMem, batch, i, 0)) done++;
        prod = this.txProd;
        top = pool[XSK_POOL_TX_TOP];
        continue;
      }
      const o = pool[txStack + --top];
      const s = segStart[i];
      const sr = segRegion[s];
      const so = segOffset[s];
      if (useBulk && len >= bulkMin) {
        bulk.add(srcIds[sr], srcMem.regions[sr].sabOffset + so, this.copyId, o, len);
      } else {
        const sv = srcViews[sr];
        const s64 = sv.f64;
        if (F64_EXACT && d64 !== null && s64 !== null && (so & 7) === 0 && so < 0x7fff_ffff) {
          // UMEM frames are frame-size aligned; a guest's buffer usually 8-aligned (DPDK's
          // mbufs): word copies with int32 indices, the tail by bytes
          const dw = o >> 3;
          const sw = (so | 0) >> 3;
          const n = len >> 3;
          for (let q = 0; q < n; q++) d64[dw + q] = s64[sw + q];
          const s8 = sv.u8;
          for (let q = n << 3; q < len; q++) d8[o + q] = s8[(so | 0) + q];
        } else {
          copyBytes(view, o, sv, so, len);
        }
      }
      const d = desc + 4 * (prod & mask);
      t32[d] = o;
      t32[d + 1] = 0;
      t32[d + 2] = len;
      t32[d + 3] = 0;
      prod = (prod + 1) >>> 0;
      bytes += len;
      fast++;
      done++;
    }
    this.txProd = prod;
    pool[XSK_POOL_TX_TOP] = top;
    if (fast > 0) {
      this.stats[ST_PACKETS] += fast;
      this.stats[ST_BYTES] += bytes;
    }
    if (done > 0) this.stats[ST_BURSTS]++;
    return done;
  }

  /** `hdr` is ignored: no virtio-net header on an XDP socket (the frame has no offload left by now). */
  rxReserve(len: number, _hdr: Uint8Array | null): boolean {
    if (len > this.fs || len < MIN_FRAME) {
      this.stats[ST_DROP_TOO_BIG]++;
      return false;
    }
    if (((this.txProd - this.compCons) >>> 0) >= this.size || this.pool[XSK_POOL_TX_TOP] === 0) {
      // every TX frame is in flight: send what is written, see what came back
      this.publish();
      this.reap();
      if (((this.txProd - this.compCons) >>> 0) >= this.size || this.pool[XSK_POOL_TX_TOP] === 0) {
        this.stats[ST_DROP_NO_BUF]++;
        return false;
      }
    }
    // the stack's top, taken off it by rxCommit (a frame reserved and not committed stays free)
    const o = this.pool[this.txStack + this.pool[XSK_POOL_TX_TOP] - 1];
    this.wSlot = o;
    this.wPos = o;
    this.wEnd = o + len;
    return true;
  }

  rxPoke(pos: number, value: number): void {
    // the frame's bytes may still sit in the worker's bulk queue (copies of BULK_MIN bytes and
    // more run before publishing): run it first, or the queued copy lands over this byte later
    // (a software checksum of a TCP frame towards a port without checksum offload)
    this.bulk?.run();
    const at = this.wSlot + pos;
    if (at < this.wEnd) this.view.u8[at] = value;
  }

  rxCommit(len: number): void {
    const tx = this.tx;
    const d = tx.desc + 4 * (this.txProd & this.mask);
    const u32 = tx.u32;
    u32[d] = this.wSlot;
    u32[d + 1] = 0;
    u32[d + 2] = len;
    u32[d + 3] = 0;
    this.txProd = (this.txProd + 1) >>> 0;
    this.pool[XSK_POOL_TX_TOP]--;
    this.stats[ST_PACKETS]++;
    this.stats[ST_BYTES] += len;
  }

  flush(): boolean {
    this.publish();
    return false;
  }

  // ---------------------------------------------------------------- notifications

  /** Before a sleep: every spare chunk into the fill ring, for a burst that comes while nobody refills it. */
  enableNotify(): boolean {
    this.fillTo = this.size;
    if (this.index === 1) this.handBack();
    return false;
  }

  /** Awake: the fill ring drains back to FILL_BUSY as frames come (the socket's POLLIN is the notification). */
  disableNotify(): void {
    this.fillTo = FILL_BUSY < this.size ? FILL_BUSY : this.size;
  }

  get lastAvailIdx(): number {
    return this.rx.u32[this.rx.cons] & 0xffff;
  }

  get lastUsedIdx(): number {
    return this.tx.u32[this.tx.prod] & 0xffff;
  }
}
