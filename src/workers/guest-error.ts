/**
 * A guest broke a virtio rule. Thrown before anything is written outside the guest's own
 * buffers; the worker detaches the ring and the control plane resets the device.
 */
export class GuestError extends Error {
  /** the rule that was broken, stable text (tests and logs match on it) */
  readonly reason: string;

  constructor(reason: string, detail?: string) {
    super(detail ? `${reason}: ${detail}` : reason);
    this.name = 'GuestError';
    this.reason = reason;
  }
}
