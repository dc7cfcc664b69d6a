/**
 * The one place a guest ring's queue object is made, by its negotiated format: the poller,
 * the in-process bench (bench/dataplane.ts) and the tests get the same class for the same
 * features (issue 19). Uplink queues (TAP, AF_PACKET, AF_XDP) are made by the poller from
 * their own descriptors.
 */
import type { VringDesc } from '../shared/types';
import type { DirtyLog } from './dirty-log';
import type { GuestMemory } from './guest-memory';
import { PackedVirtqueue } from './packed-ring';
import type { RingQueue } from './ring-format';
import { Virtqueue } from './virtqueue';

/** VIRTIO_F_RING_PACKED negotiated: a packed ring (packed-ring.ts), else a split ring (virtqueue.ts). */
export function openQueue(vd: VringDesc, mem: GuestMemory, log: DirtyLog): RingQueue {
  return vd.features.packed === true ? new PackedVirtqueue(vd, mem, log) : new Virtqueue(vd, mem, log);
}
