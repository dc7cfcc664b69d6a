/**
 * Hostile virtio-net headers (the class of DPDK CVE-2024-11614): every field of a TX frame's
 * header that does not hold up drops that frame, counted as bad_offload on the TX ring; no
 * byte is written into the receiver (nor outside any buffer), nothing throws (the device is
 * not reset), and the next good frame of the same burst still crosses. Then a fuzzer: random
 * headers over random frames, each either refused or delivered, never anything else.
 */
import t from 'tap';
import { PacketBatch } from '../../src/workers/packet-batch';
import { ST_DROP_BAD_OFFLOAD, ST_PACKETS } from '../../src/shared/types';
import { BAD_OFFLOAD_REASONS, MAX_OFFLOAD_FRAME, validate } from '../../src/workers/offload';
import { EDIT_POP, EDIT_PUSH, EDIT_TPID_AD } from '../../src/workers/vlan';
import { BACKGROUND, eq, pattern } from '../../kit/vq-harness';
import { GSO_ECN, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GUEST_ALL, HOST_ALL, bits, build, forwardBurst, offloadPair, sum16 } from '../../kit/offload-lib';

const batch = new PacketBatch(32);

type Mut = (h: DataView, f: Uint8Array) => Uint8Array | void;
const cases: Array<[string, number, Mut]> = [
  ['flags: DATA_VALID (driver must not set it)', HOST_ALL, (h) => h.setUint8(0, 3)],
  ['flags: unknown bits', HOST_ALL, (h) => h.setUint8(0, 0x81)],
  ['csum_start beyond the frame', HOST_ALL, (h, f) => h.setUint16(6, f.length, true)],
  ['csum_offset beyond the frame', HOST_ALL, (h, f) => h.setUint16(8, f.length - h.getUint16(6, true) - 1, true)],
  ['csum_start 0xffff', HOST_ALL, (h) => h.setUint16(6, 0xffff, true)],
  ['csum_start inside the Ethernet header (a tag pop would move it below 12)', HOST_ALL, (h) => h.setUint16(6, 10, true)],
  ['csum_start 0, csum_offset at the TCP checksum', HOST_ALL, (h) => { h.setUint16(6, 0, true); h.setUint16(8, 34 + 16, true); }],
  ['unknown gso_type 2', HOST_ALL, (h) => h.setUint8(1, 2)],
  ['unknown gso_type 5 (USO, not offered)', HOST_ALL, (h) => h.setUint8(1, 5)],
  ['unknown gso_type 0x7f', HOST_ALL, (h) => h.setUint8(1, 0x7f)],
  ['TSO4 without HOST_TSO4', bits('VIRTIO_NET_F_CSUM'), () => undefined],
  ['ECN without HOST_ECN', HOST_ALL & ~bits('VIRTIO_NET_F_HOST_ECN'), (h) => h.setUint8(1, GSO_TCPV4 | GSO_ECN)],
  ['ECN bit without a gso_type', HOST_ALL, (h) => h.setUint8(1, GSO_ECN)],
  ['gso without NEEDS_CSUM', HOST_ALL, (h) => h.setUint8(0, 0)],
  ['gso_size 0', HOST_ALL, (h) => h.setUint16(4, 0, true)],
  ['gso_size larger than the frame', HOST_ALL, (h, f) => h.setUint16(4, f.length + 1, true)],
  ['hdr_len beyond the frame', HOST_ALL, (h, f) => h.setUint16(2, f.length + 1, true)],
  ['TCPV6 on an IPv4 frame', HOST_ALL, (h) => h.setUint8(1, GSO_TCPV6)],
  ['UDP gso on a TCP frame', HOST_ALL, (h) => h.setUint8(1, GSO_UDP)],
  ['csum_start not the TCP header', HOST_ALL, (h) => h.setUint16(6, 20, true)],
  ['csum_offset not the TCP checksum', HOST_ALL, (h) => h.setUint16(8, 6, true)],
  ['IPv4 IHL 3', HOST_ALL, (_h, f) => { f[14] = 0x43; }],
  ['IPv4 fragment (MF)', HOST_ALL, (_h, f) => { f[20] |= 0x20; }],
  ['TCP data offset 4', HOST_ALL, (_h, f) => { f[34 + 12] = 0x40; }],
  ['TCP data offset past the frame', HOST_ALL, (h, f) => { f[34 + 12] = 0xf0; return f.subarray(0, 34 + 40); }],
  ['not IP (ARP ethertype)', HOST_ALL, (_h, f) => { f[12] = 0x08; f[13] = 0x06; }],
  ['two VLAN tags (QinQ) before IPv4', HOST_ALL, (h, f) => {
    const q = new Uint8Array(f.length + 8);
    q.set(f.subarray(0, 12));
    q.set([0x88, 0xa8, 0, 100, 0x81, 0x00, 0, 10], 12);
    q.set(f.subarray(12), 20);
    h.setUint16(2, h.getUint16(2, true) + 8, true);
    h.setUint16(6, h.getUint16(6, true) + 8, true);
    return q;
  }],
  ['headers only, no payload', HOST_ALL, (h, f) => { h.setUint16(4, 1, true); return f.subarray(0, 54); }],
];

t.test('a header from a guest that negotiated no host offload is not read: NEEDS_CSUM ignored, the frame crosses as sent (as DPDK does)', async (t) => {
  // virtio 1.x 5.1.6.2: without CSUM the driver sets flags to 0; a device need not look
  for (const rxBits of [0, GUEST_ALL]) {
    const { a, tx, rx } = offloadPair({ netBits: 0 }, { netBits: rxBits });
    const f = build({ v6: false, payload: pattern(700, 2), gsoSize: 500 });
    tx.drv.postTx(f.frame, { hdr: f.hdr });
    rx.drv.postRx(4, 2048);
    t.equal(forwardBurst(batch, a, tx, rx), 1, `towards ${rxBits ? 'an offload' : 'a plain'} guest: forwarded`);
    const got = rx.drv.readRx();
    t.equal(got.length, 1);
    t.ok(got.length === 1 && eq(got[0].data, f.frame), 'byte-exact, as sent (no checksum completed, nothing segmented)');
    t.same(got.length === 1 ? [...got[0].hdr.subarray(0, 10)] : [], new Array(10).fill(0), 'the receiver sees a zero header');
    t.equal(tx.stats[ST_DROP_BAD_OFFLOAD], 0, 'not counted as bad_offload');
  }
});

t.test('each bad header field: dropped, counted, nothing written, no reset; the next frame crosses', async (t) => {
  for (const [name, txBits, mut] of cases) {
    const { a, b, tx, rx } = offloadPair({ netBits: txBits }, { netBits: GUEST_ALL });
    const f = build({ v6: false, payload: pattern(4000, 1), gsoSize: 1000 });
    const hdr = new Uint8Array(f.hdr);
    const frame = (mut(new DataView(hdr.buffer), f.frame) ?? f.frame);
    tx.drv.postTx(frame, { hdr });
    const good = pattern(200, 7);
    tx.drv.postTx(good);
    rx.drv.postRx(8, 8192);
    const before = Buffer.from(b.mem8);
    let n = -1;
    t.doesNotThrow(() => { n = forwardBurst(batch, a, tx, rx); }, `${name}: no guest error`);
    t.equal(n, 1, `${name}: only the good frame left the burst`);
    t.equal(tx.stats[ST_DROP_BAD_OFFLOAD], 1, `${name}: counted as bad_offload`);
    const got = rx.drv.readRx();
    t.equal(got.length, 1, `${name}: one frame delivered`);
    t.ok(got.length === 1 && eq(got[0].data, good), `${name}: it is the good one`);
    t.equal(rx.stats[ST_PACKETS], 1);
    t.ok(Buffer.from(b.mem8.subarray(0x30000)).equals(before.subarray(0x30000)) && b.mem8[0x30000] === BACKGROUND, `${name}: unmapped bytes untouched`);
    t.equal(tx.drv.collectUsed().length, 2, `${name}: both TX buffers returned`);
  }
});

t.test('frames over 64 KiB with an offload are refused by validate()', async (t) => {
  const { a, tx } = offloadPair({ netBits: HOST_ALL }, {});
  const f = build({ v6: false, payload: pattern(MAX_OFFLOAD_FRAME, 1), gsoSize: 1000 });
  tx.drv.postTx(f.frame.subarray(0, 1000), { hdr: f.hdr });
  t.equal(tx.vq.dequeueBurst(batch, 32), 1);
  batch.pktLen[0] = MAX_OFFLOAD_FRAME + 1; // what a chain of that length would record
  t.equal(BAD_OFFLOAD_REASONS[validate(a.gm, batch, 0, HOST_ALL)], 'frame over 64 KiB');
  tx.vq.completeBurst(batch);
});

/** what a header field is set to by the fuzzer: the values validation turns on, and noise */
function fieldValue(r: () => number, frameLen: number, l4: number, hl: number): number {
  const pick = [
    0, 1, 2, 6, 8, 10, 12, 13, 14, 16, 17, 18, 20, l4 - 4, l4 - 1, l4, l4 + 1, l4 + 4, hl - 1, hl, hl + 1,
    frameLen - 2, frameLen - 1, frameLen, frameLen + 1, 0x7fff, 0xfffe, 0xffff, 1448, 65535 - 54,
  ];
  return r() < 0.8 ? pick[Math.floor(r() * pick.length)] & 0xffff : Math.floor(r() * 0x10000);
}

t.test('fuzz: random headers over random frames are refused or delivered, never anything else', async (t) => {
  let s = Number(process.env.FUZZ_SEED ?? 12345);
  const r = () => ((s = (s * 1103515245 + 12345) >>> 0) / 0x1_0000_0000);
  t.comment(`seed ${s} (FUZZ_SEED= to repeat)`);
  let refused = 0;
  let delivered = 0;
  const reasons = new Set<string>();
  const edits = new Int32Array(32);
  const pick = new Uint16Array(32);
  const deadline = Date.now() + 30_000;
  // the receiver's offload features: none, each alone, all
  const rxChoices = [0, GUEST_ALL, bits('VIRTIO_NET_F_GUEST_CSUM'), bits('VIRTIO_NET_F_GUEST_CSUM', 'VIRTIO_NET_F_GUEST_TSO4'),
    bits('VIRTIO_NET_F_GUEST_CSUM', 'VIRTIO_NET_F_GUEST_TSO6'), bits('VIRTIO_NET_F_GUEST_CSUM', 'VIRTIO_NET_F_GUEST_UFO'), bits('VIRTIO_NET_F_GUEST_TSO4')];
  // the VLAN bridge's edit towards the receiver: none, push, pop, rewrite (802.1Q or 802.1ad)
  const editChoices = [0, 0, EDIT_PUSH | 10, EDIT_POP, EDIT_POP | EDIT_PUSH | 0x6000 | 10, EDIT_PUSH | EDIT_TPID_AD | 100];
  for (let round = 0; round < 1500 && Date.now() < deadline; round++) {
    const rxBits = rxChoices[Math.floor(r() * rxChoices.length)];
    const txBits = r() < 0.85 ? HOST_ALL : Math.floor(r() * 0x100000) & HOST_ALL;
    const { a, b, tx, rx } = offloadPair({ netBits: txBits }, { netBits: rxBits });
    const v6 = r() < 0.5;
    const udp = r() < 0.3;
    const vlan = r() < 0.3;
    const gso = r() < 0.8;
    const f = build({ v6, udp, vlan, optLen: udp ? 0 : 4 * Math.floor(r() * 11), payload: pattern(1 + Math.floor(r() * 6000), round), gsoSize: gso ? 1 + Math.floor(r() * 3000) : undefined, ecn: r() < 0.1 });
    const hdr = new Uint8Array(f.hdr);
    const hv = new DataView(hdr.buffer);
    // one to three header fields set to values validation turns on (or noise), by field
    for (let k = 0; k < 1 + Math.floor(r() * 3); k++) {
      const field = Math.floor(r() * 7);
      if (field === 0) hdr[0] = r() < 0.7 ? [0, 1, 2, 3, 0x80][Math.floor(r() * 5)] : Math.floor(r() * 256);
      else if (field === 1) hdr[1] = r() < 0.7 ? [0, 1, 2, 3, 4, 5, 0x81, 0x83, 0x84, 0x80][Math.floor(r() * 10)] : Math.floor(r() * 256);
      else if (field <= 5) hv.setUint16(2 * (field - 1), fieldValue(r, f.frame.length, f.l4, f.hl), true);
      else if (r() < 0.5) f.frame[Math.floor(r() * f.hl)] = Math.floor(r() * 256); // a byte of the frame's headers
    }
    tx.drv.postTx(f.frame, { hdr, chunks: 1 + Math.floor(r() * 4) });
    rx.drv.postRx(12, 8192);
    const before = Buffer.from(b.mem8.subarray(0x30000));
    // the poller's round, with the VLAN edit towards this receiver
    const n = tx.vq.dequeueBurst(batch, 32);
    const edit = editChoices[Math.floor(r() * editChoices.length)];
    if (n > 0) {
      for (let i = 0; i < n; i++) {
        edits[i] = edit;
        pick[i] = i;
      }
      rx.vq.acquire();
      rx.vq.enqueueEdited(a.gm, batch, pick, n, edits);
      rx.vq.flush();
      rx.vq.release();
      tx.vq.completeBurst(batch);
    }
    const bad = tx.stats[ST_DROP_BAD_OFFLOAD];
    const got = rx.drv.readRx();
    if (bad === 1) {
      refused++;
      if (n !== 0 || got.length !== 0) t.fail(`round ${round}: refused yet delivered`);
    } else {
      delivered++;
      if (got.length === 0) t.fail(`round ${round}: neither refused nor delivered`);
    }
    if (bad === 0 && got.length > 0 && edit === 0 && hdr[1] === 0 && (hdr[0] & 1) === 0 && !eq(got[0].data, f.frame)) {
      t.fail(`round ${round}: a frame without offload changed on the way`);
    }
    if (!Buffer.from(b.mem8.subarray(0x30000)).equals(before)) t.fail(`round ${round}: unmapped bytes written`);
    if (tx.drv.collectUsed().length !== 1) t.fail(`round ${round}: TX buffer not returned`);
    if (bad === 1) reasons.add(String(refusedWhy(f.frame, hdr, txBits)));
  }
  t.ok(refused > 0 && delivered > 0, `refused ${refused}, delivered ${delivered}`);
  t.ok(reasons.size >= 10, `${reasons.size} distinct refusal reasons reached: ${[...reasons].sort().join('; ')}`);
  t.ok(sum16([new Uint8Array([0xff, 0xff])]) === 0xffff);
});

const whyBatch = new PacketBatch(1);

/** validate()'s verdict on one frame and header, the frame laid in one segment (the fuzzer's coverage report) */
function refusedWhy(frame: Uint8Array, hdr: Uint8Array, txBits: number): string {
  const { a } = offloadPair({ netBits: txBits }, {});
  const b2 = whyBatch;
  const dv = new DataView(hdr.buffer, hdr.byteOffset, hdr.byteLength);
  b2.reset();
  b2.count = 1;
  b2.flags[0] = hdr[0];
  b2.gsoType[0] = hdr[1];
  b2.hdrLen[0] = dv.getUint16(2, true);
  b2.gsoSize[0] = dv.getUint16(4, true);
  b2.csumStart[0] = dv.getUint16(6, true);
  b2.csumOffset[0] = dv.getUint16(8, true);
  b2.pktLen[0] = frame.length;
  b2.segStart[0] = 0;
  b2.segCount[0] = 1;
  b2.nSegs = 1;
  b2.segRegion[0] = 0;
  b2.segOffset[0] = 0x10000;
  a.gm.views[0].u8.set(frame, 0x10000);
  return BAD_OFFLOAD_REASONS[validate(a.gm, b2, 0, txBits)] || 'valid';
}
