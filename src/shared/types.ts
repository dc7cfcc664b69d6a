/**
 * What the main thread hands to worker threads. Everything here must survive
 * structured clone (postMessage): numbers, strings and SharedArrayBuffers only.
 */

/** One guest memory region, already mapped by the main thread. */
export interface RegionDesc {
  /** guest physical address of the region's first byte. */
  gpa: number;
  /** region size in bytes. */
  size: number;
  /** the frontend's (QEMU's) virtual address of the first byte (ring addresses use it). */
  uva: number;
  /** mapping of the region's fd; the region starts at `sabOffset` inside it. */
  sab: SharedArrayBuffer;
  sabOffset: number;
}

/** Where a ring part lives once translated: region index and byte offset inside that region. */
export interface RingLocation {
  region: number;
  /** offset from the region start (not from the SAB start). */
  offset: number;
}

/** Negotiated features that change the dataplane's behaviour. */
export interface QueueFeatures {
  /** virtio-net header length: 12 with MRG_RXBUF or VERSION_1, else 10. */
  hdrLen: number;
  mrgRxbuf: boolean;
  eventIdx: boolean;
  indirect: boolean;
  /** VIRTIO_F_IN_ORDER negotiated: a TX burst returns its buffers with one used entry (its last). */
  inOrder: boolean;
  /**
   * VIRTIO_F_RING_PACKED negotiated: the ring is one descriptor ring (desc) with the driver
   * (avail) and device (used) event suppression areas, and the CTRL_LAST_* slots hold
   * index | wrap counter << 15 (packed-ring.ts).
   */
  packed?: boolean;
  /** VHOST_F_LOG_ALL negotiated: log every guest write while a log is set. */
  logAll: boolean;
  /**
   * The negotiated feature bits 0..31 (the virtio-net device bits: CSUM, GUEST_*, HOST_*),
   * for the offload paths (src/workers/offload.ts): one number, tested with a mask.
   */
  netBits: number;
}

/** Per-vring shared state: an Int32Array over `ctrl` (see CTRL_*; slot 0 is unused). */
/** spin lock taken by whichever worker enqueues into an RX vring (several TX queues may target it). */
export const CTRL_LOCK = 1;
export const CTRL_LAST_AVAIL = 2;
export const CTRL_LAST_USED = 3;
/** used idx value at the last interrupt we sent (for EVENT_IDX). */
export const CTRL_SIGNALLED_USED = 4;
/**
 * RX rings: the largest frame (Ethernet header included, virtio-net header not) the port
 * takes: its MTU + 14 + 4 (one VLAN tag), 0 = no limit (no MTU configured). Written by the
 * main thread at ring start and on NET_SET_MTU, read by the workers once per burst.
 */
export const CTRL_MAX_FRAME = 5;
/**
 * 1 while the ring's last "do not notify" was decided without a fence and waits for the
 * poller's sweep (src/workers/ring-core.ts): CTRL_SIGNALLED_USED is still the start of the
 * entries not decided on. Written by the ring's owner (RX: under the lock).
 */
export const CTRL_NOTIFY_UNSURE = 6;
export const CTRL_INTS = 8;

/** Per-queue counters: a Float64Array over `stats` (doubles so workers add without BigInt). */
export const ST_PACKETS = 0;
export const ST_BYTES = 1;
export const ST_DROP_NO_BUF = 2;
export const ST_DROP_NO_DEST = 3;
export const ST_DROP_TOO_BIG = 4;
export const ST_ERRORS = 5;
export const ST_NOTIFY = 6;
export const ST_KICKS = 7;
export const ST_DIRTY_PAGES = 8;
/** non-empty bursts: dequeueBurst calls that took packets (tx), enqueueBurst calls that delivered (rx); packets / bursts = mean burst size */
export const ST_BURSTS = 9;
/** tx: frames the VLAN bridge dropped at ingress (tag spoofing on an access port, a VID the trunk does not carry, untagged without a native VLAN, a tag cut short) */
export const ST_DROP_VLAN = 10;
/** TX: frames dropped for a virtio-net header that does not hold up (src/workers/offload.ts) */
export const ST_DROP_BAD_OFFLOAD = 11;
/** RX: TSO/UFO frames handed over with their header (the guest took GUEST_TSO4/6 or GUEST_UFO) */
export const ST_GSO_PASSED = 12;
/** RX: TSO/UFO frames cut into segments by the worker (the guest did not take them) */
export const ST_GSO_SEGMENTED = 13;
/** RX: partial checksums (NEEDS_CSUM) completed by the worker */
export const ST_CSUM_SW = 14;
export const STATS_SLOTS = 16;

/** A vring handed to a worker. */
export interface VringDesc {
  /** globally unique device (interface connection) id. */
  device: number;
  /** interface (port) index in the forwarder. */
  port: number;
  /** virtqueue index within the device: even = guest RX (we enqueue), odd = guest TX (we dequeue). */
  index: number;
  /** queue size (power of two, <= 32768). */
  size: number;
  desc: RingLocation;
  avail: RingLocation;
  used: RingLocation;
  /** guest physical address of the used ring for dirty logging, or -1 when VHOST_VRING_F_LOG is not set. */
  logUsedGpa: number;
  kickFd: number;
  callFd: number;
  features: QueueFeatures;
  /** Int32Array(CTRL_INTS) over this SAB; CTRL_LAST_AVAIL / CTRL_LAST_USED are initialised by the main thread. */
  ctrl: SharedArrayBuffer;
  /** Float64Array(STATS_SLOTS) over this SAB. */
  stats: SharedArrayBuffer;
  /**
   * An uplink port's ring instead of a guest's (issue 22): index 1 = frames from the device
   * (polled, the worker sleeps on `fd`), index 0 = frames towards it. No guest memory: the
   * worker makes its own frame buffers; desc/avail/used, kickFd and callFd are unused.
   */
  uplink?: { kind: 'tap'; fd: number } | { kind: 'af_packet'; fd: number; ring: SharedArrayBuffer; ringBytes: number; frameSize: number; frames: number; txData: number; hdrLen: number } | XskDesc;
}

/** One AF_XDP ring mapped into a SAB: byte offsets of its producer, consumer and flags words and of its descriptors. */
export interface XskRing {
  sab: SharedArrayBuffer;
  producer: number;
  consumer: number;
  flags: number;
  desc: number;
}

/**
 * An AF_XDP port's socket, UMEM and rings (src/workers/xsk-port.ts): `frames` UMEM frames of
 * `frameSize` bytes, the first `entries` (frames / 2) for frames from the device (fill, RX),
 * the rest towards it (TX, completion), rings of `entries`. `pool` (Int32Array, 2 + 2 x
 * entries words: XSK_POOL_*) holds the frames no ring holds, as two stacks: RX chunks kept
 * out of the fill ring, free TX frames; it lives beside the rings, not in a worker, so a
 * queue opened again on another worker finds them where the last one left them.
 */
export interface XskDesc {
  kind: 'af_xdp';
  fd: number;
  umem: SharedArrayBuffer;
  frameSize: number;
  frames: number;
  entries: number;
  rx: XskRing;
  tx: XskRing;
  fill: XskRing;
  comp: XskRing;
  pool: SharedArrayBuffer;
}

/** XskDesc.pool: word 0 the RX spare stack's depth, word 1 the TX free stack's, then the two stacks (entries words each). */
export const XSK_POOL_RX_TOP = 0;
export const XSK_POOL_TX_TOP = 1;
export const XSK_POOL_STACKS = 2;

/** The dirty log of one device (SET_LOG_BASE), as a SAB. Bit n of the log = guest page n (gpa >> 12). */
export interface LogDesc {
  sab: SharedArrayBuffer;
  /** byte offset of the log start inside the SAB (mmap_offset). */
  offset: number;
  /** log size in bytes (mmap_size). */
  size: number;
}
