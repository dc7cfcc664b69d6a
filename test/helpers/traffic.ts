/** Traffic for the tests: src/frontend/traffic.ts (credit-based, byte-exact) with tap assertions. */
import { Test } from 'tap';
import { SyntheticGuest } from '../../src/frontend/guest';
import { Flow, Traffic } from '../../src/frontend/traffic';

export interface PumpResult {
  ab: Flow;
  ba: Flow;
  /** every frame sent was received, both ways, before the deadline */
  complete: boolean;
}

/**
 * Send exactly `frames` frames each way (sizes cycling through `sizes`) and receive them
 * all, comparing each byte for byte with what was sent in its position. Counts, not time:
 * how long it takes does not matter, up to `deadlineMs` (then `complete` is false and the
 * flows say how far it got). Callers assert complete, received == sent and no mismatch
 * (assertFlows).
 */
export async function pump(a: SyntheticGuest, b: SyntheticGuest, frames: number, sizes: readonly number[], opts: { credit?: number; deadlineMs?: number } = {}): Promise<PumpResult> {
  const traffic = new Traffic(a, b, { frames, sizes, credit: opts.credit });
  const complete = await traffic.run(opts.deadlineMs ?? 60000);
  return { ab: traffic.ab, ba: traffic.ba, complete };
}

/** The usual assertions on a pump: all sent, all received, each exactly once, byte-exact. */
export function assertFlows(t: Test, r: PumpResult, frames: number, tag: string): void {
  t.ok(r.complete, `${tag}: all ${frames} frames each way sent and received before the deadline (${r.ab.received}, ${r.ba.received})`);
  t.equal(r.ab.received, r.ab.sent, `${tag}: A->B received == sent (${r.ab.sent})`);
  t.equal(r.ba.received, r.ba.sent, `${tag}: B->A received == sent (${r.ba.sent})`);
  t.equal(r.ab.mismatched + r.ba.mismatched, 0, `${tag}: every frame byte-exact, in order`);
}
