/**
 * One frame at a time into any RX sink, through its hooks (ring-format.ts RxFrameSink): guest
 * rings (rx-buffers.ts) and uplink slots (slot-writer.ts) alike. A frame with an offload goes
 * to offload.ts (handed over or done in software); any other is reserved for its length as
 * delivered, put with its VLAN tag edit, and committed. The burst loops' inline paths take
 * the common frame themselves and come here for the rest.
 */
import { ST_BURSTS } from '../shared/types';
import { GuestMemory, makeViews } from './guest-memory';
import { enqueueOffload } from './offload';
import { PacketBatch } from './packet-batch';
import type { RxFrameSink } from './ring-format';
import { editDelta } from './vlan';

/**
 * Packet i of `batch` (dequeued from a ring of `srcMem`) into `sink`, with its tag edit. False
 * when the sink had no room (counted there as ST_DROP_NO_BUF or ST_DROP_TOO_BIG); nothing is
 * consumed then.
 */
export function enqueueFrame(sink: RxFrameSink, srcMem: GuestMemory, batch: PacketBatch, i: number, edit: number): boolean {
  // offloads: handed over or done in software, per the sink's features; the tag edit shifts
  // the header's offsets there
  if (batch.flags[i] !== 0) return enqueueOffload(sink, srcMem, batch, i, edit);
  const len = batch.pktLen[i] + editDelta(edit);
  if (!sink.rxReserve(len, null)) return false;
  sink.rxPutPacket(srcMem, batch, i, edit);
  sink.rxCommit(len);
  return true;
}

/**
 * A burst with VLAN tag edits (vlan.ts): `edits[i]` (indexed like the batch) is made while
 * packet i is copied. Its own loop, so that the untagged burst loops stay as they were.
 */
export function enqueueEditedFrames(sink: RxFrameSink, srcMem: GuestMemory, batch: PacketBatch, pick: Uint16Array, count: number, edits: Int32Array): number {
  let done = 0;
  for (let k = 0; k < count; k++) {
    const i = pick[k];
    if (enqueueFrame(sink, srcMem, batch, i, edits[i])) done++;
  }
  if (done > 0) sink.stats[ST_BURSTS]++;
  return done;
}

/** A frame made by the backend itself (e.g. RARP). Rare: builds temporary views. */
export function enqueueBytesFrame(sink: RxFrameSink, src: Uint8Array, off: number, len: number): boolean {
  if (!sink.rxReserve(len, null)) return false;
  sink.rxPut(makeViews(src.buffer, src.byteOffset, src.byteLength), off, len);
  sink.rxCommit(len);
  return true;
}
