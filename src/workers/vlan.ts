/**
 * The bridge's 802.1Q rules: which VLAN a frame entering a port belongs to (ingress
 * classification), which ports are members of a VLAN, and what happens to the tag on the
 * way out (the edit the copy applies: nothing, pop, push, or both for a priority tag).
 *
 * VLAN 0 is not a VLAN here: it is the domain of the ports without a `vlan` setting, which
 * bridge among themselves as before (frames untouched, tags inside them not looked at) and
 * never with a VLAN port. A VLAN port never classifies a frame into 0 (VIDs are 1..4094).
 *
 * Per port: a kind (none, access, trunk), its PVID (the VLAN of untagged and priority-tagged
 * frames: the access tag or the trunk's native VLAN; 0 = such frames are dropped), and a
 * 4096-entry membership row: NOT_MEMBER, UNTAGGED (egress pops / does not push) or TAGGED.
 * Set from the main thread ('vlan' message) between bursts; read per packet only for
 * frames from VLAN ports.
 */
import { PortVlan } from '../shared/worker-protocol';

/** 802.1Q customer VLAN tag protocol identifier (C-TAG) */
export const TPID_8021Q = 0x8100;
/** 802.1ad service VLAN tag (S-TAG, QinQ outer): classified like a C-TAG, by its VID */
export const TPID_8021AD = 0x88a8;
/** VIDs 1..4094; 0 = priority tag (no VLAN), 4095 reserved (802.1Q table 9-2) */
const VID_MAX = 4094;

/** Per-packet egress edits applied while copying (virtqueue.ts): 0 = copy the frame as is. */
/** drop the 4 tag bytes at offset 12 of the source frame */
export const EDIT_POP = 0x10000;
/** write a tag (TPID 0x8100, or 0x88a8 with EDIT_TPID_AD; TCI = edit & 0xffff) after the 12 MAC bytes */
export const EDIT_PUSH = 0x20000;
/** the pushed tag's TPID is 802.1ad's 0x88a8 (a QinQ outer tag passed on between trunks) */
export const EDIT_TPID_AD = 0x40000;
/** classify()'s srcTci: the source tag was 0x88a8 (above its 16-bit TCI) */
const SRC_AD = 0x10000;
/** bytes the edit adds to the frame (-4, 0 or 4) */
export const editDelta = (e: number): number => ((e & EDIT_PUSH) !== 0 ? 4 : 0) - ((e & EDIT_POP) !== 0 ? 4 : 0);

export const KIND_NONE = 0;
const KIND_ACCESS = 1;
const KIND_TRUNK = 2;

const NOT_MEMBER = 0;
const UNTAGGED = 1;
const TAGGED = 2;

/** classify(): the frame is dropped (counted as drop_vlan). VIDs are > 0. */
const VLAN_DROP = -1;


/**
 * The edit for a member of `vid` whose membership is `m` (UNTAGGED or TAGGED, not 0), for a
 * frame whose source tag was `srcTci` (-1 untagged). Untagged members get the frame without
 * a tag; tagged members get one tag of `vid`: pushed (0x8100) on an untagged frame, and on a
 * tagged one its tag written again from what classify() read: the same TPID, PCP and DEI,
 * and `vid` (a priority tag gets its VID filled in). Never copied from the source as it is:
 * the guest may rewrite its buffer between classification and the copy, and a VID changed
 * then must not reach a trunk. Small and pure: inlined in the poller's delivery loop.
 */
export function egressEdit(m: number, vid: number, srcTci: number): number {
  if (m === UNTAGGED) return srcTci < 0 ? 0 : EDIT_POP;
  if (srcTci < 0) return EDIT_PUSH | vid;
  return EDIT_POP | EDIT_PUSH | ((srcTci & SRC_AD) !== 0 ? EDIT_TPID_AD : 0) | (srcTci & 0xf000) | vid;
}

export class VlanPorts {
  /** KIND_* per port (grown by ensure(), never on the data path) */
  kind = new Uint8Array(64);
  /** the VLAN of untagged / priority-tagged frames entering the port (0: dropped) */
  private pvid = new Uint16Array(64);
  /**
   * Membership, 4096 entries per port, flat: member[port << 12 | vid] is NOT_MEMBER (0),
   * UNTAGGED or TAGGED; one load per packet and port. Ports without VLANs have a row of 0s.
   * Replaced when it grows: readers take it once per burst.
   */
  member = new Uint8Array(64 << 12);
  /** the source frame's tag of the packet classify() looked at last: -1 untagged, else its TCI (| SRC_AD for 0x88a8) */
  srcTci = -1;

  /** Room for ports 0..n-1 (kind, pvid and member rows readable without a bounds test). */
  ensure(n: number): void {
    if (n <= this.kind.length) return;
    const len = Math.max(2 * this.kind.length, n);
    const k = new Uint8Array(len);
    const pv = new Uint16Array(len);
    const m = new Uint8Array(len << 12);
    k.set(this.kind);
    pv.set(this.pvid);
    m.set(this.member);
    this.kind = k;
    this.pvid = pv;
    this.member = m;
  }

  /** Set (or clear, v = null) port p's VLANs. Not on the data path. */
  set(p: number, v: PortVlan): void {
    this.ensure(p + 1);
    const base = p << 12;
    this.member.fill(NOT_MEMBER, base, base + 4096);
    if (v === null) {
      this.kind[p] = KIND_NONE;
      this.pvid[p] = 0;
      return;
    }
    if (v.mode === 'access') {
      this.kind[p] = KIND_ACCESS;
      this.pvid[p] = v.tag;
      this.member[base | v.tag] = UNTAGGED;
      return;
    }
    this.kind[p] = KIND_TRUNK;
    for (const id of v.allowed) this.member[base | id] = TAGGED;
    // the native VLAN leaves untagged; tagged frames of it are accepted too (native-untagged)
    this.pvid[p] = v.native ?? 0;
    if (v.native !== null) this.member[base | v.native] = UNTAGGED;
  }

  /**
   * The VLAN of a frame entering VLAN port p: h[o..] holds its first 16 bytes (12 MAC bytes,
   * then the TPID/ethertype and TCI; each read once), `len` its length. VLAN_DROP for a tag-spoofing frame
   * (tagged with a VID on an access port), a VID the trunk does not carry, an untagged frame
   * with no PVID, or a frame too short for what it claims (a tag without its ethertype).
   * Only the outer tag counts (QinQ: 0x88a8 or a stacked 0x8100): inner tags are payload.
   * Sets srcTci for egressEdit().
   */
  classify(p: number, h: Uint8Array, o: number, len: number): number {
    this.srcTci = -1;
    if (len < 14) return VLAN_DROP;
    const tpid = (h[o + 12] << 8) | h[o + 13];
    if (tpid === TPID_8021Q || tpid === TPID_8021AD) {
      if (len < 18) return VLAN_DROP; // a tag needs its ethertype after it
      const tci = (h[o + 14] << 8) | h[o + 15];
      const vid = tci & 0xfff;
      this.srcTci = tpid === TPID_8021AD ? tci | SRC_AD : tci;
      if (vid !== 0) {
        // access ports never take a VLAN from the guest; trunks only what they carry
        if (this.kind[p] !== KIND_TRUNK || vid > VID_MAX || this.member[(p << 12) | vid] === NOT_MEMBER) return VLAN_DROP;
        return vid;
      }
      // priority-tagged (VID 0): the port's VLAN, as an untagged frame
    }
    const pvid = this.pvid[p];
    return pvid === 0 ? VLAN_DROP : pvid;
  }

  /** Port p's edit for a frame of `vid` with source tag `srcTci`, or -1: p is not a member (the inject path). */
  egress(p: number, vid: number, srcTci: number): number {
    if (p >= this.kind.length) return -1;
    const m = this.member[(p << 12) | vid];
    return m === NOT_MEMBER ? -1 : egressEdit(m, vid, srcTci);
  }
}
