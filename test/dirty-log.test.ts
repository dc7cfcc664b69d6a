import t, { Test } from 'tap';
import { DirtyLog } from '../src/workers/dirty-log';
import { native } from '../src/native';
import { PacketBatch } from '../src/workers/packet-batch';
import { ST_DIRTY_PAGES } from '../src/shared/types';
import { GuestMemory } from '../src/workers/guest-memory';
import { eq, Guest, makeGuest, makeQueue, pattern, Queue } from '../kit/vq-harness';
import { rng } from './helpers/rng';

/** One burst from `tx` (guest `src`) into `rx`, as the poller runs it: every packet arrives byte-exact, in order. */
function forwardOneBurst(t: Test, tx: Queue, rx: Queue, src: Guest, sent: Uint8Array[]): void {
  const batch = new PacketBatch();
  const n = tx.vq.dequeueBurst(batch, 32);
  t.equal(n, sent.length, 'one burst');
  rx.vq.acquire();
  t.equal(rx.vq.enqueueBurst(src.gm, batch, null, n), n, 'all enqueued');
  rx.vq.flush();
  rx.vq.release();
  tx.vq.completeBurst(batch);
  const got = rx.drv.readRx();
  t.same(got.map((p, i) => eq(p.data, sent[i])), sent.map(() => true), 'every packet byte-exact, in order');
}

/** Expected log bytes, computed from explicit [gpa, len) ranges without the code under test. */
function expectedLog(sizeBytes: number, ranges: Array<[number, number]>): Uint8Array {
  const out = new Uint8Array(sizeBytes);
  for (const [gpa, len] of ranges) {
    for (let a = gpa; a < gpa + len; a++) {
      const page = Math.floor(a / 4096);
      out[Math.floor(page / 8)] |= 1 << (page % 8);
    }
  }
  return out;
}

function marking(nativeLog: boolean): string {
  return nativeLog ? 'marked by the addon' : 'marked in JavaScript';
}

function bitsOf(log: Uint8Array): number[] {
  const pages: number[] = [];
  for (let i = 0; i < log.length * 8; i++) if (log[i >> 3] & (1 << (i & 7))) pages.push(i);
  return pages;
}

t.test('DirtyLog: ranges, page boundaries, beyond the log, word cache', async (t) => {
  for (const cache of [true, false]) {
    const sab = new SharedArrayBuffer(64);
    const view = new Uint8Array(sab);
    const log = new DirtyLog(cache);
    log.markRange(0, 4096); // no log set: nothing, not counted
    t.equal(log.pagesMarked, 0);
    log.set({ sab, offset: 16, size: 16 }); // 128 pages
    log.markRange(4095, 2); // pages 0, 1
    log.markRange(8192, 4096); // page 2 only (end exclusive)
    log.markRange(100 * 4096 + 5, 0); // empty: nothing
    log.markRange(127 * 4096, 3 * 4096); // 127 set, 128 and 129 beyond the log
    log.markRange(40 * 4096 + 10, 1); // 40
    log.flush();
    t.same(bitsOf(view.subarray(16, 32)), [0, 1, 2, 40, 127], `cache ${cache}`);
    t.equal(log.pagesMarked, 5);
    t.equal(log.pagesBeyondLog, 2);
    t.ok(view.subarray(0, 16).every((b) => b === 0) && view.subarray(32).every((b) => b === 0), 'nothing outside the log');
    // bits already set by the frontend are kept (OR, not store)
    view[16 + 1] = 0x80; // page 15
    log.markRange(8 * 4096, 1);
    log.set(null); // flushes first
    t.same(bitsOf(view.subarray(16, 32)), [0, 1, 2, 8, 15, 40, 127]);
    t.equal(log.active, false);
  }
  // a log not 4-aligned in its SAB: byte-wise Atomics.or
  const sab = new SharedArrayBuffer(32);
  const log = new DirtyLog();
  log.set({ sab, offset: 3, size: 5 });
  log.markRange(33 * 4096, 4096 * 7);
  log.flush();
  t.same(bitsOf(new Uint8Array(sab, 3, 5)), [33, 34, 35, 36, 37, 38, 39]);
  t.equal(new Uint8Array(sab)[2], 0);
  t.equal(new Uint8Array(sab)[8], 0);
});

/** Guest A transmits (no logging); guest B receives with its used ring across a page boundary. */
function scenario(logAll: boolean, nativeLog = false) {
  const a = makeGuest();
  const b = makeGuest();
  const logSab = new SharedArrayBuffer(64);
  const logView = new Uint8Array(logSab, 8, 16); // 128 pages > 48 pages of guest memory
  // 1024 entries from 0x4ffc: slot 0 straddles pages 4|5, slot 1 is on page 5 alone, slots
  // 1022/1023 on page 6: a used-ring wrap that logs only the first part misses page 5.
  const USED = 0x4ff8;
  const tx = makeQueue(a, { index: 1 });
  const rx = makeQueue(b, {
    index: 0, size: 1024, desc: 0x18000, startIdx: 1022, used: USED, logUsed: true,
    features: { logAll }, log: { sab: logSab, offset: 8, size: 16 }, nativeLog,
  });
  return { a, b, tx, rx, logSab, logView, USED };
}

function forward(src: Guest, tx: Queue, rx: Queue, batch: PacketBatch): void {
  const n = tx.vq.dequeueBurst(batch, 32);
  rx.vq.acquire();
  for (let i = 0; i < n; i++) rx.vq.enqueue(src.gm, batch, i);
  rx.vq.flush();
  rx.vq.release();
  tx.vq.completeBurst(batch);
}

for (const nativeLog of [false, true]) t.test(`scripted writes: the log equals exactly the written pages (${marking(nativeLog)})`, async (t) => {
  const { a, tx, rx, logSab, logView, USED } = scenario(true, nativeLog);
  const batch = new PacketBatch();
  // 1) one packet crossing a page boundary: 12 + 300 bytes from 0x9f80 -> pages 9 and 10
  rx.drv.postChain([{ gpa: 0x9f80, len: 2048, write: true }]);
  const p1 = pattern(300, 1);
  tx.drv.postTx(p1);
  forward(a, tx, rx, batch);
  // 2) a mergeable packet over 3 buffers: 512 + 512 + 188 bytes (the last crosses 0x16000)
  for (const gpa of [0x12000, 0x13800, 0x15f80]) rx.drv.postChain([{ gpa, len: 512, write: true }]);
  const p2 = pattern(1200, 2);
  tx.drv.postTx(p2);
  forward(a, tx, rx, batch);
  const got = rx.drv.readRx();
  t.equal(got.length, 2);
  t.ok(eq(got[0].data, p1));
  t.equal(got[1].numBuffers, 3);
  t.same(got[1].used.map((e) => e.len), [512, 512, 188]);
  t.ok(eq(got[1].data, p2));
  // used slots 1022, 1023, then (wrap) 0, 1; used->idx written twice
  const elem = (slot: number): [number, number] => [USED + 4 + 8 * slot, 8];
  const expected = expectedLog(16, [
    [0x9f80, 312],
    [0x12000, 512], [0x13800, 512], [0x15f80, 188],
    elem(1022), elem(1023), elem(0), elem(1),
    [USED + 2, 2],
  ]);
  t.same(bitsOf(logView), bitsOf(expected), 'pages');
  t.ok(eq(logView, expected), 'log bytes exactly as expected');
  t.same(bitsOf(expected), [4, 5, 6, 9, 10, 0x12, 0x13, 0x15, 0x16], 'the script touches these pages');
  t.equal(rx.drv.usedIdx(), 1026, 'four entries from 1022: ring slots 1022, 1023, 0, 1');
  const whole = new Uint8Array(logSab);
  t.ok(whole.subarray(0, 8).every((x) => x === 0) && whole.subarray(24).every((x) => x === 0), 'nothing written outside the log');
  t.ok(rx.stats[ST_DIRTY_PAGES] >= 9, 'dirty page marks counted');
  t.equal(tx.stats[ST_DIRTY_PAGES], 0);
});

t.test('logAll off: no bit is set', async (t) => {
  const { a, tx, rx, logSab } = scenario(false);
  const batch = new PacketBatch();
  rx.drv.postChain([{ gpa: 0x9f80, len: 2048, write: true }]);
  for (const gpa of [0x12000, 0x13800, 0x15f80]) rx.drv.postChain([{ gpa, len: 512, write: true }]);
  tx.drv.postTx(pattern(300, 1));
  tx.drv.postTx(pattern(1200, 2));
  forward(a, tx, rx, batch);
  t.equal(rx.drv.readRx().length, 2, 'packets delivered');
  rx.vq.enableNotify();
  t.ok(new Uint8Array(logSab).every((x) => x === 0));
  t.equal(rx.stats[ST_DIRTY_PAGES], 0);
});

for (const nativeLog of [false, true]) t.test(`TX used ring and notification fields are logged; TX buffers (read only) are not (${marking(nativeLog)})`, async (t) => {
  const a = makeGuest();
  const logSab = new SharedArrayBuffer(16);
  const tx = makeQueue(a, {
    index: 1, logUsed: true, features: { logAll: true, eventIdx: true }, log: { sab: logSab, offset: 0, size: 16 }, nativeLog,
  });
  const batch = new PacketBatch();
  tx.drv.postTx(pattern(1500, 1), { chunks: 3 });
  tx.drv.postTx(pattern(100, 2));
  t.equal(tx.vq.dequeueBurst(batch, 32), 2);
  tx.vq.completeBurst(batch);
  const used = tx.drv.usedGpa; // 0x6000: page 6
  t.same(bitsOf(new Uint8Array(logSab)), [Math.floor(used / 4096)]);
  new Uint8Array(logSab).fill(0);
  tx.vq.enableNotify(); // avail_event at used + 4 + 8 * size
  t.same(bitsOf(new Uint8Array(logSab)), [Math.floor((used + 4 + 8 * 8) / 4096)]);
  t.equal(tx.drv.availEvent(), 2);
  // a log swapped at a burst boundary: later writes go to the new one only
  const log2 = new SharedArrayBuffer(16);
  tx.log.set({ sab: log2, offset: 0, size: 16 });
  new Uint8Array(logSab).fill(0);
  tx.drv.postTx(pattern(64, 3));
  tx.vq.dequeueBurst(batch, 32);
  tx.vq.completeBurst(batch);
  t.ok(new Uint8Array(logSab).every((x) => x === 0));
  t.same(bitsOf(new Uint8Array(log2)), [Math.floor(used / 4096)]);
});

for (const nativeLog of [false, true]) t.test(`TX used entries are logged on their own pages, apart from used->idx (${marking(nativeLog)})`, async (t) => {
  // used ring at 0x6ff8: used->idx on page 6, entry 0 across pages 6|7, entries 1.. on page 7
  const a = makeGuest();
  const logSab = new SharedArrayBuffer(16);
  const tx = makeQueue(a, {
    index: 1, used: 0x6ff8, logUsed: true, features: { logAll: true }, log: { sab: logSab, offset: 0, size: 16 }, nativeLog,
  });
  const batch = new PacketBatch();
  tx.drv.postTx(pattern(100, 1));
  tx.drv.postTx(pattern(200, 2));
  t.equal(tx.vq.dequeueBurst(batch, 32), 2);
  tx.vq.completeBurst(batch);
  t.same(bitsOf(new Uint8Array(logSab)), [6, 7], 'the idx page and the entries\' page');
  new Uint8Array(logSab).fill(0);
  for (let k = 0; k < 3; k++) tx.drv.postTx(pattern(64, 3 + k));
  t.equal(tx.vq.dequeueBurst(batch, 32), 3);
  tx.vq.completeBurst(batch);
  t.same(bitsOf(new Uint8Array(logSab)), [6, 7], 'entries 2..4 (page 7) and used->idx (page 6) of the second burst');
});

t.test('DirtyLog.markPageRuns (a burst at once, in JavaScript and by the addon) sets exactly the bits markRange would, and counts the same', async (t) => {
  let seed = 12345;
  const rnd = (n: number): number => {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    return seed % n;
  };
  let cases = 0;
  let bad = 0;
  let inLog = 0;
  for (const cache of [true, false]) {
    // word-aligned and not, sizes not a multiple of 4 (byte-wise tail)
    for (const [offset, size] of [[0, 64], [16, 13], [3, 9], [8, 1]] as Array<[number, number]>) {
      for (let round = 0; round < 50; round++) {
        const a = new SharedArrayBuffer(offset + size + 8);
        const b = new SharedArrayBuffer(offset + size + 8);
        const c = new SharedArrayBuffer(offset + size + 8);
        const la = new DirtyLog(cache);
        const lb = new DirtyLog(cache);
        const lc = new DirtyLog(cache);
        lc.enableNative(native);
        la.set({ sab: a, offset, size });
        lb.set({ sab: b, offset, size });
        lc.set({ sab: c, offset, size });
        const n = 1 + rnd(40);
        const runs = new Float64Array(2 * n);
        const pages = size * 8 + 4; // some runs go past the log
        for (let k = 0; k < n; k++) {
          const gpa = rnd(pages) * 4096 + rnd(4096);
          const len = 1 + rnd(3 * 4096);
          runs[2 * k] = Math.floor(gpa / 4096);
          runs[2 * k + 1] = Math.floor((gpa + len - 1) / 4096);
          la.markRange(gpa, len);
        }
        lb.markPageRuns(runs, n);
        lc.markPageRuns(runs, n, round % 2 === 0); // fenced or not: the same bits
        la.flush();
        lb.flush();
        lc.flush();
        cases++;
        if (!Buffer.from(a).equals(Buffer.from(b)) || la.pagesMarked !== lb.pagesMarked || la.pagesBeyondLog !== lb.pagesBeyondLog) bad++;
        if (!Buffer.from(a).equals(Buffer.from(c)) || la.pagesMarked !== lc.pagesMarked || la.pagesBeyondLog !== lc.pagesBeyondLog) bad++;
        if (la.pagesBeyondLog === 0) inLog++;
      }
    }
  }
  t.equal(bad, 0, `${cases} random bursts: same log bytes (nothing outside the log), same counts`);
  t.ok(inLog > 20 && inLog < cases - 20, `both kinds of burst drawn: ${inLog} inside the log (the addon marks them), ${cases - inLog} reaching past it (refused whole, marked in JavaScript)`);
});

t.test('DirtyLog.markBytes sets exactly the pages of its byte marks, fenced or not, and counts those beyond the log apart', async (t) => {
  const next = rng(777);
  const rnd = (n: number): number => Math.floor(next() * n);
  let bad = 0;
  let beyond = 0;
  for (let round = 0; round < 200; round++) {
    const offset = [0, 3, 16][round % 3];
    const size = 1 + rnd(40);
    const a = new SharedArrayBuffer(offset + size + 8);
    const b = new SharedArrayBuffer(offset + size + 8);
    const la = new DirtyLog();
    const lb = new DirtyLog();
    la.set({ sab: a, offset, size });
    lb.set({ sab: b, offset, size });
    const n = 1 + rnd(12);
    const marks = new Int32Array(2 * n);
    for (let k = 0; k < n; k++) {
      const byte = rnd(size + 3); // some beyond the log
      const mask = 1 + rnd(255);
      marks[2 * k] = byte;
      marks[2 * k + 1] = mask;
      for (let i = 0; i < 8; i++) if (mask & (1 << i)) la.markPage(byte * 8 + i);
    }
    lb.markBytes(marks, n, round % 2 === 0);
    la.flush();
    if (!Buffer.from(a).equals(Buffer.from(b)) || la.pagesMarked !== lb.pagesMarked || la.pagesBeyondLog !== lb.pagesBeyondLog) bad++;
    if (lb.pagesBeyondLog > 0) beyond++;
  }
  t.equal(bad, 0, '200 random mark sets: the same log bytes as markPage (nothing outside the log), the same counts');
  t.ok(beyond > 20 && beyond < 180, `marks beyond the log drawn in ${beyond} of 200 (counted, not written)`);
});

t.test('a bit the frontend cleared is set again by the next write to its page', async (t) => {
  // QEMU fetches and clears log words (xchg) while we run: whatever the log keeps to avoid
  // atomic ORs, it must look at the shared word again each burst, never at what it set before.
  for (const cache of [true, false]) {
    const sab = new SharedArrayBuffer(64);
    const words = new Int32Array(sab);
    const log = new DirtyLog(cache);
    log.set({ sab, offset: 0, size: 64 });
    log.markRange(5 * 4096, 1);
    log.markRange(70 * 4096, 4096 * 2); // 70, 71
    log.flush();
    t.same(bitsOf(new Uint8Array(sab)), [5, 70, 71], `cache ${cache}: first burst`);
    t.equal(Atomics.exchange(words, 0, 0), 1 << 5, 'the frontend takes word 0');
    log.markRange(5 * 4096 + 100, 1);
    log.markRange(71 * 4096, 1);
    log.flush();
    t.same(bitsOf(new Uint8Array(sab)), [5, 70, 71], `cache ${cache}: page 5 again after the clear, 70 and 71 kept`);
    words.fill(0);
    log.markRange(71 * 4096, 1);
    log.flush();
    t.same(bitsOf(new Uint8Array(sab)), [71], `cache ${cache}: only what this burst wrote after a full clear`);
  }
  // the addon's marking (markPageRuns with enableNative): loads the shared byte every burst too
  const sab = new SharedArrayBuffer(64);
  const words = new Int32Array(sab);
  const log = new DirtyLog();
  log.enableNative(native);
  log.set({ sab, offset: 0, size: 64 });
  log.markPageRuns(Float64Array.from([5, 5, 70, 71]), 2, true);
  t.same(bitsOf(new Uint8Array(sab)), [5, 70, 71], 'addon: first burst');
  t.equal(Atomics.exchange(words, 0, 0), 1 << 5, 'the frontend takes word 0');
  log.markPageRuns(Float64Array.from([5, 5, 71, 71]), 2, true);
  t.same(bitsOf(new Uint8Array(sab)), [5, 70, 71], 'addon: page 5 again after the clear, 70 and 71 kept');
  words.fill(0);
  log.markPageRuns(Float64Array.from([71, 71]), 1, false);
  t.same(bitsOf(new Uint8Array(sab)), [71], 'addon: only what this burst wrote after a full clear');
  t.equal(log.pagesMarked, 6, 'every page mark counted');
});

for (const nativeLog of [false, true]) t.test(`burst RX path: a region at a high gpa, not page-aligned: exactly the pages written are logged (${marking(nativeLog)})`, async (t) => {
  // Guest B's only region starts at 8 GiB + 2 KiB: the per-region page math of the hot loop
  // (shifts of in-region offsets) must give the same pages as dividing the 34-bit gpa.
  const BASE = 2 ** 33 + 0x800;
  const SIZE = 0x40000;
  const sab = new SharedArrayBuffer(SIZE);
  const regions = [{ gpa: BASE, size: SIZE, uva: 0x7f0000000000, sab, sabOffset: 0 }];
  const b: Guest = { sab, mem8: new Uint8Array(sab), regions, gm: new GuestMemory(regions) };
  const a = makeGuest();
  const LOG_BYTES = Math.ceil((BASE + SIZE) / 4096 / 8) + 16;
  const logSab = new SharedArrayBuffer(LOG_BYTES + 16);
  const logView = new Uint8Array(logSab, 8, LOG_BYTES);
  const USED = BASE + 0x3000;
  const tx = makeQueue(a, { index: 1 });
  const rx = makeQueue(b, {
    index: 0, desc: BASE + 0x1000, avail: BASE + 0x2000, used: USED, logUsed: true, gpaBase: BASE,
    bufBase: BASE + 0x4000, bufEnd: BASE + SIZE, features: { logAll: true }, log: { sab: logSab, offset: 8, size: LOG_BYTES }, nativeLog,
  });
  // buffers at in-page offsets 116 (DPDK's layout), 2164, 3900 and 0 of successive pages:
  // packets that fit a page, cross one boundary, and start right at one
  const lens = [64, 1518, 2000, 60, 4000];
  const bufGpa = [0, 1, 2, 3, 4].map((k) => BASE + 0x4000 + k * 0x2000 + [116, 2164, 3900, 0, 1024][k] - 0x800);
  for (const g of bufGpa) rx.drv.postChain([{ gpa: g, len: 4200, write: true }]);
  const pkts = lens.map((n, k) => pattern(n, k + 1));
  for (const p of pkts) tx.drv.postTx(p);
  const batch = new PacketBatch();
  const n = tx.vq.dequeueBurst(batch, 32);
  rx.vq.acquire();
  t.equal(rx.vq.enqueueBurst(a.gm, batch, null, n), lens.length, 'all enqueued');
  rx.vq.flush();
  rx.vq.release();
  tx.vq.completeBurst(batch);
  t.equal(rx.drv.usedIdx(), lens.length);
  let bytesOk = 0;
  for (let k = 0; k < lens.length; k++) if (eq(b.mem8.subarray(bufGpa[k] - BASE + 12, bufGpa[k] - BASE + 12 + lens[k]), pkts[k])) bytesOk++;
  t.equal(bytesOk, lens.length, 'packet bytes in the buffers');
  const expected = expectedLog(LOG_BYTES, [
    ...bufGpa.map((g, k): [number, number] => [g, 12 + lens[k]]),
    [USED + 4, 8 * lens.length], // used entries 0..4
    [USED + 2, 2], // used->idx
  ]);
  t.same(bitsOf(logView), bitsOf(expected), 'pages');
  t.ok(eq(logView, expected), 'log bytes exactly as expected');
  t.ok(bitsOf(expected).length >= 8, `the script touches ${bitsOf(expected).length} pages`);
  const whole = new Uint8Array(logSab);
  t.ok(whole.subarray(0, 8).every((x) => x === 0) && whole.subarray(8 + LOG_BYTES).every((x) => x === 0), 'nothing written outside the log');
});

for (const nativeLog of [false, true]) t.test(`RX burst fast path: neighbouring buffers share runs, the log still equals the written pages (${marking(nativeLog)})`, async (t) => {
  const a = makeGuest();
  const b = makeGuest();
  const logSab = new SharedArrayBuffer(16);
  const tx = makeQueue(a, { index: 1, size: 16 });
  const rx = makeQueue(b, { index: 0, size: 16, features: { logAll: true }, log: { sab: logSab, offset: 0, size: 16 }, nativeLog });
  // One burst, each packet into one buffer (enqueueBurst's fast path). Runs as the ring sees
  // them: page 10, page 10 again (joins the run), 10..11 (starts where the run ends: extends
  // it to 11), page 13 (a new run), 13 again, then page 9 (before the run: a new one).
  const bufs: Array<[number, number]> = [[0xa000, 64], [0xa800, 64], [0xafc0, 100], [0xd000, 64], [0xd400, 64], [0x9100, 64]];
  for (const [gpa] of bufs) rx.drv.postChain([{ gpa, len: 2048, write: true }]);
  const sent = bufs.map(([, len], i) => pattern(len, 40 + i));
  for (const p of sent) tx.drv.postTx(p);
  forwardOneBurst(t, tx, rx, a, sent);
  const expected = expectedLog(16, bufs.map(([gpa, len]) => [gpa, len + 12]));
  t.same(bitsOf(expected), [9, 10, 11, 13], 'the burst writes these pages');
  t.same(bitsOf(new Uint8Array(logSab)), bitsOf(expected), 'the log holds exactly those pages');
});

for (const nativeLog of [false, true]) t.test(`RX burst: big packets through the general path, then fast-path packets, every buffer in its own log byte: no mark is lost (${marking(nativeLog)})`, async (t) => {
  // The burst's marks have room for one per packet made up front; a packet of the general
  // path takes one per buffer (30 here). Two such packets, then 30 small ones, each buffer
  // 32 KiB from the next (its own log byte): the fast path must still find room.
  const SIZE = 8 << 20;
  const big = (): Guest => {
    const sab = new SharedArrayBuffer(SIZE);
    const regions = [{ gpa: 0, size: SIZE, uva: 0x7f0000000000, sab, sabOffset: 0 }];
    return { sab, mem8: new Uint8Array(sab).fill(0x5a), regions, gm: new GuestMemory(regions) };
  };
  const a = big();
  const b = big();
  const LOG_BYTES = SIZE / 4096 / 8;
  const logSab = new SharedArrayBuffer(LOG_BYTES);
  const tx = makeQueue(a, { index: 1, size: 64, bufBase: 0x10000, bufEnd: 0x100000 });
  const rx = makeQueue(b, { index: 0, size: 128, logUsed: true, features: { logAll: true }, log: { sab: logSab, offset: 0, size: LOG_BYTES }, nativeLog });
  for (let i = 0; i < 100; i++) rx.drv.postChain([{ gpa: 0x20000 + i * 0x8000 + 116, len: 2048, write: true }]);
  const lens = [60000, 60000, ...Array.from({ length: 30 }, () => 64)];
  const sent = lens.map((n, i) => pattern(n, 70 + i));
  for (const p of sent) tx.drv.postTx(p);
  const before = Uint8Array.from(b.mem8);
  forwardOneBurst(t, tx, rx, a, sent);
  const changed = new Set<number>();
  for (let i = 0; i < SIZE; i++) if (b.mem8[i] !== before[i]) changed.add(i >> 12);
  const logged = bitsOf(new Uint8Array(logSab));
  t.ok(changed.size > 90, `${changed.size} pages written`);
  t.same(logged, [...changed].sort((x, y) => x - y), 'the log holds exactly the pages written');
});
