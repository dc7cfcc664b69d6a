/**
 * src/workers/ring-core.ts: the order in which a burst is handed to the guest (both ring
 * formats call publishBurst), and needEvent, the virtio spec's vring_need_event. The order is
 * observed from the outside: what the guest's memory and the dirty log hold at each step.
 * needEvent is checked against the spec's definition written out with plain integers.
 */
import t from 'tap';
import { needEvent, publishBurst, UsedPublisher } from '../src/workers/ring-core';
import { BurstLog } from '../src/workers/burst-log';
import { DirtyLog } from '../src/workers/dirty-log';
import type { CopyQueue } from '../src/workers/bulk-copy';
import { ST_DIRTY_PAGES } from '../src/shared/types';
import { rng } from './helpers/rng';
import { TSO } from '../src/workers/ordering';

t.test('publishBurst: bytes, then used writes, then the publishing store, then log bits, then the notify decision', async (t) => {
  const logSab = new SharedArrayBuffer(64);
  const logBytes = new Uint8Array(logSab);
  const log = new DirtyLog();
  log.set({ sab: logSab, offset: 0, size: 64 });
  const blog = new BurstLog(log);
  const guest = new Uint8Array(64); // [0]: the packet byte, [1]: a used element, [2]: the index
  const seen: string[] = [];
  // a stand-in for the bulk queue: its one copy lands at run()
  const bulk = {
    run(): void {
      seen.push(`bytes: guest ${guest[0]}${guest[1]}${guest[2]}, log ${logBytes[0]}`);
      guest[0] = 1;
    },
  } as unknown as CopyQueue;
  const ring: UsedPublisher = {
    writeUsed(logging: boolean): void {
      seen.push(`used: guest ${guest[0]}${guest[1]}${guest[2]}, log ${logBytes[0]}, logging ${logging}`);
      guest[1] = 1;
      blog.defer(0x1000, 8); // page 1
    },
    storeUsed(fenced: boolean): void {
      seen.push(`store: guest ${guest[0]}${guest[1]}${guest[2]}, log ${logBytes[0]}, fenced ${fenced}`);
      guest[2] = 1;
    },
    notifyDue(fenced: boolean): boolean {
      seen.push(`notify: guest ${guest[0]}${guest[1]}${guest[2]}, log ${logBytes[0]}, fenced ${fenced}`);
      return true;
    },
  };
  blog.defer(0, 64); // the packet's page 0, queued by the burst loop
  const stats = new Float64Array(64);
  t.equal(publishBurst(ring, bulk, blog, true, stats), true, "the ring's notify decision is returned");
  t.same(seen, [
    'bytes: guest 000, log 0',
    'used: guest 100, log 0, logging true',
    'store: guest 110, log 0, fenced true',
    'notify: guest 111, log 3, fenced true',
  ], 'each step finds every earlier write done and no log bit set before the store, which is fenced (the log bits follow it)');
  t.equal(logBytes[0], 0b11, 'pages 0 (bytes) and 1 (used element) marked');
  t.equal(stats[ST_DIRTY_PAGES], 2, 'two pages counted');
});

t.test('publishBurst without logging or a bulk queue: no bits, the same order', async (t) => {
  const logSab = new SharedArrayBuffer(64);
  const log = new DirtyLog();
  log.set({ sab: logSab, offset: 0, size: 64 });
  const blog = new BurstLog(log);
  const seen: string[] = [];
  const ring: UsedPublisher = {
    writeUsed: (logging) => void seen.push(`used ${logging}`),
    storeUsed: (fenced) => void seen.push(`store ${fenced}`),
    notifyDue: (fenced) => {
      seen.push(`notify ${fenced}`);
      return false;
    },
  };
  t.equal(publishBurst(ring, null, blog, false, new Float64Array(64)), false);
  // x86 without logging: a plain store and a provisional decision; elsewhere fenced
  t.same(seen, ['used false', `store ${!TSO}`, `notify ${!TSO}`], `fenced only off x86 (TSO ${TSO})`);
  t.equal(new Uint8Array(logSab).reduce((a, b) => a | b, 0), 0, 'nothing marked');
});

/** The spec's vring_need_event, with the 16-bit indices as plain non-negative integers. */
function specNeedEvent(event: number, now: number, old: number): boolean {
  // notify when event is one of the indices old, old + 1, ..., now - 1 (mod 2^16)
  const published = (now - old + 0x10000) % 0x10000;
  for (let k = 0; k < published; k++) if ((old + k) % 0x10000 === event) return true;
  return false;
}

t.test('needEvent equals the spec on random and edge indices, across the 16-bit wrap', async (t) => {
  const r = rng(19);
  const cases: Array<[number, number, number]> = [
    [0, 1, 0], [0, 0, 0], [5, 5, 4], [4, 5, 4], [0xffff, 0, 0xffff], [0xffff, 1, 0xfffe], [0, 1, 0xffff], [3, 2, 0xfff0],
  ];
  for (let i = 0; i < 3000; i++) {
    const old = Math.floor(r() * 0x10000);
    const now = (old + Math.floor(r() * 600)) % 0x10000;
    const event = r() < 0.5 ? (old + Math.floor(r() * 700) - 50 + 0x10000) % 0x10000 : Math.floor(r() * 0x10000);
    cases.push([event, now, old]);
  }
  let bad = 0;
  let yes = 0;
  for (const [e, n, o] of cases) {
    const want = specNeedEvent(e, n, o);
    if (needEvent(e, n, o) !== want) bad++;
    if (want) yes++;
  }
  t.equal(bad, 0, `${cases.length} cases agree`);
  t.ok(yes > 300 && yes < cases.length - 300, `both answers exercised (${yes} notify)`);
});
