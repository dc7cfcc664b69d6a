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
 * 3. the store that hands the burst over, seq-cst (split: used->idx; packed: the first
 *    element's flags, so the driver, which reads used elements in order, takes the burst
 *    whole). It is also the fence of the notification check in 5;
 * 4. log bits: every mark of the burst (bytes, headers, used writes, the index or flags), all
 *    after the writes they cover, and before the ring can stop (burst-log.ts, NOTES.md #19);
 * 5. the notification decision, against the driver's suppression (flags or EVENT_IDX).
 */
import type { CopyQueue } from './bulk-copy';
import type { BurstLog } from './burst-log';

/** A ring format's part of publishBurst (steps 2, 3 and 5). */
export interface UsedPublisher {
  /** Step 2: write the pending used elements except the publishing store; queue their log spans when logging. */
  writeUsed(logging: boolean): void;
  /** Step 3: the seq-cst store that makes them visible to the driver. */
  storeUsed(): void;
  /** Step 5: whether the driver asked to be notified of what was just published. */
  notifyDue(): boolean;
}

/** Publish one burst in the order above; true when the guest should be notified. */
export function publishBurst(ring: UsedPublisher, bulk: CopyQueue | null, blog: BurstLog, logging: boolean, stats: Float64Array): boolean {
  bulk?.run();
  ring.writeUsed(logging);
  ring.storeUsed();
  blog.commit(logging, stats);
  return ring.notifyDue();
}

/**
 * The virtio spec's vring_need_event: notify when `event` (the driver's used_event, or the
 * off of its packed event area) lies in [old, now), the entries published since the last
 * decision; 16-bit arithmetic, so it holds across the index wrap.
 */
export function needEvent(event: number, now: number, old: number): boolean {
  return ((now - event - 1) & 0xffff) < ((now - old) & 0xffff);
}
