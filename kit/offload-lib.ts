/**
 * An independent reference for the offload tests: frames built field by field as Linux's
 * stack hands them to virtio-net (partial checksum holding the pseudo-header sum, a virtio-net
 * header with NEEDS_CSUM / gso_type), and checks of what comes out written from RFC 791/793/
 * 8200/768 with DataView, sharing no code with src/workers/offload.ts.
 */
import { F, bit } from '../src/protocol/constants';
import { PacketBatch } from '../src/workers/packet-batch';
import { Guest, Queue, makeGuest, makeQueue } from './vq-harness';
import { QueueFeatures } from '../src/shared/types';

const NEEDS_CSUM = 1;
export const GSO_TCPV4 = 1;
export const GSO_UDP = 3;
export const GSO_TCPV6 = 4;
export const GSO_ECN = 0x80;

/** netBits of a ring that negotiated the given features */
export function bits(...names: Array<keyof typeof F>): number {
  let m = 0n;
  for (const n of names) m |= bit(F[n]);
  return Number(m);
}
export const HOST_ALL = bits('VIRTIO_NET_F_CSUM', 'VIRTIO_NET_F_HOST_TSO4', 'VIRTIO_NET_F_HOST_TSO6', 'VIRTIO_NET_F_HOST_ECN', 'VIRTIO_NET_F_HOST_UFO');
export const GUEST_ALL = bits('VIRTIO_NET_F_GUEST_CSUM', 'VIRTIO_NET_F_GUEST_TSO4', 'VIRTIO_NET_F_GUEST_TSO6', 'VIRTIO_NET_F_GUEST_ECN', 'VIRTIO_NET_F_GUEST_UFO');

/** RFC 1071 sum of 16-bit big-endian words, folded (not complemented) */
export function sum16(parts: Uint8Array[]): number {
  const all = Buffer.concat(parts);
  let s = 0;
  for (let k = 0; k < all.length; k += 2) s += (all[k] << 8) + (k + 1 < all.length ? all[k + 1] : 0);
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 65536);
  return s;
}

export interface Built {
  frame: Uint8Array;
  hdr: Uint8Array;
  l3: number;
  l4: number;
  hl: number;
}

function pseudo(v6: boolean, frame: Uint8Array, l3: number, proto: number, l4len: number): Uint8Array {
  const src = frame.subarray(l3 + (v6 ? 8 : 12), l3 + (v6 ? 40 : 20));
  const p = new Uint8Array(src.length + (v6 ? 8 : 4));
  p.set(src);
  const dv = new DataView(p.buffer);
  if (v6) {
    dv.setUint32(src.length, l4len);
    dv.setUint32(src.length + 4, proto);
  } else {
    dv.setUint16(src.length, proto);
    dv.setUint16(src.length + 2, l4len);
  }
  return p;
}

/**
 * A TCP or UDP frame over IPv4 or IPv6 (optionally behind an 802.1Q tag), with its
 * checksum left partial (pseudo-header sum) as for NEEDS_CSUM, and its virtio-net header.
 */
export function build(o: {
  v6: boolean; udp?: boolean; vlan?: boolean; optLen?: number; payload: Uint8Array; seq?: number; tcpFlags?: number;
  id?: number; gsoSize?: number; ecn?: boolean; hdrLen?: number;
}): Built {
  const l3 = o.vlan ? 18 : 14;
  const ipLen = o.v6 ? 40 : 20;
  const l4 = l3 + ipLen;
  const l4h = o.udp ? 8 : 20 + (o.optLen ?? 0);
  const hl = l4 + l4h;
  const frame = new Uint8Array(hl + o.payload.length);
  const dv = new DataView(frame.buffer);
  frame.set([0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1]);
  if (o.vlan) {
    dv.setUint16(12, 0x8100);
    dv.setUint16(14, 100);
  }
  dv.setUint16(l3 - 2, o.v6 ? 0x86dd : 0x0800);
  const proto = o.udp ? 17 : 6;
  if (o.v6) {
    dv.setUint32(l3, 0x60000000);
    dv.setUint16(l3 + 4, frame.length - l4);
    frame[l3 + 6] = proto;
    frame[l3 + 7] = 64;
    for (let k = 0; k < 32; k++) frame[l3 + 8 + k] = (k * 17 + 3) & 0xff;
  } else {
    frame[l3] = 0x45;
    dv.setUint16(l3 + 2, frame.length - l3);
    dv.setUint16(l3 + 4, o.id ?? 0x1234);
    dv.setUint16(l3 + 6, 0x4000); // DF
    frame[l3 + 8] = 64;
    frame[l3 + 9] = proto;
    frame.set([10, 0, 0, 1, 10, 0, 0, 2], l3 + 12);
    dv.setUint16(l3 + 10, ~sum16([frame.subarray(l3, l4)]) & 0xffff);
  }
  if (o.udp) {
    dv.setUint16(l4, 5000);
    dv.setUint16(l4 + 2, 5001);
    dv.setUint16(l4 + 4, frame.length - l4);
  } else {
    dv.setUint16(l4, 40000);
    dv.setUint16(l4 + 2, 5201);
    dv.setUint32(l4 + 4, o.seq ?? 1000);
    dv.setUint32(l4 + 8, 777);
    frame[l4 + 12] = (l4h / 4) << 4;
    frame[l4 + 13] = o.tcpFlags ?? 0x18;
    dv.setUint16(l4 + 14, 65535);
    // options: NOPs then a timestamp-like filler
    for (let k = 20; k < l4h; k++) frame[l4 + k] = k < 22 ? 1 : (k * 5) & 0xff;
  }
  frame.set(o.payload, hl);
  // the partial checksum: the pseudo header's sum, as the guest's stack leaves it
  const csumOff = o.udp ? 6 : 16;
  dv.setUint16(l4 + csumOff, sum16([pseudo(o.v6, frame, l3, proto, frame.length - l4)]));
  const hdr = new Uint8Array(12);
  const hv = new DataView(hdr.buffer);
  hdr[0] = NEEDS_CSUM;
  if (o.gsoSize !== undefined) {
    hdr[1] = (o.udp ? GSO_UDP : o.v6 ? GSO_TCPV6 : GSO_TCPV4) | (o.ecn ? GSO_ECN : 0);
    hv.setUint16(2, o.hdrLen ?? hl, true);
    hv.setUint16(4, o.gsoSize, true);
  }
  hv.setUint16(6, l4, true);
  hv.setUint16(8, csumOff, true);
  return { frame, hdr, l3, l4, hl };
}

/** the transport checksum of a complete frame verifies (RFC 793 / 768 with the pseudo header) */
export function l4Verifies(frame: Uint8Array, l3: number, v6: boolean): boolean {
  const dv = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  const l4 = l3 + (v6 ? 40 : (frame[l3] & 15) * 4);
  const proto = v6 ? frame[l3 + 6] : frame[l3 + 9];
  const l4len = v6 ? dv.getUint16(l3 + 4) : dv.getUint16(l3 + 2) - (l4 - l3);
  return sum16([pseudo(v6, frame, l3, proto, l4len), frame.subarray(l4, l4 + l4len)]) === 0xffff;
}

export function ipv4Verifies(frame: Uint8Array, l3: number): boolean {
  return sum16([frame.subarray(l3, l3 + (frame[l3] & 15) * 4)]) === 0xffff;
}

/** A TX ring (guest A) and an RX ring (guest B) with room for 64 KiB frames and their segments. */
export function offloadPair(tx: Partial<QueueFeatures>, rx: Partial<QueueFeatures>, size = 256): { a: Guest; b: Guest; tx: Queue; rx: Queue } {
  const a = makeGuest();
  const b = makeGuest();
  const txq = makeQueue(a, { index: 1, slot: 0, size, features: tx, bufBase: 0x4000, bufEnd: 0x1f000 });
  const rxq = makeQueue(b, { index: 0, slot: 0, size, features: rx, bufBase: 0x4000, bufEnd: 0x1f000 });
  return { a, b, tx: txq, rx: rxq };
}

/** One poller round as the poller does it: dequeue, enqueueBurst, flush, complete. */
export function forwardBurst(batch: PacketBatch, src: Guest, tx: Queue, rx: Queue): number {
  const n = tx.vq.dequeueBurst(batch, 32);
  if (n > 0) {
    rx.vq.acquire();
    rx.vq.enqueueBurst(src.gm, batch, null, n);
    rx.vq.flush();
    rx.vq.release();
    tx.vq.completeBurst(batch);
  }
  return n;
}

/**
 * The segments Linux's tcp_gso_segment cuts a TSO frame into, byte for byte: the headers
 * [0, hl) copied, then per segment IPv4 total length, id + k and header checksum, or the IPv6
 * payload length; sequence + k * mss; CWR only on the first, FIN and PSH only on the last;
 * the TCP checksum complete. `l3`, `l4`, `hl`: offsets in `frame` (tagged or not).
 */
export function refSegments(frame: Uint8Array, o: { l3: number; l4: number; hl: number; mss: number; v6: boolean }): Uint8Array[] {
  const payload = frame.subarray(o.hl);
  const n = Math.ceil(payload.length / o.mss);
  const fdv = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  const id0 = o.v6 ? 0 : fdv.getUint16(o.l3 + 4);
  const seq0 = fdv.getUint32(o.l4 + 4);
  const flags0 = frame[o.l4 + 13];
  const out: Uint8Array[] = [];
  for (let k = 0; k < n; k++) {
    const len = Math.min(o.mss, payload.length - k * o.mss);
    const s = new Uint8Array(o.hl + len);
    s.set(frame.subarray(0, o.hl));
    s.set(payload.subarray(k * o.mss, k * o.mss + len), o.hl);
    const dv = new DataView(s.buffer);
    if (o.v6) dv.setUint16(o.l3 + 4, s.length - o.l4);
    else {
      dv.setUint16(o.l3 + 2, s.length - o.l3);
      dv.setUint16(o.l3 + 4, (id0 + k) & 0xffff);
      dv.setUint16(o.l3 + 10, 0);
      dv.setUint16(o.l3 + 10, ~sum16([s.subarray(o.l3, o.l4)]) & 0xffff);
    }
    dv.setUint32(o.l4 + 4, (seq0 + k * o.mss) >>> 0);
    let f = flags0;
    if (k > 0) f &= ~0x80;
    if (k < n - 1) f &= ~0x09;
    s[o.l4 + 13] = f;
    dv.setUint16(o.l4 + 16, 0);
    dv.setUint16(o.l4 + 16, ~sum16([pseudo(o.v6, s, o.l3, 6, s.length - o.l4), s.subarray(o.l4)]) & 0xffff);
    out.push(s);
  }
  return out;
}

/**
 * `frame` with its partial transport checksum completed (RFC 793 / 768 over the pseudo header
 * and the segment; 0 sent as 0xffff, as Linux's skb_checksum_help).
 */
export function refComplete(frame: Uint8Array, o: { l3: number; l4: number; v6: boolean; udp: boolean }): Uint8Array {
  const s = Uint8Array.from(frame);
  const dv = new DataView(s.buffer);
  const at = o.l4 + (o.udp ? 6 : 16);
  dv.setUint16(at, 0);
  dv.setUint16(at, ~sum16([pseudo(o.v6, s, o.l3, o.udp ? 17 : 6, s.length - o.l4), s.subarray(o.l4)]) & 0xffff || 0xffff);
  return s;
}

/** `f` with an 802.1Q/802.1ad tag (TPID, TCI) inserted after its MACs */
export function withTag(f: Uint8Array, tci: number, tpid = 0x8100): Uint8Array {
  const o = new Uint8Array(f.length + 4);
  o.set(f.subarray(0, 12));
  o[12] = tpid >> 8;
  o[13] = tpid & 0xff;
  o[14] = tci >> 8;
  o[15] = tci & 0xff;
  o.set(f.subarray(12), 16);
  return o;
}
