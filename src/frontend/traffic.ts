/**
 * Credit-based traffic both ways between two synthetic guests: the one generator of the
 * tests, the benchmark and the demo. Credit-based as a transport would do it: never more
 * frames in flight per direction than the receiver keeps RX buffers posted, so any loss is
 * the dataplane's, not a slow receiver's. Counts, not time: a run sends exactly the frames
 * asked for (or runs until stop()), and each received frame can be compared byte for byte
 * with the one sent in its position.
 */
import { setImmediate as nextTurn } from 'node:timers/promises';
import { RxPacket } from './driver-ring';
import { SyntheticGuest, frame } from './guest';

/** One direction of the traffic: what its sender sent and its receiver got. */
export class Flow {
  sent = 0;
  /** test frames received (a duplicate counts again) */
  received = 0;
  /** received frames not byte-exact equal to the frame sent in their position, and frames that are not test frames (with `verify`) */
  mismatched = 0;
  /**
   * One past the newest frame received (frame numbers from 0). Frames arrive in order, so
   * `sent - next` are in flight: a frame lost (say in a migration window) does not hold
   * credit for ever.
   */
  next = 0;
  /** frames received after a later one */
  reordered = 0;
  /** frames received a second time (counted only with `recordSeqs`) */
  duplicates = 0;
  /** numbers of the frames received (with `recordSeqs`) */
  readonly seen: Set<number> | null;
  /** frames sent and not yet received, oldest first (with `verify`: memory stays flat over long runs) */
  private readonly pending: Uint8Array[] = [];

  constructor(
    private readonly seqBase: number,
    private readonly verify: boolean,
    record: boolean,
  ) {
    this.seen = record ? new Set() : null;
  }

  get inFlight(): number {
    return this.sent - this.next;
  }

  /** Sequence number (as written into the frame) of the next frame to send, i + its number. */
  seq(i: number): number {
    return (this.seqBase + this.sent + i) >>> 0;
  }

  /** `frames` went out (the first n of a batch). */
  sentFrames(batch: readonly Uint8Array[], n: number): void {
    if (this.verify) for (let i = 0; i < n; i++) this.pending.push(batch[i]);
    this.sent += n;
  }

  /** Account one received frame; false when it is not a test frame (see frame()). */
  take(p: RxPacket): boolean {
    const d = p.data;
    if (d.length < 18 || d[12] !== 0x88 || d[13] !== 0xb5) {
      if (this.verify) this.mismatched++;
      return false;
    }
    const n = (new DataView(d.buffer, d.byteOffset, d.byteLength).getUint32(14, false) - this.seqBase) >>> 0;
    this.received++;
    if (this.seen) {
      if (this.seen.has(n)) this.duplicates++;
      this.seen.add(n);
    }
    if (n + 1 < this.next) this.reordered++;
    if (n + 1 > this.next) this.next = Math.min(n + 1, this.sent);
    if (this.verify) {
      const want = this.pending.shift();
      if (!want || !Buffer.from(d.buffer, d.byteOffset, d.byteLength).equals(Buffer.from(want.buffer, want.byteOffset, want.byteLength))) this.mismatched++;
    }
    return true;
  }
}

export interface TrafficOptions {
  /** frame sizes in bytes, cycled */
  sizes: readonly number[];
  /** frames to send each way; default: no limit, until stop() */
  frames?: number;
  /**
   * most frames in flight per direction; default 3/4 of the RX buffers the receivers keep
   * posted, divided by the buffers the largest frame takes
   */
  credit?: number;
  /** most frames per send (default 32) */
  burst?: number;
  /** compare each frame received with the one sent in its position (default true) */
  verify?: boolean;
  /** keep the numbers of the frames received (Flow.seen, Flow.duplicates) */
  recordSeqs?: boolean;
  /** the number written into B->A's first frame (A->B starts at 0): tells the directions apart */
  seqBaseBA?: number;
  /** a received frame that is not a test frame (a RARP, say), with the guest that got it */
  onOther?: (at: 'a' | 'b', p: RxPacket) => void;
}

type Side = 'a' | 'b';

/** Traffic both ways between guests `a` and `b` on queue pair 0. */
export class Traffic {
  readonly ab: Flow;
  readonly ba: Flow;
  private readonly frames: number;
  private readonly credit: number;
  private readonly burst: number;
  /** sides on hold: they neither send nor receive (a guest being migrated) */
  private readonly held = { a: false, b: false };
  private sending = false;
  private loop: Promise<void> | null = null;
  private stopAt = 0;
  private drainMs = 0;

  constructor(
    public a: SyntheticGuest,
    public b: SyntheticGuest,
    private readonly o: TrafficOptions,
  ) {
    const verify = o.verify ?? true;
    this.ab = new Flow(0, verify, o.recordSeqs ?? false);
    this.ba = new Flow(o.seqBaseBA ?? 0, verify, o.recordSeqs ?? false);
    this.frames = o.frames ?? Infinity;
    this.burst = o.burst ?? 32;
    // In frames, so that in-flight frames never need more RX buffers than the guest posted.
    const perFrame = Math.max(...o.sizes.map((s) => Math.ceil((s + 12) / Math.min(a.rxBufLen, b.rxBufLen))));
    const posted = Math.min(a.opts.rxPosted ?? a.queueSize, b.opts.rxPosted ?? b.queueSize);
    this.credit = o.credit ?? Math.max(1, Math.floor((posted * 3) / 4 / perFrame));
  }

  /** Put a side on hold (it neither sends nor receives) or take it off hold. */
  hold(side: Side, on: boolean): void {
    this.held[side] = on;
  }

  /** One round: each side sends what its credit allows and takes its TX buffers back, then each receives. */
  step(): void {
    this.transmit(this.a, this.b, this.ab, 'a');
    this.transmit(this.b, this.a, this.ba, 'b');
    if (!this.held.b) this.collect(this.b, this.ab, 'b');
    if (!this.held.a) this.collect(this.a, this.ba, 'a');
  }

  /** Receive only, on each side not on hold. */
  receive(): void {
    if (!this.held.a) this.collect(this.a, this.ba, 'a');
    if (!this.held.b) this.collect(this.b, this.ab, 'b');
  }

  private transmit(src: SyntheticGuest, dst: SyntheticGuest, f: Flow, from: Side): void {
    if (this.held[from]) return;
    const room = Math.min(this.burst, this.credit - f.inFlight, this.frames - f.sent);
    if (this.sending && room > 0) {
      const batch: Uint8Array[] = [];
      for (let i = 0; i < room; i++) batch.push(frame(dst.mac, src.mac, this.o.sizes[(f.sent + i) % this.o.sizes.length], f.seq(i)));
      f.sentFrames(batch, src.send(0, batch));
    }
    src.reclaim(0);
  }

  private collect(g: SyntheticGuest, f: Flow, at: Side): void {
    for (const p of g.receive(0)) if (!f.take(p)) this.o.onOther?.(at, p);
  }

  /** Every frame asked for went each way and arrived, exactly once each. */
  complete(): boolean {
    const n = this.frames;
    return this.ab.sent === n && this.ba.sent === n && this.ab.received === n && this.ba.received === n;
  }

  /**
   * Send `frames` frames each way and receive them all, or stop at `deadlineMs` (then
   * the flows say how far it got). How long it takes does not matter. True when complete().
   */
  async run(deadlineMs = 60000): Promise<boolean> {
    const end = Date.now() + deadlineMs;
    this.sending = true;
    while ((this.ab.received < this.frames || this.ba.received < this.frames) && Date.now() < end) {
      this.step();
      await nextTurn();
    }
    this.sending = false;
    return this.complete();
  }

  /** Send and receive in the background until stop(); start() after stop() goes on counting. */
  start(): void {
    if (this.sending) return;
    this.sending = true;
    this.loop = this.spin();
  }

  private async spin(): Promise<void> {
    for (;;) {
      this.step();
      if (!this.sending) {
        const drained = this.ab.received === this.ab.sent && this.ba.received === this.ba.sent;
        if (drained || Date.now() - this.stopAt >= this.drainMs) return; // lost frames: the caller reports them
      }
      await nextTurn();
    }
  }

  /** Stop sending, then receive until every frame in flight arrived or `drainMs` passed. */
  async stop(drainMs = 10000): Promise<void> {
    if (this.sending) {
      this.sending = false;
      this.stopAt = Date.now();
      this.drainMs = drainMs;
    }
    await this.loop;
  }
}
