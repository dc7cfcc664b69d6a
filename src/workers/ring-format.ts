/**
 * What the poller, the offload paths and the tests call on a queue, whatever its ring format
 * (split: virtqueue.ts, packed: packed-ring.ts). Every method is per burst or per frame on a
 * slow path (offloads, RARP); the per-packet loops stay inside each format's class.
 */
import type { QueueFeatures } from '../shared/types';
import type { CopyQueue } from './bulk-copy';
import type { GuestMemory, RegionViews } from './guest-memory';
import type { PacketBatch } from './packet-batch';

/** The frame-at-a-time RX hooks of the offload paths (offload.ts), under acquire(). */
export interface RxFrameSink {
  readonly features: QueueFeatures;
  readonly stats: Float64Array;
  /** reserve buffers for a frame of `len` bytes, the header's first 10 bytes from `hdr` (null: zeros) */
  rxReserve(len: number, hdr: Uint8Array | null): boolean;
  rxPut(src: RegionViews, off: number, len: number): void;
  rxPutPacket(srcMem: GuestMemory, batch: PacketBatch, i: number, edit: number): void;
  rxPoke(pos: number, value: number): void;
  rxCommit(len: number): void;
}

export interface RingQueue extends RxFrameSink {
  readonly index: number;
  readonly size: number;
  readonly ctrl: Int32Array;
  bulk: CopyQueue | null;
  onBadOffload: ((reason: string, suppressed: number) => void) | null;
  setLogging(logAll: boolean, logUsedGpa: number): void;
  /** Read the position from ctrl again (a ring built parked goes live: its position came later). */
  reload(): void;
  // guest TX
  dequeueBurst(batch: PacketBatch, max: number): number;
  completeBurst(batch: PacketBatch): boolean;
  // guest RX
  acquire(): void;
  release(): void;
  abandon(): void;
  enqueueBurst(srcMem: GuestMemory, batch: PacketBatch, pick: Uint16Array | null, count: number): number;
  enqueueEdited(srcMem: GuestMemory, batch: PacketBatch, pick: Uint16Array, count: number, edits: Int32Array): number;
  enqueue(srcMem: GuestMemory, batch: PacketBatch, i: number, edit?: number): boolean;
  enqueueBytes(src: Uint8Array, off: number, len: number): boolean;
  flush(): boolean;
  // notifications
  /** a provisional "do not notify" waits for a fenced decision (ring-core.ts; RX: a hint read without the lock) */
  readonly notifyUnsure: boolean;
  /** decide a provisional "do not notify" again, after a fence (RX: under acquire()); true: notify now */
  recheckNotify(): boolean;
  enableNotify(): boolean;
  disableNotify(): void;
  readonly lastAvailIdx: number;
  readonly lastUsedIdx: number;
}
