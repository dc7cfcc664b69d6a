/**
 * The packed virtqueue (src/workers/packed-ring.ts) against a packed driver (packed-driver.ts)
 * over test guests (kit/vq-harness.ts): byte-exact TX and RX, chains and mergeable RX across the
 * ring's end, indirect tables, buffer ids out of slot order, IN_ORDER batches, event
 * suppression both ways, resuming from the ctrl state (what GET/SET_VRING_BASE carry), dirty
 * logging of every write, and hostile descriptors (named GuestErrors, nothing written).
 */
import t from 'tap';
import { PacketBatch } from '../src/workers/packet-batch';
import { PackedVirtqueue } from '../src/workers/packed-ring';
import { packedIndex } from '../src/protocol/ring-layout';
import { GuestError } from '../src/workers/guest-error';
import { DirtyLog } from '../src/workers/dirty-log';
import {
  CTRL_LAST_AVAIL, CTRL_LAST_USED, CTRL_SIGNALLED_USED, LogDesc, QueueFeatures, ST_CSUM_SW, ST_DROP_NO_BUF, ST_GSO_PASSED, ST_PACKETS,
} from '../src/shared/types';
import { VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE } from '../src/protocol/constants';
import { BACKGROUND, eq, Guest, layout, makeGuest, pattern, vringDesc } from '../kit/vq-harness';
import { PackedDriver } from './packed-driver';
import { GUEST_ALL, HOST_ALL, build, l4Verifies } from '../kit/offload-lib';
import { EDIT_PUSH } from '../src/workers/vlan';
import { CopyQueue } from '../src/workers/bulk-copy';
import { native } from '../src/native';

const batch = new PacketBatch(32);

interface PQueue {
  vq: PackedVirtqueue;
  drv: PackedDriver;
  ctrl: Int32Array;
  stats: Float64Array;
  g: Guest;
}

function makePacked(g: Guest, s: { index: number; size?: number; features?: Partial<QueueFeatures>; start?: number; wrap?: number; log?: LogDesc; ctrl?: SharedArrayBuffer }): PQueue {
  const size = s.size ?? 8;
  const l = layout(s.index & 1);
  const vd = vringDesc(g, { index: s.index, size, features: { packed: true, ...s.features } });
  const c = new Int32Array(vd.ctrl);
  if (s.ctrl) {
    vd.ctrl = s.ctrl;
  } else {
    c[CTRL_LAST_AVAIL] = c[CTRL_LAST_USED] = packedIndex(s.start ?? 0, s.wrap ?? 1);
    c[CTRL_SIGNALLED_USED] = -1;
  }
  const drv = new PackedDriver(g.mem8, {
    size, descGpa: l.desc, drvGpa: l.avail, devGpa: l.used, bufBase: l.bufBase, bufEnd: l.bufEnd,
    hdrLen: vd.features.hdrLen, startIdx: s.start, startWrap: s.wrap,
  });
  const log = new DirtyLog();
  log.set(s.log ?? null);
  const vq = new PackedVirtqueue(vd, g.gm, log);
  return { vq, drv, ctrl: new Int32Array(vd.ctrl), stats: new Float64Array(vd.stats), g };
}

function pair(opts: { size?: number; tx?: Partial<QueueFeatures>; rx?: Partial<QueueFeatures>; start?: number; wrap?: number } = {}) {
  const a = makeGuest();
  const b = makeGuest();
  const tx = makePacked(a, { index: 1, size: opts.size, features: opts.tx, start: opts.start, wrap: opts.wrap });
  const rx = makePacked(b, { index: 0, size: opts.size, features: opts.rx, start: opts.start, wrap: opts.wrap });
  return { a, b, tx, rx };
}

function forward(tx: PQueue, rx: PQueue): { n: number; done: number; rxNotify: boolean; txNotify: boolean } {
  const n = tx.vq.dequeueBurst(batch, 32);
  rx.vq.acquire();
  const done = rx.vq.enqueueBurst(tx.g.gm, batch, null, n);
  const rxNotify = rx.vq.flush();
  rx.vq.release();
  const txNotify = n > 0 ? tx.vq.completeBurst(batch) : false;
  return { n, done, rxNotify, txNotify };
}

/** Header with num_buffers, then the frame: what an RX chain set must hold. */
function rxImage(frame: Uint8Array, numBuffers: number): Uint8Array {
  const img = new Uint8Array(12 + frame.length);
  img[10] = numBuffers & 0xff;
  img[11] = numBuffers >> 8;
  img.set(frame, 12);
  return img;
}

t.test('one frame TX to RX: byte-exact, used elements in place with the wrap counter, indices', async (t) => {
  const { tx, rx } = pair();
  const frame = pattern(300, 1);
  const c = tx.drv.postTx(frame);
  const r0 = rx.drv.postRx(2048);
  const r = forward(tx, rx);
  t.same([r.n, r.done], [1, 1]);
  const used = rx.drv.collectUsed();
  t.same(used, [{ id: r0.id, len: 312 }]);
  t.ok(eq(rx.drv.chainBytes(r0, 312), rxImage(frame, 1)), 'header (num_buffers 1) and frame byte-exact');
  t.same(tx.drv.collectUsed(), [{ id: c.id, len: 0 }]);
  t.equal(tx.drv.descFlags(0), (1 << 7) | (1 << 15), 'TX used element: AVAIL = USED = 1 (wrap 1)');
  t.equal(tx.ctrl[CTRL_LAST_AVAIL], packedIndex(1, 1), 'index 1, wrap counter 1 (bit 15)');
  t.equal(tx.ctrl[CTRL_LAST_USED], packedIndex(1, 1));
  t.equal(rx.ctrl[CTRL_LAST_AVAIL], packedIndex(1, 1));
  t.equal(rx.ctrl[CTRL_LAST_USED], packedIndex(1, 1));
  t.equal(rx.stats[ST_PACKETS], 1);
  t.equal(rx.g.mem8[0x1f000], BACKGROUND, 'nothing outside the buffers');
});

t.test('many laps of a ring of 16: TX chains of 3 descriptors and mergeable RX chains of 2 across the end, byte-exact', async (t) => {
  const { tx, rx } = pair({ size: 16 });
  let sent = 0;
  let got = 0;
  for (let round = 0; round < 12; round++) {
    const frames = [pattern(100 + round * 37, round), pattern(700 + round, round + 50)];
    const txc = frames.map((f) => tx.drv.postTx(f, { chunks: 3 }));
    t.equal(txc.length, 2);
    // RX: chains of two 128-byte buffers, as many as the frames need (the 700+ byte frame
    // takes 3): mergeable RX across the ring's end
    const need = frames.reduce((s, f) => s + Math.ceil((12 + f.length) / 256), 0);
    const rxc = Array.from({ length: need }, () => rx.drv.postRx(128, { chunks: 2 }));
    const r = forward(tx, rx);
    t.equal(r.n, 2, `round ${round}: two frames`);
    sent += r.n;
    const used = rx.drv.collectUsed();
    // reassemble: elements in order; num_buffers in the first chain's header
    let k = 0;
    for (const f of frames) {
      const first = rxc.find((c) => c.id === used[k].id)!;
      const head = rx.drv.chainBytes(first, 12);
      const nb = head[10] | (head[11] << 8);
      const parts: Uint8Array[] = [];
      for (let j = 0; j < nb; j++) {
        const c = rxc.find((x) => x.id === used[k + j].id)!;
        parts.push(rx.drv.chainBytes(c, used[k + j].len));
      }
      const all = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
      let at = 0;
      for (const p of parts) {
        all.set(p, at);
        at += p.length;
      }
      t.ok(eq(all, rxImage(f, nb)), `round ${round}: frame of ${f.length} bytes byte-exact over ${nb} chains`);
      k += nb;
      got++;
    }
    t.equal(k, need, 'every chain posted was used');
    t.same(tx.drv.collectUsed().map((e) => e.len), [0, 0]);
  }
  t.equal(got, sent);
  // 12 rounds x 6 TX slots = 72 = 4 laps + 8: wrap counter back to 1
  t.equal(tx.ctrl[CTRL_LAST_AVAIL], packedIndex(8, 1), 'TX: 72 slots, four laps');
  t.equal(rx.ctrl[CTRL_LAST_AVAIL], packedIndex(rx.drv.next, rx.drv.wrap), 'RX: where the driver posts next');
});

t.test('indirect TX and RX chains; buffer ids out of slot order are returned as posted', async (t) => {
  const { tx, rx } = pair({ size: 16 });
  const f1 = pattern(500, 3);
  const f2 = pattern(60, 4);
  const c1 = tx.drv.postChain([], false, { id: 11 }); // placeholder to take id 11 out of order below
  t.equal(c1.slots, 0);
  tx.drv.chains.delete(11);
  tx.drv.order.pop();
  // real chains: ids 9 then 2, one indirect (4 entries), one plain of 2 descriptors
  const a = tx.drv.postTx(f1, { chunks: 4, indirect: true });
  const b = tx.drv.postTx(f2, { chunks: 2 });
  const r1 = rx.drv.postRx(256, { chunks: 3, indirect: true });
  const r2 = rx.drv.postRx(2048);
  const r = forward(tx, rx);
  t.same([r.n, r.done], [2, 2]);
  t.same(tx.drv.collectUsed(), [{ id: a.id, len: 0 }, { id: b.id, len: 0 }], 'TX: one indirect slot, then 2 slots');
  const used = rx.drv.collectUsed();
  t.same(used.map((u) => u.id), [r1.id, r2.id]);
  t.ok(eq(rx.drv.chainBytes(r1, used[0].len), rxImage(f1, 1)), 'indirect RX chain byte-exact');
  t.ok(eq(rx.drv.chainBytes(r2, used[1].len), rxImage(f2, 1)));
  // ids chosen by the driver in any order: 7, 3, 12
  const ids = [7, 3, 12];
  const frames = ids.map((_, i) => pattern(80 + i, 20 + i));
  frames.forEach((f, i) => tx.drv.postChain(
    (() => {
      const all = new Uint8Array(12 + f.length);
      all.set(f, 12);
      const g = tx.drv.alloc(all.length);
      tx.drv.write(g, all);
      return [[g, all.length]] as Array<[number, number]>;
    })(), false, { id: ids[i] }));
  for (let i = 0; i < 3; i++) rx.drv.postRx(512);
  t.equal(forward(tx, rx).n, 3);
  t.same(tx.drv.collectUsed().map((u) => u.id), ids, 'used ids are the chains\' ids');
  t.equal(rx.drv.collectUsed().length, 3);
});

t.test('IN_ORDER: a TX burst comes back as one used element naming its last buffer', async (t) => {
  const { tx, rx } = pair({ size: 8, tx: { inOrder: true } });
  for (let round = 0; round < 5; round++) {
    const cs = [0, 1, 2].map((i) => tx.drv.postTx(pattern(64, i), { chunks: i === 1 ? 2 : 1 }));
    [0, 1, 2].forEach(() => rx.drv.postRx(256));
    t.equal(forward(tx, rx).n, 3);
    const used = tx.drv.collectUsed(true);
    t.same(used.map((u) => u.id), cs.map((c) => c.id), `round ${round}: all three retired by one element`);
    t.equal(rx.drv.collectUsed().length, 3, 'RX keeps one element per chain');
  }
});

t.test('driver event suppression: enable, disable, desc (EVENT_IDX)', async (t) => {
  const { tx, rx } = pair({ size: 8, rx: { eventIdx: true } });
  const one = () => {
    tx.drv.postTx(pattern(64, 1));
    rx.drv.postRx(256);
    const r = forward(tx, rx);
    tx.drv.collectUsed();
    rx.drv.collectUsed();
    return r;
  };
  t.equal(one().txNotify, true, 'TX: flags ENABLE (0) notifies');
  tx.drv.setDriverEvent(1);
  t.equal(one().txNotify, false, 'TX: flags DISABLE');
  // RX, desc mode: notify when the used index passes off_wrap
  rx.drv.setDriverEvent(2, packedIndex(4, 1));
  const seen: boolean[] = [];
  for (let i = 0; i < 6; i++) seen.push(one().rxNotify);
  // used index after each: 3,4,5,6,7,0(wrap 0); event at 4 (wrap 1): fires when used goes 4 -> 5
  t.same(seen, [false, false, true, false, false, false], 'one notification, when used index 4 is written');
  rx.drv.setDriverEvent(2, packedIndex(1, 0));
  t.same([one().rxNotify, one().rxNotify], [false, true], 'across the wrap: off_wrap 1 with wrap 0');
});

t.test('device event suppression: enableNotify / disableNotify write the device area', async (t) => {
  const { tx } = pair({ size: 8 });
  tx.vq.disableNotify();
  t.same(tx.drv.deviceEvent(), { offWrap: 0, flags: 1 }, 'DISABLE');
  t.equal(tx.vq.enableNotify(), false, 'nothing available');
  t.same(tx.drv.deviceEvent().flags, 0, 'ENABLE');
  tx.drv.postTx(pattern(64, 1));
  t.equal(tx.vq.enableNotify(), true, 'a descriptor is available: do not sleep');
  const e = pair({ size: 8, tx: { eventIdx: true }, start: 5, wrap: 0 });
  t.equal(e.tx.vq.enableNotify(), false);
  t.same(e.tx.drv.deviceEvent(), { offWrap: 5, flags: 2 }, 'DESC at the next avail slot with its wrap counter (0)');
});

t.test('resume from the ctrl state: index and wrap counters carry over (GET/SET_VRING_BASE)', async (t) => {
  const a = makeGuest();
  const b = makeGuest();
  const tx = makePacked(a, { index: 1, size: 8 });
  const rx = makePacked(b, { index: 0, size: 8 });
  for (let i = 0; i < 11; i++) {
    tx.drv.postTx(pattern(90, i), { chunks: i % 3 === 0 ? 2 : 1 });
    rx.drv.postRx(512);
    t.equal(forward(tx, rx).n, 1);
    tx.drv.collectUsed();
    rx.drv.collectUsed();
  }
  const state = tx.ctrl[CTRL_LAST_AVAIL];
  t.equal(state, tx.ctrl[CTRL_LAST_USED], 'stopped: used = avail');
  t.equal(state, packedIndex(tx.drv.next, tx.drv.wrap), 'the driver\'s next slot and wrap counter');
  t.equal(state >> 15, 0, 'past one lap: wrap counter 0');
  // a new queue object (the ring restarted) from the same ctrl, as SET_VRING_BASE hands it over
  const vd = vringDesc(a, { index: 1, size: 8, features: { packed: true } });
  vd.ctrl = new SharedArrayBuffer(32);
  new Int32Array(vd.ctrl)[CTRL_LAST_AVAIL] = new Int32Array(vd.ctrl)[CTRL_LAST_USED] = state;
  const again = new PackedVirtqueue(vd, a.gm, new DirtyLog());
  const f = pattern(333, 9);
  const c = tx.drv.postTx(f);
  const r0 = rx.drv.postRx(1024);
  const n = again.dequeueBurst(batch, 32);
  t.equal(n, 1, 'the resumed queue finds the next chain');
  rx.vq.acquire();
  rx.vq.enqueueBurst(a.gm, batch, null, n);
  rx.vq.flush();
  rx.vq.release();
  again.completeBurst(batch);
  t.same(tx.drv.collectUsed(), [{ id: c.id, len: 0 }]);
  t.ok(eq(rx.drv.chainBytes(r0, 345), rxImage(f, 1)));
});

t.test('RX without buffers: dropped and counted, nothing consumed', async (t) => {
  const { tx, rx } = pair({ size: 8 });
  tx.drv.postTx(pattern(64, 1));
  const r = forward(tx, rx);
  t.same([r.n, r.done], [1, 0]);
  t.equal(rx.stats[ST_DROP_NO_BUF], 1);
  t.equal(rx.ctrl[CTRL_LAST_AVAIL], packedIndex(0, 1));
  // a chain too small without MRG_RXBUF is not taken either
  const nm = pair({ size: 8, rx: { mrgRxbuf: false } });
  nm.tx.drv.postTx(pattern(600, 2));
  nm.rx.drv.postRx(128);
  t.equal(forward(nm.tx, nm.rx).done, 0);
  t.equal(nm.rx.ctrl[CTRL_LAST_AVAIL], packedIndex(0, 1));
});

t.test('dirty logging: RX buffers, headers and the used elements are marked', async (t) => {
  const a = makeGuest();
  const b = makeGuest();
  const logSab = new SharedArrayBuffer(64);
  const logView = new Uint8Array(logSab, 8, 16);
  const tx = makePacked(a, { index: 1, size: 8 });
  const rx = makePacked(b, { index: 0, size: 8, features: { logAll: true }, log: { sab: logSab, offset: 8, size: 16 } });
  const f = pattern(3000, 5);
  tx.drv.postTx(f, { chunks: 2 });
  const chains = [0, 1, 2].map(() => rx.drv.postRx(1500));
  t.equal(forward(tx, rx).done, 1);
  const used = rx.drv.collectUsed();
  t.equal(used.length, 3, 'three chains');
  const pages = new Set<number>();
  used.forEach((u, k) => {
    const [gpa] = chains[k].bufs[0];
    for (let p = Math.floor(gpa / 4096); p <= Math.floor((gpa + u.len - 1) / 4096); p++) pages.add(p);
  });
  pages.add(Math.floor(layout(0).desc / 4096));
  const marked: number[] = [];
  for (let i = 0; i < 128; i++) if (logView[i >> 3] & (1 << (i & 7))) marked.push(i);
  t.same(marked, [...pages].sort((x, y) => x - y), 'exactly the written pages: buffers and the descriptor ring');
  // the TX side: its used elements (the only guest writes of a TX ring) and the device event area
  const txLog = new SharedArrayBuffer(64);
  const txView = new Uint8Array(txLog, 8, 16);
  const c = makeGuest();
  const t2 = makePacked(c, { index: 1, size: 8, features: { logAll: true }, log: { sab: txLog, offset: 8, size: 16 } });
  const r2 = makePacked(makeGuest(), { index: 0, size: 8 });
  t2.drv.postTx(pattern(100, 1));
  r2.drv.postRx(512);
  t.equal(forward(t2, r2).done, 1);
  const txMarked: number[] = [];
  for (let i = 0; i < 128; i++) if (txView[i >> 3] & (1 << (i & 7))) txMarked.push(i);
  t.same(txMarked, [Math.floor(layout(1).desc / 4096)], 'TX: the descriptor ring page (the used element), nothing else');
  t2.vq.disableNotify();
  txView.fill(0);
  t2.vq.enableNotify();
  const evMarked: number[] = [];
  for (let i = 0; i < 128; i++) if (txView[i >> 3] & (1 << (i & 7))) evMarked.push(i);
  t.same(evMarked, [Math.floor(layout(1).used / 4096)], 'enableNotify: the device event area page');
});

t.test('dirty log complete under traffic: memory before a burst + the pages logged == memory after it, both guests, with the bulk queue', async (t) => {
  // What a migration needs of a packed ring (issue 19): every byte the device writes (RX
  // buffers, headers, the used elements' ids, lengths and flags in the descriptor ring of
  // both directions, the device event area) lies in a logged page. Each round: the driver
  // posts, memory is copied, the device runs a burst, and the copy with the logged pages
  // laid over it must equal memory byte for byte (the driver writes nothing in between, so
  // no page passes for the device's on the strength of the driver's writes); the log is
  // then cleared, as QEMU's pre-copy passes do.
  const a = makeGuest();
  const b = makeGuest();
  a.gm.enableBulk(native);
  b.gm.enableBulk(native);
  const q = new CopyQueue(native);
  const logA = new SharedArrayBuffer(16);
  const logB = new SharedArrayBuffer(16);
  const tx = makePacked(a, { index: 1, size: 64, features: { logAll: true }, log: { sab: logA, offset: 0, size: 16 } });
  const rx = makePacked(b, { index: 0, size: 64, features: { logAll: true }, log: { sab: logB, offset: 0, size: 16 } });
  tx.vq.bulk = q;
  rx.vq.bulk = q;
  const sizes = [60, 1514, 300, 64, 2000, 257, 128];
  const bad: string[] = [];
  const pages = { a: 0, b: 0 };
  const check = (round: number, name: 'a' | 'b', g: typeof a, snap: Uint8Array, log: SharedArrayBuffer): void => {
    const bits = new Uint8Array(log);
    const image = snap;
    for (let p = 0; p < g.mem8.length >> 12; p++) {
      if ((bits[p >> 3] & (1 << (p & 7))) === 0) continue;
      image.set(g.mem8.subarray(p * 4096, (p + 1) * 4096), p * 4096);
      pages[name]++;
    }
    let diff = 0;
    for (let k = 0; k < image.length; k++) if (image[k] !== g.mem8[k]) diff++;
    if (diff > 0) bad.push(`round ${round}, guest ${name}: ${diff} bytes written in pages not logged`);
    bits.fill(0);
  };
  let sent = 0;
  let got = 0;
  let posted = 0;
  for (let round = 0; round < 60; round++) {
    const frames = [0, 1, 2].map((k) => pattern(sizes[(round * 3 + k) % sizes.length], round * 3 + k));
    frames.forEach((f, k) => tx.drv.postTx(f, { chunks: 1 + ((round + k) % 3) }));
    const need = frames.reduce((n, f) => n + Math.ceil((12 + f.length) / 512), 0);
    for (let k = posted; k < need; k++) rx.drv.postRx(512, { chunks: 1 + (k % 2) });
    posted = Math.max(posted, need);
    const snapA = Uint8Array.from(a.mem8);
    const snapB = Uint8Array.from(b.mem8);
    const r = forward(tx, rx);
    if (round % 5 === 1) {
      tx.vq.enableNotify(); // the device event area
      tx.vq.disableNotify();
    }
    sent += r.n;
    got += r.done;
    check(round, 'a', a, snapA, logA);
    check(round, 'b', b, snapB, logB);
    tx.drv.collectUsed();
    posted -= rx.drv.collectUsed().length; // chains left over wait for the next round
  }
  t.equal(sent, 180, 'every frame taken from TX');
  t.equal(got, 180, 'every frame delivered');
  t.same(bad, [], 'every byte the device wrote lies in a logged page');
  t.ok(pages.a >= 60 && pages.b >= 120, `pages logged: TX guest ${pages.a}, RX guest ${pages.b} (the check has teeth)`);
  a.gm.dispose();
  b.gm.dispose();
});

t.test('hostile descriptors: each a named GuestError, nothing written to the ring', async (t) => {
  const FLAGS_AVAIL = 1 << 7;
  const cases: Array<[string, (q: PQueue) => void, boolean, Partial<QueueFeatures>?]> = [
    ['descriptor outside guest memory', (q) => q.drv.postChain([[0x80000, 64]], false), true],
    ['descriptor crosses a memory region end', (q) => q.drv.postChain([[0x1ffc0, 128]], false), true],
    ['descriptor chain longer than the queue size', (q) => {
      // every slot NEXT, the first made available last: the chain never ends
      for (let s = 0; s < 8; s++) q.drv.writeDesc(s, 0xd000, 64, 0, FLAGS_AVAIL | VRING_DESC_F_NEXT);
    }, true],
    ['nested indirect descriptor', (q) => {
      const tbl = q.drv.alloc(32);
      new DataView(q.g.sab).setUint32(tbl, 0xd000, true);
      new DataView(q.g.sab).setUint32(tbl + 8, 16, true);
      new DataView(q.g.sab).setUint16(tbl + 14, VRING_DESC_F_INDIRECT, true);
      q.drv.writeDesc(0, tbl, 16, 0, FLAGS_AVAIL | VRING_DESC_F_INDIRECT);
    }, true],
    ['indirect descriptor with NEXT', (q) => q.drv.writeDesc(0, 0xd000, 32, 0, FLAGS_AVAIL | VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT), true],
    ['indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC', (q) => q.drv.writeDesc(0, 0xd000, 32, 0, FLAGS_AVAIL | VRING_DESC_F_INDIRECT), true, { indirect: false }],
    ['indirect table length not a non-zero multiple of 16', (q) => q.drv.writeDesc(0, 0xd000, 24, 0, FLAGS_AVAIL | VRING_DESC_F_INDIRECT), true],
    ['indirect table outside guest memory', (q) => q.drv.writeDesc(0, 0x31000, 32, 0, FLAGS_AVAIL | VRING_DESC_F_INDIRECT), true],
    ['buffer id out of range', (q) => q.drv.writeDesc(0, 0xd000, 64, 8, FLAGS_AVAIL), true],
    ['writable descriptor in TX chain', (q) => q.drv.writeDesc(0, 0xd000, 64, 0, FLAGS_AVAIL | VRING_DESC_F_WRITE), true],
    ['TX chain shorter than the virtio-net header', (q) => q.drv.writeDesc(0, 0xd000, 8, 0, FLAGS_AVAIL), true],
    ['readable descriptor in RX chain', (q) => q.drv.writeDesc(0, 0x10000, 256, 0, FLAGS_AVAIL), false],
  ];
  for (const [reason, make, isTx, feat] of cases) {
    const g = makeGuest();
    const src = makeGuest();
    const q = makePacked(g, { index: isTx ? 1 : 0, size: 8, features: feat });
    make(q);
    const before = g.mem8.slice(layout(isTx ? 1 : 0).desc, layout(isTx ? 1 : 0).desc + 128);
    let err: unknown = null;
    try {
      if (isTx) {
        q.vq.dequeueBurst(batch, 32);
      } else {
        const s = makePacked(src, { index: 1, size: 8 });
        s.drv.postTx(pattern(64, 1));
        const n = s.vq.dequeueBurst(batch, 32);
        q.vq.acquire();
        try {
          q.vq.enqueueBurst(src.gm, batch, null, n);
          q.vq.flush();
          q.vq.release();
        } catch (e) {
          q.vq.abandon();
          throw e;
        }
      }
    } catch (e) {
      err = e;
    }
    t.ok(err instanceof GuestError, `${reason}: a GuestError`);
    t.equal((err as GuestError).reason, reason);
    t.ok(eq(g.mem8.slice(layout(isTx ? 1 : 0).desc, layout(isTx ? 1 : 0).desc + 128), before), `${reason}: the ring is untouched`);
    t.equal(g.mem8[0x1f000], BACKGROUND);
  }
});

t.test('offloads through packed rings: NEEDS_CSUM completed in software, a TSO frame handed over whole with its header', async (t) => {
  for (const guest of [0, GUEST_ALL]) {
    const { tx, rx } = pair({ size: 16, tx: { netBits: HOST_ALL }, rx: { netBits: guest } });
    const f = guest === 0
      ? build({ v6: false, payload: pattern(1000, 7), optLen: 12 })
      : build({ v6: false, payload: pattern(4000, 8), gsoSize: 1448 });
    tx.drv.postTx(f.frame, { hdr: f.hdr, chunks: 2 });
    const chains = [0, 1, 2, 3].map(() => rx.drv.postRx(2048));
    t.same(forward(tx, rx).done, 1);
    const used = rx.drv.collectUsed();
    const parts = used.map((u) => rx.drv.chainBytes(chains.find((c) => c.id === u.id)!, u.len));
    const all = Buffer.concat(parts);
    const hdr = all.subarray(0, 12);
    const data = all.subarray(12);
    t.equal(data.length, f.frame.length, `guest ${guest ? 'with' : 'without'} GUEST_*: the frame's length`);
    if (guest === 0) {
      t.equal(hdr[0], 0, 'flags 0: complete');
      t.ok(l4Verifies(data, f.l3, false), 'the TCP checksum verifies');
      t.equal(rx.stats[ST_CSUM_SW], 1);
    } else {
      t.equal(hdr[1], f.hdr[1], 'gso_type handed over');
      t.equal(hdr.readUInt16LE(4), 1448, 'gso_size handed over');
      t.equal(hdr.readUInt16LE(10), used.length, 'num_buffers: the chains it took');
      t.ok(eq(data, f.frame), 'the frame byte-exact');
      t.equal(rx.stats[ST_GSO_PASSED], 1);
    }
  }
});

t.test('NEEDS_CSUM completed in software with bulk copies queued: the checksum stored survives the copies (packed)', async (t) => {
  // completeCsum puts the frame, then pokes the checksum into it: a frame copy queued on the
  // worker's bulk queue (BULK_MIN bytes and more) that ran later would write the source's
  // field (the pseudo-header sum) over it
  const { a, b, tx, rx } = pair({ size: 16, tx: { netBits: HOST_ALL }, rx: { netBits: 0 } });
  a.gm.enableBulk(native);
  b.gm.enableBulk(native);
  const q = new CopyQueue(native);
  tx.vq.bulk = q;
  rx.vq.bulk = q;
  const f = build({ v6: false, payload: pattern(1000, 7), optLen: 12 });
  tx.drv.postTx(f.frame, { hdr: f.hdr, chunks: 1 });
  const chain = rx.drv.postRx(2048);
  t.equal(forward(tx, rx).done, 1);
  const used = rx.drv.collectUsed();
  t.equal(used.length, 1);
  const data = rx.drv.chainBytes(chain, used[0].len).subarray(12);
  t.equal(data.length, f.frame.length, 'the frame\'s length');
  t.ok(l4Verifies(data, f.l3, false), 'the TCP checksum verifies');
  t.equal(rx.stats[ST_CSUM_SW], 1);
  a.gm.dispose();
  b.gm.dispose();
});

t.test('a VLAN tag pushed on the way (enqueueEdited): the tag after the MACs, byte-exact', async (t) => {
  const { tx, rx } = pair({ size: 8 });
  const frame = pattern(200, 3);
  tx.drv.postTx(frame);
  const c = rx.drv.postRx(512);
  const n = tx.vq.dequeueBurst(batch, 32);
  const edits = new Int32Array(32);
  edits[0] = EDIT_PUSH | 100;
  rx.vq.acquire();
  t.equal(rx.vq.enqueueEdited(tx.g.gm, batch, new Uint16Array([0]), n, edits), 1);
  rx.vq.flush();
  rx.vq.release();
  tx.vq.completeBurst(batch);
  const u = rx.drv.collectUsed();
  t.equal(u[0].len, 12 + 204);
  const want = new Uint8Array(204);
  want.set(frame.subarray(0, 12));
  want.set([0x81, 0x00, 0x00, 100], 12);
  want.set(frame.subarray(12), 16);
  t.ok(eq(rx.drv.chainBytes(c, 216).subarray(12), want), 'MACs, 8100 0064, the rest');
});
