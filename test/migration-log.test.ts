/**
 * Dirty-log completeness, end to end through the workers: snapshot a guest's memory,
 * enable logging as QEMU does (LOG_ALL, SET_LOG_BASE, ring log addresses), run heavy
 * traffic both ways, stop the rings with GET_VRING_BASE, then copy onto the snapshot only
 * the pages the backend logged plus those the guest itself wrote (QEMU tracks the latter
 * on its own): the result must equal the live guest memory byte for byte.
 */
import t from 'tap';
import { Req } from '../src/shared/constants';
import { encodeLog } from '../src/main/messages';
import { native } from '../src/native';
import { SyntheticGuest, macOf } from '../src/frontend/guest';
import { startForwarder, withTwoGuests } from './helpers/env';
import { assertFlows, pump } from './helpers/traffic';

// frame counts, not durations: every round wraps the 256-entry rings many times
const rounds: Array<{ sizes: number[]; frames: number }> = [
  { sizes: [64], frames: 2000 },
  { sizes: [1518], frames: 2000 },
  { sizes: [60, 1514, 256, 4000, 128], frames: 2000 },
  { sizes: [9000, 64], frames: 1000 },
  { sizes: [2036, 2037, 2038], frames: 2000 },
  { sizes: [512], frames: 3000 },
];

t.test('snapshot + logged pages == live memory after heavy traffic, many sizes', async (t) => {
  const env = await startForwarder(['a', 'b']);
  t.teardown(env.stop);
  for (const [i, r] of rounds.entries()) {
    const a = await SyntheticGuest.start({ socket: env.sock('a'), mac: macOf(1) });
    const b = await SyntheticGuest.start({ socket: env.sock('b'), mac: macOf(2), queueSize: 256 });
    const tag = `round ${i} sizes ${r.sizes.join(',')}`;
    assertFlows(t, await pump(a, b, 300, r.sizes), 300, `${tag} warm-up`); // rings wrap a little
    await b.startLogging();
    const snapshot = Uint8Array.from(b.mem);
    const flows = await pump(a, b, r.frames, r.sizes);
    await b.stopRings();
    const logged = b.dirtyPages();
    const image = snapshot;
    for (const pg of new Set([...logged, ...b.guestDirty])) image.set(b.mem.subarray(pg * 4096, (pg + 1) * 4096), pg * 4096);
    let diff = 0;
    for (let k = 0; k < image.length; k++) if (image[k] !== b.mem[k]) diff++;
    t.equal(diff, 0, `${tag}: rebuilt image equals live memory (${flows.ab.received} + ${flows.ba.received} frames, ${logged.length} pages logged)`);
    assertFlows(t, flows, r.frames, tag);
    const backendOnly = logged.filter((p) => !b.guestDirty.has(p));
    t.ok(backendOnly.length > 0, `${tag}: ${backendOnly.length} pages were written by the backend alone (the check has teeth)`);
    const used = b.ringGpa(0).used >> 12;
    t.ok(logged.includes(used), `${tag}: the RX used ring page is logged`);
    a.close();
    b.close();
  }
});

t.test('iterative pre-copy: the frontend fetches and clears the log while traffic runs, the image still converges', async (t) => {
  // QEMU's pre-copy: every sync round takes each log word with an atomic exchange and then
  // sends those pages, while the backend goes on writing. A backend that skips bits it
  // believes set (dirty-log.ts flush) must still set every bit cleared under it.
  const { a, b } = await withTwoGuests(t, {}, { queueSize: 256 });
  assertFlows(t, await pump(a, b, 300, [64, 1518]), 300, 'warm-up');
  await b.startLogging();
  const image = Uint8Array.from(b.mem);
  const words = new Int32Array(b.logSab!);
  let syncs = 0;
  let sent = 0;
  const sync = (): void => {
    syncs++;
    const copy = (pg: number): void => {
      image.set(b.mem.subarray(pg * 4096, (pg + 1) * 4096), pg * 4096);
      sent++;
    };
    for (let w = 0; w < words.length; w++) {
      if (words[w] === 0) continue;
      const bits = Atomics.exchange(words, w, 0);
      for (let k = 0; k < 32; k++) if (bits & (1 << k)) copy(w * 32 + k);
    }
    for (const pg of b.guestDirty) copy(pg);
    b.guestDirty.clear();
  };
  const timer = setInterval(sync, 1);
  // traffic in chunks of frames until at least 20 sync rounds ran during it (counts, not time)
  const end = Date.now() + 120000;
  let chunks = 0;
  let frames = 0;
  let bad = 0;
  while ((syncs < 20 || chunks < 2) && Date.now() < end) {
    const r = await pump(a, b, 1000, [64, 1518, 256, 4000, 60]);
    assertFlows(t, r, 1000, `chunk ${chunks}`);
    chunks++;
    frames += r.ab.received + r.ba.received;
    bad += r.ab.mismatched + r.ba.mismatched;
  }
  clearInterval(timer);
  await b.stopRings();
  sync(); // the last round, with the rings stopped (the downtime)
  let diff = 0;
  for (let k = 0; k < image.length; k++) if (image[k] !== b.mem[k]) diff++;
  t.equal(diff, 0, `image equals live memory after ${syncs} sync rounds (${sent} page sends, ${frames} frames)`);
  t.ok(syncs >= 20, `${syncs} sync rounds ran during the traffic (${chunks} chunks of 1000 frames each way)`);
  t.equal(bad, 0, 'every frame byte-exact');
});

t.test('a log base without LOG_ALL negotiated: traffic sets no bit', async (t) => {
  const { a, b } = await withTwoGuests(t);
  const logFd = native.memfdCreate('log', 4096);
  t.teardown(() => native.close(logFd));
  await b.client.callU64(Req.SET_LOG_BASE, encodeLog({ mmapSize: 4096, mmapOffset: 0 }), [logFd]);
  const log = new Uint8Array(native.mmap(logFd, 4096, 0));
  assertFlows(t, await pump(a, b, 1000, [64, 1518]), 1000, 'traffic');
  t.equal(log.reduce((s, x) => s + x, 0), 0, 'no bit set without LOG_ALL');
});
