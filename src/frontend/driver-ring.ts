/**
 * The DRIVER side of a split virtqueue: what a guest's virtio-net driver does. Used by unit
 * tests (over a SharedArrayBuffer standing for guest memory) and by the TS frontend and
 * benchmarks. Simple by design: correctness and controllability (start index, layouts,
 * malformed chains via the raw helpers) over speed.
 */
import { availRingBytes, descTableBytes, usedRingBytes } from '../protocol/ring-layout';
import {
  DESC_SIZE, VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
} from '../protocol/constants';

/** Byte written into the guard area after every allocated buffer. */
const CANARY = 0xa5;

export interface DriverRingOptions {
  size: number;
  /** guest physical addresses of the three ring parts */
  descGpa: number;
  availGpa: number;
  usedGpa: number;
  /** buffer arena [bufBase, bufEnd) for alloc() */
  bufBase: number;
  bufEnd: number;
  /** gpa of mem[0] (default 0) */
  gpaBase?: number;
  /** virtio-net header length (default 12) */
  hdrLen?: number;
  /** RX: buffers are merged by num_buffers (default true when hdrLen is 12) */
  mrgRxbuf?: boolean;
  /** initial avail->idx and used->idx (e.g. 65530 to test wrap-around); default 0 */
  startIdx?: number;
  /** canary bytes after every buffer (default 16) */
  guard?: number;
  /**
   * alloc() never lets a buffer (with its guard) cross a multiple of this many bytes: guest
   * memory passed as many memory slots, where a buffer may not span two regions.
   */
  boundary?: number;
  /**
   * VIRTIO_F_IN_ORDER negotiated, TX side: the device may return a batch with one used entry
   * (its last chain's id), so collectUsed() takes the chains in posting order and reads only
   * the entry at used->idx - 1, which must name the last of them (lengths are 0 on TX).
   */
  inOrder?: boolean;
}

export interface TxOptions {
  /** header in its own descriptor (default false: header and payload share the first buffer) */
  hdrSeparate?: boolean;
  /** number of descriptors the bytes (payload, or header + payload) are spread over (default 1) */
  chunks?: number;
  /** put the chain in an indirect table */
  indirect?: boolean;
  /** header bytes to send (default: hdrLen zero bytes) */
  hdr?: Uint8Array;
}

export interface RxOptions {
  /** writable descriptors per chain, each bufLen bytes (default 1) */
  chunks?: number;
  indirect?: boolean;
}

export interface ChainBuf {
  gpa: number;
  len: number;
  /** device-writable */
  write?: boolean;
}

export interface UsedElem {
  id: number;
  len: number;
  /** the buffers of the chain that was returned */
  bufs: ChainBuf[];
}

export interface RxPacket {
  hdr: Uint8Array;
  data: Uint8Array;
  numBuffers: number;
  used: UsedElem[];
}

interface Posted {
  bufs: ChainBuf[];
  descs: number[];
  /** indirect table allocation, or -1 */
  table: number;
}

export class DriverRing {
  mem: Uint8Array;
  readonly size: number;
  readonly descGpa: number;
  readonly availGpa: number;
  readonly usedGpa: number;
  readonly hdrLen: number;
  readonly mrgRxbuf: boolean;
  readonly guard: number;
  readonly inOrder: boolean;
  /** avail->idx as the driver will publish it next */
  availIdx: number;
  /** used->idx up to which collectUsed() has read */
  lastUsedSeen: number;
  /**
   * Called for every byte range the driver writes into guest memory: the guest-side dirty
   * tracking that QEMU does for the guest's own writes during migration (the backend's
   * dirty log covers only the backend's writes).
   */
  onWrite: ((gpa: number, len: number) => void) | null = null;

  private dv: DataView;
  private readonly gpaBase: number;
  private a16: Uint16Array;
  private u16: Uint16Array;
  private readonly bufEnd: number;
  private readonly boundary: number;
  private bump: number;
  /** freed buffers by allocation size, reused first (steady-state benchmarks) */
  private readonly freeBufs = new Map<number, number[]>();
  private readonly allocs: Array<[number, number]> = [];
  /** gpa -> free-list key of buffers that came from alloc() (only those are recycled) */
  private readonly live = new Map<number, number>();
  private readonly freeDescs: number[] = [];
  private readonly posted = new Map<number, Posted>();

  constructor(mem: Uint8Array, o: DriverRingOptions) {
    this.mem = mem;
    this.size = o.size;
    this.descGpa = o.descGpa;
    this.availGpa = o.availGpa;
    this.usedGpa = o.usedGpa;
    this.gpaBase = o.gpaBase ?? 0;
    this.hdrLen = o.hdrLen ?? 12;
    this.mrgRxbuf = o.mrgRxbuf ?? this.hdrLen === 12;
    this.guard = o.guard ?? 16;
    this.inOrder = o.inOrder ?? false;
    this.bufEnd = o.bufEnd;
    this.boundary = o.boundary ?? 0;
    this.bump = o.bufBase;
    this.dv = new DataView(mem.buffer, mem.byteOffset, mem.byteLength);
    this.a16 = new Uint16Array(mem.buffer, mem.byteOffset + this.at(o.availGpa), 3 + o.size);
    this.u16 = new Uint16Array(mem.buffer, mem.byteOffset + this.at(o.usedGpa), 3 + 4 * o.size);
    mem.fill(0, this.at(o.descGpa), this.at(o.descGpa) + descTableBytes(o.size));
    mem.fill(0, this.at(o.availGpa), this.at(o.availGpa) + availRingBytes(o.size, true));
    mem.fill(0, this.at(o.usedGpa), this.at(o.usedGpa) + usedRingBytes(o.size, true));
    const start = (o.startIdx ?? 0) & 0xffff;
    this.availIdx = start;
    this.lastUsedSeen = start;
    this.a16[1] = start;
    this.u16[1] = start;
    for (let i = o.size - 1; i >= 0; i--) this.freeDescs.push(i);
  }

  /**
   * Carry this driver over to a copy of its guest memory (the destination of a live
   * migration): same ring state, same buffers, new bytes underneath. Nothing is zeroed.
   */
  rebind(mem: Uint8Array): void {
    this.mem = mem;
    this.dv = new DataView(mem.buffer, mem.byteOffset, mem.byteLength);
    this.a16 = new Uint16Array(mem.buffer, mem.byteOffset + this.at(this.availGpa), 3 + this.size);
    this.u16 = new Uint16Array(mem.buffer, mem.byteOffset + this.at(this.usedGpa), 3 + 4 * this.size);
  }

  /** offset in mem of a guest physical address */
  at(gpa: number): number {
    return gpa - this.gpaBase;
  }

  // ------------------------------------------------------------ buffers

  /** Allocate len bytes (aligned), followed by `guard` canary bytes. Returns the gpa. */
  alloc(len: number, align = 16): number {
    const total = len + this.guard;
    const key = total * 64 + align;
    const free = this.freeBufs.get(key);
    if (free && free.length > 0) {
      const g = free.pop()!;
      this.live.set(g, key);
      return g;
    }
    let gpa = Math.ceil(this.bump / align) * align;
    const b = this.boundary;
    if (b > 0 && Math.floor(gpa / b) !== Math.floor((gpa + total - 1) / b)) gpa = Math.ceil(gpa / b) * b;
    if (gpa + total > this.bufEnd) throw new Error(`driver ring arena exhausted (${len} bytes)`);
    this.bump = gpa + total;
    this.mem.fill(CANARY, this.at(gpa + len), this.at(gpa + total));
    this.onWrite?.(gpa + len, this.guard);
    this.allocs.push([gpa + len, this.guard]);
    this.live.set(gpa, key);
    return gpa;
  }

  private freeBuf(gpa: number): void {
    const key = this.live.get(gpa);
    if (key === undefined) return;
    this.live.delete(gpa);
    let l = this.freeBufs.get(key);
    if (!l) this.freeBufs.set(key, (l = []));
    l.push(gpa);
  }

  /** Guard areas (gpa of their first byte) whose canaries were overwritten. */
  brokenGuards(): number[] {
    const bad: number[] = [];
    for (const [g, n] of this.allocs) {
      for (let i = 0; i < n; i++) {
        if (this.mem[this.at(g) + i] !== CANARY) {
          bad.push(g);
          break;
        }
      }
    }
    return bad;
  }

  /** Copy bytes into guest memory. */
  write(gpa: number, bytes: Uint8Array): void {
    this.mem.set(bytes, this.at(gpa));
    this.onWrite?.(gpa, bytes.length);
  }

  read(gpa: number, len: number): Uint8Array {
    return this.mem.slice(this.at(gpa), this.at(gpa) + len);
  }

  // ------------------------------------------------------------ raw ring access

  allocDesc(): number {
    const d = this.freeDescs.pop();
    if (d === undefined) throw new Error('no free descriptors');
    return d;
  }

  freeDescCount(): number {
    return this.freeDescs.length;
  }

  /** Write descriptor i of a table at `tableGpa` (default: the ring's table). */
  writeDesc(i: number, addr: number, len: number, flags: number, next: number, tableGpa = this.descGpa): void {
    const o = this.at(tableGpa) + i * DESC_SIZE;
    this.dv.setUint32(o, addr % 0x1_0000_0000, true);
    this.dv.setUint32(o + 4, Math.floor(addr / 0x1_0000_0000), true);
    this.dv.setUint32(o + 8, len, true);
    this.dv.setUint16(o + 12, flags, true);
    this.dv.setUint16(o + 14, next, true);
    this.onWrite?.(tableGpa + i * DESC_SIZE, DESC_SIZE);
  }

  /** Put a head into the next avail slot; publish (avail->idx store) unless told not to. */
  pushAvail(head: number, publish = true): void {
    this.a16[2 + (this.availIdx & (this.size - 1))] = head;
    this.onWrite?.(this.availGpa + 4 + 2 * (this.availIdx & (this.size - 1)), 2);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    if (publish) this.publishAvail();
  }

  publishAvail(): void {
    Atomics.store(this.a16, 1, this.availIdx);
    this.onWrite?.(this.availGpa + 2, 2);
  }

  /** Raw avail->idx write (malformed-ring tests). */
  setAvailIdxRaw(v: number): void {
    Atomics.store(this.a16, 1, v & 0xffff);
    this.onWrite?.(this.availGpa + 2, 2);
  }

  usedIdx(): number {
    return Atomics.load(this.u16, 1);
  }

  usedFlags(): number {
    return Atomics.load(this.u16, 0);
  }

  /** EVENT_IDX: the device should interrupt once used->idx passes v. */
  setUsedEvent(v: number): void {
    Atomics.store(this.a16, 2 + this.size, v & 0xffff);
    this.onWrite?.(this.availGpa + 4 + 2 * this.size, 2);
  }

  /** EVENT_IDX: the driver should kick once avail->idx passes this. */
  availEvent(): number {
    return Atomics.load(this.u16, 2 + 4 * this.size);
  }

  setNoInterrupt(on: boolean): void {
    Atomics.store(this.a16, 0, on ? VRING_AVAIL_F_NO_INTERRUPT : 0);
    this.onWrite?.(this.availGpa, 2);
  }

  // ------------------------------------------------------------ chains

  /** Post one chain over explicit buffers (direct or through an indirect table). Returns the head. */
  postChain(bufs: ChainBuf[], opts: { indirect?: boolean; publish?: boolean } = {}): number {
    const p: Posted = { bufs, descs: [], table: -1 };
    let head: number;
    if (opts.indirect) {
      const table = this.alloc(DESC_SIZE * bufs.length);
      bufs.forEach((b, i) => {
        const last = i === bufs.length - 1;
        this.writeDesc(i, b.gpa, b.len, (b.write ? VRING_DESC_F_WRITE : 0) | (last ? 0 : VRING_DESC_F_NEXT), last ? 0 : i + 1, table);
      });
      head = this.allocDesc();
      this.writeDesc(head, table, DESC_SIZE * bufs.length, VRING_DESC_F_INDIRECT, 0);
      p.descs.push(head);
      p.table = table;
    } else {
      const ids = bufs.map(() => this.allocDesc());
      bufs.forEach((b, i) => {
        const last = i === bufs.length - 1;
        this.writeDesc(ids[i], b.gpa, b.len, (b.write ? VRING_DESC_F_WRITE : 0) | (last ? 0 : VRING_DESC_F_NEXT), last ? 0 : ids[i + 1]);
      });
      head = ids[0];
      p.descs = ids;
    }
    this.posted.set(head, p);
    this.pushAvail(head, opts.publish ?? true);
    return head;
  }

  /** Post a packet for the device to transmit. Returns the head id. */
  postTx(packet: Uint8Array, opts: TxOptions = {}): number {
    const hdr = opts.hdr ?? new Uint8Array(this.hdrLen);
    const pieces: Uint8Array[] = [];
    const k = Math.max(1, opts.chunks ?? 1);
    let body: Uint8Array;
    if (opts.hdrSeparate) {
      pieces.push(hdr);
      body = packet;
    } else {
      body = new Uint8Array(hdr.length + packet.length);
      body.set(hdr);
      body.set(packet, hdr.length);
    }
    const step = Math.ceil(body.length / k);
    for (let i = 0; i < k && (i * step < body.length || (i === 0 && pieces.length === 0)); i++) {
      pieces.push(body.subarray(i * step, Math.min(body.length, (i + 1) * step)));
    }
    const bufs = pieces.map((b) => {
      const gpa = this.alloc(b.length);
      this.write(gpa, b);
      return { gpa, len: b.length };
    });
    return this.postChain(bufs, { indirect: opts.indirect });
  }

  /** Post `count` receive chains of `chunks` writable buffers of bufLen bytes. Returns the heads. */
  postRx(count: number, bufLen: number, opts: RxOptions = {}): number[] {
    const heads: number[] = [];
    for (let c = 0; c < count; c++) {
      const bufs: ChainBuf[] = [];
      for (let i = 0; i < (opts.chunks ?? 1); i++) bufs.push({ gpa: this.alloc(bufLen), len: bufLen, write: true });
      heads.push(this.postChain(bufs, { indirect: opts.indirect }));
    }
    return heads;
  }

  /** Read the used entries published since the last call; frees their descriptors and buffers. */
  collectUsed(): UsedElem[] {
    if (this.inOrder) return this.collectUsedInOrder();
    const out: UsedElem[] = [];
    const end = this.usedIdx();
    const u = this.at(this.usedGpa);
    while (this.lastUsedSeen !== end) {
      const e = u + 4 + 8 * (this.lastUsedSeen & (this.size - 1));
      const id = this.dv.getUint32(e, true);
      const len = this.dv.getUint32(e + 4, true);
      const p = this.posted.get(id);
      if (!p) throw new Error(`used id ${id} was not posted`);
      this.release(id, p);
      out.push({ id, len, bufs: p.bufs });
      this.lastUsedSeen = (this.lastUsedSeen + 1) & 0xffff;
    }
    return out;
  }

  /** A returned chain: its descriptors, buffers and indirect table are free again. */
  private release(id: number, p: Posted): void {
    this.posted.delete(id);
    for (const d of p.descs) this.freeDescs.push(d);
    for (const b of p.bufs) this.freeBuf(b.gpa);
    if (p.table >= 0) this.freeBuf(p.table);
  }

  /** collectUsed() under IN_ORDER: chains by position; only the newest used entry is read. */
  private collectUsedInOrder(): UsedElem[] {
    const out: UsedElem[] = [];
    const end = this.usedIdx();
    const n = (end - this.lastUsedSeen) & 0xffff;
    if (n === 0) return out;
    if (n > this.posted.size) throw new Error(`used->idx moved by ${n}, only ${this.posted.size} chains posted`);
    const e = this.at(this.usedGpa) + 4 + 8 * ((end - 1) & (this.size - 1));
    const lastId = this.dv.getUint32(e, true);
    // Map iteration follows insertion, i.e. posting (= avail ring) order
    const ids = [...this.posted.keys()].slice(0, n);
    if (ids[n - 1] !== lastId) throw new Error(`in-order: used entry ${(end - 1) & 0xffff} holds id ${lastId}, expected ${ids[n - 1]}`);
    for (const id of ids) {
      const p = this.posted.get(id)!;
      this.release(id, p);
      out.push({ id, len: 0, bufs: p.bufs });
    }
    this.lastUsedSeen = end;
    return out;
  }

  /** First `len` bytes written into a returned chain. */
  chainBytes(e: UsedElem): Uint8Array {
    const out = new Uint8Array(e.len);
    let got = 0;
    for (const b of e.bufs) {
      if (got === e.len) break;
      const n = Math.min(b.len, e.len - got);
      out.set(this.mem.subarray(this.at(b.gpa), this.at(b.gpa) + n), got);
      got += n;
    }
    if (got !== e.len) throw new Error(`used len ${e.len} exceeds chain ${e.id}`);
    return out;
  }

  /** Collect used RX chains and assemble packets (several chains per packet by num_buffers). */
  readRx(): RxPacket[] {
    const used = this.collectUsed();
    const out: RxPacket[] = [];
    let i = 0;
    while (i < used.length) {
      const first = this.chainBytes(used[i]);
      if (first.length < this.hdrLen) throw new Error(`RX chain ${used[i].id}: ${first.length} bytes, no header`);
      const numBuffers = this.hdrLen === 12 ? first[10] | (first[11] << 8) : 1;
      const n = this.mrgRxbuf ? numBuffers : 1;
      if (n < 1 || i + n > used.length) throw new Error(`num_buffers ${numBuffers} but ${used.length - i} chains used`);
      const parts = used.slice(i, i + n).map((e, k) => (k === 0 ? first : this.chainBytes(e)));
      const total = parts.reduce((s, p) => s + p.length, 0);
      const all = new Uint8Array(total);
      let o = 0;
      for (const p of parts) {
        all.set(p, o);
        o += p.length;
      }
      out.push({ hdr: all.slice(0, this.hdrLen), data: all.slice(this.hdrLen), numBuffers, used: used.slice(i, i + n) });
      i += n;
    }
    return out;
  }
}
