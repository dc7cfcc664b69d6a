/**
 * Publishing a burst to the guest: the one order both ring formats follow (issue 19's queue
 * core), written once here. What differs by format is behind UsedPublisher, called once per
 * burst (never per packet: the per-packet loops stay in virtqueue.ts and packed-ring.ts).
 *
 * 1. bytes: the burst's queued copies run (bulk-copy.ts), so every byte is in the guest's
 *    buffers before anything tells the guest it is there;
 * 2. used writes: the used elements go in place (packed: ids and lengths, and the flags of all
 *    but the burst's first; split: written by the burst loops already), their log spans are
 *    queued with the burst's other marks;
 * 3. the store that hands the burst over (split: used->idx; packed: the first element's
 *    flags, so the driver, which reads used elements in order, takes the burst whole). It is
 *    seq-cst, the fence of 4 and 5, when logging or off x86; on x86 without logging it is a
 *    plain store, a release (ordering.ts), and 5 may be decided without a fence (below);
 * 4. log bits: every mark of the burst (bytes, headers, used writes, the index or flags), all
 *    after the writes they cover, and before the ring can stop (burst-log.ts, NOTES.md #19);
 * 5. the notification decision, against the driver's suppression (flags or EVENT_IDX).
 *
 * Deferred notification checks (bench/NOTES.md #55). The decision in 5 reads what the driver
 * wrote to suppress notifications; it must not be read before the store of 3 is visible, or
 * a driver that turns notifications on just then (store, full barrier, load of the index) and
 * we (store of the index, load of its flags) can miss each other, and it sleeps on entries it
 * was never told of. The fence that forbids it, the xchg of a seq-cst store, waits for every
 * store of the burst (its copies into lines the guest's core owns) to drain; at 64 B through
 * the bridge that wait was 31 % of the worker's cycles. So on x86 without logging:
 *  - a "notify" read without the fence is acted on (at worst an extra interrupt);
 *  - a "do not notify" read without it is provisional: the ring keeps the start of its window
 *    (the entries not yet decided on), counts itself in `notifyChecks.due`, and is decided
 *    again after a fence: at the poller's next sweep (an idle round, every SWEEP_ROUNDS
 *    rounds, before it sleeps, before a ring is detached), or at once, fenced, when the
 *    window would grow past `UNSURE_SPAN` entries.
 * A driver that polls (notifications off) costs one fence per sweep instead of per burst;
 * one that waits for its interrupt is told at its burst, or by the sweep a few rounds later.
 */
import type { CopyQueue } from './bulk-copy';
import type { BurstLog } from './burst-log';
import { TSO } from './ordering';

/** The rings of this thread with a provisional "do not notify" since the last sweep. */
export const notifyChecks = { due: 0 };

/** A provisional window wider than this many entries is decided at once, fenced. */
export const UNSURE_SPAN = 1024;

/** The poller's sweep of provisional decisions comes at least once per this many rounds. */
export const SWEEP_ROUNDS = 8;

const fenceWord = new Int32Array(new SharedArrayBuffer(4));

/** A full fence: every earlier store visible before any later load (an xchg on x86). */
export function fence(): void {
  Atomics.store(fenceWord, 0, 0);
}

/** A ring format's part of publishBurst (steps 2, 3 and 5). */
export interface UsedPublisher {
  /** Step 2: write the pending used elements except the publishing store; queue their log spans when logging. */
  writeUsed(logging: boolean): void;
  /** Step 3: the store that makes them visible to the driver: seq-cst when `fenced`, else a release. */
  storeUsed(fenced: boolean): void;
  /**
   * Step 5: whether the driver asked to be notified of what was just published. Not
   * `fenced`: a "no" is provisional (the window kept, notifyChecks.due counted).
   */
  notifyDue(fenced: boolean): boolean;
}

/** Publish one burst in the order above; true when the guest should be notified. */
export function publishBurst(ring: UsedPublisher, bulk: CopyQueue | null, blog: BurstLog, logging: boolean, stats: Float64Array): boolean {
  bulk?.run();
  ring.writeUsed(logging);
  // the log's bits must follow every write they cover: with logging, the fenced store
  const fenced = logging || !TSO;
  ring.storeUsed(fenced);
  blog.commit(logging, stats);
  return ring.notifyDue(fenced);
}

/**
 * The virtio spec's vring_need_event: notify when `event` (the driver's used_event, or the
 * off of its packed event area) lies in [old, now), the entries published since the last
 * decision; 16-bit arithmetic, so it holds across the index wrap.
 */
export function needEvent(event: number, now: number, old: number): boolean {
  return ((now - event - 1) & 0xffff) < ((now - old) & 0xffff);
}
