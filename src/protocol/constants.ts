/**
 * Names and numbers from QEMU docs/interop/vhost-user.rst, the virtio 1.x spec
 * and linux/virtio_net.h. One place so that control plane, dataplane and the
 * test frontend never disagree.
 */

/** vhost-user front-end requests (message `request` field). */
export enum Req {
  GET_FEATURES = 1,
  SET_FEATURES = 2,
  SET_OWNER = 3,
  RESET_OWNER = 4,
  SET_MEM_TABLE = 5,
  SET_LOG_BASE = 6,
  SET_LOG_FD = 7,
  SET_VRING_NUM = 8,
  SET_VRING_ADDR = 9,
  SET_VRING_BASE = 10,
  GET_VRING_BASE = 11,
  SET_VRING_KICK = 12,
  SET_VRING_CALL = 13,
  SET_VRING_ERR = 14,
  GET_PROTOCOL_FEATURES = 15,
  SET_PROTOCOL_FEATURES = 16,
  GET_QUEUE_NUM = 17,
  SET_VRING_ENABLE = 18,
  SEND_RARP = 19,
  NET_SET_MTU = 20,
  SET_BACKEND_REQ_FD = 21,
  IOTLB_MSG = 22,
  SET_VRING_ENDIAN = 23,
  GET_CONFIG = 24,
  SET_CONFIG = 25,
  CREATE_CRYPTO_SESSION = 26,
  CLOSE_CRYPTO_SESSION = 27,
  POSTCOPY_ADVISE = 28,
  POSTCOPY_LISTEN = 29,
  POSTCOPY_END = 30,
  GET_INFLIGHT_FD = 31,
  SET_INFLIGHT_FD = 32,
  GPU_SET_SOCKET = 33,
  RESET_DEVICE = 34,
  VRING_KICK = 35,
  GET_MAX_MEM_SLOTS = 36,
  ADD_MEM_REG = 37,
  REM_MEM_REG = 38,
  SET_STATUS = 39,
  GET_STATUS = 40,
}


/** The request's name from the spec (the enum's reverse mapping), or UNKNOWN(n). */
export function reqName(r: number): string {
  return Req[r] ?? `UNKNOWN(${r})`;
}

/** Header flags. */
export const FLAG_VERSION = 0x1;
export const FLAG_VERSION_MASK = 0x3;
export const FLAG_REPLY = 0x4;
export const FLAG_NEED_REPLY = 0x8;
export const HEADER_SIZE = 12;
/** Largest payload we accept (the memory table is 8 + 8*32 = 264; config space is 256 + 12). */
export const MAX_PAYLOAD = 4096;
export const MAX_FDS = 8;
/** Regions in one SET_MEM_TABLE (VHOST_MEMORY_BASELINE_NREGIONS: the wire struct holds 8). */
export const MAX_REGIONS = 8;
/**
 * Slots with CONFIGURE_MEM_SLOTS (GET_MAX_MEM_SLOTS, ADD_MEM_REG): 509, as libvhost-user
 * (VHOST_USER_MAX_RAM_SLOTS) and rust-vmm offer, so memory hot-plug and virtio-mem find
 * free slots; KVM's own limit is 509 user slots on x86 once its private slots are counted.
 */
export const MAX_MEM_SLOTS = 509;

/** SET_VRING_KICK/CALL/ERR payload: bits 0-7 index, bit 8 = no fd (polling / no notification). */
export const VRING_IDX_MASK = 0xff;
export const VRING_NOFD_MASK = 0x100;
/** SET_VRING_ADDR flags: used ring writes must be logged at log_guest_addr. */
export const VHOST_VRING_F_LOG = 1;

/** Largest split queue size allowed by virtio (and by QEMU). */
export const MAX_QUEUE_SIZE = 32768;

/** Feature bits (virtio-net device, virtio transport, vhost). Numbers are bit positions. */
export const F = {
  VIRTIO_NET_F_CSUM: 0,
  VIRTIO_NET_F_GUEST_CSUM: 1,
  VIRTIO_NET_F_MTU: 3,
  VIRTIO_NET_F_MAC: 5,
  VIRTIO_NET_F_GUEST_TSO4: 7,
  VIRTIO_NET_F_GUEST_TSO6: 8,
  VIRTIO_NET_F_GUEST_ECN: 9,
  VIRTIO_NET_F_GUEST_UFO: 10,
  VIRTIO_NET_F_HOST_TSO4: 11,
  VIRTIO_NET_F_HOST_TSO6: 12,
  VIRTIO_NET_F_HOST_ECN: 13,
  VIRTIO_NET_F_HOST_UFO: 14,
  VIRTIO_NET_F_MRG_RXBUF: 15,
  VIRTIO_NET_F_STATUS: 16,
  VIRTIO_NET_F_CTRL_VQ: 17,
  VIRTIO_NET_F_GUEST_ANNOUNCE: 21,
  VIRTIO_NET_F_MQ: 22,
  VIRTIO_F_NOTIFY_ON_EMPTY: 24,
  VIRTIO_F_ANY_LAYOUT: 27,
  VHOST_F_LOG_ALL: 26,
  VIRTIO_RING_F_INDIRECT_DESC: 28,
  VIRTIO_RING_F_EVENT_IDX: 29,
  VHOST_USER_F_PROTOCOL_FEATURES: 30,
  VIRTIO_F_VERSION_1: 32,
  VIRTIO_F_IOMMU_PLATFORM: 33,
  VIRTIO_F_RING_PACKED: 34,
  VIRTIO_F_IN_ORDER: 35,
} as const;
export type FeatureName = keyof typeof F;

/** vhost-user protocol feature bits. */
export const PF = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  NET_MTU: 4,
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  BACKEND_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
} as const;
export type ProtocolFeatureName = keyof typeof PF;

export function bit(n: number): bigint {
  return 1n << BigInt(n);
}
export function hasBit(mask: bigint, n: number): boolean {
  return (mask & bit(n)) !== 0n;
}

/**
 * Features the backend offers by default (each can be masked per interface).
 * VIRTIO_F_IN_ORDER: every ring is consumed and returned strictly in avail order (one burst
 * loop per ring, used entries written in the order the chains were taken, drops included;
 * test/in-order.test.ts), which is all the feature asks of a device. A driver that knows it
 * (DPDK's virtio PMD) then hands out descriptors in ring order and frees TX buffers by count:
 * descriptors come four to a cache line instead of scattered, +10-16 % at 64 B in the
 * testpmd loop (bench/NOTES.md #24). DPDK's vhost library offers it too.
 */
/**
 * Checksum and segmentation offloads (issue 18), offered by default; config `offloads: false`
 * masks them all. HOST_*: the guest may send frames with a partial checksum (NEEDS_CSUM) or
 * up to 64 KiB with gso_type set (src/workers/offload.ts validates every field). GUEST_*: we
 * may hand such frames over as they are; towards a port that did not take them the worker
 * completes the checksum and cuts TCP into gso_size segments itself.
 */
export const OFFLOAD_FEATURES: readonly FeatureName[] = [
  'VIRTIO_NET_F_CSUM',
  'VIRTIO_NET_F_GUEST_CSUM',
  'VIRTIO_NET_F_HOST_TSO4',
  'VIRTIO_NET_F_HOST_TSO6',
  'VIRTIO_NET_F_HOST_ECN',
  'VIRTIO_NET_F_HOST_UFO',
  'VIRTIO_NET_F_GUEST_TSO4',
  'VIRTIO_NET_F_GUEST_TSO6',
  'VIRTIO_NET_F_GUEST_ECN',
  'VIRTIO_NET_F_GUEST_UFO',
];

export const DEFAULT_FEATURES: readonly FeatureName[] = [
  ...OFFLOAD_FEATURES,
  'VIRTIO_NET_F_MRG_RXBUF',
  'VIRTIO_F_ANY_LAYOUT',
  'VIRTIO_F_VERSION_1',
  'VIRTIO_F_IN_ORDER',
  'VIRTIO_RING_F_INDIRECT_DESC',
  'VIRTIO_RING_F_EVENT_IDX',
  'VIRTIO_NET_F_GUEST_ANNOUNCE',
  'VIRTIO_NET_F_MQ',
  'VHOST_F_LOG_ALL',
  'VHOST_USER_F_PROTOCOL_FEATURES',
];
export const DEFAULT_PROTOCOL_FEATURES: readonly ProtocolFeatureName[] = [
  'MQ', 'LOG_SHMFD', 'RARP', 'REPLY_ACK', 'NET_MTU', 'CONFIGURE_MEM_SLOTS', 'STATUS', 'RESET_DEVICE',
];

/** Split virtqueue layout (virtio 1.x 2.7). */
export const VRING_DESC_F_NEXT = 1;
export const VRING_DESC_F_WRITE = 2;
export const VRING_DESC_F_INDIRECT = 4;
export const VRING_AVAIL_F_NO_INTERRUPT = 1;
export const VRING_USED_F_NO_NOTIFY = 1;
export const DESC_SIZE = 16;

/** Packed virtqueue layout (virtio 1.1 2.8): descriptor flags and event suppression. */
export const VRING_PACKED_DESC_F_AVAIL = 1 << 7;
export const VRING_PACKED_DESC_F_USED = 1 << 15;
export const RING_EVENT_FLAGS_ENABLE = 0;
export const RING_EVENT_FLAGS_DISABLE = 1;
export const RING_EVENT_FLAGS_DESC = 2;

/** Dirty log granularity (VHOST_LOG_PAGE). */
export const LOG_PAGE = 4096;

/** virtio-net header sizes: legacy without MRG_RXBUF is 10, otherwise 12 (num_buffers). */
export const NET_HDR_LEGACY = 10;
export const NET_HDR_MRG = 12;

/** struct virtio_net_hdr (virtio 1.x 5.1.6): flags and gso_type values. */
export const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
export const VIRTIO_NET_HDR_GSO_NONE = 0;
export const VIRTIO_NET_HDR_GSO_TCPV4 = 1;
export const VIRTIO_NET_HDR_GSO_UDP = 3;
export const VIRTIO_NET_HDR_GSO_TCPV6 = 4;
export const VIRTIO_NET_HDR_GSO_ECN = 0x80;
