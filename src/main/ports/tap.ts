/**
 * A TAP uplink port, the control side (issue 22): the kernel device opened by the addon
 * (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, 12-byte header, non-blocking) and its two rings handed
 * to the workers like a guest's: index 1 (frames from the kernel) polled by the worker the
 * placement names for "name:0", index 0 (frames towards the kernel) a destination for every
 * worker. The data side is src/workers/tap-port.ts.
 *
 * The device is the operator's to configure (addresses, up, MTU, namespace); vhostfwd only
 * holds it open. A port that cannot be opened fails start() with a TapOpenError naming the
 * device and the cause, as a vhost-user socket that cannot be made does.
 */
import { F } from '../../protocol/constants';
import { CTRL_INTS, CTRL_MAX_FRAME, QueueFeatures, STATS_SLOTS, VringDesc } from '../../shared/types';
import { native } from '../../native';
import { safeClose } from '../connection';
import { Dataplane, newDeviceId } from '../device';
import { log } from '../log';

/** linux/if_tun.h: what TUNSETOFFLOAD lets the kernel hand us */
const TUN_F_CSUM = 0x01;
const TUN_F_TSO4 = 0x02;
const TUN_F_TSO6 = 0x04;
const TUN_F_TSO_ECN = 0x08;

const bit = (n: number): number => 2 ** n;
/** frames from the kernel with offloads on: a partial checksum, TCP GSO (ECN too) */
const FROM_KERNEL = bit(F.VIRTIO_NET_F_CSUM) | bit(F.VIRTIO_NET_F_HOST_TSO4) | bit(F.VIRTIO_NET_F_HOST_TSO6) | bit(F.VIRTIO_NET_F_HOST_ECN);
/**
 * frames towards the kernel with offloads on: what tun's virtio_net_hdr_to_skb takes and the
 * stack then handles itself. UFO is left to the software path (offload.ts fragments it).
 */
const TO_KERNEL = bit(F.VIRTIO_NET_F_GUEST_CSUM) | bit(F.VIRTIO_NET_F_GUEST_TSO4) | bit(F.VIRTIO_NET_F_GUEST_TSO6) | bit(F.VIRTIO_NET_F_GUEST_ECN);

export class TapOpenError extends Error {
  constructor(readonly iface: string, cause: NodeJS.ErrnoException) {
    const code = cause.code ?? '';
    const why: Record<string, string> = {
      ENOENT: '/dev/net/tun does not exist (modprobe tun)',
      EACCES: 'permission denied (CAP_NET_ADMIN is needed to create a TAP)',
      EPERM: 'not permitted (CAP_NET_ADMIN is needed to create a TAP)',
      EBUSY: 'the device is held by another process (or is not a TAP with a virtio-net header)',
      EINVAL: 'the name is taken by a device that is not a TAP of this kind',
    };
    super(`interface ${iface}: cannot open TAP ${iface}: ${why[code] ?? cause.message}${code ? ` (${cause.syscall ?? 'open'} ${code})` : ''}`);
    this.name = 'TapOpenError';
  }
}

/** A takeover's record of a TAP port: the fd (its index in the message) and the counters. */
export interface TapSnapshot {
  name: string;
  fd: number;
  /** STATS_SLOTS doubles of ring 0 (towards the kernel) and ring 1 (from it) */
  stats: [number[], number[]];
}

export interface TapOptions {
  name: string;
  /** offloads both ways (TUNSETOFFLOAD; the header handed over): default true */
  offloads: boolean;
  /** frames towards the kernel over mtu + 18 are dropped as too big; null: no limit */
  mtu: number | null;
}

export class TapPort {
  readonly id = newDeviceId();
  /** the TAP fd, -1 when closed */
  fd = -1;
  /** ring 0: towards the kernel; ring 1: from it (the guest's RX / TX naming) */
  readonly ringStats: [SharedArrayBuffer, SharedArrayBuffer] = [new SharedArrayBuffer(STATS_SLOTS * 8), new SharedArrayBuffer(STATS_SLOTS * 8)];
  private started = false;
  /** why a worker gave the port up (the device went away), null while it runs */
  failed: string | null = null;

  constructor(readonly opts: TapOptions, readonly port: number, private readonly dp: Dataplane) {}

  get name(): string {
    return this.opts.name;
  }

  get running(): boolean {
    return this.started;
  }

  /** Open the device (or take `fd`, a takeover's) and start both rings, towards the kernel first. */
  async start(fd = -1): Promise<void> {
    if (fd >= 0) {
      const info = native.tapInfo(fd);
      if (info.name !== this.name || info.vnetHdr !== 12) throw new Error(`interface ${this.name}: the fd handed over is TAP ${info.name} with a ${info.vnetHdr}-byte header`);
      this.fd = fd;
    } else {
      try {
        this.fd = native.tapOpen(this.name, this.opts.offloads ? TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN : 0).fd;
      } catch (e) {
        throw new TapOpenError(this.name, e as NodeJS.ErrnoException);
      }
    }
    this.failed = null;
    this.started = true;
    await this.dp.startRing(this.ring(0), [], null);
    await this.dp.startRing(this.ring(1), [], null);
    log.info('tap port up', { iface: this.name, port: this.port, fd: this.fd, offloads: this.opts.offloads });
  }

  private ring(index: number): VringDesc {
    const ctrl = new SharedArrayBuffer(CTRL_INTS * 4);
    if (index === 0 && this.opts.mtu !== null) new Int32Array(ctrl)[CTRL_MAX_FRAME] = this.opts.mtu + 18;
    const features: QueueFeatures = {
      hdrLen: 12, mrgRxbuf: true, eventIdx: false, indirect: false, inOrder: false, packed: false, logAll: false,
      netBits: this.opts.offloads ? (index === 0 ? TO_KERNEL : FROM_KERNEL) : 0,
    };
    const nowhere = { region: 0, offset: 0 };
    return {
      device: this.id, port: this.port, index, size: 0, desc: nowhere, avail: nowhere, used: nowhere, logUsedGpa: -1, kickFd: -1, callFd: -1,
      features, ctrl, stats: this.ringStats[index], uplink: { kind: 'tap', fd: this.fd },
    };
  }

  /** A worker gave a ring up (the device went away): stop the other ring too, keep the fd for stop(). */
  onBroken(index: number, reason: string): void {
    if (!this.started || this.failed !== null) return;
    this.failed = `ring ${index}: ${reason}`;
    log.error('tap port failed: its rings stopped (remove and add it, or restart, once the device is back)', { iface: this.name, reason: this.failed });
    void this.dp.stopRing(this.id, 1 - index).catch(() => undefined);
  }

  /** Stop the rings, from the kernel first, and close the fd (the kernel deletes a non-persistent TAP). */
  async stop(): Promise<void> {
    if (this.started) {
      this.started = false;
      await this.dp.stopRing(this.id, 1);
      await this.dp.stopRing(this.id, 0);
    }
    safeClose(this.fd);
    this.fd = -1;
  }

  /** Takeover, old side: stop both rings (at a burst boundary); the fd stays open for the message. */
  async quiesce(): Promise<void> {
    if (!this.started) return;
    this.started = false;
    await this.dp.stopRing(this.id, 1);
    await this.dp.stopRing(this.id, 0);
  }

  /** Takeover failed, old side: run again on the same fd. */
  async resume(): Promise<void> {
    if (this.started || this.fd < 0) return;
    this.started = true;
    await this.dp.startRing(this.ring(0), [], null);
    await this.dp.startRing(this.ring(1), [], null);
  }

  /** Takeover succeeded, old side: the successor holds the device; let go of the fd. */
  abandon(): void {
    this.started = false;
    safeClose(this.fd);
    this.fd = -1;
  }

  snapshot(fd: (n: number) => number): TapSnapshot {
    return { name: this.name, fd: fd(this.fd), stats: [Array.from(new Float64Array(this.ringStats[0])), Array.from(new Float64Array(this.ringStats[1]))] };
  }

  /** New side: the counters continue where the old process left them. */
  restoreStats(s: TapSnapshot['stats']): void {
    s.forEach((vals, i) => new Float64Array(this.ringStats[i]).set(vals.slice(0, STATS_SLOTS)));
  }
}
