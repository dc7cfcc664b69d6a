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
import { BACKGROUND, eq, pattern } from '../vq-harness';
import { GSO_ECN, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GUEST_ALL, HOST_ALL, bits, build, forwardBurst, offloadPair, sum16 } from '../offload-lib';

const batch = new PacketBatch(32);

type Mut = (h: DataView, f: Uint8Array) => Uint8Array | void;
const cases: Array<[string, number, Mut]> = [
  ['flags: DATA_VALID (driver must not set it)', HOST_ALL, (h) => h.setUint8(0, 3)],
  ['flags: unknown bits', HOST_ALL, (h) => h.setUint8(0, 0x81)],
  ['NEEDS_CSUM without CSUM negotiated', 0, () => undefined],
  ['csum_start beyond the frame', HOST_ALL, (h, f) => h.setUint16(6, f.length, true)],
  ['csum_offset beyond the frame', HOST_ALL, (h, f) => h.setUint16(8, f.length - h.getUint16(6, true) - 1, true)],
  ['csum_start 0xffff', HOST_ALL, (h) => h.setUint16(6, 0xffff, true)],
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
  ['headers only, no payload', HOST_ALL, (h, f) => { h.setUint16(4, 1, true); return f.subarray(0, 54); }],
];

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

t.test('fuzz: random headers over random frames are refused or delivered, never anything else', async (t) => {
  let s = Number(process.env.FUZZ_SEED ?? 12345);
  const r = () => ((s = (s * 1103515245 + 12345) >>> 0) / 0x1_0000_0000);
  t.comment(`seed ${s} (FUZZ_SEED= to repeat)`);
  let refused = 0;
  let delivered = 0;
  const deadline = Date.now() + 20_000;
  for (let round = 0; round < 400 && Date.now() < deadline; round++) {
    const rxBits = r() < 0.5 ? GUEST_ALL : 0;
    const { a, b, tx, rx } = offloadPair({ netBits: HOST_ALL }, { netBits: rxBits });
    const v6 = r() < 0.5;
    const f = build({ v6, udp: r() < 0.3, payload: pattern(1 + Math.floor(r() * 6000), round), gsoSize: 1 + Math.floor(r() * 3000) });
    const hdr = new Uint8Array(f.hdr);
    // flip random header bytes and some frame bytes in the headers
    for (let k = 0; k < 1 + Math.floor(r() * 4); k++) hdr[Math.floor(r() * 10)] = Math.floor(r() * 256);
    if (r() < 0.3) f.frame[Math.floor(r() * f.hl)] = Math.floor(r() * 256);
    tx.drv.postTx(f.frame, { hdr, chunks: 1 + Math.floor(r() * 3) });
    rx.drv.postRx(12, 8192);
    const before = Buffer.from(b.mem8.subarray(0x30000));
    forwardBurst(batch, a, tx, rx);
    const bad = tx.stats[ST_DROP_BAD_OFFLOAD];
    const got = rx.drv.readRx();
    if (bad === 1) {
      refused++;
      if (got.length !== 0) t.fail(`round ${round}: refused yet delivered`);
    } else {
      delivered++;
      if (got.length === 0) t.fail(`round ${round}: neither refused nor delivered`);
    }
    if (!Buffer.from(b.mem8.subarray(0x30000)).equals(before)) t.fail(`round ${round}: unmapped bytes written`);
    if (tx.drv.collectUsed().length !== 1) t.fail(`round ${round}: TX buffer not returned`);
  }
  t.ok(refused > 0 && delivered > 0, `refused ${refused}, delivered ${delivered}`);
  t.ok(sum16([new Uint8Array([0xff, 0xff])]) === 0xffff);
});
