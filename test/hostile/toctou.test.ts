/**
 * CVE-2020-14375 class (descriptors re-read after validation): a second thread plays a guest
 * vCPU rewriting its RX descriptors while the backend processes them. Each descriptor flips,
 * as fast as the racer can write, between a good buffer and values that are invalid (crossing
 * region 0's end into region 1, crossing region 1's end into memory that is not the guest's,
 * outside guest memory, a length of 4 GiB - 1, a loop, an indirect flag without the feature).
 * Whatever mix of old and new fields the backend happens to read, it must either write inside
 * a posted buffer or stop with a GuestError: region 1 and the bytes after guest memory stay
 * intact, and nothing else is ever thrown. Both the burst fast path and the general path run.
 *
 * A mix of whole fields is a descriptor the guest could have written, and writing its buffer
 * is no fault when it lies in guest memory. So the bad values are chosen so that no mix of
 * them with each other or with the good ones is a buffer anywhere but in a posted one: the
 * addresses that cross a region end start 8 bytes before it and every length is over 8
 * (the old values let 64 bytes before region 1's end mix with the loop's 64-byte length: a
 * valid buffer there). Fields are whole on both sides: the racer stores each with one 32-bit
 * store, and the backend loads each with one (desc-walker.ts). A DataView read is four byte
 * loads until it is compiled, and byte mixes land anywhere: CI stop 39 failed here, and the
 * old walker, stressed, wrote a packet at 0x1d000 (the bytes of 0xd000 and 0x1ffc0 mixed).
 * The second test races TX descriptors the same way: no byte from outside guest memory may
 * reach the receiving guest.
 */
import t from 'tap';
import { Worker } from 'node:worker_threads';
import { GuestError } from '../../src/workers/guest-error';
import { PacketBatch } from '../../src/workers/packet-batch';
import { CopyQueue } from '../../src/workers/bulk-copy';
import { native } from '../../src/native';
import { DESC_SIZE, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE } from '../../src/protocol/constants';
import { BACKGROUND, R0_SIZE, R1_SIZE, SAB_SIZE, layout, makeGuest, makeQueue, pattern } from '../../kit/vq-harness';

const RACER = `
const { workerData } = require('node:worker_threads');
const { sab, descOff, good, evil, stop } = workerData;
const u32 = new Uint32Array(sab);
const st = new Int32Array(stop);
const n = good.length / 4;
let k = 0;
let flips = 0;
Atomics.store(st, 2, 1); // running
while (Atomics.load(st, 0) === 0) {
  for (let i = 0; i < n; i++) {
    const o = (descOff + ${DESC_SIZE} * i) >> 2;
    const e = (k++ % (evil.length / 4)) * 4;
    // field by field, so the backend can also catch any mix of old and new values; each
    // field whole (one 32-bit store), as a vCPU writes it
    Atomics.store(u32, o, evil[e]);
    Atomics.store(u32, o + 1, evil[e + 1]);
    Atomics.store(u32, o + 2, evil[e + 2]);
    Atomics.store(u32, o + 3, evil[e + 3]);
    for (let s = 0; s < 30; s++) Atomics.load(st, 0); // hold the bad values a moment
    Atomics.store(u32, o, good[4 * i]);
    Atomics.store(u32, o + 1, good[4 * i + 1]);
    Atomics.store(u32, o + 2, good[4 * i + 2]);
    Atomics.store(u32, o + 3, good[4 * i + 3]);
    flips++;
  }
}
Atomics.store(st, 1, flips);
`;

/** The racer thread and the tally of outcomes, shared by both tests. */
class Race {
  private worker: Worker | null = null;
  /** [0] stop, [1] flips at the end, [2] the racer is running */
  private readonly stop = new SharedArrayBuffer(12);
  accepted = 0;
  rejected = 0;
  readonly unexpected: string[] = [];
  readonly reasons = new Set<string>();

  get started(): boolean {
    return this.worker !== null;
  }

  /** Flip the descriptors at descOff of sab between `good` and each of `evil` in turn. */
  async start(sab: SharedArrayBuffer, descOff: number, good: Uint32Array, evil: Uint32Array): Promise<void> {
    this.worker = new Worker(RACER, { eval: true, workerData: { sab, descOff, good, evil, stop: this.stop } });
    // wait until the racer is flipping (not a fixed time): its first store says so
    const st = new Int32Array(this.stop);
    const end = Date.now() + 30000;
    while (Atomics.load(st, 2) === 0) {
      if (Date.now() > end) throw new Error('the racer thread did not start within 30 s');
      await new Promise((res) => setTimeout(res, 1));
    }
  }

  /** Keep racing until both outcomes were seen, after at least `min` rounds, up to a deadline. */
  more(it: number, min: number, end: number): boolean {
    return it < min || ((this.accepted === 0 || this.rejected === 0) && Date.now() < end);
  }

  /** A burst threw: a GuestError is a refusal (by reason), anything else a failure. */
  caught(e: unknown): void {
    if (e instanceof GuestError) {
      this.rejected++;
      this.reasons.add(e.message);
    } else this.unexpected.push(String((e as Error).stack ?? e));
  }

  /** Stop the racer; the number of flips it made. */
  async finish(): Promise<number> {
    const st = new Int32Array(this.stop);
    Atomics.store(st, 0, 1);
    await new Promise((res) => this.worker!.once('exit', res));
    return Atomics.load(st, 1);
  }
}

t.test('RX descriptors rewritten by a racing vCPU: writes stay in the guest region or stop with a GuestError', async (t) => {
  const a = makeGuest();
  const b = makeGuest();
  const R1_PATTERN = 0xa7;
  b.mem8.fill(R1_PATTERN, R0_SIZE, R0_SIZE + R1_SIZE);
  const QSIZE = 8;
  const l = layout(0);
  const desc32 = new Uint32Array(b.sab, l.desc, 4 * QSIZE);
  const W = VRING_DESC_F_WRITE;
  // [addr lo, addr hi, len, flags | next << 16]. Every mix of these fields with each other
  // and with the good ones (posted buffers, 2048 B) is refused or lies in a posted buffer:
  // the addresses near a region end are 8 bytes before it, and every length is over 8.
  const evil = new Uint32Array([
    R0_SIZE - 8, 0, 2048, W, // crosses the end of region 0
    R0_SIZE + R1_SIZE - 8, 0, 2048, W, // crosses the end of region 1 (into what is not guest memory)
    SAB_SIZE - 0x1000, 0, 2048, W, // outside guest memory
    l.bufBase, 1, 2048, W, // 4 GiB above a good buffer
    l.bufBase, 0, 0xffffffff, W, // 4 GiB - 1 long
    l.bufBase, 0, 16, W | VRING_DESC_F_NEXT, // a loop: next = 0 (desc 0 points to itself)
    l.bufBase, 0, 2048, W | VRING_DESC_F_INDIRECT, // indirect, not negotiated
  ]);
  // the claim above, checked: every mix of fields, as the backend would translate it
  const fieldsOf = (k: number): number[] => [...evil.filter((_, j) => j % 4 === k), ...[0, 1, 2, 3].map((d) => k === 0 ? l.bufBase + d * 0x1000 : k === 1 ? 0 : 2048)];
  const stray: string[] = [];
  for (const lo of fieldsOf(0)) for (const hi of fieldsOf(1)) for (const len of fieldsOf(2)) {
    const gpa = lo + hi * 0x1_0000_0000;
    const posted = [0, 1, 2, 3].some((d) => gpa >= l.bufBase + d * 0x1000 && gpa + len <= l.bufBase + d * 0x1000 + 2048);
    if (b.gm.translate(gpa, len) >= 0 && !posted) stray.push(`0x${gpa.toString(16)}+${len}`);
  }
  t.same(stray, [], 'no mix of the racing fields is a valid buffer outside the posted ones');
  const batch = new PacketBatch();
  const race = new Race();
  const end = Date.now() + 60000;
  let region0: Uint8Array | null = null;
  let it = 0;
  for (; race.more(it, 3000, end); it++) {
    const tx = makeQueue(a, { index: 1 });
    // indirect off: a flipped INDIRECT flag must be refused, not followed
    const rx = makeQueue(b, { index: 0, size: QSIZE, features: { indirect: false } });
    for (let k = 0; k < 4; k++) rx.drv.postChain([{ gpa: l.bufBase + k * 0x1000, len: 2048, write: true }]);
    // the posted (good) descriptors are the same every iteration: start the racer on them
    if (!race.started) {
      // what region 0 held before anything raced: only the ring and the posted buffers may change
      region0 = b.mem8.slice(0, R0_SIZE);
      await race.start(b.sab, l.desc, Uint32Array.from(desc32), evil);
    }
    // small packets take the copy loop, 1000 B the Buffer copy; 2 of the 4 as one chain of
    // several TX descriptors so the general path (reserve/put/commit) runs too
    for (let k = 0; k < 4; k++) tx.drv.postTx(pattern(k & 1 ? 1000 : 60, it + k), k >= 2 ? { chunks: 2 } : {});
    const n = tx.vq.dequeueBurst(batch, 32);
    rx.vq.acquire();
    try {
      race.accepted += rx.vq.enqueueBurst(a.gm, batch, null, n);
      rx.vq.flush();
    } catch (e) {
      race.caught(e);
    }
    rx.vq.release();
    tx.vq.completeBurst(batch);
  }
  const flips = await race.finish();
  t.same(race.unexpected.slice(0, 3), [], 'only GuestError was thrown');
  let r1Bad = 0;
  for (let k = R0_SIZE; k < R0_SIZE + R1_SIZE; k++) if (b.mem8[k] !== R1_PATTERN) r1Bad++;
  let bgBad = 0;
  for (let k = R0_SIZE + R1_SIZE; k < SAB_SIZE; k++) if (b.mem8[k] !== BACKGROUND) bgBad++;
  // in region 0 nothing but the rings and the buffer arena may change: [0x1f000, R0 end) is
  // never a buffer, but a bad address that was checked and then read again would land there
  let r0Bad = 0;
  for (let k = 0x1f000; k < R0_SIZE; k++) if (b.mem8[k] !== BACKGROUND) r0Bad++;
  t.equal(r0Bad, 0, 'the end of region 0 (no buffer there) untouched');
  t.equal(r1Bad, 0, 'region 1 (no buffer there) untouched');
  t.equal(bgBad, 0, 'bytes after guest memory untouched');
  // The rest of region 0 against its snapshot: what may change is the RX ring itself (the
  // descriptor table the racer and the driver write, the avail ring, the used ring the
  // backend writes) and the 4 posted buffers of 2048 bytes; every other byte (other ring
  // pages, the unposted parts of the buffer arena) must be as it was.
  const mayChange: [number, number][] = [
    [l.desc, l.desc + 16 * QSIZE],
    [l.avail, l.avail + 6 + 2 * QSIZE],
    [l.used, l.used + 6 + 8 * QSIZE],
    ...[0, 1, 2, 3].map((k): [number, number] => [l.bufBase + k * 0x1000, l.bufBase + k * 0x1000 + 2048]),
  ];
  const changed: number[] = [];
  for (let k = 0; k < 0x1f000; k++) {
    if (mayChange.some(([s, e]) => k >= s && k < e)) continue;
    if (b.mem8[k] !== region0![k]) changed.push(k);
  }
  t.same(changed.slice(0, 8).map((k) => '0x' + k.toString(16)), [], `region 0 outside the ring and the posted buffers equals its snapshot (${changed.length} bytes differ)`);
  t.ok(flips > 0, `the racer ran: ${flips} flips in ${it} rounds`);
  t.ok(race.accepted > 0 && race.rejected > 0, `both outcomes happened: ${race.accepted} packets written, ${race.rejected} bursts refused (${[...race.reasons].join('; ')})`);
});

t.test('TX descriptors rewritten by a racing vCPU: no byte from outside guest memory reaches the receiver', async (t) => {
  // The TX fast path reads a descriptor's address once, checks it against the region window
  // and places the packet by that one read (virtqueue.ts dequeueBurst): a second read after
  // the check would let a flipped address through. Bytes after guest A's memory (in the same
  // SharedArrayBuffer, as a mapping's bytes before its region's mmap offset are) hold a
  // secret; guest B must never receive a run of it, and only GuestError may be thrown. The
  // 1000 B packets go through the addon's bulk copy, as in the poller: it checks offsets
  // against the registered buffer, so only the ring code keeps them inside the region.
  const a = makeGuest();
  const b = makeGuest();
  a.gm.enableBulk(native);
  b.gm.enableBulk(native);
  const bulk = new CopyQueue(native);
  const SECRET = 0xc3;
  a.mem8.fill(SECRET, R0_SIZE + R1_SIZE, SAB_SIZE);
  const QSIZE = 8;
  const l = layout(1);
  const desc32 = new Uint32Array(a.sab, l.desc, 4 * QSIZE);
  const evil = new Uint32Array([
    R0_SIZE - 64, 0, 1012, 0, // crosses the end of region 0
    R0_SIZE + R1_SIZE - 64, 0, 1012, 0, // crosses the end of region 1 into the secret
    R0_SIZE + R1_SIZE + 0x100, 0, 1012, 0, // inside the secret (outside guest memory)
    l.bufBase, 1, 1012, 0, // 4 GiB above a good buffer
    l.bufBase, 0, 0xffffffff, 0, // 4 GiB - 1 long
    l.bufBase, 0, 1012, VRING_DESC_F_WRITE, // writable, in a TX ring
    l.bufBase, 0, 64, VRING_DESC_F_NEXT, // a loop: next = 0
  ]);
  const batch = new PacketBatch();
  const race = new Race();
  let leaked = 0;
  const end = Date.now() + 60000;
  let it = 0;
  for (; race.more(it, 5000, end); it++) {
    const tx = makeQueue(a, { index: 1, size: QSIZE, features: { indirect: false } });
    const rx = makeQueue(b, { index: 0 });
    tx.vq.bulk = bulk;
    rx.vq.bulk = bulk;
    rx.drv.postRx(8, 2048);
    // packets of 60 B (the copy loop) and 1000 B (the bulk copy), one descriptor each (the
    // fast path), alternating between regions 0 and 1 so that every packet rebuilds the window
    for (let k = 0; k < 4; k++) {
      const p = pattern(k === 1 || k === 2 ? 1000 : 60, it + k);
      if ((k & 1) === 0) {
        tx.drv.postTx(p);
      } else {
        const gpa = R0_SIZE + 0x1000 + k * 0x800;
        a.mem8.fill(0, gpa, gpa + 12);
        a.mem8.set(p, gpa + 12);
        tx.drv.postChain([{ gpa, len: 12 + p.length }]);
      }
    }
    if (!race.started) await race.start(a.sab, l.desc, Uint32Array.from(desc32), evil);
    try {
      const n = tx.vq.dequeueBurst(batch, 32);
      rx.vq.acquire();
      race.accepted += rx.vq.enqueueBurst(a.gm, batch, null, n);
      rx.vq.flush();
      rx.vq.release();
      tx.vq.completeBurst(batch);
    } catch (e) {
      race.caught(e);
    }
    // what B received: any 8 bytes of the secret in a row (pattern() never repeats a byte)
    for (const p of rx.drv.readRx()) {
      let run = 0;
      for (const x of p.data) {
        run = x === SECRET ? run + 1 : 0;
        if (run === 8) {
          leaked++;
          break;
        }
      }
    }
  }
  const flips = await race.finish();
  t.same(race.unexpected.slice(0, 3), [], 'only GuestError was thrown');
  t.equal(leaked, 0, 'no packet carried bytes from outside guest memory');
  t.ok(flips > 0, `the racer ran: ${flips} flips in ${it} rounds`);
  t.ok(race.accepted > 0 && race.rejected > 0, `both outcomes happened: ${race.accepted} packets delivered, ${race.rejected} bursts refused (${[...race.reasons].join('; ')})`);
});
