/**
 * Where a virtqueue's parts lie and how big they are, and how a ring position is encoded in
 * GET/SET_VRING_BASE: one module for the backend's control plane (device.ts checks a ring's
 * addresses), its workers (virtqueue.ts, packed-ring.ts build their views) and the frontend
 * (src/frontend lays rings out), so that no two of them can disagree on a ring's size.
 */

/**
 * Split-ring sizes in bytes (virtio 1.x 2.7): flags, idx, the entries, and the event field
 * (used_event after the avail ring, avail_event after the used ring) only with
 * VIRTIO_RING_F_EVENT_IDX. A ring that ends where its region ends is valid without EVENT_IDX.
 */
export const descTableBytes = (size: number): number => 16 * size;
export const availRingBytes = (size: number, eventIdx: boolean): number => 4 + 2 * size + (eventIdx ? 2 : 0);
export const usedRingBytes = (size: number, eventIdx: boolean): number => 4 + 8 * size + (eventIdx ? 2 : 0);

/** Packed ring (virtio 1.1 2.8): bytes of the driver and of the device event suppression area (off_wrap u16, flags u16). */
export const PACKED_EVENT_AREA = 4;

/**
 * A packed ring's position as GET/SET_VRING_BASE carry it (and as QEMU encodes it): the
 * index in bits 0..14, the wrap counter in bit 15. Also the workers' ctrl slots.
 */
export function packedIndex(idx: number, wrap: number): number {
  return (idx & 0x7fff) | ((wrap & 1) << 15);
}
