/**
 * The DRIVER side of a packed virtqueue (virtio 1.1 2.8), for unit tests over a guest SAB:
 * posts TX and RX chains (consecutive descriptors across the ring's end, or an indirect
 * table), makes them available the way Linux and DPDK do (the first descriptor's flags
 * stored last), collects used elements (in order or not, and IN_ORDER batches), and drives
 * the driver event suppression area. Simple by design: correctness and control over speed.
 */
import { DESC_SIZE, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE } from '../src/protocol/constants';

const F_AVAIL = 1 << 7;
const F_USED = 1 << 15;

export interface PackedDriverOptions {
  size: number;
  descGpa: number;
  /** driver event suppression area (written by the driver) */
  drvGpa: number;
  /** device event suppression area (written by the device) */
  devGpa: number;
  bufBase: number;
  bufEnd: number;
  hdrLen?: number;
  /** first slot and wrap counter (default 0 and 1) */
  startIdx?: number;
  startWrap?: number;
}

export interface Chain {
  id: number;
  /** ring slots the chain takes */
  slots: number;
  /** buffers (gpa, len) in chain order */
  bufs: Array<[number, number]>;
  writable: boolean;
}

export interface UsedElem {
  id: number;
  len: number;
}

export class PackedDriver {
  readonly size: number;
  readonly hdrLen: number;
  private readonly dv: DataView;
  next: number;
  wrap: number;
  usedNext: number;
  usedWrap: number;
  /** outstanding chains by id, and in posting order */
  readonly chains = new Map<number, Chain>();
  readonly order: number[] = [];
  private freeIds: number[];
  private bump: number;

  constructor(private readonly mem8: Uint8Array, private readonly o: PackedDriverOptions) {
    this.size = o.size;
    this.hdrLen = o.hdrLen ?? 12;
    this.dv = new DataView(mem8.buffer, mem8.byteOffset, mem8.byteLength);
    this.next = this.usedNext = o.startIdx ?? 0;
    this.wrap = this.usedWrap = o.startWrap ?? 1;
    this.freeIds = Array.from({ length: o.size }, (_, i) => i);
    this.bump = o.bufBase;
    // the whole ring starts as neither available nor used for wrap 1 (flags 0)
    for (let i = 0; i < o.size; i++) this.dv.setUint16(o.descGpa + DESC_SIZE * i + 14, 0, true);
    // both event suppression areas start zeroed (the device's is then written by the device)
    this.dv.setUint32(o.drvGpa, 0, true);
    this.dv.setUint32(o.devGpa, 0, true);
  }

  alloc(len: number): number {
    const n = (len + 15) & ~15;
    if (this.bump + n > this.o.bufEnd) this.bump = this.o.bufBase;
    const a = this.bump;
    this.bump += n;
    return a;
  }

  write(gpa: number, bytes: Uint8Array): void {
    this.mem8.set(bytes, gpa);
  }

  read(gpa: number, len: number): Uint8Array {
    return this.mem8.slice(gpa, gpa + len);
  }

  private takeId(id?: number): number {
    if (id !== undefined) {
      this.freeIds = this.freeIds.filter((x) => x !== id);
      return id;
    }
    const x = this.freeIds.shift();
    if (x === undefined) throw new Error('no free id');
    return x;
  }

  /** Write a raw descriptor at slot (no flags change unless given). */
  writeDesc(slot: number, addr: number, len: number, id: number, flags: number): void {
    const o = this.o.descGpa + DESC_SIZE * slot;
    this.dv.setUint32(o, addr % 0x1_0000_0000, true);
    this.dv.setUint32(o + 4, Math.floor(addr / 0x1_0000_0000), true);
    this.dv.setUint32(o + 8, len, true);
    this.dv.setUint16(o + 12, id, true);
    this.dv.setUint16(o + 14, flags, true);
  }

  descFlags(slot: number): number {
    return this.dv.getUint16(this.o.descGpa + DESC_SIZE * slot + 14, true);
  }

  availBits(wrap: number): number {
    return wrap ? F_AVAIL : F_USED;
  }

  /**
   * Post a chain of buffers (gpa, len) as consecutive descriptors from the next slot, or as
   * one indirect descriptor; the first descriptor's flags are written last. Returns the chain.
   */
  postChain(bufs: Array<[number, number]>, writable: boolean, opts: { indirect?: boolean; id?: number; extraFlags?: number } = {}): Chain {
    const id = this.takeId(opts.id);
    const w = writable ? VRING_DESC_F_WRITE : 0;
    const first = this.next;
    const firstWrap = this.wrap;
    let firstFlags = 0;
    let slots = 0;
    if (opts.indirect) {
      const table = this.alloc(DESC_SIZE * bufs.length);
      bufs.forEach(([a, l], k) => {
        const o = table + DESC_SIZE * k;
        this.dv.setUint32(o, a, true);
        this.dv.setUint32(o + 4, 0, true);
        this.dv.setUint32(o + 8, l, true);
        this.dv.setUint16(o + 12, 0, true);
        this.dv.setUint16(o + 14, w, true);
      });
      firstFlags = VRING_DESC_F_INDIRECT | this.availBits(firstWrap) | (opts.extraFlags ?? 0);
      this.writeDesc(first, table, DESC_SIZE * bufs.length, id, 0);
      slots = 1;
      this.advance(1);
    } else {
      bufs.forEach(([a, l], k) => {
        const slot = this.next;
        const f = w | (k < bufs.length - 1 ? VRING_DESC_F_NEXT : 0) | this.availBits(this.wrap) | (opts.extraFlags ?? 0);
        // the id matters in the last descriptor only; Linux writes it in every one
        this.writeDesc(slot, a, l, id, k === 0 ? this.descFlags(slot) : f);
        if (k === 0) firstFlags = f;
        this.advance(1);
      });
      slots = bufs.length;
    }
    // make the chain available: the first descriptor's flags last
    this.dv.setUint16(this.o.descGpa + DESC_SIZE * first + 14, firstFlags, true);
    const c: Chain = { id, slots, bufs, writable };
    this.chains.set(id, c);
    this.order.push(id);
    return c;
  }

  private advance(n: number): void {
    this.next += n;
    if (this.next >= this.size) {
      this.next -= this.size;
      this.wrap ^= 1;
    }
  }

  /** TX: header (zeros unless given) + frame, spread over `chunks` descriptors. */
  postTx(frame: Uint8Array, opts: { chunks?: number; indirect?: boolean; hdr?: Uint8Array } = {}): Chain {
    const all = new Uint8Array(this.hdrLen + frame.length);
    if (opts.hdr) all.set(opts.hdr);
    all.set(frame, this.hdrLen);
    const chunks = opts.chunks ?? 1;
    const per = Math.ceil(all.length / chunks);
    const bufs: Array<[number, number]> = [];
    for (let k = 0; k < chunks; k++) {
      const part = all.subarray(k * per, Math.min(all.length, (k + 1) * per));
      const a = this.alloc(part.length);
      this.write(a, part);
      bufs.push([a, part.length]);
    }
    return this.postChain(bufs, false, opts);
  }

  /** RX: `chunks` writable buffers of `len` bytes each. */
  postRx(len: number, opts: { chunks?: number; indirect?: boolean } = {}): Chain {
    const bufs: Array<[number, number]> = [];
    for (let k = 0; k < (opts.chunks ?? 1); k++) {
      const a = this.alloc(len);
      this.mem8.fill(0xee, a, a + len);
      bufs.push([a, len]);
    }
    return this.postChain(bufs, true, opts);
  }

  /**
   * Read used elements from the next used slot while they are used for the driver's wrap.
   * `inOrder`: an element names the last of a batch of chains in posting order.
   */
  collectUsed(inOrder = false): UsedElem[] {
    const out: UsedElem[] = [];
    for (;;) {
      const o = this.o.descGpa + DESC_SIZE * this.usedNext;
      const f = this.dv.getUint16(o + 14, true);
      const used = (f & F_USED) !== 0;
      const avail = (f & F_AVAIL) !== 0;
      if (used !== avail || used !== (this.usedWrap === 1)) break;
      const id = this.dv.getUint16(o + 12, true);
      const len = this.dv.getUint32(o + 8, true);
      const retire = (x: number): void => {
        const c = this.chains.get(x);
        if (!c) throw new Error(`used id ${x} not outstanding`);
        this.chains.delete(x);
        this.order.splice(this.order.indexOf(x), 1);
        this.freeIds.push(x);
        this.usedNext += c.slots;
        if (this.usedNext >= this.size) {
          this.usedNext -= this.size;
          this.usedWrap ^= 1;
        }
      };
      if (inOrder) {
        for (;;) {
          const x = this.order[0];
          if (x === undefined) throw new Error(`in-order used id ${id} not outstanding`);
          retire(x);
          out.push({ id: x, len: x === id ? len : 0 });
          if (x === id) break;
        }
      } else {
        retire(id);
        out.push({ id, len });
      }
    }
    return out;
  }

  /** An RX chain's first `len` bytes, gathered from its buffers. */
  chainBytes(c: Chain, len: number): Uint8Array {
    const out = new Uint8Array(len);
    let at = 0;
    for (const [a, l] of c.bufs) {
      const n = Math.min(l, len - at);
      if (n <= 0) break;
      out.set(this.mem8.subarray(a, a + n), at);
      at += n;
    }
    return out;
  }

  /** Driver event suppression: flags 0 enable, 1 disable, 2 desc (off_wrap). */
  setDriverEvent(flags: number, offWrap = 0): void {
    this.dv.setUint16(this.o.drvGpa, offWrap, true);
    this.dv.setUint16(this.o.drvGpa + 2, flags, true);
  }

  deviceEvent(): { offWrap: number; flags: number } {
    return { offWrap: this.dv.getUint16(this.o.devGpa, true), flags: this.dv.getUint16(this.o.devGpa + 2, true) };
  }
}
