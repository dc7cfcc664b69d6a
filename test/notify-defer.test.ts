/**
 * Deferred notification checks (src/workers/ring-core.ts, bench/NOTES.md #55): on x86
 * without dirty logging, used->idx is published with a plain store and the notification
 * decision read without a fence; a "do not notify" read that way is provisional. These tests
 * drive a split ring through the cases where that matters, each as the guest would see it:
 *  - the guest turns interrupts on just as the burst is decided (the load that crossed its
 *    store saw the old flag): the fenced re-decision notifies it;
 *  - with EVENT_IDX, the entries of a provisional "no" stay in the window, so a used_event
 *    the guest moved into them is honoured;
 *  - a window never grows past UNSURE_SPAN entries undecided;
 *  - with the dirty log on (and off x86) every decision is fenced and final.
 * Under VHOSTFWD_ORDERING=atomics (test/ordering.test.ts runs this file again) TSO is false,
 * every decision is final, and each test checks that form instead.
 */
import t from 'tap';
import { PacketBatch } from '../src/workers/packet-batch';
import { notifyChecks, UNSURE_SPAN } from '../src/workers/ring-core';
import { TSO } from '../src/workers/ordering';
import { CTRL_NOTIFY_UNSURE, CTRL_SIGNALLED_USED } from '../src/shared/types';
import { eq, Guest, makeGuest, makeQueue, pattern, Queue } from '../kit/vq-harness';

const batch = new PacketBatch(32);

function pair(eventIdx: boolean, size = 8, log = false) {
  const a = makeGuest();
  const b = makeGuest();
  const logDesc = log ? { sab: new SharedArrayBuffer(64), offset: 0, size: 64 } : null;
  const features = { eventIdx, logAll: log };
  const tx = makeQueue(a, { index: 1, size, features, log: logDesc });
  const rx = makeQueue(b, { index: 0, size, features, log: logDesc });
  return { a, b, tx, rx };
}

/** One poller round, as poller.ts does it: dequeue, enqueue under the lock, flush, complete. */
function forward(src: Guest, tx: Queue, rx: Queue): { n: number; rxNotify: boolean; txNotify: boolean } {
  const n = tx.vq.dequeueBurst(batch, 32);
  rx.vq.acquire();
  for (let i = 0; i < n; i++) rx.vq.enqueue(src.gm, batch, i);
  const rxNotify = rx.vq.flush();
  rx.vq.release();
  const txNotify = n > 0 ? tx.vq.completeBurst(batch) : false;
  return { n, rxNotify, txNotify };
}

/** The poller's sweep for one RX ring: under the lock (its compare-exchange is the fence). */
function recheckRx(rx: Queue): boolean {
  rx.vq.acquire();
  const due = rx.vq.recheckNotify();
  rx.vq.release();
  return due;
}

t.test('NO_INTERRUPT turned off as the burst is decided: the fenced re-decision notifies the guest', async (t) => {
  const { a, tx, rx } = pair(false);
  rx.drv.postRx(4, 2048);
  rx.drv.setNoInterrupt(true);
  const due0 = notifyChecks.due;
  const p = pattern(64, 1);
  tx.drv.postTx(p);
  const r = forward(a, tx, rx);
  t.equal(r.n, 1);
  t.equal(r.rxNotify, false, 'interrupts off when the burst was decided: no call');
  t.equal(rx.drv.usedIdx(), 1, 'the entry is published all the same');
  t.equal(rx.vq.notifyUnsure, TSO, TSO ? 'the "no" is provisional (read without a fence)' : 'portable form: the decision is final');
  t.equal(rx.ctrl[CTRL_NOTIFY_UNSURE], TSO ? 1 : 0, 'ctrl says so to the next holder and to the sweep');
  t.equal(notifyChecks.due - due0, TSO ? 1 : 0, "the ring is counted for the poller's sweep");
  t.equal(rx.ctrl[CTRL_SIGNALLED_USED], TSO ? 0 : 1, 'a provisional "no" keeps the window start');
  // the guest's store of the flag and its load of used->idx crossed our unfenced load
  rx.drv.setNoInterrupt(false);
  t.equal(recheckRx(rx), TSO, TSO ? 'the sweep sees the flag and notifies: no lost wakeup' : 'nothing left to decide');
  t.equal(rx.vq.notifyUnsure, false, 'decided');
  t.equal(rx.ctrl[CTRL_SIGNALLED_USED], 1, 'the window closed at used->idx');
  t.equal(recheckRx(rx), false, 'a second sweep has nothing to decide');
  t.ok(eq(rx.drv.readRx()[0].data, p), 'the packet byte-exact');
});

t.test('a provisional "no" that the guest still means: the sweep decides "no" and closes the window', async (t) => {
  const { a, tx, rx } = pair(false);
  rx.drv.postRx(4, 2048);
  rx.drv.setNoInterrupt(true);
  tx.drv.postTx(pattern(64, 2));
  t.equal(forward(a, tx, rx).rxNotify, false);
  t.equal(recheckRx(rx), false, 'interrupts still off: no call');
  t.equal(rx.vq.notifyUnsure, false);
  t.equal(rx.ctrl[CTRL_SIGNALLED_USED], 1);
});

t.test('TX rings: a provisional completion decision, decided again after a fence', async (t) => {
  const { a, tx, rx } = pair(false);
  rx.drv.postRx(4, 2048);
  tx.drv.setNoInterrupt(true);
  tx.drv.postTx(pattern(64, 3));
  const r = forward(a, tx, rx);
  t.equal(r.txNotify, false);
  t.equal(tx.vq.notifyUnsure, TSO, 'TX keeps its own provisional state');
  t.equal(tx.ctrl[CTRL_NOTIFY_UNSURE], TSO ? 1 : 0, 'mirrored in ctrl (TX has no lock)');
  tx.drv.setNoInterrupt(false);
  t.equal(tx.vq.recheckNotify(), TSO, TSO ? 'the completion is notified' : 'nothing left to decide');
  t.equal(tx.ctrl[CTRL_NOTIFY_UNSURE], 0);
  t.equal(tx.ctrl[CTRL_SIGNALLED_USED], 1);
  t.equal(tx.drv.collectUsed().length, 1, 'the chain was returned');
});

t.test('EVENT_IDX: the entries of a provisional "no" stay in the window', async (t) => {
  const { a, tx, rx } = pair(true, 16);
  rx.drv.postRx(8, 2048);
  rx.drv.setUsedEvent(100); // far away
  tx.drv.setUsedEvent(0xffff);
  for (let i = 0; i < 3; i++) tx.drv.postTx(pattern(64, 10 + i));
  t.equal(forward(a, tx, rx).rxNotify, false, 'entries 0..2 do not cross used_event 100');
  for (let i = 0; i < 2; i++) tx.drv.postTx(pattern(64, 20 + i));
  t.equal(forward(a, tx, rx).rxNotify, false, 'nor do 3..4');
  t.equal(rx.drv.usedIdx(), 5);
  // the guest had asked for entry 1 (its used_event store crossed our unfenced loads)
  rx.drv.setUsedEvent(1);
  t.equal(recheckRx(rx), TSO, TSO ? 'entry 1 lies in the kept window [0, 5): notified' : 'final decisions: the window was [3, 5)');
  t.equal(rx.ctrl[CTRL_SIGNALLED_USED], 5, 'window closed at 5');
  rx.drv.setUsedEvent(5);
  tx.drv.postTx(pattern(64, 30));
  t.equal(forward(a, tx, rx).rxNotify, true, 'the next entry crosses used_event 5');
  t.equal(rx.vq.notifyUnsure, false, 'a "notify" is acted on at once and ends the window');
  t.equal(rx.drv.readRx().length, 6);
});

t.test(`a provisional window is decided at once, fenced, past ${UNSURE_SPAN} entries`, async (t) => {
  const { a, tx, rx } = pair(false, 64);
  rx.drv.setNoInterrupt(true);
  tx.drv.setNoInterrupt(true);
  let sent = 0;
  let unsureSeen = 0;
  let finalAt = -1;
  let reopened = false;
  // bursts of 32, every buffer reposted, until the window passes UNSURE_SPAN
  while (sent < UNSURE_SPAN + 64) {
    rx.drv.postRx(32, 256);
    for (let i = 0; i < 32; i++) tx.drv.postTx(pattern(60, i));
    const r = forward(a, tx, rx);
    t.equal(r.n, 32);
    sent += 32;
    t.equal(rx.drv.readRx().length, 32);
    tx.drv.collectUsed();
    if (finalAt >= 0) reopened ||= rx.vq.notifyUnsure;
    else if (rx.vq.notifyUnsure) unsureSeen++;
    else finalAt = sent;
    if (!TSO) continue;
    const open = (sent - rx.ctrl[CTRL_SIGNALLED_USED]) & 0xffff;
    if (open > UNSURE_SPAN) t.fail(`window of ${open} entries left undecided`);
  }
  if (TSO) {
    t.equal(unsureSeen, UNSURE_SPAN / 32, `provisional for the first ${UNSURE_SPAN} entries`);
    t.equal(finalAt, UNSURE_SPAN + 32, 'the burst that widens it past the span is decided fenced, final');
    t.ok(reopened, 'the burst after it opens a new window');
  } else {
    t.equal(unsureSeen, 0, 'portable form: every decision final');
  }
});

t.test('with the dirty log on, every decision is fenced and final (the log bits need the fence)', async (t) => {
  const { a, tx, rx } = pair(false, 8, true);
  rx.drv.postRx(4, 2048);
  rx.drv.setNoInterrupt(true);
  tx.drv.postTx(pattern(64, 4));
  t.equal(forward(a, tx, rx).rxNotify, false);
  t.equal(rx.vq.notifyUnsure, false, 'final: no sweep needed');
  t.equal(rx.ctrl[CTRL_SIGNALLED_USED], 1);
});
