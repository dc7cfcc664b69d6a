/**
 * Dirty-log completeness, end to end through the workers: snapshot a guest's memory,
 * enable logging as QEMU does (LOG_ALL, SET_LOG_BASE, ring log addresses), run heavy
 * traffic both ways, stop the rings with GET_VRING_BASE, then copy onto the snapshot only
 * the pages the backend logged plus those the guest itself wrote (QEMU tracks the latter
 * on its own): the result must equal the live guest memory byte for byte.
 */
import t from 'tap';
import { F, Req, bit } from '../src/protocol/constants';
import { encodeLog } from '../src/protocol/messages';
import { native } from '../src/native';
import { DEFAULT_WANT, SyntheticGuest, macOf } from '../src/frontend/guest';
import { startForwarder, withTwoGuests } from '../kit/env';
import { assertFlows, pump } from './helpers/traffic';
import { pattern } from '../kit/vq-harness';
import { build, refComplete, refSegments } from '../kit/offload-lib';

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

const HOST = bit(F.VIRTIO_NET_F_CSUM) | bit(F.VIRTIO_NET_F_HOST_TSO4) | bit(F.VIRTIO_NET_F_HOST_TSO6) | bit(F.VIRTIO_NET_F_HOST_ECN) | bit(F.VIRTIO_NET_F_HOST_UFO);
const GUEST = bit(F.VIRTIO_NET_F_GUEST_CSUM) | bit(F.VIRTIO_NET_F_GUEST_TSO4) | bit(F.VIRTIO_NET_F_GUEST_TSO6) | bit(F.VIRTIO_NET_F_GUEST_ECN) | bit(F.VIRTIO_NET_F_GUEST_UFO);
const hex = (f: Uint8Array): string => Buffer.from(f).toString('hex');

t.test('TSO traffic: snapshot + logged pages == live memory, frames handed over whole and segmented in software', async (t) => {
  // Offloads (issue 18) write guest memory in new ways: 64 KiB frames spanning mergeable
  // chains with a header handed over, segments built from a header template plus payload,
  // checksums poked into buffers after the copy. Each write must be logged like any other.
  for (const receiverOffloads of [true, false]) {
    const env = await startForwarder(['a', 'b']);
    const a = await SyntheticGuest.start({ socket: env.sock('a'), mac: macOf(1), want: DEFAULT_WANT | HOST | GUEST });
    const b = await SyntheticGuest.start({ socket: env.sock('b'), mac: macOf(2), queueSize: 256, want: DEFAULT_WANT | HOST | (receiverOffloads ? GUEST : 0n) });
    const tag = receiverOffloads ? 'handed over' : 'software path';
    // TSO over IPv4 and IPv6 (with options), and checksum-only TCP and UDP frames; what b
    // must receive for each, computed by the reference (kit/offload-lib.ts)
    const kinds = [
      { v6: false, udp: false, payload: 60000, mss: 1448, optLen: 12 },
      { v6: true, udp: false, payload: 23000, mss: 1400, optLen: 20 },
      { v6: false, udp: true, payload: 1400 },
      { v6: true, udp: false, payload: 999, optLen: 12 },
    ].map((k, n) => {
      const f = build({ v6: k.v6, udp: k.udp, payload: pattern(k.payload, n + 1), optLen: k.optLen ?? 0, gsoSize: k.mss, seq: 0xffffff00 });
      f.frame.set(b.mac, 0);
      f.frame.set(a.mac, 6);
      const out = receiverOffloads
        ? [f.frame]
        : k.mss !== undefined
          ? refSegments(f.frame, { l3: f.l3, l4: f.l4, hl: f.hl, mss: k.mss, v6: k.v6 })
          : [refComplete(f.frame, { l3: f.l3, l4: f.l4, v6: k.v6, udp: k.udp })];
      // RX chains of 2048 bytes each output needs
      const chains = out.reduce((s, o) => s + Math.ceil((o.length + 12) / 2048), 0);
      return { f, want: out.map(hex), chains };
    });
    /** send `count` frames (kinds in turn), at most ~160 RX chains' worth in flight; check every output */
    const run = async (count: number): Promise<{ got: number; bad: number; want: number }> => {
      const expected: string[] = [];
      const chainsOf: number[] = [];
      let sent = 0;
      let got = 0;
      let bad = 0;
      let inFlight = 0;
      let doneFrames = 0;
      let outputsLeft = 0;
      const end = Date.now() + 60000;
      while ((sent < count || got < expected.length) && Date.now() < end) {
        a.tx[0].collectUsed();
        let posted = false;
        while (sent < count && a.tx[0].freeDescCount() >= 8) {
          const k = kinds[sent % kinds.length];
          if (inFlight + k.chains > 160 && inFlight > 0) break;
          a.tx[0].postTx(k.f.frame, { hdr: k.f.hdr, chunks: 1 + (sent % 3) });
          expected.push(...k.want);
          chainsOf.push(k.chains);
          inFlight += k.chains;
          sent++;
          posted = true;
        }
        if (posted) native.eventfdWrite(a.kickFds[1], 1);
        for (const p of b.receive(0)) {
          if (hex(p.data) !== expected[got]) bad++;
          got++;
          if (outputsLeft === 0) outputsLeft = kinds[doneFrames % kinds.length].want.length;
          if (--outputsLeft === 0) inFlight -= chainsOf[doneFrames++];
        }
        await new Promise((r) => setImmediate(r));
      }
      return { got, bad, want: expected.length };
    };
    const warm = await run(8);
    t.same(warm, { got: warm.want, bad: 0, want: warm.want }, `${tag}: warm-up`);
    await b.startLogging();
    // pre-copy rounds as QEMU's: a few frames of each kind, then (traffic done) the pages
    // logged since the last round, which are cleared, plus the guest's own, must turn the
    // last image into live memory. Small rounds: a page written and not logged cannot hide
    // behind another frame that lands in the same buffers later and is logged.
    const words = new Int32Array(b.logSab!);
    let image = Uint8Array.from(b.mem);
    let roundsBad = 0;
    let outputs = 0;
    for (let round = 0; round < 30; round++) {
      const r = await run(kinds.length);
      outputs += r.got;
      if (r.got !== r.want || r.bad !== 0) roundsBad++;
      await new Promise((res) => setTimeout(res, 10));
      for (let w = 0; w < words.length; w++) {
        const bits = Atomics.exchange(words, w, 0);
        for (let k = 0; k < 32; k++) if (bits & (1 << k)) image.set(b.mem.subarray((w * 32 + k) * 4096, (w * 32 + k + 1) * 4096), (w * 32 + k) * 4096);
      }
      for (const pg of b.guestDirty) image.set(b.mem.subarray(pg * 4096, (pg + 1) * 4096), pg * 4096);
      b.guestDirty.clear();
      let diff = 0;
      for (let k = 0; k < image.length; k++) if (image[k] !== b.mem[k]) diff++;
      if (diff !== 0) {
        roundsBad++;
        t.equal(diff, 0, `${tag}: round ${round}: image equals live memory`);
        image = Uint8Array.from(b.mem);
      }
    }
    t.equal(roundsBad, 0, `${tag}: 30 pre-copy rounds of ${kinds.length} frames (${outputs} outputs): every output byte-exact, every image equal to live memory`);
    const snapshot = Uint8Array.from(b.mem);
    const r = await run(400);
    await b.stopRings();
    t.same(r, { got: r.want, bad: 0, want: r.want }, `${tag}: every output (${r.want}) byte-exact as the reference computes it`);
    const logged = b.dirtyPages();
    for (const pg of new Set([...logged, ...b.guestDirty])) snapshot.set(b.mem.subarray(pg * 4096, (pg + 1) * 4096), pg * 4096);
    let diff = 0;
    for (let k = 0; k < snapshot.length; k++) if (snapshot[k] !== b.mem[k]) diff++;
    t.equal(diff, 0, `${tag}: rebuilt image equals live memory (${logged.length} pages logged)`);
    const backendOnly = logged.filter((p) => !b.guestDirty.has(p));
    t.ok(backendOnly.length > 0, `${tag}: ${backendOnly.length} pages written by the backend alone`);
    const st = env.fwd.stats().find((s) => s.iface === 'b' && s.dir === 'rx')!;
    if (receiverOffloads) t.ok(st.gsoPassed >= 200, `${tag}: ${st.gsoPassed} TSO frames handed over`);
    else t.ok(st.gsoSegmented >= 200 && st.csumSoftware >= 200, `${tag}: ${st.gsoSegmented} segmented, ${st.csumSoftware} checksums completed`);
    a.close();
    b.close();
    await env.stop();
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
