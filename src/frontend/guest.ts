/**
 * A synthetic guest: our TypeScript vhost-user frontend with a virtio-net "driver".
 * It owns its guest memory (a memfd, gpa 0), lays out split rings with DriverRing,
 * negotiates with the backend the way QEMU does, and injects / collects packets.
 * Used by the tests, the benchmark and the demo.
 */
import { native } from '../native';
import { F, PF, Req, bit, hasBit } from '../protocol/constants';
import { availRingBytes, descTableBytes } from '../protocol/ring-layout';
import { Frontend } from './frontend';
import { DriverRing, RxPacket } from './driver-ring';
import { VhostUserClient } from './vhost-user-client';

/** virtio device status after a driver came up: ACKNOWLEDGE | DRIVER | DRIVER_OK | FEATURES_OK (virtio 1.x 2.1) */
const VIRTIO_STATUS_DRIVER_UP = 0x01 | 0x02 | 0x04 | 0x08;

/** Frontend virtual address of gpa 0 (any value works: the backend only translates it). */
export const UVA_BASE = 0x7f0000000000;
const RING_AREA = 0x100000;
const RING_STRIDE = 0x10000;

export interface GuestOptions {
  socket: string;
  mac?: Uint8Array;
  queuePairs?: number;
  queueSize?: number;
  memSize?: number;
  /** features to accept when offered (default: VERSION_1, MRG_RXBUF, EVENT_IDX, INDIRECT, ANY_LAYOUT, MQ, PROTOCOL_FEATURES) */
  want?: bigint;
  /** negotiate VHOST_USER_F_PROTOCOL_FEATURES (default true) */
  protocol?: boolean;
  /** pass memory with ADD_MEM_REG instead of SET_MEM_TABLE (CONFIGURE_MEM_SLOTS) */
  memSlots?: boolean;
  /**
   * with memSlots: pass the memory as memSize / slotSize regions of slotSize bytes each (one
   * ADD_MEM_REG per slot, all over the one memfd), as a guest with hot-plugged DIMMs or
   * virtio-mem has many; rings and buffers are laid out so none spans two slots
   */
  slotSize?: number;
  rxBufLen?: number;
  /** RX chains kept posted per ring (default queueSize) */
  rxPosted?: number;
  /** an already connected client (the backend connected to us in client mode) */
  client?: VhostUserClient;
}

export const DEFAULT_WANT =
  bit(F.VIRTIO_F_VERSION_1) | bit(F.VIRTIO_NET_F_MRG_RXBUF) | bit(F.VIRTIO_RING_F_EVENT_IDX) | bit(F.VIRTIO_RING_F_INDIRECT_DESC) |
  bit(F.VIRTIO_F_ANY_LAYOUT) | bit(F.VIRTIO_NET_F_MQ) | bit(F.VHOST_USER_F_PROTOCOL_FEATURES) | bit(F.VIRTIO_NET_F_GUEST_ANNOUNCE);

export class SyntheticGuest {
  readonly memSize: number;
  readonly memFd: number;
  readonly sab: SharedArrayBuffer;
  readonly mem: Uint8Array;
  readonly rx: DriverRing[] = [];
  readonly tx: DriverRing[] = [];
  readonly kickFds: number[] = [];
  readonly callFds: number[] = [];
  features = 0n;
  protocolFeatures = 0n;
  logFd = -1;
  /** pages the driver (the guest itself) wrote since logging started: QEMU tracks those on its own */
  readonly guestDirty = new Set<number>();
  logSab: SharedArrayBuffer | null = null;
  readonly mac: Uint8Array;
  readonly queuePairs: number;
  readonly queueSize: number;
  readonly rxBufLen: number;

  /** typed requests over `client` (src/frontend/frontend.ts) */
  readonly fe: Frontend;

  private constructor(readonly client: VhostUserClient, readonly opts: GuestOptions) {
    this.fe = new Frontend(client);
    this.memSize = opts.memSize ?? 16 << 20;
    this.queuePairs = opts.queuePairs ?? 1;
    this.queueSize = opts.queueSize ?? 256;
    this.rxBufLen = opts.rxBufLen ?? 2048;
    this.mac = opts.mac ?? Uint8Array.from([0x52, 0x54, 0, 0, 0, 1]);
    this.memFd = native.memfdCreate('synthetic-guest', this.memSize);
    this.sab = native.mmap(this.memFd, this.memSize, 0);
    this.mem = new Uint8Array(this.sab);
  }

  static async start(opts: GuestOptions): Promise<SyntheticGuest> {
    const client = opts.client ?? (await VhostUserClient.connect(opts.socket));
    const g = new SyntheticGuest(client, opts);
    await g.negotiate(null);
    return g;
  }

  /**
   * The destination of a live migration: a new guest on `socket` whose memory is `image`
   * (the source's memory as the migration stream rebuilt it) and whose driver state is
   * the source's (as QEMU carries device state). Rings resume at `bases` (GET_VRING_BASE
   * on the source), then SEND_RARP tells switches where the guest went.
   */
  static async migrate(src: SyntheticGuest, socket: string, image: Uint8Array, bases: readonly number[]): Promise<SyntheticGuest> {
    const client = await VhostUserClient.connect(socket);
    const g = new SyntheticGuest(client, { ...src.opts, socket, client: undefined, mac: src.mac });
    g.mem.set(image);
    await g.negotiate({ rx: src.rx, tx: src.tx, bases });
    if (hasBit(g.protocolFeatures, PF.RARP)) await g.sendRarp();
    return g;
  }

  /** Ring i: even = RX (device writes), odd = TX. */
  ringGpa(i: number): { desc: number; avail: number; used: number } {
    const base = RING_AREA + i * RING_STRIDE;
    const n = this.queueSize;
    return { desc: base, avail: base + descTableBytes(n), used: base + descTableBytes(n) + ((availRingBytes(n, true) + 4095) & ~4095) };
  }

  /** The memory regions this guest passes with ADD_MEM_REG: one, or one per slotSize bytes. */
  slots(): Array<{ gpa: number; size: number; uva: number; mmapOffset: number }> {
    const size = this.opts.slotSize ?? this.memSize;
    if (size % 4096 !== 0 || this.memSize % size !== 0) throw new Error(`slotSize ${size} must be whole pages dividing memSize ${this.memSize}`);
    return Array.from({ length: this.memSize / size }, (_, k) => ({ gpa: k * size, size, uva: UVA_BASE + k * size, mmapOffset: k * size }));
  }

  /** Ring i's buffer arena [bufBase, bufEnd) in guest physical addresses. */
  arena(i: number): { bufBase: number; bufEnd: number } {
    const start = RING_AREA + 2 * this.queuePairs * RING_STRIDE;
    const per = Math.floor((this.memSize - start) / (2 * this.queuePairs) / 4096) * 4096;
    return { bufBase: start + i * per, bufEnd: start + (i + 1) * per };
  }

  private async negotiate(resume: { rx: DriverRing[]; tx: DriverRing[]; bases: readonly number[] } | null): Promise<void> {
    const fe = this.fe;
    const mine = bit(PF.MQ) | bit(PF.LOG_SHMFD) | bit(PF.REPLY_ACK) | bit(PF.RARP) | bit(PF.CONFIGURE_MEM_SLOTS) | bit(PF.STATUS) | bit(PF.NET_MTU);
    const n = await fe.negotiate({ protocol: this.opts.protocol !== false, protocolWant: mine, want: this.opts.want ?? DEFAULT_WANT, queueCheck: this.queuePairs });
    this.protocolFeatures = n.protocolFeatures;
    this.features = n.features;
    const region = { gpa: 0, size: this.memSize, uva: UVA_BASE, mmapOffset: 0 };
    if (this.opts.memSlots) for (const r of this.slots()) await fe.addMemReg(r, this.memFd);
    else await fe.setMemTable([region], [this.memFd]);
    const hdrLen = hasBit(this.features, F.VIRTIO_NET_F_MRG_RXBUF) || hasBit(this.features, F.VIRTIO_F_VERSION_1) ? 12 : 10;
    for (let i = 0; i < 2 * this.queuePairs; i++) {
      const g = this.ringGpa(i);
      let ring: DriverRing;
      if (resume) {
        ring = (i & 1 ? resume.tx : resume.rx)[i >> 1];
        ring.rebind(this.mem);
      } else {
        ring = new DriverRing(this.mem, {
          size: this.queueSize, descGpa: g.desc, availGpa: g.avail, usedGpa: g.used, ...this.arena(i),
          hdrLen, mrgRxbuf: hasBit(this.features, F.VIRTIO_NET_F_MRG_RXBUF), boundary: this.opts.slotSize,
        });
        if ((i & 1) === 0) ring.postRx(this.opts.rxPosted ?? this.queueSize, this.rxBufLen);
      }
      (i & 1 ? this.tx : this.rx).push(ring);
      this.kickFds.push(native.eventfdCreate(0));
      this.callFds.push(native.eventfdCreate(0));
      await this.setupRing(i, resume ? resume.bases[i] : 0);
    }
    // with STATUS negotiated a backend may wait for DRIVER_OK before it starts (DPDK's vhost
    // library does: virtio_is_ready), as QEMU sends it once the guest driver is up
    if (hasBit(this.protocolFeatures, PF.STATUS)) await fe.setStatus(VIRTIO_STATUS_DRIVER_UP);
  }

  /** NET_SET_MTU, as QEMU sends it once the guest acked VIRTIO_NET_F_MTU */
  async setMtu(mtu: number): Promise<void> {
    await this.fe.netSetMtu(mtu);
  }

  /** Any request without a reply of its own (Frontend.request: acked with REPLY_ACK). */
  async ack(req: Req, payload: Uint8Array = Buffer.alloc(0), fds: readonly number[] = []): Promise<void> {
    await this.fe.request(req, payload, fds);
  }

  private logFlag = 0;

  async setupRing(i: number, base: number): Promise<void> {
    const fe = this.fe;
    await fe.setVringNum(i, this.queueSize);
    await fe.setVringBase(i, base);
    await this.setAddr(i);
    await fe.setVringKick(i, this.kickFds[i]);
    await fe.setVringCall(i, this.callFds[i]);
    if (hasBit(this.features, F.VHOST_USER_F_PROTOCOL_FEATURES)) await fe.setVringEnable(i, true);
  }

  private async setAddr(i: number): Promise<void> {
    const g = this.ringGpa(i);
    await this.fe.setVringAddr({ index: i, flags: this.logFlag, desc: UVA_BASE + g.desc, avail: UVA_BASE + g.avail, used: UVA_BASE + g.used, log: g.used });
  }

  /** Transmit packets on queue pair q (header prepended by the ring), then kick (unless `kick` is false). */
  send(q: number, packets: readonly Uint8Array[], kick = true): number {
    const ring = this.tx[q];
    ring.collectUsed();
    let sent = 0;
    for (const p of packets) {
      if (ring.freeDescCount() < 2) break;
      try {
        ring.postTx(p);
      } catch {
        break; // buffer arena full: the caller retries after the backend returns buffers
      }
      sent++;
    }
    if (sent > 0 && kick) native.eventfdWrite(this.kickFds[2 * q + 1], 1);
    return sent;
  }

  /** TX buffers the backend has returned so far (also frees them). */
  reclaim(q: number): number {
    return this.tx[q].collectUsed().length;
  }

  /** Packets received on queue pair q; RX buffers are reposted. */
  receive(q: number): RxPacket[] {
    const ring = this.rx[q];
    const pkts = ring.readRx();
    const used = pkts.reduce((s, p) => s + p.used.length, 0);
    if (used > 0) {
      ring.postRx(used, this.rxBufLen);
      native.eventfdWrite(this.kickFds[2 * q], 1);
    }
    native.eventfdRead(this.callFds[2 * q]);
    return pkts;
  }

  /** Record the pages the driver itself writes in guestDirty (QEMU tracks those on its own in a migration). */
  trackGuestWrites(): void {
    const track = (gpa: number, len: number) => {
      for (let p = Math.floor(gpa / 4096); p <= Math.floor((gpa + len - 1) / 4096); p++) this.guestDirty.add(p);
    };
    for (const r of [...this.rx, ...this.tx]) r.onWrite = track;
  }

  /** Start dirty logging as QEMU does for migration: LOG_ALL, SET_LOG_BASE, ring log addresses. */
  async startLogging(): Promise<Uint8Array> {
    const pages = Math.ceil(this.memSize / 4096);
    const size = Math.max(4096, Math.ceil(pages / 8 / 4096) * 4096);
    this.logFd = native.memfdCreate('dirty-log', size);
    this.logSab = native.mmap(this.logFd, size, 0);
    await this.fe.setFeatures(this.features | bit(F.VHOST_F_LOG_ALL));
    await this.fe.setLogBase({ mmapSize: size, mmapOffset: 0 }, this.logFd);
    this.logFlag = 1;
    this.trackGuestWrites();
    for (let i = 0; i < 2 * this.queuePairs; i++) await this.setAddr(i);
    return new Uint8Array(this.logSab);
  }

  async stopLogging(): Promise<void> {
    this.logFlag = 0;
    for (const r of [...this.rx, ...this.tx]) r.onWrite = null;
    await this.fe.setFeatures(this.features);
    for (let i = 0; i < 2 * this.queuePairs; i++) await this.setAddr(i);
  }

  /** Pages whose bit is set in the dirty log. */
  dirtyPages(): number[] {
    if (!this.logSab) return [];
    const log = new Uint8Array(this.logSab);
    const out: number[] = [];
    for (let i = 0; i < log.length; i++) {
      if (log[i] === 0) continue;
      for (let b = 0; b < 8; b++) if (log[i] & (1 << b)) out.push(i * 8 + b);
    }
    return out;
  }

  /** GET_VRING_BASE on every ring (the source side of a migration): returns last_avail_idx per ring. */
  async stopRings(): Promise<number[]> {
    const bases: number[] = [];
    for (let i = 0; i < 2 * this.queuePairs; i++) {
      if (hasBit(this.features, F.VHOST_USER_F_PROTOCOL_FEATURES)) await this.fe.setVringEnable(i, false);
      bases.push(await this.fe.getVringBase(i));
    }
    return bases;
  }

  /** SEND_RARP as QEMU does after a migration when the guest cannot announce itself. */
  async sendRarp(): Promise<void> {
    await this.fe.sendRarp(this.mac);
  }

  /** Canaries around every buffer the driver allocated that the backend overwrote. */
  brokenGuards(): number[] {
    return [...this.rx, ...this.tx].flatMap((r) => r.brokenGuards());
  }

  close(): void {
    this.client.close();
    for (const fd of [...this.kickFds, ...this.callFds, this.memFd, this.logFd]) {
      if (fd >= 0) {
        try {
          native.close(fd);
        } catch {
          // already closed
        }
      }
    }
  }
}

/** An Ethernet frame of `len` bytes from `src` to `dst`, payload a counter pattern tagged with `seq`. */
export function frame(dst: Uint8Array, src: Uint8Array, len: number, seq: number): Uint8Array {
  const f = new Uint8Array(len);
  f.set(dst, 0);
  f.set(src, 6);
  f[12] = 0x88;
  f[13] = 0xb5; // local experimental ethertype
  new DataView(f.buffer).setUint32(14, seq >>> 0, false);
  for (let i = 18; i < len; i++) f[i] = (seq + i) & 0xff;
  return f;
}

export function macOf(n: number): Uint8Array {
  return Uint8Array.from([0x52, 0x54, 0x00, 0x00, (n >> 8) & 0xff, n & 0xff]);
}
