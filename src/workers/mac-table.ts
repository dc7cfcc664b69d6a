/**
 * The learning bridge's MAC table, shared by every worker in one SharedArrayBuffer:
 * open addressing with linear probing, slots claimed with compareExchange so two workers
 * learning at once never corrupt it. A racing reader can at worst miss an entry being
 * written (it floods that one frame), never read a half-written port.
 *
 * Keyed by (VLAN, MAC), so one MAC learned in two VLANs is two entries, and learning,
 * lookup, aging and moves stay inside a VLAN. VLAN 0 is the domain of ports without VLANs.
 *
 * Slot (4 x Int32): key0 = (vid + 1) << 16 | mac[0..1] (0 = free: vid + 1 is never 0; for
 * VLAN 0 it is the 0x10000 | mac[0..1] of the table before VLANs; VIDs up to 4094 keep it a
 * positive int32), key1 = mac[2..5], port, seen (s).
 */
const MAC_SLOTS = 16384;
const WORDS = 4;
export const MAC_TABLE_BYTES = MAC_SLOTS * WORDS * 4;
const MASK = MAC_SLOTS - 1;
const PROBES = 32;

export class MacTable {
  private readonly t: Int32Array;
  constructor(sab: SharedArrayBuffer, private agingSec: number) {
    this.t = new Int32Array(sab);
  }

  private static hash(k0: number, k1: number): number {
    // << 4 keeps all 28 bits of key0 (VID and MAC) in the word: the << 7 of the table before
    // VLANs would drop VID bits 9..11 and put one MAC of VLANs 512 apart in one probe run
    return (Math.imul(k1 ^ (k0 << 4), 0x9e3779b1) >>> 18) & MASK;
  }

  /** Learn that `mac` (6 bytes at b[off]) lives on `port` in VLAN `vid`; `now` in seconds. Returns true on a move. */
  learn(b: Uint8Array, off: number, port: number, now: number, vid: number): boolean {
    if (b[off] & 1) return false; // never learn a multicast source
    const k0 = ((vid + 1) << 16) | (b[off] << 8) | b[off + 1];
    const k1 = (b[off + 2] << 24) | (b[off + 3] << 16) | (b[off + 4] << 8) | b[off + 5];
    const t = this.t;
    let i = MacTable.hash(k0, k1);
    for (let p = 0; p < PROBES; p++, i = (i + 1) & MASK) {
      const s = i * WORDS;
      let w0 = Atomics.load(t, s);
      if (w0 === 0) {
        // Claim with CAS on key0, then fill the slot. A reader that sees key0 before key1 is
        // written finds a mismatch and floods that one frame; nobody reads a stale port.
        w0 = Atomics.compareExchange(t, s, 0, k0);
        if (w0 === 0) {
          t[s + 2] = port;
          t[s + 3] = now;
          Atomics.store(t, s + 1, k1);
          return false;
        }
      }
      if (w0 === k0 && t[s + 1] === k1) {
        const moved = t[s + 2] !== port;
        if (moved) Atomics.store(t, s + 2, port);
        if (t[s + 3] !== now) t[s + 3] = now;
        return moved;
      }
    }
    return false; // table full along this probe run: the frame still floods correctly
  }

  /** Port of the destination MAC at b[off] in VLAN `vid`, or -1 (unknown, aged out, or multicast). */
  lookup(b: Uint8Array, off: number, now: number, vid: number): number {
    if (b[off] & 1) return -1;
    const k0 = ((vid + 1) << 16) | (b[off] << 8) | b[off + 1];
    const k1 = (b[off + 2] << 24) | (b[off + 3] << 16) | (b[off + 4] << 8) | b[off + 5];
    const t = this.t;
    let i = MacTable.hash(k0, k1);
    for (let p = 0; p < PROBES; p++, i = (i + 1) & MASK) {
      const s = i * WORDS;
      const w0 = t[s];
      if (w0 === 0) return -1;
      if (w0 === k0 && t[s + 1] === k1) return now - t[s + 3] > this.agingSec ? -1 : t[s + 2];
    }
    return -1;
  }

  /**
   * Forget every MAC learned on `port` (its interface was removed, and the number may be
   * reused): those entries answer -1 (flood) until relearned. Run by the main thread while
   * workers learn; a worker relearning one of them at the same time is just as right.
   */
  forgetPort(port: number): void {
    const t = this.t;
    for (let s = 0; s < MAC_SLOTS * WORDS; s += WORDS) if (t[s] !== 0 && t[s + 2] === port) Atomics.store(t, s + 2, -1);
  }
}
