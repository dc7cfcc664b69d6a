/**
 * The hot loops' int32 region windows (GuestMemory.window, windowOf, inWindow; NOTES.md #23):
 * a descriptor accepted by the int32 test must lie inside its region at exactly the offset
 * the double arithmetic gives, and the common buffer (inside the region, not crossing a
 * 4 GiB line, below WINDOW_OFF_MAX) must be accepted; everything else takes the general
 * path, which must still deliver it. Real traffic through dequeueBurst / enqueueBurst with
 * regions straddling 4 GiB and larger than the window.
 */
import t from 'tap';
import { GuestMemory, inWindow, windowOf, WIN_OFF, WINDOW_OFF_MAX } from '../src/workers/guest-memory';
import { PacketBatch } from '../src/workers/packet-batch';
import type { RingQueue } from '../src/workers/ring-format';
import { ST_PACKETS } from '../src/shared/types';
import { eq, Guest, makeQueue, pattern, Queue, vringDesc } from '../kit/vq-harness';
import { PackedVirtqueue } from '../src/workers/packed-ring';
import { packedIndex } from '../src/protocol/ring-layout';
import { DirtyLog } from '../src/workers/dirty-log';
import { CTRL_LAST_AVAIL, CTRL_LAST_USED, CTRL_SIGNALLED_USED } from '../src/shared/types';
import { Chain, PackedDriver } from './packed-driver';
import { rng } from './helpers/rng';

const G4 = 0x1_0000_0000;

t.test('windowOf + inWindow agree with double arithmetic on random regions and hostile descriptors', async (t) => {
  const rand = rng(0x9e3779b9);
  const pick = <T>(xs: T[]): T => xs[Math.floor(rand() * xs.length)];
  const win = new Int32Array(4);
  let accepted = 0;
  let mustAccept = 0;
  let bad = '';
  for (let c = 0; c < 4000 && bad === ''; c++) {
    // regions near 4 GiB lines, of up to 6 GiB, starting anywhere in a 48-bit space
    const line = pick([0, 1, 2, 3, 0xffff]) * G4;
    const start = line + pick([-0x2000_0000, -0x1000, -1, 0, 0x800, 0x10_0000, 0x7fff_0000]) + Math.floor(rand() * 0x1000) * 4;
    if (start < 0) continue;
    const size = pick([0x4_0000, 0x1000_0000, 0x8000_0000, 0x1_2000_0000, 0x1_8000_0000]);
    const end = start + size;
    // a reference buffer inside the region builds the window
    const g0 = start + Math.floor(rand() * Math.min(size - 2048, WINDOW_OFF_MAX - 2048));
    if (!windowOf(start, end, g0, 2048, win)) {
      // refused only when the reference buffer crosses a 4 GiB line
      if (Math.floor(g0 / G4) === Math.floor((g0 + 2047) / G4)) bad = `case ${c}: reference buffer ${g0.toString(16)}+2048 in [${start.toString(16)}, ${end.toString(16)}) refused`;
      continue;
    }
    for (let k = 0; k < 40; k++) {
      // descriptors near the reference buffer, near the window's edges, and garbage
      const gpa = pick([
        () => g0 + Math.floor((rand() - 0.5) * 0x10_0000),
        () => start + Math.floor(rand() * size),
        () => start + WINDOW_OFF_MAX - Math.floor(rand() * 4096),
        () => Math.floor(g0 / G4) * G4 + G4 - Math.floor(rand() * 4096),
        () => Math.floor(rand() * G4) + Math.floor(rand() * 0x10000) * G4,
      ])();
      if (gpa < 0) continue;
      const len = pick([1, 12, 64, 1518, 65562, 0x7fff_ffff, 0xffff_ffff, Math.floor(rand() * G4)]);
      const hi = Math.floor(gpa / G4);
      const lo = gpa % G4;
      const got = inWindow(win, hi, lo, len);
      const inside = gpa >= start && gpa + len <= end;
      const off = gpa - start;
      // the common buffer: inside the region, in the reference buffer's 4 GiB span without
      // crossing its end, below the offset cap
      const common = inside && off + len <= WINDOW_OFF_MAX && Math.floor(gpa / G4) === Math.floor(g0 / G4) &&
        Math.floor((gpa + len - 1) / G4) === Math.floor(gpa / G4);
      if (common) mustAccept++;
      if (got) {
        accepted++;
        const d = (lo - win[1]) | 0;
        if (!inside) bad = `case ${c}.${k}: ${gpa.toString(16)}+${len} accepted outside [${start.toString(16)}, ${end.toString(16)})`;
        else if (win[WIN_OFF] + d !== off) bad = `case ${c}.${k}: offset ${win[WIN_OFF] + d} instead of ${off}`;
        else if (off + len > WINDOW_OFF_MAX) bad = `case ${c}.${k}: offset ${off}+${len} past WINDOW_OFF_MAX`;
      } else if (common) {
        bad = `case ${c}.${k}: common buffer ${gpa.toString(16)}+${len} refused (region [${start.toString(16)}, ${end.toString(16)}), window at ${g0.toString(16)})`;
      }
    }
  }
  t.equal(bad, '', 'every accepted buffer lies inside its region at the exact offset; every common buffer is accepted');
  t.ok(accepted > 10000 && mustAccept > 10000, `exercised: ${accepted} accepted, ${mustAccept} that had to be`);
});

t.test('windowOf refuses a buffer crossing a 4 GiB line, or reaching past WINDOW_OFF_MAX', async (t) => {
  const win = new Int32Array(4).fill(7);
  t.notOk(windowOf(G4 - 0x1000, G4 + 0x1000, G4 - 32, 64, win), 'crosses 4 GiB');
  t.notOk(windowOf(0, 0x9000_0000, WINDOW_OFF_MAX - 32, 64, win), 'reaches past the offset cap');
  t.notOk(windowOf(0, 0x1000, 0x800, -1, win), 'negative length');
  t.same(Array.from(win), [7, 7, 7, 7], 'nothing written when refused');
  t.ok(windowOf(G4 - 0x1000, G4 + 0x1000, G4 + 16, 64, win), 'above the line');
  t.same(Array.from(win), [1, 0, 0x1000, 0x1000], 'window: hi 1, from the line, 4 KiB, region offset 4 KiB');
});

/** A guest whose one region is [base, base + size) over a SharedArrayBuffer of that size. */
function guestAt(base: number, size: number): Guest {
  const sab = new SharedArrayBuffer(size);
  const regions = [{ gpa: base, size, uva: 0x7f0000000000, sab, sabOffset: 0 }];
  return { sab, mem8: new Uint8Array(sab), regions, gm: new GuestMemory(regions) };
}

/**
 * TX guest a and RX guest b, rings at the start of each region; packets from TX buffers at
 * txGpa[k] land in RX buffers at rxGpa[k]; returns what the RX guest got, in order.
 */
function run(a: Guest, b: Guest, txGpa: number[], rxGpa: number[], lens: number[]): { q: { tx: Queue; rx: Queue }; got: Uint8Array[]; sent: Uint8Array[] } {
  const A = a.regions[0].gpa;
  const B = b.regions[0].gpa;
  const tx = makeQueue(a, { index: 1, size: 16, desc: A + 0x1000, avail: A + 0x2000, used: A + 0x3000, gpaBase: A, bufBase: A + 0x4000, bufEnd: A + 0x8000 });
  const rx = makeQueue(b, { index: 0, size: 16, desc: B + 0x1000, avail: B + 0x2000, used: B + 0x3000, gpaBase: B, bufBase: B + 0x4000, bufEnd: B + 0x8000 });
  const sent = lens.map((n, k) => pattern(n, k + 3));
  for (let k = 0; k < lens.length; k++) {
    const body = new Uint8Array(12 + lens[k]);
    body.set(sent[k], 12);
    a.mem8.set(body, txGpa[k] - A);
    tx.drv.postChain([{ gpa: txGpa[k], len: body.length }]);
    rx.drv.postChain([{ gpa: rxGpa[k], len: 12 + lens[k], write: true }]);
  }
  forward(tx.vq, rx.vq, a.gm);
  const got = rx.drv.readRx().map((p) => p.data);
  return { q: { tx, rx }, got, sent };
}

/** One burst from the TX ring into the RX ring, as a poller runs it; the frames dequeued. */
function forward(tx: RingQueue, rx: RingQueue, src: GuestMemory): number {
  const batch = new PacketBatch();
  const n = tx.dequeueBurst(batch, 32);
  rx.acquire();
  rx.enqueueBurst(src, batch, null, n);
  rx.flush();
  rx.release();
  tx.completeBurst(batch);
  return n;
}

t.test('regions straddling 4 GiB: buffers below, above and across the line all arrive intact', async (t) => {
  // both guests' region is [4 GiB - 128 KiB, 4 GiB + 128 KiB): buffers alternate sides, and
  // two cross the line (the window refuses them: the general path must place them)
  const base = G4 - 0x2_0000;
  const a = guestAt(base, 0x4_0000);
  const b = guestAt(base, 0x4_0000);
  const txGpa = [G4 - 0x8000, G4 + 0x1000, G4 - 0x7000, G4 - 30, G4 + 0x2000, G4 - 0x6000, G4 + 0x3000 + 4];
  const rxGpa = [G4 + 0x8000, G4 - 0x9000, G4 + 0x9000, G4 + 0xa000, G4 - 0x40, G4 - 0xa000, G4 - 0xb000];
  const lens = [64, 1518, 256, 60, 100, 1000, 64];
  const { got, sent, q } = run(a, b, txGpa, rxGpa, lens);
  t.equal(got.length, lens.length, 'every packet received');
  t.same(got.map((g, k) => eq(g, sent[k])), lens.map(() => true), 'bytes received equal bytes sent, in order');
  t.equal(q.rx.stats[ST_PACKETS], lens.length, 'RX counted them');
  t.equal(q.tx.stats[ST_PACKETS], lens.length, 'TX counted them');
});

t.test('a region larger than the window: buffers past WINDOW_OFF_MAX take the general path and arrive', async (t) => {
  // 2 GiB + 128 KiB, lazily committed: only touched pages cost memory
  const SIZE = 0x8002_0000;
  const a = guestAt(0x4000_0000, SIZE);
  const b = guestAt(0x1_0000_0000 + 0x200_000, SIZE);
  const A = a.regions[0].gpa;
  const B = b.regions[0].gpa;
  const txGpa = [A + 0x5000, A + WINDOW_OFF_MAX + 0x1000, A + WINDOW_OFF_MAX - 40, A + 0x8001_0000, A + 0x6000];
  const rxGpa = [B + WINDOW_OFF_MAX + 0x2000, B + 0x5000, B + 0x8001_8000, B + WINDOW_OFF_MAX - 64, B + 0x7000];
  const lens = [64, 128, 64, 1518, 256];
  const { got, sent } = run(a, b, txGpa, rxGpa, lens);
  t.equal(got.length, lens.length, 'every packet received');
  t.same(got.map((g, k) => eq(g, sent[k])), lens.map(() => true), 'bytes received equal bytes sent, in order');
});

// The chain walkers (desc-walker.ts, packed-ring.ts walkNext) read a table's fields through
// its region's Uint32Array at index offset / 4: a table 2 GiB or more into its region is a
// double offset there (offset >> 2 would turn negative and read nothing).
const DEEP = 0x8000_0000;

t.test('split rings and indirect tables 2 GiB and more into their region: chains walked, every packet arrives', async (t) => {
  const SIZE = 0x8002_0000;
  const a = guestAt(0x4000_0000, SIZE);
  const b = guestAt(0x1_0000_0000 + 0x200_000, SIZE);
  const A = a.regions[0].gpa + DEEP;
  const B = b.regions[0].gpa + DEEP;
  const where = (g: Guest, at: number) => ({ desc: at + 0x1000, avail: at + 0x2000, used: at + 0x3000, gpaBase: g.regions[0].gpa, bufBase: at + 0x4000, bufEnd: at + 0x1_0000 });
  const tx = makeQueue(a, { index: 1, size: 16, ...where(a, A) });
  const rx = makeQueue(b, { index: 0, size: 16, ...where(b, B) });
  // TX: header and payload in descriptors of their own, direct and through indirect tables;
  // RX: chains of two 1 KiB buffers, direct and indirect (each frame fills a chain and more)
  const sent = [1500, 64, 1200, 700].map((n, k) => pattern(n, k + 11));
  sent.forEach((p, k) => tx.drv.postTx(p, { hdrSeparate: true, chunks: 2, indirect: (k & 1) === 1 }));
  rx.drv.postRx(4, 1024, { chunks: 2 });
  rx.drv.postRx(4, 1024, { chunks: 2, indirect: true });
  t.equal(forward(tx.vq, rx.vq, a.gm), sent.length, 'every TX chain dequeued');
  const got = rx.drv.readRx().map((p) => p.data);
  t.equal(got.length, sent.length, 'every packet received');
  t.same(got.map((g, k) => eq(g, sent[k])), sent.map(() => true), 'bytes received equal bytes sent, in order');
});

t.test('packed rings with indirect tables 2 GiB and more into their region: tables walked, every frame arrives', async (t) => {
  // guest memory from gpa 0, so that the packed test driver's gpa is its offset
  const SIZE = 0x8002_0000;
  const a = guestAt(0, SIZE);
  const b = guestAt(0, SIZE);
  const packed = (g: Guest, index: number): { vq: PackedVirtqueue; drv: PackedDriver } => {
    const at = { desc: DEEP + 0x1000, avail: DEEP + 0x2000, used: DEEP + 0x3000 };
    const vd = vringDesc(g, { index, size: 16, ...at, features: { packed: true } });
    const c = new Int32Array(vd.ctrl);
    c[CTRL_LAST_AVAIL] = c[CTRL_LAST_USED] = packedIndex(0, 1);
    c[CTRL_SIGNALLED_USED] = -1;
    const drv = new PackedDriver(g.mem8, { size: 16, descGpa: at.desc, drvGpa: at.avail, devGpa: at.used, bufBase: DEEP + 0x4000, bufEnd: DEEP + 0x1_0000, hdrLen: vd.features.hdrLen });
    return { vq: new PackedVirtqueue(vd, g.gm, new DirtyLog()), drv };
  };
  const tx = packed(a, 1);
  const rx = packed(b, 0);
  const sent = [1500, 64, 1200, 700].map((n, k) => pattern(n, k + 17));
  sent.forEach((p, k) => tx.drv.postTx(p, { chunks: 2, indirect: (k & 1) === 1 }));
  const chains = new Map<number, Chain>();
  for (let k = 0; k < 8; k++) {
    const c = rx.drv.postRx(1024, { chunks: 2, indirect: (k & 1) === 1 });
    chains.set(c.id, c);
  }
  t.equal(forward(tx.vq, rx.vq, a.gm), sent.length, 'every TX chain dequeued');
  const got = rx.drv.collectUsed().map((u) => rx.drv.chainBytes(chains.get(u.id)!, u.len).subarray(12));
  t.equal(got.length, sent.length, 'every frame received');
  t.same(got.map((g, k) => eq(g, sent[k])), sent.map(() => true), 'bytes received equal bytes sent, in order');
});
