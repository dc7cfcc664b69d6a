/**
 * Forced dirty logging (config `forceLog`, `--force-log`; bench/run.ts measures it as
 * "vhostfwd + forced log"): the workers log dirty pages whatever was negotiated, so a
 * benchmark sees what logging during a live migration costs without migrating.
 *
 * The device knows nothing of it: it consults a LogPolicy (device.ts) for a log of the
 * backend's own when the frontend sent none (SET_LOG_BASE). The workers' side (logging on
 * rings that did not negotiate VHOST_F_LOG_ALL, paused and resumed at run time) is the
 * worker pool's `forceLog` (worker-pool.ts, workers/poller.ts).
 */
import { DeviceLog, LogPolicy } from './device';
import { log } from './log';

/**
 * One device's forced log. Without a frontend log (e.g. DPDK virtio-user never sends
 * SET_LOG_BASE) the workers get a backend-owned log: a plain SharedArrayBuffer of one bit
 * per 4 KiB page of guest memory (gpaEnd / 4096 / 8 bytes, rounded up). Nobody reads it;
 * it exists so forced logging costs what real logging costs. The device consults it only
 * while the frontend's log is absent (a later SET_LOG_BASE replaces it); a memory table
 * change drops it and the next ring start allocates one that covers the new memory.
 */
class ForcedLog implements LogPolicy {
  log: DeviceLog | null = null;
  /**
   * The used ring is logged at its guest address, as a migration's ring log address
   * (VHOST_VRING_F_LOG, log_guest_addr) would have it: it costs what real logging costs.
   */
  readonly logsUsedRing = true;

  constructor(private readonly device: string) {}

  ringStarting(gpaEnd: number): void {
    if (this.log) return;
    const n = Math.max(8, Math.ceil(gpaEnd / 4096 / 8));
    this.log = { sab: new SharedArrayBuffer(n), offset: 0, size: n, mmapSize: n, mmapOffset: 0 };
    log.info('forced dirty logging into a backend-allocated log', { dev: this.device, size: n });
  }

  drop(): void {
    // running rings keep the log they hold; rings started later get a new one
    this.log = null;
  }
}

/** DeviceOptions.logPolicy for config `forceLog`: one forced log per device (per connection). */
export function forcedLog(device: string): LogPolicy {
  return new ForcedLog(device);
}
