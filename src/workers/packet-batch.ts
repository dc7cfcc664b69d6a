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
  }

  reset(): void {
    this.count = 0;
    this.nSegs = 0;
    this.nUsed = 0;
  }
}
