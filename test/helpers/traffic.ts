/** Credit-based traffic between two synthetic guests: never more in flight than RX buffers. */
import { Test } from 'tap';
import { SyntheticGuest, frame } from '../../src/frontend/guest';

interface Flow {
  sent: number;
  received: number;
  mismatched: number;
}

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
  // In frames, so that in-flight frames never need more RX buffers than the guest posted.
  const perFrame = Math.max(...sizes.map((s) => Math.ceil((s + 12) / Math.min(a.rxBufLen, b.rxBufLen))));
  const credit = opts.credit ?? Math.max(1, Math.floor((Math.min(a.queueSize, b.queueSize) * 3) / 4 / perFrame));
  const ab: Flow = { sent: 0, received: 0, mismatched: 0 };
  const ba: Flow = { sent: 0, received: 0, mismatched: 0 };
  const end = Date.now() + (opts.deadlineMs ?? 60000);
  const sentAB: Uint8Array[] = [];
  const sentBA: Uint8Array[] = [];
  const step = (src: SyntheticGuest, dst: SyntheticGuest, f: Flow, log: Uint8Array[]) => {
    const room = Math.min(32, credit - (f.sent - f.received), frames - f.sent);
    if (room > 0) {
      const batch: Uint8Array[] = [];
      for (let i = 0; i < room; i++) batch.push(frame(dst.mac, src.mac, sizes[(f.sent + i) % sizes.length], f.sent + i));
      const n = src.send(0, batch);
      for (let i = 0; i < n; i++) log.push(batch[i]);
      f.sent += n;
    }
    for (const p of dst.receive(0)) {
      const want = log[f.received];
      if (!want || Buffer.compare(Buffer.from(p.data), Buffer.from(want)) !== 0) f.mismatched++;
      f.received++;
    }
  };
  const done = () => ab.received >= frames && ba.received >= frames;
  while (!done() && Date.now() < end) {
    step(a, b, ab, sentAB);
    step(b, a, ba, sentBA);
    await new Promise((r) => setImmediate(r));
  }
  return { ab, ba, complete: ab.sent === frames && ba.sent === frames && ab.received === frames && ba.received === frames };
}

/** The usual assertions on a pump: all sent, all received, each exactly once, byte-exact. */
export function assertFlows(t: Test, r: PumpResult, frames: number, tag: string): void {
  t.ok(r.complete, `${tag}: all ${frames} frames each way sent and received before the deadline (${r.ab.received}, ${r.ba.received})`);
  t.equal(r.ab.received, r.ab.sent, `${tag}: A->B received == sent (${r.ab.sent})`);
  t.equal(r.ba.received, r.ba.sent, `${tag}: B->A received == sent (${r.ba.sent})`);
  t.equal(r.ab.mismatched + r.ba.mismatched, 0, `${tag}: every frame byte-exact, in order`);
}
