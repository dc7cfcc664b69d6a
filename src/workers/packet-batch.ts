/**
 * A burst of packets dequeued from one guest TX ring, described in place (no bytes copied):
 * packet i = segments segStart[i] .. segStart[i] + segCount[i] - 1, each (segRegion, segOffset,
 * segLen) in the source GuestMemory, virtio-net header already skipped. Allocated once per
 * worker; reset by every dequeueBurst.
 */

/** Packets per burst (DPDK's MAX_PKT_BURST). */
export const BURST = 32;
/** Default segment budget per packet (Linux uses at most MAX_SKB_FRAGS + 2 = 19). */
const SEGS_PER_PACKET = 32;

export class PacketBatch {
  readonly capacity: number;
  readonly segCapacity: number;

  /** packets in the batch */
  count = 0;
  /** descriptor head id of each packet */
  readonly head: Uint16Array;
  /** payload bytes of each packet (header excluded) */
  readonly pktLen: Uint32Array;
  readonly segStart: Uint32Array;
  readonly segCount: Uint32Array;

  /** segments used */
  nSegs = 0;
  /** region index in the source GuestMemory (up to MAX_MEM_SLOTS = 509: 16 bits) */
  readonly segRegion: Uint16Array;
  /** offset inside that region (double: regions may exceed 4 GiB) */
  readonly segOffset: Float64Array;
  readonly segLen: Uint32Array;

  /**
   * Every head consumed by the burst, in avail order, to be returned by completeBurst: the
   * packets' heads plus chains dropped at dequeue (too many segments for the batch).
   */
  nUsed = 0;
  readonly usedHead: Uint16Array;

  /**
   * The virtio-net header of each packet as the guest wrote it (struct virtio_net_hdr, virtio
   * 1.x 5.1.6), read at dequeue: flags and gso_type always; hdr_len, gso_size, csum_start and
   * csum_offset only when flags or gso_type is non-zero (else stale). src/workers/offload.ts
   * validates them before any is used.
   */
  readonly flags: Uint8Array;
  readonly gsoType: Uint8Array;
  readonly hdrLen: Uint16Array;
  readonly gsoSize: Uint16Array;
  readonly csumStart: Uint16Array;
  readonly csumOffset: Uint16Array;
  /** GSO frames, set by validation: where the IP header, the TCP/UDP header and the headers end */
  readonly l3Off: Uint8Array;
  readonly l4Off: Uint16Array;
  readonly l4End: Uint16Array;
  /** packets of the burst with a non-zero flags or gso_type (0: no offload work at all) */
  nOffload = 0;

  constructor(capacity = BURST, segCapacity = capacity * SEGS_PER_PACKET) {
    this.capacity = capacity;
    this.segCapacity = segCapacity;
    this.head = new Uint16Array(capacity);
    this.pktLen = new Uint32Array(capacity);
    this.segStart = new Uint32Array(capacity);
    this.segCount = new Uint32Array(capacity);
    this.segRegion = new Uint16Array(segCapacity);
    this.segOffset = new Float64Array(segCapacity);
    this.segLen = new Uint32Array(segCapacity);
    this.usedHead = new Uint16Array(capacity);
    this.flags = new Uint8Array(capacity);
    this.gsoType = new Uint8Array(capacity);
    this.hdrLen = new Uint16Array(capacity);
    this.gsoSize = new Uint16Array(capacity);
    this.csumStart = new Uint16Array(capacity);
    this.csumOffset = new Uint16Array(capacity);
    this.l3Off = new Uint8Array(capacity);
    this.l4Off = new Uint16Array(capacity);
    this.l4End = new Uint16Array(capacity);
  }

  /**
   * Empty the batch. flags and gsoType are left all zero: a dequeue stores them only for a
   * packet that has one set (and counts it in nOffload), so a burst without offloads costs no
   * store for them; one with offloads is cleared here (32 bytes each, rarely).
   */
  reset(): void {
    this.count = 0;
    this.nSegs = 0;
    this.nUsed = 0;
    if (this.nOffload > 0) {
      this.flags.fill(0);
      this.gsoType.fill(0);
      this.nOffload = 0;
    }
  }
}
