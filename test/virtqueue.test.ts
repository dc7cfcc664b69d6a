import t from 'tap';
import { PacketBatch } from '../src/workers/packet-batch';
import { GuestError, Virtqueue } from '../src/workers/virtqueue';
import { CopyQueue } from '../src/workers/bulk-copy';
import { native } from '../src/native';
import { DirtyLog } from '../src/workers/dirty-log';
import {
  CTRL_LAST_AVAIL, CTRL_LAST_USED, CTRL_LOCK, ST_BURSTS, ST_BYTES, ST_DROP_NO_BUF, ST_DROP_TOO_BIG, ST_PACKETS, QueueFeatures,
} from '../src/shared/types';
import { VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY } from '../src/protocol/constants';
import { eq, FEAT_MRG, Guest, layout, makeGuest, makeQueue, pattern, Queue, R0_SIZE, R1_SIZE, vringDesc } from '../kit/vq-harness';

const batch = new PacketBatch(32);

/** Guest A transmits (queue 1), guest B receives (queue 0). */
function pair(opts: { tx?: Partial<QueueFeatures>; rx?: Partial<QueueFeatures>; size?: number; startIdx?: number } = {}) {
  const a = makeGuest();
  const b = makeGuest();
  const tx = makeQueue(a, { index: 1, size: opts.size, features: opts.tx, startIdx: opts.startIdx });
  const rx = makeQueue(b, { index: 0, size: opts.size, features: opts.rx, startIdx: opts.startIdx });
  return { a, b, tx, rx };
}

/** One poller round: dequeue a burst from tx, enqueue every packet into rx, complete. */
function forward(src: Guest, tx: Queue, rx: Queue): { n: number; enq: boolean[]; rxNotify: boolean; txNotify: boolean } {
  const n = tx.vq.dequeueBurst(batch, 32);
  const enq: boolean[] = [];
  rx.vq.acquire();
  for (let i = 0; i < n; i++) enq.push(rx.vq.enqueue(src.gm, batch, i));
  const rxNotify = rx.vq.flush();
  rx.vq.release();
  const txNotify = n > 0 ? tx.vq.completeBurst(batch) : false;
  return { n, enq, rxNotify, txNotify };
}

function hdrWithNum(hdrLen: number, n: number): Uint8Array {
  const h = new Uint8Array(hdrLen);
  if (hdrLen === 12) h[10] = n;
  return h;
}

t.test('single descriptor, 12-byte header, one RX buffer', async (t) => {
  const { a, b, tx, rx } = pair();
  const pkt = pattern(300, 1);
  // flags and gso_type 0 (no offload): whatever the sender puts in the other fields is not forwarded
  const txHdr = new Uint8Array(12).fill(0x77);
  txHdr[0] = 0;
  txHdr[1] = 0;
  const head = tx.drv.postTx(pkt, { hdr: txHdr });
  rx.drv.postRx(2, 2048);
  const r = forward(a, tx, rx);
  t.equal(r.n, 1);
  t.same(r.enq, [true]);
  t.equal(batch.pktLen[0], 300, 'payload length excludes the header');
  t.equal(batch.segCount[0], 1);
  const got = rx.drv.readRx();
  t.equal(got.length, 1);
  t.ok(eq(got[0].data, pkt), 'payload byte-exact');
  t.ok(eq(got[0].hdr, hdrWithNum(12, 1)), 'zeroed header with num_buffers = 1');
  t.equal(got[0].used[0].len, 312);
  const txUsed = tx.drv.collectUsed();
  t.same(txUsed.map((e) => [e.id, e.len]), [[head, 0]]);
  t.equal(tx.ctrl[CTRL_LAST_AVAIL], 1);
  t.equal(tx.ctrl[CTRL_LAST_USED], 1);
  t.equal(rx.ctrl[CTRL_LAST_AVAIL], 1);
  t.equal(rx.ctrl[CTRL_LAST_USED], 1);
  t.equal(tx.stats[ST_PACKETS], 1);
  t.equal(tx.stats[ST_BYTES], 300);
  t.equal(rx.stats[ST_PACKETS], 1);
  t.equal(rx.stats[ST_BYTES], 300);
  t.same(a.gm.translate(0, 1), 0);
  t.same(tx.drv.brokenGuards(), []);
  t.same(rx.drv.brokenGuards(), []);
  t.equal(b.mem8[0x1f000], 0x5a);
});

t.test('bursts are counted per non-empty burst: packets / bursts is the mean burst size', async (t) => {
  const { a, tx, rx } = pair({ size: 64 });
  rx.drv.postRx(48, 256);
  const sent = Array.from({ length: 40 }, (_, i) => pattern(64 + i, i));
  for (const p of sent) tx.drv.postTx(p);
  const sizes: number[] = [];
  for (let k = 0; k < 3; k++) {
    const n = tx.vq.dequeueBurst(batch, 32);
    sizes.push(n);
    if (n === 0) continue;
    rx.vq.acquire();
    t.equal(rx.vq.enqueueBurst(a.gm, batch, null, n), n);
    rx.vq.flush();
    rx.vq.release();
    tx.vq.completeBurst(batch);
  }
  t.same(sizes, [32, 8, 0], 'two bursts and an empty poll');
  t.equal(tx.stats[ST_BURSTS], 2, 'TX: the empty poll is not a burst');
  t.equal(rx.stats[ST_BURSTS], 2, 'RX: one per enqueueBurst that delivered');
  t.equal(rx.stats[ST_PACKETS] / rx.stats[ST_BURSTS], 20, 'mean burst size');
  t.equal(rx.drv.readRx().length, 40, 'every packet arrived');
});

t.test('header in its own descriptor; chains of 3+; header spread over descriptors', async (t) => {
  const { a, tx, rx } = pair({ size: 16 });
  const p1 = pattern(1000, 2);
  const p2 = pattern(777, 3);
  const p3 = pattern(30, 4);
  tx.drv.postTx(p1, { hdrSeparate: true });
  tx.drv.postTx(p2, { hdrSeparate: true, chunks: 4 });
  tx.drv.postTx(p3, { chunks: 6 }); // 42 bytes over 6 descriptors of 7: header spans 2
  rx.drv.postRx(3, 2048);
  const r = forward(a, tx, rx);
  t.equal(r.n, 3);
  t.equal(batch.segCount[0], 1);
  t.equal(batch.segCount[1], 4);
  t.equal(batch.segCount[2], 5, 'first descriptor is all header, second shares header and data');
  t.equal(batch.segLen[batch.segStart[2]], 2);
  const got = rx.drv.readRx();
  t.equal(got.length, 3);
  t.ok(eq(got[0].data, p1));
  t.ok(eq(got[1].data, p2));
  t.ok(eq(got[2].data, p3));
  t.same(tx.drv.collectUsed().length, 3);
  t.equal(tx.drv.freeDescCount(), 16, 'every descriptor returned');
  t.same(tx.drv.brokenGuards(), []);
  t.same(rx.drv.brokenGuards(), []);
});

t.test('indirect tables on TX and RX', async (t) => {
  const { a, tx, rx } = pair();
  const p1 = pattern(1200, 5);
  const p2 = pattern(64, 6);
  tx.drv.postTx(p1, { indirect: true, hdrSeparate: true, chunks: 3 });
  tx.drv.postTx(p2, { indirect: true });
  rx.drv.postRx(2, 512, { indirect: true, chunks: 3 });
  const r = forward(a, tx, rx);
  t.equal(r.n, 2);
  const got = rx.drv.readRx();
  t.equal(got.length, 2);
  t.ok(eq(got[0].data, p1), 'packet spread over 3 indirect RX descriptors');
  t.equal(got[0].used[0].len, 1212);
  t.equal(got[0].numBuffers, 1);
  t.ok(eq(got[1].data, p2));
  t.same(rx.drv.brokenGuards(), []);
});

t.test('10-byte headers, and 12 -> 10 / 10 -> 12 between guests', async (t) => {
  for (const [txH, rxH] of [[10, 10], [12, 10], [10, 12]]) {
    const { a, tx, rx } = pair({
      tx: { hdrLen: txH, mrgRxbuf: txH === 12 },
      rx: { hdrLen: rxH, mrgRxbuf: false },
    });
    const pk = [pattern(60, 7), pattern(129, 8), pattern(1514, 9)];
    for (const p of pk) tx.drv.postTx(p, { chunks: 2 });
    rx.drv.postRx(3, 2048);
    t.equal(forward(a, tx, rx).n, 3);
    const got = rx.drv.readRx();
    t.equal(got.length, 3, `${txH}->${rxH}`);
    for (let i = 0; i < 3; i++) {
      t.ok(eq(got[i].data, pk[i]), `${txH}->${rxH} packet ${i}`);
      t.equal(got[i].hdr.length, rxH);
      t.ok(eq(got[i].hdr, hdrWithNum(rxH, 1)), 'header zero (+ num_buffers 1 when 12 bytes)');
      t.equal(got[i].used[0].len, rxH + pk[i].length);
    }
    t.same(rx.drv.brokenGuards(), []);
  }
});

t.test('mergeable RX over several buffers', async (t) => {
  const { a, tx, rx } = pair();
  const pkt = pattern(1000, 10);
  tx.drv.postTx(pkt);
  rx.drv.postRx(6, 256);
  forward(a, tx, rx);
  const got = rx.drv.readRx();
  t.equal(got.length, 1);
  t.equal(got[0].numBuffers, 4, '1012 bytes over 256-byte buffers');
  t.same(got[0].used.map((e) => e.len), [256, 256, 256, 244]);
  t.ok(eq(got[0].data, pkt));
  t.equal(rx.ctrl[CTRL_LAST_AVAIL], 4, 'only the chains used were consumed');
  t.equal(rx.drv.usedIdx(), 4);
  // next packet starts in the 5th chain
  const p2 = pattern(200, 11);
  tx.drv.postTx(p2);
  forward(a, tx, rx);
  const g2 = rx.drv.readRx();
  t.equal(g2[0].numBuffers, 1);
  t.ok(eq(g2[0].data, p2));
  t.same(rx.drv.brokenGuards(), []);
});

t.test('non-mergeable RX with a multi-descriptor chain', async (t) => {
  const { a, tx, rx } = pair({ rx: { hdrLen: 12, mrgRxbuf: false } });
  const pkt = pattern(1400, 12);
  tx.drv.postTx(pkt);
  rx.drv.postRx(2, 512, { chunks: 3 });
  forward(a, tx, rx);
  const got = rx.drv.readRx();
  t.equal(got.length, 1);
  t.equal(got[0].numBuffers, 1);
  t.equal(got[0].used.length, 1, 'one chain');
  t.equal(got[0].used[0].len, 1412);
  t.ok(eq(got[0].data, pkt));
  t.same(rx.drv.brokenGuards(), []);
});

t.test('burst RX without MRG_RXBUF (12-byte header): one buffer a packet, num_buffers 1, whatever the buffer held before', async (t) => {
  const { a, b, tx, rx } = pair({ size: 64, rx: { hdrLen: 12, mrgRxbuf: false } });
  // garbage where headers and packets will land: the fast path writes header words only where
  // they differ, so each one must still read 0 ... 0, num_buffers 1
  const arena = layout(0);
  b.mem8.fill(0xa5, arena.bufBase, arena.bufEnd);
  rx.drv.postRx(8, 2048);
  const sent = [pattern(60, 1), pattern(64, 2), pattern(129, 3), pattern(1514, 4), pattern(2036, 5), pattern(2037, 6)];
  for (const p of sent) tx.drv.postTx(p);
  const n = tx.vq.dequeueBurst(batch, 32);
  t.equal(n, sent.length);
  rx.vq.acquire();
  const got = rx.vq.enqueueBurst(a.gm, batch, null, n);
  rx.vq.flush();
  rx.vq.release();
  tx.vq.completeBurst(batch);
  t.equal(got, 5, 'all but the frame one byte too big for a 2048-byte buffer (2037 + 12)');
  t.equal(rx.stats[ST_DROP_NO_BUF], 1, 'that one is a drop: without MRG_RXBUF a packet never spans buffers');
  const out = rx.drv.readRx();
  t.equal(out.length, 5);
  for (let i = 0; i < 5; i++) {
    t.ok(eq(out[i].data, sent[i]), `packet ${i} (${sent[i].length} B) byte-exact`);
    t.ok(eq(out[i].hdr, hdrWithNum(12, 1)), `packet ${i}: header zero, num_buffers 1`);
    t.same(out[i].used.map((e) => e.len), [sent[i].length + 12], `packet ${i}: one buffer`);
  }
  t.same(rx.drv.brokenGuards(), []);
});

t.test('too little RX buffer: drop counted, nothing consumed', async (t) => {
  // no buffers at all
  {
    const { a, b, tx, rx } = pair();
    tx.drv.postTx(pattern(100, 13));
    const before = b.mem8.slice();
    const r = forward(a, tx, rx);
    t.same(r.enq, [false]);
    t.equal(r.rxNotify, false);
    t.equal(rx.stats[ST_DROP_NO_BUF], 1);
    t.equal(rx.stats[ST_PACKETS], 0);
    t.equal(rx.drv.usedIdx(), 0);
    t.equal(rx.ctrl[CTRL_LAST_AVAIL], 0);
    t.ok(eq(b.mem8, before), 'RX guest memory untouched');
    t.equal(tx.drv.collectUsed().length, 1, 'the TX buffer is still returned');
  }
  // mergeable: not enough buffers in total; then more arrive and the next packet uses all
  {
    const { a, tx, rx } = pair();
    rx.drv.postRx(2, 256);
    tx.drv.postTx(pattern(600, 14));
    t.same(forward(a, tx, rx).enq, [false]);
    t.equal(rx.ctrl[CTRL_LAST_AVAIL], 0, 'partial space is not consumed');
    t.equal(rx.drv.usedIdx(), 0);
    rx.drv.postRx(1, 256);
    const p = pattern(600, 15);
    tx.drv.postTx(p);
    t.same(forward(a, tx, rx).enq, [true]);
    const got = rx.drv.readRx();
    t.equal(got[0].numBuffers, 3);
    t.ok(eq(got[0].data, p));
    t.equal(rx.stats[ST_DROP_NO_BUF], 1);
  }
  // non-mergeable: a chain too small
  {
    const { a, tx, rx } = pair({ rx: { hdrLen: 10, mrgRxbuf: false } });
    rx.drv.postRx(2, 100, { chunks: 2 });
    tx.drv.postTx(pattern(300, 16));
    t.same(forward(a, tx, rx).enq, [false]);
    t.equal(rx.ctrl[CTRL_LAST_AVAIL], 0);
    t.equal(rx.stats[ST_DROP_NO_BUF], 1);
    const p = pattern(150, 17);
    tx.drv.postTx(p);
    t.same(forward(a, tx, rx).enq, [true]);
    t.ok(eq(rx.drv.readRx()[0].data, p));
  }
});

t.test('EVENT_IDX: notify only when used_event is crossed', async (t) => {
  const { a, tx, rx } = pair({ tx: { eventIdx: true }, rx: { eventIdx: true } });
  rx.drv.postRx(8, 2048);
  rx.drv.setUsedEvent(2); // interrupt me when entry 2 is used (used->idx goes past 2)
  tx.drv.setUsedEvent(0xffff); // TX: far away
  const res: boolean[] = [];
  for (let i = 0; i < 4; i++) {
    tx.drv.postTx(pattern(64, i));
    const r = forward(a, tx, rx);
    res.push(r.rxNotify);
    t.equal(r.txNotify, false, `TX no notify at ${i + 1}`);
  }
  t.same(res, [false, false, true, false], 'only the flush publishing idx 3 crosses used_event 2');
  // several in one flush crossing the event
  rx.drv.setUsedEvent(5);
  tx.drv.setUsedEvent(5);
  for (let i = 0; i < 3; i++) tx.drv.postTx(pattern(64, 20 + i));
  const r = forward(a, tx, rx);
  t.equal(r.n, 3);
  t.equal(r.rxNotify, true, '4 -> 7 crosses 5');
  t.equal(r.txNotify, true);
  t.equal(rx.drv.readRx().length, 7);
  // avail_event from enableNotify; used flags untouched with EVENT_IDX
  t.equal(tx.vq.enableNotify(), false, 'nothing pending');
  t.equal(tx.drv.availEvent(), 7);
  tx.vq.disableNotify();
  t.equal(tx.drv.usedFlags(), 0);
  tx.drv.postTx(pattern(10, 1));
  t.equal(tx.vq.enableNotify(), true, 'work arrived: do not sleep');
});

t.test('VRING_AVAIL_F_NO_INTERRUPT without EVENT_IDX; NO_NOTIFY flag', async (t) => {
  const { a, tx, rx } = pair();
  rx.drv.postRx(4, 2048);
  rx.drv.setNoInterrupt(true);
  tx.drv.postTx(pattern(64, 1));
  let r = forward(a, tx, rx);
  t.equal(r.rxNotify, false);
  t.equal(r.txNotify, true);
  rx.drv.setNoInterrupt(false);
  tx.drv.setNoInterrupt(true);
  tx.drv.postTx(pattern(64, 2));
  r = forward(a, tx, rx);
  t.equal(r.rxNotify, true);
  t.equal(r.txNotify, false);
  t.equal(rx.vq.flush(), false, 'nothing new, no notification');
  tx.vq.disableNotify();
  t.equal(tx.drv.usedFlags(), VRING_USED_F_NO_NOTIFY);
  t.equal(tx.vq.enableNotify(), false);
  t.equal(tx.drv.usedFlags(), 0);
});

t.test('ring wrap-around across idx 65535 -> 0', async (t) => {
  const { a, tx, rx } = pair({ startIdx: 65530, tx: { eventIdx: true }, rx: { eventIdx: true } });
  rx.drv.setUsedEvent(65535);
  const sent: Uint8Array[] = [];
  const got: Uint8Array[] = [];
  let notifies = 0;
  for (let round = 0; round < 5; round++) {
    rx.drv.postRx(3, 2048);
    for (let i = 0; i < 3; i++) {
      const p = pattern(100 + round * 10 + i, round * 3 + i);
      sent.push(p);
      tx.drv.postTx(p, { chunks: 1 + (i % 2) });
    }
    const r = forward(a, tx, rx);
    t.equal(r.n, 3);
    if (r.rxNotify) notifies++;
    for (const p of rx.drv.readRx()) got.push(p.data);
    t.equal(tx.drv.collectUsed().length, 3);
  }
  t.equal(got.length, 15);
  t.ok(sent.every((p, i) => eq(p, got[i])), 'all 15 byte-exact in order');
  t.equal(rx.drv.usedIdx(), (65530 + 15) & 0xffff);
  t.equal(tx.drv.usedIdx(), 9);
  t.equal(tx.ctrl[CTRL_LAST_AVAIL], 9);
  t.equal(rx.ctrl[CTRL_LAST_USED], 9);
  t.equal(notifies, 1, 'used_event 65535 crossed once (65533 -> 0)');
});

t.test('dequeue respects max and batch capacity; TX chain too long for a batch is dropped', async (t) => {
  const { a, tx, rx } = pair({ size: 64 });
  for (let i = 0; i < 5; i++) tx.drv.postTx(pattern(50, i));
  t.equal(tx.vq.dequeueBurst(batch, 2), 2);
  t.equal(tx.vq.completeBurst(batch), true);
  t.equal(tx.vq.dequeueBurst(batch, 32), 3);
  tx.vq.completeBurst(batch);
  // a batch with room for 4 segments: a 6-descriptor packet cannot fit even alone
  const small = new PacketBatch(4, 4);
  tx.drv.postTx(pattern(600, 1), { hdrSeparate: true, chunks: 6 });
  t.equal(tx.vq.dequeueBurst(small, 4), 0);
  t.equal(tx.stats[ST_DROP_TOO_BIG], 1);
  t.equal(tx.drv.collectUsed().length, 6, 'the dropped chain was returned too');
  t.equal(rx.drv.usedIdx(), 0);
  void a;
});

t.test('enqueueBytes (backend frame) and two writers on one RX ring', async (t) => {
  const { rx } = pair();
  rx.drv.postRx(4, 2048);
  const frame = pattern(60, 99);
  rx.vq.acquire();
  t.equal(rx.vq.enqueueBytes(frame, 0, 60), true);
  rx.vq.release(); // publishes even without flush()
  // a second Virtqueue object (another worker) over the same ring and ctrl
  const other = new Virtqueue(rx.vd, rx.vq.mem, new DirtyLog());
  other.acquire();
  t.equal(other.lastAvailIdx, 1, 'indices come from ctrl');
  t.equal(other.enqueueBytes(frame, 10, 20), true);
  t.equal(other.flush(), true);
  other.release();
  const got = rx.drv.readRx();
  t.equal(got.length, 2);
  t.ok(eq(got[0].data, frame));
  t.ok(eq(got[1].data, frame.subarray(10, 30)));
  t.equal(rx.ctrl[CTRL_LAST_USED], 2);
});

// ---------------------------------------------------------------- malformed rings

interface Bad {
  name: string;
  reason: string;
  /** build the bad ring on the TX queue of guest A (or RX of B with rxSide) */
  setup: (tx: Queue, a: Guest, rx: Queue) => void;
  rxSide?: boolean;
  size?: number;
  tx?: Partial<QueueFeatures>;
}

const R_END = R0_SIZE; // end of region 0 (region 1 starts there)
const OUTSIDE = R0_SIZE + R1_SIZE + 0x100; // in the SAB, but not guest memory

const bad: Bad[] = [
  {
    name: 'descriptor outside memory', reason: 'descriptor outside guest memory',
    setup: (tx) => tx.drv.postChain([{ gpa: OUTSIDE, len: 100 }]),
  },
  {
    name: 'descriptor crossing a region end', reason: 'descriptor crosses a memory region end',
    setup: (tx) => tx.drv.postChain([{ gpa: R_END - 40, len: 100 }]),
  },
  {
    name: 'descriptor length overflowing memory', reason: 'descriptor outside guest memory',
    setup: (tx) => tx.drv.postChain([{ gpa: 0xf0000000_0000, len: 0xffffffff }]),
  },
  {
    name: 'chain loop', reason: 'descriptor chain loop (longer than the queue size)',
    setup: (tx) => {
      const b = tx.drv.alloc(64);
      tx.drv.writeDesc(0, b, 64, VRING_DESC_F_NEXT, 1);
      tx.drv.writeDesc(1, b, 64, VRING_DESC_F_NEXT, 0);
      tx.drv.pushAvail(0);
    },
  },
  {
    name: 'chain longer than queue size (indirect)', reason: 'descriptor chain longer than the queue size',
    setup: (tx) => {
      const b = tx.drv.alloc(64);
      tx.drv.postChain(Array.from({ length: 9 }, () => ({ gpa: b, len: 64 })), { indirect: true });
    },
  },
  {
    name: 'indirect chain loop', reason: 'indirect chain loop (longer than its table)',
    setup: (tx) => {
      const b = tx.drv.alloc(64);
      const tbl = tx.drv.alloc(48);
      tx.drv.writeDesc(0, b, 64, VRING_DESC_F_NEXT, 1, tbl);
      tx.drv.writeDesc(1, b, 64, VRING_DESC_F_NEXT, 2, tbl);
      tx.drv.writeDesc(2, b, 64, VRING_DESC_F_NEXT, 1, tbl);
      tx.drv.writeDesc(0, tbl, 48, VRING_DESC_F_INDIRECT, 0);
      tx.drv.pushAvail(0);
    },
  },
  {
    name: 'indirect length not multiple of 16', reason: 'indirect table length not a non-zero multiple of 16',
    setup: (tx) => {
      const tbl = tx.drv.alloc(32);
      tx.drv.writeDesc(0, tx.drv.alloc(64), 64, 0, 0, tbl);
      tx.drv.writeDesc(0, tbl, 24, VRING_DESC_F_INDIRECT, 0);
      tx.drv.pushAvail(0);
    },
  },
  {
    name: 'indirect length zero', reason: 'indirect table length not a non-zero multiple of 16',
    setup: (tx) => {
      tx.drv.writeDesc(0, tx.drv.alloc(32), 0, VRING_DESC_F_INDIRECT, 0);
      tx.drv.pushAvail(0);
    },
  },
  {
    name: 'nested indirect', reason: 'nested indirect descriptor',
    setup: (tx) => {
      const inner = tx.drv.alloc(16);
      tx.drv.writeDesc(0, tx.drv.alloc(64), 64, 0, 0, inner);
      const outer = tx.drv.alloc(32);
      tx.drv.writeDesc(0, tx.drv.alloc(64), 64, VRING_DESC_F_NEXT, 1, outer);
      tx.drv.writeDesc(1, inner, 16, VRING_DESC_F_INDIRECT, 0, outer);
      tx.drv.writeDesc(0, outer, 32, VRING_DESC_F_INDIRECT, 0);
      tx.drv.pushAvail(0);
    },
  },
  {
    name: 'indirect table outside memory', reason: 'indirect table outside guest memory',
    setup: (tx) => {
      tx.drv.writeDesc(0, OUTSIDE, 32, VRING_DESC_F_INDIRECT, 0);
      tx.drv.pushAvail(0);
    },
  },
  {
    name: 'indirect table crossing a region end', reason: 'indirect table outside guest memory',
    setup: (tx) => {
      tx.drv.writeDesc(0, R_END - 16, 32, VRING_DESC_F_INDIRECT, 0);
      tx.drv.pushAvail(0);
    },
  },
  {
    name: 'indirect next out of range', reason: 'indirect next index out of range',
    setup: (tx) => {
      const tbl = tx.drv.alloc(32);
      tx.drv.writeDesc(0, tx.drv.alloc(64), 64, VRING_DESC_F_NEXT, 2, tbl);
      tx.drv.writeDesc(0, tbl, 32, VRING_DESC_F_INDIRECT, 0);
      tx.drv.pushAvail(0);
    },
  },
  {
    name: 'indirect without the feature', reason: 'indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC',
    tx: { indirect: false },
    setup: (tx) => tx.drv.postTx(pattern(64, 1), { indirect: true }),
  },
  {
    name: 'indirect with NEXT', reason: 'indirect descriptor with NEXT',
    setup: (tx) => {
      const tbl = tx.drv.alloc(16);
      tx.drv.writeDesc(0, tx.drv.alloc(64), 64, 0, 0, tbl);
      tx.drv.writeDesc(0, tbl, 16, VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT, 1);
      tx.drv.writeDesc(1, tx.drv.alloc(64), 64, 0, 0);
      tx.drv.pushAvail(0);
    },
  },
  {
    name: 'next index out of range', reason: 'descriptor next index out of range',
    setup: (tx) => {
      tx.drv.writeDesc(0, tx.drv.alloc(64), 64, VRING_DESC_F_NEXT, 8);
      tx.drv.pushAvail(0);
    },
  },
  {
    name: 'avail head out of range', reason: 'avail ring head out of range',
    setup: (tx) => tx.drv.pushAvail(9),
  },
  {
    name: 'avail idx more than size ahead', reason: 'avail idx more than queue size ahead',
    setup: (tx) => {
      tx.drv.postTx(pattern(64, 1));
      tx.drv.setAvailIdxRaw(9);
    },
  },
  {
    name: 'avail idx behind (= far ahead mod 65536)', reason: 'avail idx more than queue size ahead',
    setup: (tx) => tx.drv.setAvailIdxRaw(0xffff),
  },
  {
    name: 'writable descriptor in a TX chain', reason: 'writable descriptor in TX chain',
    setup: (tx) => tx.drv.postChain([{ gpa: tx.drv.alloc(64), len: 64, write: true }]),
  },
  {
    name: 'TX chain shorter than the header', reason: 'TX chain shorter than the virtio-net header',
    setup: (tx) => tx.drv.postChain([{ gpa: tx.drv.alloc(8), len: 8 }]),
  },
  {
    name: 'second packet of a burst is bad (nothing published)', reason: 'descriptor outside guest memory',
    setup: (tx) => {
      tx.drv.postTx(pattern(64, 1));
      tx.drv.postChain([{ gpa: OUTSIDE, len: 100 }]);
    },
  },
  {
    name: 'readable descriptor in an RX chain', reason: 'readable descriptor in RX chain', rxSide: true,
    setup: (_tx, _a, rx) => rx.drv.postChain([{ gpa: rx.drv.alloc(2048), len: 2048 }]),
  },
  {
    name: 'RX descriptor outside memory', reason: 'descriptor outside guest memory', rxSide: true,
    setup: (_tx, _a, rx) => rx.drv.postChain([{ gpa: rx.drv.alloc(64), len: 64, write: true }, { gpa: OUTSIDE, len: 4096, write: true }]),
  },
  {
    name: 'RX descriptor crossing a region end', reason: 'descriptor crosses a memory region end', rxSide: true,
    setup: (_tx, _a, rx) => rx.drv.postChain([{ gpa: R_END - 64, len: 4096, write: true }]),
  },
  {
    name: 'RX avail idx too far ahead', reason: 'avail idx more than queue size ahead', rxSide: true,
    setup: (_tx, _a, rx) => rx.drv.setAvailIdxRaw(100),
  },
];

for (const c of bad) {
  t.test(`malformed: ${c.name}`, async (t) => {
    const { a, b, tx, rx } = pair({ tx: c.tx, size: c.size });
    if (c.rxSide) tx.drv.postTx(pattern(300, 1));
    c.setup(tx, a, rx);
    let n = 0;
    if (c.rxSide) n = tx.vq.dequeueBurst(batch, 32);
    const snapA = a.mem8.slice();
    const snapB = b.mem8.slice();
    const txAvail = tx.ctrl[CTRL_LAST_AVAIL];
    const rxAvail = rx.ctrl[CTRL_LAST_AVAIL];
    let err: unknown = null;
    try {
      if (c.rxSide) {
        rx.vq.acquire();
        try {
          for (let i = 0; i < n; i++) rx.vq.enqueue(a.gm, batch, i);
        } finally {
          rx.vq.release();
        }
      } else {
        tx.vq.dequeueBurst(batch, 32);
      }
    } catch (e) {
      err = e;
    }
    t.ok(err instanceof GuestError, 'GuestError thrown');
    t.equal((err as GuestError).reason, c.reason);
    t.ok(eq(a.mem8, snapA), 'guest A memory (rings, buffers, guards, unmapped tail) unchanged');
    t.ok(eq(b.mem8, snapB), 'guest B memory unchanged');
    t.same(tx.drv.brokenGuards(), [], 'TX canaries intact');
    t.same(rx.drv.brokenGuards(), [], 'RX canaries intact');
    t.equal(tx.drv.usedIdx(), 0, 'TX used->idx did not move');
    t.equal(rx.drv.usedIdx(), 0, 'RX used->idx did not move');
    t.equal(tx.ctrl[CTRL_LAST_AVAIL], txAvail, 'TX last_avail_idx not advanced');
    t.equal(rx.ctrl[CTRL_LAST_AVAIL], rxAvail, 'RX last_avail_idx not advanced');
  });
}

t.test('malformed ring placement and size (constructor)', async (t) => {
  const g = makeGuest();
  const cases: Array<[string, Parameters<typeof vringDesc>[1], string]> = [
    ['size not a power of two', { index: 1, size: 6 }, 'queue size not a power of two'],
    ['size zero', { index: 1, size: 0 }, 'queue size not a power of two'],
    ['size over 32768', { index: 1, size: 65536 }, 'queue size over 32768'],
    ['desc ring crossing its region end', { index: 1, size: 8, desc: R_END - 64 }, 'desc ring outside its region'],
    ['avail ring crossing its region end', { index: 1, size: 8, avail: R0_SIZE + R1_SIZE - 16 }, 'avail ring outside its region'],
    ['used ring crossing its region end', { index: 1, size: 256, used: R_END - 1024 }, 'used ring outside its region'],
    ['desc not 16-aligned', { index: 1, size: 8, desc: 0x1008 }, 'desc ring not 16-aligned'],
    ['avail not 2-aligned', { index: 1, size: 8, avail: 0x2001 }, 'avail ring not 2-aligned'],
    ['used not 4-aligned', { index: 1, size: 8, used: 0x3002 }, 'used ring not 4-aligned'],
  ];
  for (const [name, s, reason] of cases) {
    const snap = g.mem8.slice();
    let err: unknown = null;
    try {
      new Virtqueue(vringDesc(g, s), g.gm, new DirtyLog());
    } catch (e) {
      err = e;
    }
    t.ok(err instanceof GuestError, `${name}: GuestError`);
    t.equal((err as GuestError).reason, reason, name);
    t.ok(eq(g.mem8, snap), `${name}: memory unchanged`);
  }
  // a ring location in a region that does not exist
  const vd = vringDesc(g, { index: 1 });
  vd.used = { region: 5, offset: 0 };
  t.throws(() => new Virtqueue(vd, g.gm, new DirtyLog()), new GuestError('used ring outside its region'));
  // valid at the very end of a region
  t.doesNotThrow(() => new Virtqueue(vringDesc(g, { index: 1, size: 8, desc: R_END - 128 }), g.gm, new DirtyLog()));
});

t.test('translate: last-hit cache and region boundaries', async (t) => {
  const g = makeGuest();
  t.equal(g.gm.translate(R_END - 16, 16), 0);
  t.equal(g.gm.off, R_END - 16);
  t.equal(g.gm.translate(R_END, 16), 1);
  t.equal(g.gm.off, 0);
  t.equal(g.gm.translate(R_END - 1, 2), -1, 'crossing into the adjacent region');
  t.equal(g.gm.translate(R0_SIZE + R1_SIZE - 4, 4), 1);
  t.equal(g.gm.translate(R0_SIZE + R1_SIZE - 4, 5), -1);
  t.equal(g.gm.translate(5, 10), 0);
  t.equal(g.gm.off, 5);
  t.equal(g.gm.translate(-4, 8), -1);
  t.equal(g.gm.translate(8, -1), -1);
  t.equal(g.gm.gpaOf(1, 0x10), R_END + 0x10);
});

void FEAT_MRG;
void VRING_DESC_F_WRITE;
void CTRL_LAST_USED;

t.test('burst enqueue with DPDK buffer layout (packet 8-aligned, header before it): bytes exact at every size, nothing past them', async (t) => {
  // DPDK's virtio PMD puts the header at 116 and the packet at 128 of each mbuf: enqueueBurst
  // copies those with its inline word loops (a straight-line first 64 bytes, then words,
  // then a byte tail). Every size from 1 to 300 and some larger ones, 8 per ring.
  const sizes: number[] = [];
  for (let n = 1; n <= 300; n++) sizes.push(n);
  sizes.push(511, 512, 1000, 1514);
  const bad: string[] = [];
  let checked = 0;
  for (let g0 = 0; g0 < sizes.length; g0 += 8) {
    const group = sizes.slice(g0, g0 + 8);
    const { a, tx, rx } = pair({ size: 8 });
    const rxAt: number[] = [];
    for (const n of group) {
      const g = tx.drv.alloc(16 + n, 16) + 4; // packet at g + 12: 0 mod 16
      const bytes = new Uint8Array(12 + n);
      bytes.set(pattern(n, n), 12);
      tx.drv.write(g, bytes);
      tx.drv.postChain([{ gpa: g, len: 12 + n, write: false }]);
      const r = rx.drv.alloc(2052, 16) + 4;
      rx.drv.write(r, new Uint8Array(2048).fill(0xee));
      rx.drv.postChain([{ gpa: r, len: 2048, write: true }]);
      rxAt.push(r);
    }
    const m = tx.vq.dequeueBurst(batch, 32);
    rx.vq.acquire();
    const got = rx.vq.enqueueBurst(a.gm, batch, null, m);
    rx.vq.flush();
    rx.vq.release();
    tx.vq.completeBurst(batch);
    if (got !== group.length) bad.push(`sizes ${group[0]}..: ${got} of ${group.length} enqueued`);
    group.forEach((n, k) => {
      const r = rxAt[k];
      if (!eq(rx.drv.read(r + 12, n), pattern(n, n))) bad.push(`${n} B: packet bytes differ`);
      if (!eq(rx.drv.read(r, 12), Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0))) bad.push(`${n} B: header`);
      if (!rx.drv.read(r + 12 + n, 2048 - 12 - n).every((x) => x === 0xee)) bad.push(`${n} B: written past the packet`);
      checked++;
    });
    if (rx.drv.brokenGuards().length > 0) bad.push(`sizes ${group[0]}..: guard bytes broken`);
  }
  t.same(bad, [], `${checked} packets, sizes 1..300, 511, 512, 1000, 1514`);
  t.equal(checked, sizes.length);
});

t.test('a guest error mid-burst with bulk copies queued: abandon() drops them, publishes nothing, unlocks', async (t) => {
  // The worker shares one CopyQueue between its rings. A burst that fails after queueing
  // copies must not leave them for the next ring's publish: by then the failed ring's
  // regions are unregistered and their ids may belong to another device's memory.
  const { a, b, tx, rx } = pair({ size: 8 });
  a.gm.enableBulk(native);
  b.gm.enableBulk(native);
  const q = new CopyQueue(native);
  tx.vq.bulk = q;
  rx.vq.bulk = q;
  tx.drv.postTx(pattern(1000, 1));
  tx.drv.postTx(pattern(1000, 2));
  const good = rx.drv.alloc(2048);
  rx.drv.write(good, new Uint8Array(2048).fill(0xee));
  rx.drv.postChain([{ gpa: good, len: 2048, write: true }]); // the first packet's buffer is good (its copy is queued) ...
  rx.drv.postChain([{ gpa: OUTSIDE, len: 2048, write: true }]); // ... the second's is outside memory
  const n = tx.vq.dequeueBurst(batch, 32);
  t.equal(n, 2, 'two packets dequeued');
  rx.vq.acquire();
  let err: unknown = null;
  try {
    rx.vq.enqueueBurst(a.gm, batch, null, n);
    rx.vq.flush();
  } catch (e) {
    err = e;
    rx.vq.abandon();
  }
  t.ok(err instanceof GuestError, 'GuestError thrown');
  t.equal((err as GuestError).reason, 'descriptor outside guest memory');
  t.equal(rx.ctrl[CTRL_LOCK], 0, 'the ring lock is free');
  q.run(); // what the next ring's publish would do
  // the header may have been written in place (the buffer is the guest's to take); the
  // packet's bytes, queued as one bulk copy, must never arrive
  t.ok(rx.drv.read(good + 12, 2048 - 12).every((x) => x === 0xee), 'the queued packet copy never ran');
  t.equal(rx.drv.usedIdx(), 0, 'RX used->idx did not move');
  t.equal(rx.ctrl[CTRL_LAST_USED], 0, 'RX last_used_idx not stored back');
  a.gm.dispose();
  b.gm.dispose();
});

t.test('a ring that ends where its region ends: valid without EVENT_IDX (no event field), refused with it', async (t) => {
  // virtio 1.x 2.7: used_event / avail_event exist only with VIRTIO_RING_F_EVENT_IDX. The
  // control plane checked rings without them and the worker with them, so such a ring was
  // accepted by SET_VRING_ADDR and then broke in the worker (issue 19).
  const size = 8;
  const availEnd = R0_SIZE + R1_SIZE - (4 + 2 * size); // the avail ring's last byte is region 1's last
  const usedEnd = R0_SIZE + R1_SIZE - 0x100 - (4 + 8 * size); // in region 1, with room to spare
  const a = makeGuest();
  const b = makeGuest();
  const tx = makeQueue(a, { index: 1, size, avail: availEnd, used: usedEnd, bufBase: 0x20000, bufEnd: 0x2f000 });
  const rx = makeQueue(b, { index: 0, size });
  // (our test driver zeroes a used_event slot whatever the features: look at what the device writes)
  const past = a.mem8.slice(R0_SIZE + R1_SIZE);
  rx.drv.postRx(1, 2048);
  const p = pattern(300, 5);
  tx.drv.postTx(p);
  const r = forward(a, tx, rx);
  t.equal(r.n, 1, 'the packet was dequeued');
  t.ok(eq(rx.drv.readRx()[0]?.data ?? new Uint8Array(0), p), 'and delivered byte-exact');
  t.equal(tx.drv.usedIdx(), 1, 'TX used->idx 1');
  t.ok(eq(a.mem8.subarray(R0_SIZE + R1_SIZE), past), 'nothing past the region end was touched');
  const err = (() => {
    try {
      new Virtqueue(vringDesc(a, { index: 1, size, avail: availEnd, used: usedEnd, features: { eventIdx: true } }), a.gm, new DirtyLog());
      return null;
    } catch (e) {
      return e;
    }
  })();
  t.ok(err instanceof GuestError && err.reason === 'avail ring outside its region', 'with EVENT_IDX the used_event field would lie past the region: refused by name');
});
