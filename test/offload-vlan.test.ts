/**
 * Offloads (issue 18) through the VLAN bridge (issue 21): the tag a port's rules push (+4
 * bytes) or pop (-4) on the way out moves everything behind the MACs, so a virtio-net header
 * handed over must have its csum_start and hdr_len moved by as much, and the software path
 * (checksum completion, TCP segmentation) must work on the frame as delivered. Through the
 * forwarder's workers with synthetic guests: TSO frames (IPv4 60 KB, IPv6 with options) and a
 * checksum-only frame flooded from an access port to two trunks and an access port, and back
 * from a trunk (its tag with a priority) to two access ports and a trunk; each receiver with
 * and without the GUEST_* features. Every frame and header checked byte for byte against
 * kit/offload-lib.ts, which shares no code with src/workers/offload.ts.
 */
import t, { Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseConfig } from '../src/main/config';
import { Forwarder, QueueStats } from '../src/main/forwarder';
import { native } from '../src/native';
import { F, bit } from '../src/protocol/constants';
import { DEFAULT_WANT, SyntheticGuest, macOf } from '../src/frontend/guest';
import { tmpDir, waitUntil } from '../kit/env';
import { pattern } from '../kit/vq-harness';
import { Built, build, refComplete, refSegments, withTag } from '../kit/offload-lib';

const HOST = bit(F.VIRTIO_NET_F_CSUM) | bit(F.VIRTIO_NET_F_HOST_TSO4) | bit(F.VIRTIO_NET_F_HOST_TSO6) | bit(F.VIRTIO_NET_F_HOST_ECN) | bit(F.VIRTIO_NET_F_HOST_UFO);
const GUEST = bit(F.VIRTIO_NET_F_GUEST_CSUM) | bit(F.VIRTIO_NET_F_GUEST_TSO4) | bit(F.VIRTIO_NET_F_GUEST_TSO6) | bit(F.VIRTIO_NET_F_GUEST_ECN) | bit(F.VIRTIO_NET_F_GUEST_UFO);

type Name = 'a1' | 'a3' | 't1' | 't2';
const NAMES: Name[] = ['a1', 'a3', 't1', 't2'];
/** a1, t1 take every offload; a3, t2 send with them but take none (the software path) */
const FULL: Record<Name, boolean> = { a1: true, a3: false, t1: true, t2: false };
const VLAN: Record<Name, unknown> = {
  a1: { mode: 'access', tag: 10 },
  a3: { mode: 'access', tag: 10 },
  t1: { mode: 'trunk', allowed: [10, 20] },
  t2: { mode: 'trunk', allowed: [10] },
};
/** the tag t1 sends with: VLAN 10, priority 3 (kept on the trunk it is rewritten for) */
const TCI = 0x600a;
const hex = (f: Uint8Array): string => Buffer.from(f).toString('hex');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** the virtio-net header's first 10 bytes with csum_start and (non-zero) hdr_len moved by d */
function shifted(hdr: Uint8Array, d: number): string {
  const h = Uint8Array.from(hdr.subarray(0, 10));
  const dv = new DataView(h.buffer);
  const hl = dv.getUint16(2, true);
  if (hl !== 0) dv.setUint16(2, hl + d, true);
  dv.setUint16(6, dv.getUint16(6, true) + d, true);
  return hex(h);
}

/** f as a trunk's guest sends it: tagged, its header's offsets moved by 4 */
function tagged(f: Built, tci: number): { frame: Uint8Array; hdr: Uint8Array } {
  const hdr = Uint8Array.from(f.hdr);
  const dv = new DataView(hdr.buffer);
  if (dv.getUint16(2, true) !== 0) dv.setUint16(2, dv.getUint16(2, true) + 4, true);
  dv.setUint16(6, dv.getUint16(6, true) + 4, true);
  return { frame: withTag(f.frame, tci), hdr };
}

interface Want {
  /** frames expected, in order */
  frames: Uint8Array[];
  /** the expected header (first 10 bytes, hex) of each: handed over, or zeros (software path) */
  hdr: string;
}

t.test('offloads through VLAN push and pop: TSO and checksum frames access -> trunks and trunk -> access, byte-exact, headers moved', async (t) => {
  const dir = tmpDir();
  const sock = (n: string) => path.join(dir, `${n}.sock`);
  const cfg = parseConfig({ interfaces: NAMES.map((n) => ({ name: n, socket: sock(n), vlan: VLAN[n] })), forwarding: { mode: 'bridge' } }, os.cpus().length);
  const fwd = new Forwarder(cfg);
  await fwd.start();
  const g = {} as Record<Name, SyntheticGuest>;
  for (const [i, n] of NAMES.entries()) {
    g[n] = await SyntheticGuest.start({ socket: sock(n), mac: macOf(i + 1), want: DEFAULT_WANT | HOST | (FULL[n] ? GUEST : 0n) });
  }
  t.teardown(async () => {
    for (const n of NAMES) g[n].close();
    await fwd.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  for (const n of NAMES) {
    t.equal(g[n].features & (HOST | GUEST), HOST | (FULL[n] ? GUEST : 0n), `${n} negotiated ${FULL[n] ? 'every offload' : 'the HOST_* side only'}`);
  }
  const stat = (n: Name, dir: 'rx' | 'tx'): QueueStats => fwd.stats().find((s) => s.iface === n && s.dir === dir)!;
  const zeros = hex(new Uint8Array(10));

  /** Post one frame with its header on `from`'s TX ring, then check every other port's frames and headers. */
  const exchange = async (t: Test, what: string, from: Name, frame: Uint8Array, hdr: Uint8Array, want: Partial<Record<Name, Want>>): Promise<void> => {
    const got: Record<Name, Array<{ data: string; hdr: string }>> = { a1: [], a3: [], t1: [], t2: [] };
    g[from].tx[0].postTx(frame, { hdr, chunks: 3 });
    native.eventfdWrite(g[from].kickFds[1], 1);
    const total = NAMES.reduce((s, n) => s + (want[n]?.frames.length ?? 0), 0);
    const drain = (): number => {
      for (const n of NAMES) for (const p of g[n].receive(0)) got[n].push({ data: hex(p.data), hdr: hex(p.hdr.subarray(0, 10)) });
      return NAMES.reduce((s, n) => s + got[n].length, 0);
    };
    await waitUntil(() => drain() >= total, 5000, `${what}: ${total} frames`).catch(() => undefined);
    await sleep(50);
    drain();
    for (const n of NAMES) {
      const w = want[n];
      t.same(got[n].map((p) => p.data), (w?.frames ?? []).map(hex), `${what}: ${n} got ${w ? `${w.frames.length} frame(s), exactly the expected bytes` : 'nothing'}`);
      t.same(got[n].map((p) => p.hdr), (w?.frames ?? []).map(() => w!.hdr), `${what}: ${n}'s virtio-net headers`);
    }
  };

  const cases = [
    { what: 'TSO IPv4, 60000 bytes of payload, mss 1448', v6: false, udp: false, payload: 60000, mss: 1448, optLen: 12 },
    { what: 'TSO IPv6 with 20 bytes of options, mss 1220, FIN+PSH+CWR', v6: true, udp: false, payload: 9000, mss: 1220, optLen: 20, tcpFlags: 0x99 },
    { what: 'checksum only (UDP over IPv4)', v6: false, udp: true, payload: 1000 },
    { what: 'checksum only (TCP over IPv6)', v6: true, udp: false, payload: 777, optLen: 12 },
  ];
  let seq = 0;
  for (const c of cases) {
    await t.test(c.what, async (t) => {
      const tso = c.mss !== undefined;
      const mk = (src: Name): Built => {
        const f = build({ v6: c.v6, udp: c.udp, payload: pattern(c.payload, ++seq), optLen: c.optLen ?? 0, gsoSize: c.mss, tcpFlags: c.tcpFlags, seq: 0xfffff000 + seq, id: 0xfff0 + seq });
        // unknown unicast (flooded in VLAN 10, each destination deciding for itself) from src's MAC
        f.frame.set(macOf(0x700 + seq), 0);
        f.frame.set(g[src].mac, 6);
        return f;
      };
      /** what a receiver without the GUEST_* features gets: segments or the checksum completed */
      const soft = (frame: Uint8Array, d: number): Uint8Array[] =>
        tso
          ? refSegments(frame, { l3: f.l3 + d, l4: f.l4 + d, hl: f.hl + d, mss: c.mss!, v6: c.v6 })
          : [refComplete(frame, { l3: f.l3 + d, l4: f.l4 + d, v6: c.v6, udp: c.udp })];
      const before = Object.fromEntries(NAMES.map((n) => [n, stat(n, 'rx')])) as Record<Name, QueueStats>;

      // access -> everyone in VLAN 10: t1 gets it tagged with its header moved +4, t2 tagged and
      // done in software, a3 untagged and done in software
      let f = mk('a1');
      await exchange(t, 'a1 (access) -> flood', 'a1', f.frame, f.hdr, {
        t1: { frames: [withTag(f.frame, 10)], hdr: shifted(f.hdr, 4) },
        t2: { frames: soft(withTag(f.frame, 10), 4), hdr: zeros },
        a3: { frames: soft(f.frame, 0), hdr: zeros },
      });

      // trunk -> everyone in VLAN 10: a1 gets it untagged with its header moved -4, a3 untagged
      // and done in software, t2 with the tag rewritten as it came (priority kept), in software
      f = mk('t1');
      const tf = tagged(f, TCI);
      await exchange(t, 't1 (trunk, tagged 10 priority 3) -> flood', 't1', tf.frame, tf.hdr, {
        a1: { frames: [f.frame], hdr: shifted(tf.hdr, -4) },
        a3: { frames: soft(f.frame, 0), hdr: zeros },
        t2: { frames: soft(tf.frame, 4), hdr: zeros },
      });
      t.equal(shifted(tf.hdr, -4), hex(f.hdr.subarray(0, 10)), 'popped: the header a1 got is the one an access guest would have sent');

      const after = Object.fromEntries(NAMES.map((n) => [n, stat(n, 'rx')])) as Record<Name, QueueStats>;
      const delta = (n: Name, k: 'gsoPassed' | 'gsoSegmented' | 'csumSoftware') => after[n][k] - before[n][k];
      if (tso) {
        t.same([delta('t1', 'gsoPassed'), delta('a1', 'gsoPassed')], [1, 1], 'handed over whole to t1 (push) and a1 (pop)');
        t.same([delta('t2', 'gsoSegmented'), delta('a3', 'gsoSegmented')], [2, 2], 'segmented for t2 (push, rewrite) and a3 (none, pop)');
      } else {
        t.same([delta('t2', 'csumSoftware'), delta('a3', 'csumSoftware')], [2, 2], 'completed for t2 and a3');
      }
      t.same(NAMES.map((n) => stat(n, 'tx').dropBadOffload), [0, 0, 0, 0], 'no header refused');
    });
  }
});
