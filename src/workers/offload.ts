/**
 * Checksum and segmentation offloads (issue 18): the virtio-net header of a guest's TX frame
 * (virtio 1.x 5.1.6.2) validated before any field is used, and per destination either handed
 * over as it is (the destination took the matching GUEST_* feature) or done here: the partial
 * checksum completed (NEEDS_CSUM), TCPv4/TCPv6 GSO frames cut into gso_size segments, UFO
 * datagrams fragmented, each written straight into the destination's RX buffers.
 *
 * Everything the guest wrote is untrusted: a header that does not hold up drops its frame,
 * counted as ST_DROP_BAD_OFFLOAD on the TX ring, reported at most once a second, and the
 * device goes on (the class of DPDK CVE-2024-11614). Writes into the destination go through
 * Virtqueue's reserve/put/commit, which stay inside the reserved buffers and log them.
 *
 * VLAN bridge (vlan.ts): a frame whose tag is pushed (+4 bytes) or popped (-4) on the way to
 * a destination is handled as delivered: a handed-over header's csum_start and hdr_len move by
 * the same 4 bytes, and the software path builds its segments' headers from the edited
 * headers. Checksums do not cover the Ethernet header, so the tag never changes one.
 *
 * No allocation per packet: scratch buffers are module-level, sums are plain numbers.
 */
import {
  F, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
  VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP,
} from '../protocol/constants';
import { ST_CSUM_SW, ST_DROP_BAD_OFFLOAD, ST_DROP_NO_BUF, ST_GSO_PASSED, ST_GSO_SEGMENTED } from '../shared/types';
import { GuestMemory, RegionViews, makeViews } from './guest-memory';
import { PacketBatch } from './packet-batch';
import type { RxFrameSink } from './ring-format';
import { EDIT_PUSH, EDIT_TPID_AD, TPID_8021AD, TPID_8021Q, editDelta } from './vlan';

/** Largest frame with an offload: an IP packet of 64 KiB - 1 behind Ethernet and one VLAN tag. */
export const MAX_OFFLOAD_FRAME = 65535 + 14 + 4;

const CSUM = 1 << F.VIRTIO_NET_F_CSUM;
const GUEST_CSUM = 1 << F.VIRTIO_NET_F_GUEST_CSUM;
const GUEST_TSO4 = 1 << F.VIRTIO_NET_F_GUEST_TSO4;
const GUEST_TSO6 = 1 << F.VIRTIO_NET_F_GUEST_TSO6;
const GUEST_ECN = 1 << F.VIRTIO_NET_F_GUEST_ECN;
const GUEST_UFO = 1 << F.VIRTIO_NET_F_GUEST_UFO;
const HOST_TSO4 = 1 << F.VIRTIO_NET_F_HOST_TSO4;
const HOST_TSO6 = 1 << F.VIRTIO_NET_F_HOST_TSO6;
const HOST_ECN = 1 << F.VIRTIO_NET_F_HOST_ECN;
const HOST_UFO = 1 << F.VIRTIO_NET_F_HOST_UFO;
/**
 * The features that let a driver put an offload into a TX header (CSUM, HOST_TSO4/6, ECN,
 * UFO). Without any, the header is not read at all, as DPDK's vhost does
 * (virtio_net_with_host_offload): it is zero by the spec (virtio 1.x 5.1.6.2), a header that
 * is not is ignored, and its cache line is not touched per packet (bench/NOTES.md #47).
 */
export const HOST_OFFLOADS = CSUM | HOST_TSO4 | HOST_TSO6 | HOST_ECN | HOST_UFO;

const NEEDS_CSUM = VIRTIO_NET_HDR_F_NEEDS_CSUM;
const GSO_NONE = VIRTIO_NET_HDR_GSO_NONE;
const GSO_TCPV4 = VIRTIO_NET_HDR_GSO_TCPV4;
const GSO_TCPV6 = VIRTIO_NET_HDR_GSO_TCPV6;
const GSO_UDP = VIRTIO_NET_HDR_GSO_UDP;
const GSO_ECN = VIRTIO_NET_HDR_GSO_ECN;

/** Why a header was refused (index = the code validate() returns; 0 = valid). */
export const BAD_OFFLOAD_REASONS: readonly string[] = [
  '',
  'flags other than NEEDS_CSUM',
  'NEEDS_CSUM without VIRTIO_NET_F_CSUM',
  'csum_start + csum_offset beyond the frame',
  'unknown gso_type',
  'gso_type not negotiated (HOST_TSO4/TSO6/UFO)',
  'ECN without VIRTIO_NET_F_HOST_ECN',
  'ECN bit without a gso_type',
  'gso_type without NEEDS_CSUM',
  'frame over 64 KiB',
  'gso_size 0',
  'gso_size larger than the frame',
  'hdr_len beyond the frame',
  'headers do not match gso_type (Ethernet, IPv4/IPv6, TCP/UDP)',
  'csum_start/csum_offset not the TCP/UDP checksum',
  'GSO frame without payload',
  'csum_start inside the Ethernet header',
];

/** Headers are at most 14 + 4 + 60 + 60 (Ethernet, a tag, IPv4 and TCP with options) bytes. */
const HDR_MAX = 192;
/** the frame's headers, gathered from its segments (validation) and the segments' template */
const tmpl = new Uint8Array(HDR_MAX + 8);
const tmplViews = makeViews(tmpl.buffer, 0, tmpl.byteLength);
/** the virtio-net header handed to the destination (10 bytes, little endian) */
const netHdr = new Uint8Array(10);
/** IPv6 fragment identification for UFO datagrams fragmented here */
let fragId = 1;

/** Copy the first `n` bytes of packet i into tmpl (n <= its length and <= tmpl's size). */
function gather(mem: GuestMemory, b: PacketBatch, i: number, n: number): void {
  let got = 0;
  const end = b.segStart[i] + b.segCount[i];
  for (let s = b.segStart[i]; s < end && got < n; s++) {
    const u8 = mem.views[b.segRegion[s]].u8;
    const off = b.segOffset[s];
    const take = b.segLen[s] < n - got ? b.segLen[s] : n - got;
    for (let k = 0; k < take; k++) tmpl[got + k] = u8[off + k];
    got += take;
  }
}

/**
 * Validate packet i's header against the ring's negotiated features (netBits). Returns 0 or
 * a code of BAD_OFFLOAD_REASONS. For GSO frames l3Off / l4Off / l4End are filled in.
 */
export function validate(mem: GuestMemory, b: PacketBatch, i: number, netBits: number): number {
  const flags = b.flags[i];
  const gt = b.gsoType[i];
  const len = b.pktLen[i];
  if ((flags & ~NEEDS_CSUM) !== 0) return 1;
  if (len > MAX_OFFLOAD_FRAME) return 9;
  const base = gt & ~GSO_ECN;
  if ((flags & NEEDS_CSUM) !== 0) {
    if ((netBits & CSUM) === 0) return 2;
    if (b.csumStart[i] + b.csumOffset[i] + 2 > len) return 3;
    // no checksum covers the MACs; and a VLAN tag edit moves everything from byte 12 on
    if (b.csumStart[i] < 14) return 16;
  }
  if (base === GSO_NONE) return (gt & GSO_ECN) !== 0 ? 7 : 0;
  if (base !== GSO_TCPV4 && base !== GSO_TCPV6 && base !== GSO_UDP) return 4;
  const need = base === GSO_TCPV4 ? HOST_TSO4 : base === GSO_TCPV6 ? HOST_TSO6 : HOST_UFO;
  if ((netBits & need) === 0) return 5;
  if ((gt & GSO_ECN) !== 0 && (netBits & HOST_ECN) === 0) return 6;
  if ((flags & NEEDS_CSUM) === 0) return 8;
  const mss = b.gsoSize[i];
  if (mss === 0) return 10;
  if (mss > len) return 11;
  if (b.hdrLen[i] > len) return 12;
  // The headers themselves: Ethernet (one 802.1Q/802.1ad tag), IPv4 or IPv6, TCP or UDP.
  const n = len < HDR_MAX ? len : HDR_MAX;
  gather(mem, b, i, n);
  if (n < 14) return 13;
  let l3 = 14;
  let type = (tmpl[12] << 8) | tmpl[13];
  if (type === 0x8100 || type === 0x88a8) {
    if (n < 18) return 13;
    type = (tmpl[16] << 8) | tmpl[17];
    l3 = 18;
  }
  let l4: number;
  let proto: number;
  if (type === 0x0800) {
    if (base === GSO_TCPV6 || l3 + 20 > n || tmpl[l3] >> 4 !== 4) return 13;
    const ihl = (tmpl[l3] & 15) * 4;
    if (ihl < 20 || l3 + ihl > n) return 13;
    // a fragment cannot be segmented (MF or an offset)
    if ((((tmpl[l3 + 6] << 8) | tmpl[l3 + 7]) & 0x3fff) !== 0) return 13;
    proto = tmpl[l3 + 9];
    l4 = l3 + ihl;
  } else if (type === 0x86dd) {
    // extension headers are not walked: TCP or UDP right behind the fixed header
    if (base === GSO_TCPV4 || l3 + 40 > n || tmpl[l3] >> 4 !== 6) return 13;
    proto = tmpl[l3 + 6];
    l4 = l3 + 40;
  } else {
    return 13;
  }
  let end: number;
  if (base === GSO_UDP) {
    if (proto !== 17 || l4 + 8 > n) return 13;
    if (b.csumStart[i] !== l4 || b.csumOffset[i] !== 6) return 14;
    // fragments carry multiples of 8 bytes
    if (mss < 8) return 10;
    end = l4 + 8;
  } else {
    if (proto !== 6 || l4 + 20 > n) return 13;
    const doff = (tmpl[l4 + 12] >> 4) * 4;
    if (doff < 20 || l4 + doff > n) return 13;
    if (b.csumStart[i] !== l4 || b.csumOffset[i] !== 16) return 14;
    end = l4 + doff;
  }
  if (end >= len) return 15;
  b.l3Off[i] = l3;
  b.l4Off[i] = l4;
  b.l4End[i] = end;
  return 0;
}

/**
 * Validate every packet of the burst that has a header, and take the bad ones out of the
 * batch (their heads stay in usedHead: the guest gets its buffers back). Returns the reason
 * code of the last bad one (0: none), for the caller's rate-limited report.
 */
export function validateBurst(mem: GuestMemory, b: PacketBatch, netBits: number, stats: Float64Array): number {
  let w = 0;
  let last = 0;
  const n = b.count;
  for (let i = 0; i < n; i++) {
    if ((b.flags[i] | b.gsoType[i]) !== 0) {
      const bad = validate(mem, b, i, netBits);
      if (bad !== 0) {
        stats[ST_DROP_BAD_OFFLOAD]++;
        last = bad;
        continue;
      }
    }
    if (w !== i) movePacket(b, i, w);
    w++;
  }
  b.count = w;
  return last;
}

function movePacket(b: PacketBatch, from: number, to: number): void {
  b.head[to] = b.head[from];
  b.pktLen[to] = b.pktLen[from];
  b.segStart[to] = b.segStart[from];
  b.segCount[to] = b.segCount[from];
  b.flags[to] = b.flags[from];
  b.gsoType[to] = b.gsoType[from];
  b.hdrLen[to] = b.hdrLen[from];
  b.gsoSize[to] = b.gsoSize[from];
  b.csumStart[to] = b.csumStart[from];
  b.csumOffset[to] = b.csumOffset[from];
  b.l3Off[to] = b.l3Off[from];
  b.l4Off[to] = b.l4Off[from];
  b.l4End[to] = b.l4End[from];
}

/**
 * The largest frame packet i becomes on the wire (GSO: one segment, at most the frame), for
 * the MTU check; before any tag edit.
 */
export function wireLen(b: PacketBatch, i: number): number {
  const len = b.pktLen[i];
  if ((b.gsoType[i] & ~GSO_ECN) === GSO_NONE) return len;
  const seg = b.l4End[i] + b.gsoSize[i];
  return seg < len ? seg : len;
}

// ---------------------------------------------------------------- ones' complement sums

/**
 * The running sum of big-endian 16-bit words, kept below 2^17 between calls: every loop folds
 * its carries (the bits above 16 added back in, RFC 1071) at least every 4096 words, so the
 * sum of a 64 KiB frame (32768 words of up to 0xffff, overflowing 16 bits up to 32767
 * times) stays an int32 in the loops and a small integer in this variable, and no carry is
 * lost. finish() folds what is left.
 */
let acc = 0;
/** the bytes summed so far are odd in number: the next byte is a word's low half */
let accOdd = false;

/** words a loop adds before it folds: 4096 * 2 * 0xffff + 2^17 < 2^30 */
const FOLD_EVERY = 4096;

const fold = (s: number): number => (s & 0xffff) + (s >>> 16);

function addBytes(u8: Uint8Array, off: number, len: number): void {
  let s = acc;
  let k = off;
  const end = off + len;
  if (accOdd && k < end) {
    s += u8[k++];
    accOdd = false;
  }
  while (k + 1 < end) {
    const stop = end - k > 2 * FOLD_EVERY ? k + 2 * FOLD_EVERY : end - 1;
    for (; k < stop; k += 2) s += (u8[k] << 8) | u8[k + 1];
    s = fold(s);
  }
  if (k < end) {
    s += u8[k] << 8;
    accOdd = true;
  }
  acc = fold(s);
}

/**
 * addBytes() over guest memory, 4 bytes a load where the region has a Uint32Array view: the
 * aligned middle summed as little-endian 16-bit halves, which is the big-endian sum with its
 * two bytes swapped (RFC 1071 2(B), byte order independence), or, when the bytes before
 * were odd in number, the big-endian sum of the stream as it falls (each byte lands in the
 * other half of its word). Head and tail bytes go through addBytes().
 */
function addRegion(v: RegionViews, off: number, len: number): void {
  const u32 = v.u32;
  if (u32 === null || len < 32) {
    addBytes(v.u8, off, len);
    return;
  }
  const head = (4 - (off & 3)) & 3;
  if (head !== 0) addBytes(v.u8, off, head);
  let w = (off + head) >>> 2;
  const wEnd = w + ((len - head) >>> 2);
  let s = 0;
  while (w < wEnd) {
    const stop = wEnd - w > FOLD_EVERY ? w + FOLD_EVERY : wEnd;
    for (; w < stop; w++) {
      const x = u32[w];
      s += (x & 0xffff) + (x >>> 16);
    }
    s = fold(s);
  }
  s = fold(fold(s));
  acc = fold(acc + (accOdd ? s : ((s & 0xff) << 8) | (s >>> 8)));
  const done = head + ((wEnd - ((off + head) >>> 2)) << 2);
  if (done < len) addBytes(v.u8, off + done, len - done);
}

/** add frame bytes [from, from + len) of packet i, wherever its segments put them */
function addFrame(mem: GuestMemory, b: PacketBatch, i: number, from: number, len: number): void {
  const end = b.segStart[i] + b.segCount[i];
  for (let s = b.segStart[i]; s < end && len > 0; s++) {
    const sl = b.segLen[s];
    if (from >= sl) {
      from -= sl;
      continue;
    }
    const n = sl - from < len ? sl - from : len;
    addRegion(mem.views[b.segRegion[s]], b.segOffset[s] + from, n);
    len -= n;
    from = 0;
  }
}

/** ~fold(acc): the checksum to store */
function finish(): number {
  return ~fold(fold(acc)) & 0xffff;
}

function startSum(): void {
  acc = 0;
  accOdd = false;
}

/** copy frame bytes [from, from + len) of packet i to the destination's write cursor */
function putFrame(vq: RxFrameSink, mem: GuestMemory, b: PacketBatch, i: number, from: number, len: number): void {
  const end = b.segStart[i] + b.segCount[i];
  for (let s = b.segStart[i]; s < end && len > 0; s++) {
    const sl = b.segLen[s];
    if (from >= sl) {
      from -= sl;
      continue;
    }
    const n = sl - from < len ? sl - from : len;
    vq.rxPut(mem.views[b.segRegion[s]], b.segOffset[s] + from, n);
    len -= n;
    from = 0;
  }
}

function put16(u8: Uint8Array, off: number, v: number): void {
  u8[off] = v >>> 8;
  u8[off + 1] = v & 0xff;
}

/**
 * Make a VLAN tag edit (vlan.ts) on the headers in tmpl[0, hl): the source tag [12, 16)
 * dropped (EDIT_POP), a tag written at 12 (EDIT_PUSH: TPID and TCI from the edit, never from
 * the source), or both. Returns the bytes the headers moved by (-4, 0 or 4).
 */
function editTemplate(hl: number, edit: number): number {
  const d = editDelta(edit);
  if (d < 0) tmpl.copyWithin(12, 16, hl);
  else if (d > 0) tmpl.copyWithin(16, 12, hl);
  if ((edit & EDIT_PUSH) !== 0) {
    const tpid = (edit & EDIT_TPID_AD) !== 0 ? TPID_8021AD : TPID_8021Q;
    tmpl[12] = tpid >>> 8;
    tmpl[13] = tpid & 0xff;
    tmpl[14] = (edit >>> 8) & 0xff;
    tmpl[15] = edit & 0xff;
  }
  return d;
}

// ---------------------------------------------------------------- towards one destination

/**
 * Enqueue packet i (flags or gso_type set, validated) into RX ring `vq`: handed over with its
 * header when the destination negotiated what it needs, else completed or segmented here.
 * `edit`: the VLAN tag edit towards this destination (0: none). Called under vq.acquire().
 * Returns false when nothing was delivered (no buffer).
 */
export function enqueueOffload(vq: RxFrameSink, mem: GuestMemory, b: PacketBatch, i: number, edit: number): boolean {
  const nb = vq.features.netBits;
  const gt = b.gsoType[i];
  const base = gt & ~GSO_ECN;
  const stats = vq.stats;
  if (base === GSO_NONE) {
    if ((nb & GUEST_CSUM) !== 0) return passThrough(vq, mem, b, i, b.hdrLen[i], edit);
    if (!completeCsum(vq, mem, b, i, edit)) return false;
    stats[ST_CSUM_SW]++;
    return true;
  }
  const want = base === GSO_TCPV4 ? GUEST_TSO4 : base === GSO_TCPV6 ? GUEST_TSO6 : GUEST_UFO;
  // GUEST_TSO*/UFO imply GUEST_CSUM (the spec requires it); ECN frames need GUEST_ECN too
  if ((nb & want) !== 0 && (nb & GUEST_CSUM) !== 0 && ((gt & GSO_ECN) === 0 || (nb & GUEST_ECN) !== 0)) {
    if (!passThrough(vq, mem, b, i, b.l4End[i], edit)) return false;
    stats[ST_GSO_PASSED]++;
    return true;
  }
  const sent = base === GSO_UDP ? fragmentUdp(vq, mem, b, i, edit) : segmentTcp(vq, mem, b, i, edit);
  if (sent > 0) stats[ST_GSO_SEGMENTED]++;
  return sent > 0;
}

/**
 * One copy of the whole frame, its virtio-net header handed over (hdr_len as parsed for GSO).
 * With a tag edit csum_start and a non-zero hdr_len move with the bytes behind the tag
 * (csum_start >= 14, validated, so neither goes below 10).
 */
function passThrough(vq: RxFrameSink, mem: GuestMemory, b: PacketBatch, i: number, hl: number, edit: number): boolean {
  const d = editDelta(edit);
  const len = b.pktLen[i] + d;
  const hdrLen = hl === 0 || hl + d < 0 ? 0 : hl + d;
  const csumStart = b.csumStart[i] + d;
  netHdr[0] = b.flags[i];
  netHdr[1] = b.gsoType[i];
  netHdr[2] = hdrLen & 0xff;
  netHdr[3] = hdrLen >>> 8;
  netHdr[4] = b.gsoSize[i] & 0xff;
  netHdr[5] = b.gsoSize[i] >>> 8;
  netHdr[6] = csumStart & 0xff;
  netHdr[7] = csumStart >>> 8;
  netHdr[8] = b.csumOffset[i] & 0xff;
  netHdr[9] = b.csumOffset[i] >>> 8;
  if (!vq.rxReserve(len, netHdr)) return false;
  vq.rxPutPacket(mem, b, i, edit);
  vq.rxCommit(len);
  return true;
}

/**
 * NEEDS_CSUM towards a guest without GUEST_CSUM: the ones' complement sum from csum_start to
 * the end (the field holds the pseudo-header sum the guest put there), stored at csum_start +
 * csum_offset. As Linux's skb_checksum_help, a result of 0 is sent as 0xffff. With a tag edit
 * the frame is delivered edited and the checksum stored where its field moved to; the bytes
 * summed lie past the tag, the same in source and delivered frame.
 */
function completeCsum(vq: RxFrameSink, mem: GuestMemory, b: PacketBatch, i: number, edit: number): boolean {
  const len = b.pktLen[i];
  const start = b.csumStart[i];
  const d = editDelta(edit);
  startSum();
  addFrame(mem, b, i, start, len - start);
  const c = finish() || 0xffff;
  if (!vq.rxReserve(len + d, null)) return false;
  vq.rxPutPacket(mem, b, i, edit);
  const at = start + d + b.csumOffset[i];
  vq.rxPoke(at, c >>> 8);
  vq.rxPoke(at + 1, c & 0xff);
  vq.rxCommit(len + d);
  return true;
}

/**
 * TCP segmentation (as Linux's tcp_gso_segment): gso_size bytes of payload per segment, the
 * headers copied from the frame with IPv4 id + k and total length, IPv6 payload length, TCP
 * sequence + k * gso_size, FIN and PSH only on the last segment, CWR only on the first, and
 * the IPv4 and TCP checksums computed. With a tag edit the template's headers are edited
 * once, and its offsets move; the payload is read from the source as it is. Returns the
 * segments delivered.
 */
function segmentTcp(vq: RxFrameSink, mem: GuestMemory, b: PacketBatch, i: number, edit: number): number {
  const len = b.pktLen[i];
  const srcHl = b.l4End[i];
  const mss = b.gsoSize[i];
  gather(mem, b, i, srcHl);
  const d = edit === 0 ? 0 : editTemplate(srcHl, edit);
  const l3 = b.l3Off[i] + d;
  const l4 = b.l4Off[i] + d;
  const hl = srcHl + d;
  const v4 = tmpl[l3] >> 4 === 4;
  const id0 = (tmpl[l3 + 4] << 8) | tmpl[l3 + 5];
  const seq0 = ((tmpl[l4 + 4] << 24) | (tmpl[l4 + 5] << 16) | (tmpl[l4 + 6] << 8) | tmpl[l4 + 7]) >>> 0;
  const tcpFlags = tmpl[l4 + 13];
  const payload = len - srcHl;
  const nseg = Math.ceil(payload / mss);
  // the pseudo header's addresses, summed once
  startSum();
  if (v4) addBytes(tmpl, l3 + 12, 8);
  else addBytes(tmpl, l3 + 8, 32);
  const addrSum = acc;
  let sent = 0;
  for (let k = 0; k < nseg; k++) {
    const from = srcHl + k * mss;
    const segLen = payload - k * mss < mss ? payload - k * mss : mss;
    const tcpLen = hl - l4 + segLen;
    if (v4) {
      put16(tmpl, l3 + 2, l4 - l3 + tcpLen);
      put16(tmpl, l3 + 4, (id0 + k) & 0xffff);
      put16(tmpl, l3 + 10, 0);
      startSum();
      addBytes(tmpl, l3, l4 - l3);
      put16(tmpl, l3 + 10, finish());
    } else {
      put16(tmpl, l3 + 4, tcpLen);
    }
    const seq = (seq0 + k * mss) >>> 0;
    tmpl[l4 + 4] = seq >>> 24;
    tmpl[l4 + 5] = (seq >>> 16) & 0xff;
    tmpl[l4 + 6] = (seq >>> 8) & 0xff;
    tmpl[l4 + 7] = seq & 0xff;
    let f = tcpFlags;
    if (k > 0) f &= ~0x80; // CWR
    if (k < nseg - 1) f &= ~0x09; // FIN, PSH
    tmpl[l4 + 13] = f;
    put16(tmpl, l4 + 16, 0);
    acc = addrSum + 6 + tcpLen;
    accOdd = false;
    addBytes(tmpl, l4, hl - l4);
    addFrame(mem, b, i, from, segLen);
    put16(tmpl, l4 + 16, finish());
    if (!vq.rxReserve(hl + segLen, null)) {
      // reserve counted this one; the rest of the frame cannot go either
      vq.stats[ST_DROP_NO_BUF] += nseg - k - 1;
      break;
    }
    vq.rxPut(tmplViews, 0, hl);
    putFrame(vq, mem, b, i, from, segLen);
    vq.rxCommit(hl + segLen);
    sent++;
  }
  return sent;
}

/**
 * UFO towards a guest without GUEST_UFO: the UDP checksum completed over the whole datagram,
 * then IP fragments of gso_size bytes (rounded down to 8) of the IP payload; IPv4 fragments
 * share the frame's id, IPv6 ones get a fragment header with an id of ours. With a tag edit
 * the template's headers are edited once (as segmentTcp's). Returns the fragments delivered.
 */
function fragmentUdp(vq: RxFrameSink, mem: GuestMemory, b: PacketBatch, i: number, edit: number): number {
  const len = b.pktLen[i];
  const srcL4 = b.l4Off[i];
  const fs = b.gsoSize[i] & ~7;
  gather(mem, b, i, srcL4);
  const d = edit === 0 ? 0 : editTemplate(srcL4, edit);
  const l3 = b.l3Off[i] + d;
  const l4 = srcL4 + d;
  const v4 = tmpl[l3] >> 4 === 4;
  startSum();
  addFrame(mem, b, i, srcL4, len - srcL4);
  const udpCsum = finish() || 0xffff;
  const total = len - srcL4;
  const nfrag = Math.ceil(total / fs);
  // IPv6: the fragment header goes between the fixed header and the datagram
  const hl = v4 ? l4 : l4 + 8;
  const id = fragId;
  fragId = (fragId + 1) >>> 0 || 1;
  if (!v4) {
    tmpl[l4] = 17; // next header: UDP
    tmpl[l4 + 1] = 0;
    tmpl[l4 + 4] = id >>> 24;
    tmpl[l4 + 5] = (id >>> 16) & 0xff;
    tmpl[l4 + 6] = (id >>> 8) & 0xff;
    tmpl[l4 + 7] = id & 0xff;
    tmpl[l3 + 6] = 44; // IPv6-Frag
  }
  let sent = 0;
  for (let k = 0; k < nfrag; k++) {
    const off = k * fs;
    const n = total - off < fs ? total - off : fs;
    const more = k < nfrag - 1 ? 1 : 0;
    if (v4) {
      put16(tmpl, l3 + 2, l4 - l3 + n);
      // DF dropped: these are fragments (the guest asked for UFO, i.e. for fragmentation)
      put16(tmpl, l3 + 6, (more << 13) | (off >>> 3));
      put16(tmpl, l3 + 10, 0);
      startSum();
      addBytes(tmpl, l3, l4 - l3);
      put16(tmpl, l3 + 10, finish());
    } else {
      put16(tmpl, l3 + 4, 8 + n);
      put16(tmpl, l4 + 2, (off & ~7) | more);
    }
    if (!vq.rxReserve(hl + n, null)) {
      vq.stats[ST_DROP_NO_BUF] += nfrag - k - 1;
      break;
    }
    vq.rxPut(tmplViews, 0, hl);
    putFrame(vq, mem, b, i, srcL4 + off, n);
    if (k === 0) {
      vq.rxPoke(hl + 6, udpCsum >>> 8);
      vq.rxPoke(hl + 7, udpCsum & 0xff);
    }
    vq.rxCommit(hl + n);
    sent++;
  }
  return sent;
}
