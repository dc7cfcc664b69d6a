/**
 * VIRTIO_F_IN_ORDER (offered by default, src/protocol/constants.ts): the device must use
 * descriptors in the order they were made available. A driver that negotiated it may free TX
 * buffers by count and take RX buffers by ring position (DPDK's virtio PMD does both), so one
 * chain returned out of order would hand it the wrong mbuf. Random traffic over every path of
 * both rings: single-descriptor packets (the burst fast paths), chains and indirect tables (the
 * walker), chains left for the next burst and chains too long for the batch (dropped, returned
 * with length 0), packets spanning several mergeable RX chains, and RX bursts with too few
 * buffers (dropped, nothing consumed). Used ids must come back exactly in posting order, and
 * every delivered packet byte for byte.
 */
import t, { Test } from 'tap';
import { PacketBatch } from '../src/workers/packet-batch';
import { ST_DROP_NO_BUF, ST_DROP_TOO_BIG } from '../src/shared/types';
import { eq, makeGuest, makeQueue, pattern } from '../kit/vq-harness';
import { rng } from './helpers/rng';

/**
 * With `inOrder` the TX ring negotiated IN_ORDER: each burst returns its chains with one used
 * entry (the last chain's id), the driver takes them by position (DriverRing inOrder), and
 * every other entry of the used ring must stay untouched.
 */
function randomTraffic(t: Test, inOrder: boolean): void {
  const rand = rng(0x5eed);
  const a = makeGuest();
  const b = makeGuest();
  // buffer arenas of 92 KiB (region 0 after the rings of slots 0 and 1)
  const tx = makeQueue(a, { index: 1, size: 64, bufBase: 0x8000, bufEnd: 0x1f000, features: { inOrder } });
  const txUsedRing = new Uint32Array(a.sab, tx.drv.usedGpa + 4, 2 * 64);
  const before = new Uint32Array(2 * 64);
  let bursts = 0;
  let oneEntry = 0;
  const rx = makeQueue(b, { index: 0, size: 64, bufBase: 0x8000, bufEnd: 0x1f000 });
  // 8 packets, 12 segments a burst: 3-descriptor chains fill it early (left for the next
  // burst), a 14-descriptor chain can never fit (dropped as too big)
  const batch = new PacketBatch(8, 12);
  const txPosted: number[] = [];
  const txUsed: number[] = [];
  const rxPosted: number[] = [];
  const rxUsed: number[] = [];
  const sent: Uint8Array[] = [];
  let received = 0;
  let next = 0;
  let intact = 0;
  let txInFlight = 0;
  let rxInFlight = 0;
  /** One burst through both rings, then what the drivers got back. */
  const step = (): void => {
    const n = tx.vq.dequeueBurst(batch, 8);
    if (n > 0 || batch.nUsed > 0) {
      rx.vq.acquire();
      rx.vq.enqueueBurst(a.gm, batch, null, n);
      rx.vq.flush();
      rx.vq.release();
      before.set(txUsedRing);
      const first = tx.vq.lastUsedIdx;
      const m = batch.nUsed;
      tx.vq.completeBurst(batch);
      if (inOrder && m > 0) {
        // entries written: at most the burst's last slot, which holds its last chain
        bursts++;
        const last = (first + m - 1) & 63;
        let changed = 0;
        for (let s = 0; s < 64; s++) if (txUsedRing[2 * s] !== before[2 * s] || txUsedRing[2 * s + 1] !== before[2 * s + 1]) changed += s === last ? 0 : 1;
        if (changed === 0 && txUsedRing[2 * last] === batch.usedHead[m - 1] && txUsedRing[2 * last + 1] === 0) oneEntry++;
      }
    }
    for (const e of tx.drv.collectUsed()) {
      txUsed.push(e.id);
      txInFlight--;
    }
    for (const p of rx.drv.readRx()) {
      for (const u of p.used) rxUsed.push(u.id);
      rxInFlight -= p.used.length;
      received++;
      // the next packet sent that was not dropped on the way (a subsequence, in order)
      while (next < sent.length && !eq(sent[next], p.data)) next++;
      if (next < sent.length) {
        intact++;
        next++;
      }
    }
  };
  for (let round = 0; round < 400; round++) {
    // TX: up to 6 packets, of every shape
    const nTx = Math.floor(rand() * 7);
    for (let k = 0; k < nTx && txInFlight < 16; k++) {
      // a few sizes only: the test driver's arena recycles buffers of equal size
      const len = [60, 300, 1000, 1500][Math.floor(rand() * 4)];
      const p = pattern(len, round * 8 + k);
      const shape = rand();
      let head: number;
      if (shape < 0.5) head = tx.drv.postTx(p);
      else if (shape < 0.7) head = tx.drv.postTx(p, { chunks: 2 });
      else if (shape < 0.8) head = tx.drv.postTx(p, { indirect: true, chunks: 2 });
      else if (shape < 0.9) head = tx.drv.postTx(p, { hdrSeparate: true });
      else if (shape < 0.95) head = tx.drv.postTx(pattern(1400, round), { chunks: 14 }); // too big: dropped
      else head = tx.drv.postTx(p, { chunks: 5 });
      txPosted.push(head);
      txInFlight += 1;
      if (!(shape >= 0.9 && shape < 0.95)) sent.push(p);
      else sent.push(new Uint8Array(0)); // marks a drop at this position
    }
    // RX: buffers of 128 B .. 2 KiB, sometimes none (bursts then drop for lack of buffers)
    if (rand() < 0.8) {
      const nRx = Math.floor(rand() * 8);
      for (let k = 0; k < nRx && rxInFlight < 24; k++) {
        const len = [128, 512, 1024, 2048][Math.floor(rand() * 4)];
        const heads = rx.drv.postRx(1, len);
        rxPosted.push(heads[0]);
        rxInFlight++;
      }
    }
    step();
  }
  // Drain: no new TX, RX buffers kept posted, until every TX chain came back; then small
  // fillers (one RX chain each) until every posted RX chain was used. Only then is "used in
  // posting order" checked over every chain posted, not a prefix: a chain that never came
  // back fails here.
  const rxFill = (): void => {
    while (rxInFlight < 24) {
      rxPosted.push(rx.drv.postRx(1, 2048)[0]);
      rxInFlight++;
    }
  };
  for (let d = 0; d < 1000 && txInFlight > 0; d++) {
    rxFill();
    step();
  }
  const txLeft = txInFlight;
  for (let d = 0, seq = 0; d < 1000 && rxInFlight > 0; d++) {
    for (let k = 0; k < Math.min(rxInFlight, 8) && txInFlight < 16; k++) {
      const p = pattern(60, 100000 + seq++);
      txPosted.push(tx.drv.postTx(p));
      txInFlight++;
      sent.push(p);
    }
    step();
  }
  t.equal(txLeft, 0, 'drained: every TX chain posted came back');
  t.equal(txInFlight, 0, 'drained: the fillers came back too');
  t.equal(rxInFlight, 0, 'drained: every RX chain posted was used');
  t.same(txUsed, txPosted, `TX: all ${txPosted.length} chains returned, in the order posted`);
  t.same(rxUsed, rxPosted, `RX: all ${rxPosted.length} chains used, in the order posted`);
  t.equal(intact, received, `every delivered packet intact and in sending order (${received})`);
  t.ok(txUsed.length > 500 && rxUsed.length > 500, 'many chains on both rings');
  t.ok(tx.stats[ST_DROP_TOO_BIG] > 5, `too-big chains dropped in between (${tx.stats[ST_DROP_TOO_BIG]})`);
  t.ok(rx.stats[ST_DROP_NO_BUF] > 5, `bursts short of RX buffers in between (${rx.stats[ST_DROP_NO_BUF]})`);
  t.ok(rxUsed.length > received, 'some packets spanned several mergeable RX chains');
  if (inOrder) t.equal(oneEntry, bursts, `TX: every burst (${bursts}) wrote only its last used entry, with its last chain's id`);
}

t.test('random traffic on every path: used ids return in avail order on TX and RX', async (t) => {
  randomTraffic(t, false);
});

t.test('IN_ORDER on TX: one used entry per burst, the driver frees by position', async (t) => {
  randomTraffic(t, true);
});
