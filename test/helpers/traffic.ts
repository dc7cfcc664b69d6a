/** Credit-based traffic between two synthetic guests: never more in flight than RX buffers. */
import { SyntheticGuest, frame } from '../../src/frontend/guest';

export interface Flow {
  sent: number;
  received: number;
  mismatched: number;
}

/** Run traffic both ways for `ms`, with frame sizes cycling through `sizes`. */
export async function pump(a: SyntheticGuest, b: SyntheticGuest, ms: number, sizes: readonly number[], credit?: number): Promise<{ ab: Flow; ba: Flow }> {
  // In frames, so that in-flight frames never need more RX buffers than the guest posted.
  const perFrame = Math.max(...sizes.map((s) => Math.ceil((s + 12) / Math.min(a.rxBufLen, b.rxBufLen))));
  credit ??= Math.max(1, Math.floor((Math.min(a.queueSize, b.queueSize) * 3) / 4 / perFrame));
  const ab: Flow = { sent: 0, received: 0, mismatched: 0 };
  const ba: Flow = { sent: 0, received: 0, mismatched: 0 };
  const end = Date.now() + ms;
  const sentAB: Uint8Array[] = [];
  const sentBA: Uint8Array[] = [];
  const step = (src: SyntheticGuest, dst: SyntheticGuest, f: Flow, log: Uint8Array[]) => {
    const room = Math.min(32, (credit as number) - (f.sent - f.received));
    if (room > 0 && Date.now() < end) {
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
  let idle = 0;
  while (Date.now() < end || ab.received < ab.sent || ba.received < ba.sent) {
    const before = ab.received + ba.received;
    step(a, b, ab, sentAB);
    step(b, a, ba, sentBA);
    if (ab.received + ba.received === before && Date.now() >= end && ++idle > 2000) break;
    await new Promise((r) => setImmediate(r));
  }
  return { ab, ba };
}
