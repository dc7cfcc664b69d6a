/**
 * The flow hash that spreads a burst over a multi-queue guest's RX queues (steering "hash",
 * like OVS's tx-steering=hash and a NIC's RSS): one flow always lands on one queue, so its
 * order holds, while many flows use every queue and vCPU. Computed from the first bytes of
 * the frame only: IPv4 / IPv6 addresses plus TCP / UDP ports (IPv4 ICMP echo: its id) when present (not for IPv4
 * fragments after the first, which carry no ports: all fragments of a datagram then hash on
 * addresses alone, together), else the two MACs. One 802.1Q / 802.1ad tag is skipped.
 * Plain integer arithmetic on a scratch array: no allocation per packet.
 */

/** Bytes of the frame the hash may look at: Ethernet + one tag + IPv6 + ports. */
export const FLOW_HASH_BYTES = 14 + 4 + 40 + 4;

function mix(h: number, w: number): number {
  h = Math.imul(h ^ w, 0xcc9e2d51);
  return ((h << 15) | (h >>> 17)) >>> 0;
}

/** murmur3's finaliser: every input bit moves every output bit (the low bits pick the queue). */
function fmix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

const u32 = (b: Uint8Array, o: number): number => ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;

/** Hash of the flow of the frame whose first `len` bytes are in `b` (an unsigned 32-bit number). */
export function flowHash(b: Uint8Array, len: number): number {
  if (len < 14) return 0;
  let l3 = 14;
  let type = (b[12] << 8) | b[13];
  if ((type === 0x8100 || type === 0x88a8) && len >= 18) {
    type = (b[16] << 8) | b[17];
    l3 = 18;
  }
  let h = 0x2545f491;
  if (type === 0x0800 && len >= l3 + 20) {
    const ihl = (b[l3] & 0x0f) * 4;
    const proto = b[l3 + 9];
    h = mix(mix(mix(h, u32(b, l3 + 12)), u32(b, l3 + 16)), proto);
    const fragOffset = ((b[l3 + 6] & 0x1f) << 8) | b[l3 + 7];
    const more = (b[l3 + 6] & 0x20) !== 0;
    const l4 = l3 + ihl;
    if (fragOffset === 0 && !more && ihl >= 20) {
      if ((proto === 6 || proto === 17) && len >= l4 + 4) h = mix(h, u32(b, l4));
      // ICMP echo: its identifier tells the pings apart, as Linux's flow dissector does
      else if (proto === 1 && len >= l4 + 6 && (b[l4] === 8 || b[l4] === 0)) h = mix(h, (b[l4 + 4] << 8) | b[l4 + 5]);
    }
    return fmix(h);
  }
  if (type === 0x86dd && len >= l3 + 40) {
    const next = b[l3 + 6];
    for (let o = l3 + 8; o < l3 + 40; o += 4) h = mix(h, u32(b, o));
    h = mix(h, next);
    if ((next === 6 || next === 17) && len >= l3 + 44) h = mix(h, u32(b, l3 + 40));
    return fmix(h);
  }
  h = mix(mix(mix(h, u32(b, 0)), u32(b, 4)), u32(b, 8));
  return fmix(h);
}
