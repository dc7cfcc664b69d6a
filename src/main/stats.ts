/**
 * The counters the forwarder exposes (per interface, queue and direction) and what the
 * metrics server reads: an interface of its own, so that metrics.ts depends on the numbers
 * and not on Forwarder (which starts the metrics server).
 */

export interface QueueStats {
  iface: string;
  queue: number;
  /** 'rx' = towards the guest (we enqueue), 'tx' = from the guest (we dequeue) */
  dir: 'rx' | 'tx';
  packets: number;
  bytes: number;
  dropNoBuffer: number;
  dropNoDest: number;
  dropTooBig: number;
  /** tx: frames refused by the port's VLAN rules (tag spoofing, a VID not carried, no native VLAN, a cut tag) */
  dropVlan: number;
  /** tx: frames whose virtio-net header failed validation (src/workers/offload.ts) */
  dropBadOffload: number;
  /** rx: TSO/UFO frames handed over whole with their header */
  gsoPassed: number;
  /** rx: TSO/UFO frames segmented by the worker for a guest without GUEST_TSO4/6 or GUEST_UFO */
  gsoSegmented: number;
  /** rx: partial checksums (NEEDS_CSUM) completed by the worker */
  csumSoftware: number;
  errors: number;
  notifications: number;
  kicks: number;
  dirtyPages: number;
  /** non-empty bursts (packets / bursts = mean burst size; 32 at most) */
  bursts: number;
}

/** What the metrics server reads; the Forwarder is one. */
export interface StatsSource {
  stats(): QueueStats[];
  /** worker threads, and each one's restarts and stalls */
  readonly pool: { readonly size: number; restarts(): number[]; stalls(): number[] };
  readonly interfaces: ReadonlyArray<{
    readonly name: string;
    readonly opts: { readonly socket: string; readonly mode?: string };
    readonly device: { readonly features: bigint } | null;
    readonly connections: number;
    readonly resets: readonly string[];
  }>;
}
