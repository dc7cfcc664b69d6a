/**
 * Deferred bulk copies for one worker: RX fast-path copies are queued as
 * [srcId, srcOff, dstId, dstOff, len] and run by the addon in one call per burst
 * (memcpy instead of a Buffer.copy per packet; a plain V8 callback with the job array bound
 * once, since an N-API call costs several times a V8 callback: bench/NOTES.md #20). Virtqueue.publish() runs the queue
 * before used->idx moves, so the guest never sees a used entry whose bytes are not there.
 * With dirty logging the buffers' pages are marked in publish() too, after the queue ran
 * (bits follow bytes).
 */
export interface BulkCopier {
  copyRegister(sab: SharedArrayBuffer): number;
  copyUnregister(id: number): void;
  copyBatch(jobs: Float64Array, count: number): void;
  copyBind(jobs: Float64Array): number;
  copyRun(id: number, count: number): number;
}

/**
 * Copies at least this long go through the queue on the uplinks' loops (xsk-port.ts,
 * packet-port.ts, slot-writer.ts) and the frame-at-a-time path (rx-buffers.ts). The guest
 * rings' burst loops queue every copy whatever its length (bench/NOTES.md #51).
 */
export const BULK_MIN = 256;
const JOBS = 256;

export class CopyQueue {
  private readonly jobs = new Float64Array(5 * JOBS);
  private n = 0;
  /** the jobs array's binding in the addon: run() passes two integers, not the array */
  private readonly bound: number;
  constructor(readonly copier: BulkCopier) {
    this.bound = copier.copyBind(this.jobs);
  }

  add(srcId: number, srcOff: number, dstId: number, dstOff: number, len: number): void {
    if (this.n === JOBS) this.run();
    const j = this.jobs;
    const o = this.n * 5;
    j[o] = srcId;
    j[o + 1] = srcOff;
    j[o + 2] = dstId;
    j[o + 3] = dstOff;
    j[o + 4] = len;
    this.n++;
  }

  /**
   * Forget the queued jobs: the ring they were for failed mid-burst and is being detached.
   * Run later, they could land in memory whose region id a newer ring has been given.
   */
  discard(): void {
    this.n = 0;
  }

  run(): void {
    if (this.n === 0) return;
    const n = this.n;
    this.n = 0;
    // copyRun never throws; when it refuses the batch (nothing copied), copyBatch checks the
    // same jobs again and throws the named error (ERANGE) for the ring's error handling.
    if (this.copier.copyRun(this.bound, n) !== 0) this.copier.copyBatch(this.jobs, n);
  }
}
