/**
 * Checksum and segmentation offloads (issue 18) through the worker's rings: a guest's frame
 * with a virtio-net header (NEEDS_CSUM, gso_type) crosses to a guest that took the matching
 * GUEST_* features with its header handed over (one frame, byte-exact, spanning mergeable
 * buffers), and to one that did not as software work: checksums completed, TCP cut into
 * gso_size segments, UFO fragmented. Checked against kit/offload-lib.ts, a reference that
 * shares no code with src/workers/offload.ts: segments reassembled equal the payload, every
 * IPv4 and TCP/UDP checksum verifies, sequence numbers, ids and flags as Linux sets them.
 */
import t, { Test } from 'tap';
import { PacketBatch } from '../src/workers/packet-batch';
import { ST_CSUM_SW, ST_DROP_BAD_OFFLOAD, ST_GSO_PASSED, ST_GSO_SEGMENTED } from '../src/shared/types';
import { LOG_PAGE } from '../src/protocol/constants';
import { MAX_OFFLOAD_FRAME } from '../src/workers/offload';
import { eq, pattern } from '../kit/vq-harness';
import { CopyQueue } from '../src/workers/bulk-copy';
import { native } from '../src/native';
import {
  GUEST_ALL, HOST_ALL, bits, build, forwardBurst, ipv4Verifies, l4Verifies, offloadPair, refComplete,
} from '../kit/offload-lib';

const batch = new PacketBatch(32);

/** deterministic PRNG (the seed is printed on failure) */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 0x1_0000_0000;
  };
}

t.test('NEEDS_CSUM towards a guest without GUEST_CSUM: completed in software, byte-exact otherwise', async (t) => {
  // bulk: the frame's copies of BULK_MIN bytes and more wait on the worker's bulk queue (as in
  // the worker); the checksum stored into the buffer must not be overwritten when they run
  for (const bulk of [false, true]) for (const v6 of [false, true]) {
    for (const udp of [false, true]) {
      for (const len of [1, 2, 33, 1000, 1459]) {
        const { a, b, tx, rx } = offloadPair({ netBits: HOST_ALL }, { netBits: 0 });
        if (bulk) {
          a.gm.enableBulk(native);
          b.gm.enableBulk(native);
          rx.vq.bulk = new CopyQueue(native);
        }
        const f = build({ v6, udp, payload: pattern(len, len), optLen: udp ? 0 : 12 });
        tx.drv.postTx(f.frame, { hdr: f.hdr, chunks: bulk ? 1 : 3 });
        rx.drv.postRx(4, 2048);
        t.equal(forwardBurst(batch, a, tx, rx), 1);
        const got = rx.drv.readRx();
        if (bulk) {
          a.gm.dispose();
          b.gm.dispose();
        }
        t.equal(got.length, 1, `bulk ${bulk} v6 ${v6} udp ${udp} len ${len}`);
        const d = got[0].data;
        t.equal(got[0].hdr[0], 0, 'flags 0: the checksum is complete');
        t.ok(l4Verifies(d, f.l3, v6), 'the checksum verifies');
        const field = udp ? 6 : 16;
        const rest = (x: Uint8Array) => Buffer.concat([x.subarray(0, f.l4 + field), x.subarray(f.l4 + field + 2)]);
        t.ok(eq(rest(d), rest(f.frame)), 'every other byte as sent');
        t.equal(rx.stats[ST_CSUM_SW], 1);
      }
    }
  }
});

t.test('64 KiB checksums: sums that overflow 16 bits thousands of times fold every carry (exact bytes against the reference)', async (t) => {
  // all-0xff payloads: every word 0xffff, the running sum carries out of 16 bits once a word
  // (32 000+ times for a 64 KiB frame); 0xfe/0xff and random ones; the TX frame split into
  // 1..33 descriptors so the sum crosses odd boundaries and unaligned words
  const seed = Number(process.env.OFFLOAD_SEED ?? Date.now() % 100000);
  t.comment(`seed ${seed} (OFFLOAD_SEED= to repeat)`);
  const r = rng(seed);
  const fills: Array<[string, (n: number) => Uint8Array]> = [
    ['0xff', (n) => new Uint8Array(n).fill(0xff)],
    ['0xfe 0xff', (n) => Uint8Array.from({ length: n }, (_, k) => (k & 1 ? 0xff : 0xfe))],
    ['random', (n) => Uint8Array.from({ length: n }, () => Math.floor(r() * 256))],
  ];
  for (const [name, fill] of fills) {
    for (const v6 of [false, true]) {
      for (const chunks of [1, 3, 7, 33]) {
        const udp = chunks !== 3;
        // the largest datagram IPv4 carries (65535 - 20 - 8), and 65000 bytes over IPv6
        const plen = v6 ? 65000 : udp ? 65507 : 65495;
        const { a, tx, rx } = offloadPair({ netBits: HOST_ALL }, { netBits: 0 });
        const f = build({ v6, udp, payload: fill(plen) });
        tx.drv.postTx(f.frame, { hdr: f.hdr, chunks });
        rx.drv.postRx(40, 2048);
        t.equal(forwardBurst(batch, a, tx, rx), 1);
        const got = rx.drv.readRx();
        const want = refComplete(f.frame, { l3: f.l3, l4: f.l4, v6, udp });
        t.equal(got.length, 1, `${name} ${v6 ? 'IPv6' : 'IPv4'} ${udp ? 'UDP' : 'TCP'} ${plen} bytes in ${chunks} descriptors`);
        t.ok(got.length === 1 && eq(got[0].data, want), 'byte-exact, checksum as the reference computes it');
        t.ok(got.length === 1 && l4Verifies(got[0].data, f.l3, v6), 'and it verifies');
      }
    }
  }
});

t.test('a burst after one with offloads: its plain frames carry no stale flags (the batch stores flags only when set)', async (t) => {
  const { a, tx, rx } = offloadPair({ netBits: HOST_ALL }, { netBits: GUEST_ALL });
  const f = build({ v6: false, payload: pattern(300, 5) });
  const plain = build({ v6: false, payload: pattern(200, 6) });
  // burst 1: the offload frame in slot 0, a plain one in slot 1
  tx.drv.postTx(f.frame, { hdr: f.hdr });
  tx.drv.postTx(plain.frame);
  rx.drv.postRx(8, 2048);
  t.equal(forwardBurst(batch, a, tx, rx), 2);
  const first = rx.drv.readRx();
  t.equal(first[0].hdr[0], f.hdr[0], 'burst 1, slot 0: NEEDS_CSUM handed over');
  t.equal(first[1].hdr[0] | first[1].hdr[1], 0, 'burst 1, slot 1: no flags, no gso_type');
  // burst 2: plain frames in the slots the offload frame used
  for (let k = 0; k < 3; k++) tx.drv.postTx(plain.frame);
  t.equal(forwardBurst(batch, a, tx, rx), 3);
  const second = rx.drv.readRx();
  t.equal(second.length, 3);
  for (const [k, g] of second.entries()) {
    t.equal(g.hdr[0] | g.hdr[1], 0, `burst 2, slot ${k}: no flags, no gso_type`);
    t.ok(eq(g.data, plain.frame), `burst 2, slot ${k}: byte-exact`);
  }
  t.equal(batch.nOffload, 0, 'the second burst counted no offload');
  t.same([...batch.flags], new Array(32).fill(0), 'every flags slot zero after it');
});

t.test('NEEDS_CSUM towards a guest with GUEST_CSUM: handed over, header and frame as sent', async (t) => {
  const { a, tx, rx } = offloadPair({ netBits: HOST_ALL }, { netBits: GUEST_ALL });
  const f = build({ v6: false, payload: pattern(700, 3) });
  tx.drv.postTx(f.frame, { hdr: f.hdr });
  rx.drv.postRx(2, 2048);
  forwardBurst(batch, a, tx, rx);
  const got = rx.drv.readRx();
  t.equal(got.length, 1);
  t.ok(eq(got[0].data, f.frame), 'frame byte-exact (checksum still partial)');
  t.same([...got[0].hdr.subarray(0, 10)], [...f.hdr.subarray(0, 10)], 'flags, csum_start, csum_offset handed over');
  t.equal(rx.stats[ST_CSUM_SW], 0);
});

t.test('TSO frames of 64 KiB handed over whole: one copy spanning mergeable buffers', async (t) => {
  for (const v6 of [false, true]) {
    const { a, tx, rx } = offloadPair({ netBits: HOST_ALL }, { netBits: GUEST_ALL });
    const f = build({ v6, payload: pattern(v6 ? 65400 : 65420, 9), optLen: 12, gsoSize: 1448, ecn: true });
    t.ok(f.frame.length <= MAX_OFFLOAD_FRAME);
    tx.drv.postTx(f.frame, { hdr: f.hdr, chunks: 17 });
    rx.drv.postRx(20, 4096);
    t.equal(forwardBurst(batch, a, tx, rx), 1);
    const got = rx.drv.readRx();
    t.equal(got.length, 1, 'one frame');
    t.equal(got[0].numBuffers, Math.ceil((f.frame.length + 12) / 4096), 'num_buffers: the 4 KiB chains it spans');
    t.ok(eq(got[0].data, f.frame), 'byte-exact');
    t.same([...got[0].hdr.subarray(0, 10)], [...f.hdr.subarray(0, 10)], 'gso_type (ECN too), gso_size, hdr_len, csum fields handed over');
    t.equal(rx.stats[ST_GSO_PASSED], 1);
    t.equal(rx.stats[ST_GSO_SEGMENTED], 0);
  }
});

interface Seg {
  data: Uint8Array;
  hdr: Uint8Array;
}

/** Check the segments of one TSO frame against the reference; returns the problems found. */
function checkSegments(t: Test, segs: Seg[], f: ReturnType<typeof build>, o: { v6: boolean; mss: number; payload: Uint8Array; seq: number; id: number; tcpFlags: number }): void {
  const n = Math.ceil(o.payload.length / o.mss);
  t.equal(segs.length, n, 'segment count');
  const re = new Uint8Array(o.payload.length);
  const bad: string[] = [];
  segs.forEach((s, k) => {
    const d = s.data;
    const dv = new DataView(d.buffer, d.byteOffset, d.byteLength);
    if (s.hdr[0] !== 0 || s.hdr[1] !== 0) bad.push(`${k}: header flags ${s.hdr[0]} gso ${s.hdr[1]}`);
    if (!eq(d.subarray(0, f.l3), f.frame.subarray(0, f.l3))) bad.push(`${k}: L2 differs`);
    const len = Math.min(o.mss, o.payload.length - k * o.mss);
    if (d.length !== f.hl + len) bad.push(`${k}: length ${d.length}, want ${f.hl + len}`);
    if (o.v6) {
      if (dv.getUint16(f.l3 + 4) !== d.length - f.l4) bad.push(`${k}: IPv6 payload length`);
    } else {
      if (dv.getUint16(f.l3 + 2) !== d.length - f.l3) bad.push(`${k}: IPv4 total length`);
      if (dv.getUint16(f.l3 + 4) !== ((o.id + k) & 0xffff)) bad.push(`${k}: IPv4 id`);
      if (!ipv4Verifies(d, f.l3)) bad.push(`${k}: IPv4 checksum`);
    }
    if (!l4Verifies(d, f.l3, o.v6)) bad.push(`${k}: TCP checksum`);
    const seq = dv.getUint32(f.l4 + 4);
    const off = (seq - o.seq) >>> 0;
    if (off !== k * o.mss) bad.push(`${k}: seq offset ${off}`);
    const fl = d[f.l4 + 13];
    const last = k === n - 1;
    const want = (o.tcpFlags & ~(k > 0 ? 0x80 : 0)) & ~(last ? 0 : 0x09);
    if (fl !== want) bad.push(`${k}: flags 0x${fl.toString(16)} want 0x${want.toString(16)}`);
    // options and the rest of the TCP header as sent
    if (!eq(d.subarray(f.l4 + 20, f.hl), f.frame.subarray(f.l4 + 20, f.hl))) bad.push(`${k}: TCP options`);
    if (off + d.length - f.hl <= re.length) re.set(d.subarray(f.hl), off);
  });
  t.same(bad, [], 'every segment as Linux would cut it');
  t.ok(eq(re, o.payload), 'segments reassembled equal the payload');
}

t.test('TSO towards a guest without GUEST_TSO: segmented in software (random sizes, MSS, IPv4/IPv6, options, VLAN)', async (t) => {
  const seed = Number(process.env.OFFLOAD_SEED ?? Date.now() % 100000);
  t.comment(`seed ${seed} (OFFLOAD_SEED= to repeat)`);
  const r = rng(seed);
  for (let round = 0; round < 60; round++) {
    const v6 = r() < 0.5;
    const vlan = r() < 0.2;
    const optLen = [0, 4, 12, 20, 40][Math.floor(r() * 5)];
    const mss = 64 + Math.floor(r() * 1836);
    const maxPayload = Math.min(60000, mss * 40);
    // a GSO frame is longer than gso_size (else the guest sends it plain)
    const plen = mss + 1 + Math.floor(r() * (maxPayload - mss));
    const payload = pattern(plen, round);
    const seq = Math.floor(r() * 0x1_0000_0000);
    const id = Math.floor(r() * 0x10000);
    const tcpFlags = 0x18 | (r() < 0.3 ? 0x01 : 0) | (r() < 0.3 ? 0x80 : 0) | (r() < 0.3 ? 0x40 : 0);
    const ecn = (tcpFlags & 0xc0) !== 0;
    // the receiver: nothing at all, or GUEST_CSUM only, or TSO of the other IP version, or
    // everything but ECN for an ECN frame: each must take the software path
    const rxBits = [0, bits('VIRTIO_NET_F_GUEST_CSUM'), v6 ? bits('VIRTIO_NET_F_GUEST_CSUM', 'VIRTIO_NET_F_GUEST_TSO4') : bits('VIRTIO_NET_F_GUEST_CSUM', 'VIRTIO_NET_F_GUEST_TSO6')][Math.floor(r() * 3)];
    const { a, tx, rx } = offloadPair({ netBits: HOST_ALL }, { netBits: rxBits });
    const f = build({ v6, vlan, optLen, payload, seq, id, tcpFlags, gsoSize: mss, ecn });
    tx.drv.postTx(f.frame, { hdr: f.hdr, chunks: 1 + Math.floor(r() * 5) });
    const n = Math.ceil(plen / mss);
    rx.drv.postRx(n, f.hl + mss + 12);
    t.equal(forwardBurst(batch, a, tx, rx), 1);
    const got = rx.drv.readRx();
    t.test(`round ${round}: ${v6 ? 'IPv6' : 'IPv4'}${vlan ? ' vlan' : ''} opt ${optLen} mss ${mss} payload ${plen} flags 0x${tcpFlags.toString(16)}`, async (t) => {
      checkSegments(t, got.map((g) => ({ data: g.data, hdr: g.hdr })), f, { v6, mss, payload, seq, id, tcpFlags });
      t.equal(rx.stats[ST_GSO_SEGMENTED], 1);
      t.equal(tx.stats[ST_DROP_BAD_OFFLOAD], 0);
    });
  }
});

t.test('an ECN frame towards a guest with GUEST_TSO4 but not GUEST_ECN is segmented', async (t) => {
  const { a, tx, rx } = offloadPair({ netBits: HOST_ALL }, { netBits: bits('VIRTIO_NET_F_GUEST_CSUM', 'VIRTIO_NET_F_GUEST_TSO4') });
  const payload = pattern(5000, 1);
  const f = build({ v6: false, payload, gsoSize: 1000, ecn: true, tcpFlags: 0x98, seq: 5, id: 9 });
  tx.drv.postTx(f.frame, { hdr: f.hdr });
  rx.drv.postRx(8, 2048);
  forwardBurst(batch, a, tx, rx);
  const got = rx.drv.readRx();
  checkSegments(t, got, f, { v6: false, mss: 1000, payload, seq: 5, id: 9, tcpFlags: 0x98 });
});

t.test('RX short of buffers mid-frame: the segments that fit go, the rest are counted, nothing else written', async (t) => {
  const { a, b, tx, rx } = offloadPair({ netBits: HOST_ALL }, { netBits: 0 });
  const payload = pattern(10000, 2);
  const f = build({ v6: false, payload, gsoSize: 1000 });
  tx.drv.postTx(f.frame, { hdr: f.hdr });
  rx.drv.postRx(4, 2048);
  const before = Buffer.from(b.mem8.subarray(0x20000 + 0x10000));
  forwardBurst(batch, a, tx, rx);
  const got = rx.drv.readRx();
  t.equal(got.length, 4, 'four segments delivered');
  t.ok(got.every((g, k) => l4Verifies(g.data, f.l3, false) && eq(g.data.subarray(f.hl), payload.subarray(k * 1000, k * 1000 + 1000))));
  t.ok(Buffer.from(b.mem8.subarray(0x30000)).equals(before), 'unmapped bytes untouched');
});

t.test('UFO towards a guest without GUEST_UFO: IPv4 fragments (shared id) and IPv6 fragment headers; the datagram reassembles and its checksum verifies', async (t) => {
  for (const v6 of [false, true]) {
    const { a, tx, rx } = offloadPair({ netBits: HOST_ALL }, { netBits: 0 });
    const payload = pattern(7000, 4);
    const f = build({ v6, udp: true, payload, gsoSize: 1480, id: 77 });
    tx.drv.postTx(f.frame, { hdr: f.hdr });
    rx.drv.postRx(8, 2048);
    forwardBurst(batch, a, tx, rx);
    const got = rx.drv.readRx();
    const datagram = new Uint8Array(f.frame.length - f.l4);
    let filled = 0;
    for (const [k, g] of got.entries()) {
      const dv = new DataView(g.data.buffer, g.data.byteOffset, g.data.byteLength);
      let off: number;
      let more: number;
      let body: Uint8Array;
      if (v6) {
        t.equal(g.data[f.l3 + 6], 44, 'next header: fragment');
        const fo = dv.getUint16(f.l4 + 2);
        off = fo & ~7;
        more = fo & 1;
        body = g.data.subarray(f.l4 + 8);
        t.equal(dv.getUint16(f.l3 + 4), 8 + body.length, 'payload length');
      } else {
        t.ok(ipv4Verifies(g.data, f.l3), 'IPv4 header checksum');
        t.equal(dv.getUint16(f.l3 + 4), 77, 'one id for all fragments');
        const fo = dv.getUint16(f.l3 + 6);
        off = (fo & 0x1fff) * 8;
        more = (fo >> 13) & 1;
        body = g.data.subarray(f.l4);
        t.equal(dv.getUint16(f.l3 + 2), g.data.length - f.l3, 'total length');
      }
      t.equal(more, k < got.length - 1 ? 1 : 0, 'MF on all but the last');
      datagram.set(body, off);
      filled += body.length;
    }
    t.equal(filled, datagram.length, 'fragments cover the datagram');
    // the reassembled datagram: the original with its checksum completed
    const whole = new Uint8Array(f.frame);
    whole.set(datagram, f.l4);
    t.ok(eq(whole.subarray(f.l4 + 8), f.frame.subarray(f.l4 + 8)), 'payload byte-exact');
    t.ok(l4Verifies(whole, f.l3, v6), 'UDP checksum verifies over the reassembled datagram');
  }
});

t.test('dirty log: every byte the software path writes is logged', async (t) => {
  const logSab = new SharedArrayBuffer(64);
  const { a, b, tx, rx } = (() => {
    const p = offloadPair({ netBits: HOST_ALL }, { netBits: 0, logAll: true });
    return p;
  })();
  rx.log.set({ sab: logSab, offset: 0, size: 64 });
  const f = build({ v6: true, payload: pattern(20000, 5), gsoSize: 1300, optLen: 12 });
  tx.drv.postTx(f.frame, { hdr: f.hdr });
  rx.drv.postRx(20, 2048);
  // after the driver's own writes (descriptors, avail ring): what changes now is the device's
  const snapshot = Buffer.from(b.mem8.subarray(0, 0x30000));
  forwardBurst(batch, a, tx, rx);
  t.equal(rx.drv.readRx().length, Math.ceil(20000 / 1300));
  const log = new Uint8Array(logSab);
  const unlogged: number[] = [];
  for (let p = 0; p < 0x30000 / LOG_PAGE; p++) {
    const changed = !Buffer.from(b.mem8.subarray(p * LOG_PAGE, (p + 1) * LOG_PAGE)).equals(snapshot.subarray(p * LOG_PAGE, (p + 1) * LOG_PAGE));
    if (changed && (log[p >> 3] & (1 << (p & 7))) === 0) unlogged.push(p);
  }
  // the driver's own writes (readRx reposts nothing here) are none: every changed page is ours
  // the used ring (page 3) is logged at its log address, which this ring has none of
  t.same(unlogged.filter((p) => p !== 3), [], 'every buffer page written is logged');
});
