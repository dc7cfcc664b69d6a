/**
 * Issue 21 (VLANs): the bridge with 802.1Q access and trunk ports, through the workers with
 * synthetic guests. Every delivery is checked byte for byte on every port (what each one
 * got, and that the others got nothing): tags pushed and popped in the copy (single
 * buffers, mergeable multi-buffer chains, a source tag split across TX descriptors, the
 * bulk-copy size), VLANs isolated for unicast, broadcast and unknown unicast, one MAC in
 * two VLANs, and the hostile cases: tag spoofing from an access port, double tags meant to
 * hop VLANs, QinQ, VIDs a trunk does not carry, tags cut short, and a flood of 4094 VLANs x 4
 * MACs against the MAC table's capacity. Config errors by path, the control API's add.
 */
import t, { Test } from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import Ajv2020 from 'ajv/dist/2020';
import { ConfigError, checkSchema, parseConfig } from '../src/main/config';
import { Forwarder } from '../src/main/forwarder';
import { startControl } from '../src/main/control/server';
import { native } from '../src/native';
import { vlanArg } from '../src/ctl';
import { MAC_TABLE_BYTES, MacTable } from '../src/workers/mac-table';
import { EDIT_POP, EDIT_PUSH, EDIT_TPID_AD, VlanPorts, egressEdit } from '../src/workers/vlan';
import { SyntheticGuest, frame, macOf } from '../src/frontend/guest';
import { RxPacket } from '../src/frontend/driver-ring';
import { tmpDir, waitUntil } from '../kit/env';

const BCAST = Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
const hex = (f: Uint8Array): string => Buffer.from(f).toString('hex');

/** `f` with a tag (TPID, TCI) inserted after its MACs */
function tag(f: Uint8Array, tci: number, tpid = 0x8100): Uint8Array {
  const o = new Uint8Array(f.length + 4);
  o.set(f.subarray(0, 12));
  o[12] = tpid >> 8;
  o[13] = tpid & 0xff;
  o[14] = tci >> 8;
  o[15] = tci & 0xff;
  o.set(f.subarray(12), 16);
  return o;
}


type Name = 'a1' | 'a2' | 'b1' | 't1' | 't2' | 't3' | 'n1' | 'n2';
const NAMES: Name[] = ['a1', 'a2', 'b1', 't1', 't2', 't3', 'n1', 'n2'];

t.test('VLAN bridge: access and trunk ports, push/pop in the copy, isolation, hostile frames', async (t) => {
  const dir = tmpDir();
  const sock = (n: string) => path.join(dir, `${n}.sock`);
  const all1to4094 = Array.from({ length: 4094 }, (_, i) => i + 1);
  const vlanOf: Record<Name, unknown> = {
    a1: { mode: 'access', tag: 10 },
    a2: { mode: 'access', tag: 10 },
    b1: { mode: 'access', tag: 20 },
    t1: { mode: 'trunk', allowed: [10, 20, 30] }, // no native: untagged frames dropped
    t2: { mode: 'trunk', allowed: [20], native: 10 },
    t3: { mode: 'trunk', allowed: all1to4094 },
    n1: undefined,
    n2: undefined,
  };
  const cfg = parseConfig(
    {
      interfaces: NAMES.map((n) => ({ name: n, socket: sock(n), ...(vlanOf[n] ? { vlan: vlanOf[n] } : {}), ...(n === 't1' ? { mtu: 1500 } : {}) })),
      forwarding: { mode: 'bridge' },
    },
    os.cpus().length,
  );
  const fwd = new Forwarder(cfg);
  await fwd.start();
  const g = {} as Record<Name, SyntheticGuest>;
  for (const [i, n] of NAMES.entries()) {
    // t1 receives into 128-byte buffers: every frame to it spans a mergeable chain
    g[n] = await SyntheticGuest.start({ socket: sock(n), mac: macOf(i + 1), ...(n === 't1' ? { rxBufLen: 128 } : {}) });
  }
  t.teardown(async () => {
    for (const n of NAMES) g[n].close();
    await fwd.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const stat = (n: Name, dir: 'rx' | 'tx') => fwd.stats().find((s) => s.iface === n && s.dir === dir)!;

  const drainAll = (got: Record<Name, Uint8Array[]>): void => {
    for (const n of NAMES) {
      g[n].reclaim(0);
      for (const p of g[n].receive(0)) got[n].push(Uint8Array.from(p.data));
    }
  };
  const fresh = (): Record<Name, Uint8Array[]> => Object.fromEntries(NAMES.map((n) => [n, []])) as unknown as Record<Name, Uint8Array[]>;

  /** Send `frames` from `from` (each split over `chunks` TX descriptors), then check what every port got. */
  const exchange = async (t: Test, what: string, from: Name, frames: Uint8Array[], expect: Partial<Record<Name, Uint8Array[]>>, chunks = 1): Promise<void> => {
    const got = fresh();
    if (chunks === 1) t.equal(g[from].send(0, frames), frames.length, `${what}: sent`);
    else {
      for (const f of frames) g[from].tx[0].postTx(f, { chunks });
      native.eventfdWrite(g[from].kickFds[1], 1);
    }
    const want = NAMES.reduce((s, n) => s + (expect[n]?.length ?? 0), 0);
    await waitUntil(() => {
      drainAll(got);
      return NAMES.reduce((s, n) => s + got[n].length, 0) >= want && g[from].tx[0].freeDescCount() === g[from].queueSize;
    }, 5000, `${what}: ${want} frames`).catch(() => undefined);
    await sleep(50); // anything more that would arrive (nothing should)
    drainAll(got);
    for (const n of NAMES) t.same(got[n].map(hex), (expect[n] ?? []).map(hex), `${what}: ${n} got ${expect[n]?.length ? 'exactly the expected bytes' : 'nothing'}`);
  };

  await t.test('broadcast and unknown unicast stay in their VLAN; tags pushed towards trunks, native untagged', async (t) => {
    const f = frame(BCAST, g.a1.mac, 64, 1);
    await exchange(t, 'broadcast from a1 (VLAN 10)', 'a1', [f], { a2: [f], t1: [tag(f, 10)], t2: [f], t3: [tag(f, 10)] });
    const u = frame(macOf(0x500), g.b1.mac, 100, 2);
    await exchange(t, 'unknown unicast from b1 (VLAN 20)', 'b1', [u], { t1: [tag(u, 20)], t2: [tag(u, 20)], t3: [tag(u, 20)] });
    const n = frame(BCAST, g.n1.mac, 64, 3);
    await exchange(t, 'broadcast from n1 (no VLANs)', 'n1', [n], { n2: [n] });
    const nt = tag(frame(BCAST, g.n1.mac, 70, 4), 10);
    await exchange(t, 'a tagged frame between ports without VLANs is passed untouched, to them only', 'n1', [nt], { n2: [nt] });
  });

  await t.test('access <-> access unicast in one VLAN', async (t) => {
    const f = frame(g.a1.mac, g.a2.mac, 300, 5);
    await exchange(t, 'a2 -> a1', 'a2', [f], { a1: [f] });
    const b = frame(g.a2.mac, g.a1.mac, 1514, 6);
    await exchange(t, 'a1 -> a2 (learned)', 'a1', [b], { a2: [b] });
  });

  await t.test('trunk -> access pops, access -> trunk pushes, byte-exact over every copy path', async (t) => {
    const sizes = [60, 64, 300, 1000, 1514];
    const fs1 = sizes.map((len, k) => frame(g.a1.mac, g.t1.mac, len, 10 + k));
    await exchange(t, 't1 -> a1, tagged 10 (pop)', 't1', fs1.map((f) => tag(f, 10)), { a1: fs1 });
    const fs2 = [62, 200, 1000].map((len, k) => frame(g.a1.mac, g.t1.mac, len, 20 + k));
    // header + 66 tagged bytes in 3 TX descriptors of 26 bytes: the tag straddles two of them
    await exchange(t, 't1 -> a1, tagged 10, the frame split over 3 TX descriptors (pop)', 't1', fs2.map((f) => tag(f, 10)), { a1: fs2 }, 3);
    const back = [60, 300, 1000, 1514].map((len, k) => frame(g.t1.mac, g.a1.mac, len, 30 + k));
    await exchange(t, 'a1 -> t1 (push, into 128-byte mergeable buffers)', 'a1', back, { t1: back.map((f) => tag(f, 10)) });
    const tooBig = stat('t1', 'rx').dropTooBig;
    const edge = [frame(g.t1.mac, g.a1.mac, 1514, 40), frame(g.t1.mac, g.a1.mac, 1515, 41)];
    await exchange(t, 'a1 -> t1 (mtu 1500): 1514 bytes become 1518 and pass, 1515 would be 1519', 'a1', edge, { t1: [tag(edge[0], 10)] });
    t.equal(stat('t1', 'rx').dropTooBig - tooBig, 1, 'the 1515-byte frame, 1519 with its tag, counted too big at t1');

    const n = frame(g.a2.mac, g.t2.mac, 200, 50);
    await exchange(t, 't2 untagged (native 10) -> a2', 't2', [n], { a2: [n] });
    const nb = frame(g.t2.mac, g.a2.mac, 200, 51);
    await exchange(t, 'a2 -> t2: native VLAN leaves untagged', 'a2', [nb], { t2: [nb] });
    const p = frame(g.b1.mac, g.t2.mac, 90, 52);
    await exchange(t, 't2 tagged 20 -> b1 (pop)', 't2', [tag(p, 20)], { b1: [p] });
    const pb = [64, 1000].map((len, k) => frame(g.t2.mac, g.b1.mac, len, 53 + k));
    await exchange(t, 'b1 -> t2 (push, one buffer each; 1000 bytes through the bulk copy)', 'b1', pb, { t2: pb.map((f) => tag(f, 20)) });
  });

  await t.test('priority-tagged frames (VID 0) belong to the port VLAN; PCP kept when tagged again', async (t) => {
    const f = frame(BCAST, g.a1.mac, 80, 60);
    await exchange(t, 'a1 sends PCP 5 VID 0', 'a1', [tag(f, 0xa000)], { a2: [f], t1: [tag(f, 0xa00a)], t2: [f], t3: [tag(f, 0xa00a)] });
  });

  await t.test('one MAC in two VLANs: two entries, two ports', async (t) => {
    const m = macOf(0x300);
    const f10 = frame(BCAST, m, 64, 70);
    const f20 = frame(BCAST, m, 64, 71);
    await exchange(t, 'M in VLAN 10 from a2', 'a2', [f10], { a1: [f10], t1: [tag(f10, 10)], t2: [f10], t3: [tag(f10, 10)] });
    await exchange(t, 'M in VLAN 20 from b1', 'b1', [f20], { t1: [tag(f20, 20)], t2: [tag(f20, 20)], t3: [tag(f20, 20)] });
    const to10 = frame(m, g.t1.mac, 64, 72);
    const to20 = frame(m, g.t1.mac, 64, 73);
    await exchange(t, 't1 -> M in VLAN 10 reaches a2 only', 't1', [tag(to10, 10)], { a2: [to10] });
    await exchange(t, 't1 -> M in VLAN 20 reaches b1 only', 't1', [tag(to20, 20)], { b1: [to20] });
    // one burst alternating the VLAN with the same MACs: the poller's kept lookup is per
    // (VLAN, MAC), so each frame still goes to its own VLAN's port
    const mixed = [74, 75, 76, 77, 78].map((seq, k) => frame(m, g.t1.mac, 64 + k, seq));
    const vids = [10, 20, 20, 10, 20];
    await exchange(t, 't1 -> M, one burst alternating VLANs 10 and 20', 't1', mixed.map((f, k) => tag(f, vids[k])), {
      a2: mixed.filter((_, k) => vids[k] === 10),
      b1: mixed.filter((_, k) => vids[k] === 20),
    });
  });

  await t.test('hostile frames: spoofed tags, double tags, QinQ, VIDs not carried, short tags', async (t) => {
    const drops = (n: Name): number => stat(n, 'tx').dropVlan;
    const a1d = drops('a1');
    const spoof = [tag(frame(BCAST, g.a1.mac, 64, 80), 20), tag(frame(g.b1.mac, g.a1.mac, 64, 81), 20), tag(frame(BCAST, g.a1.mac, 64, 82), 10)];
    await exchange(t, 'a1 (access 10) sends frames tagged 20, and 10', 'a1', spoof, {});
    t.equal(drops('a1') - a1d, 3, 'a1: 3 tag-spoofing frames counted as VLAN drops');

    const hop = tag(tag(frame(BCAST, g.a1.mac, 64, 83), 20), 30);
    await exchange(t, 'a1 sends a double tag (30 outside, 20 inside)', 'a1', [hop], {});
    const prioHop = tag(tag(frame(BCAST, g.a1.mac, 64, 84), 20), 0);
    const inner = tag(frame(BCAST, g.a1.mac, 64, 84), 20);
    // a priority tag outside: the frame is VLAN 10's; its inner tag is payload, never a VLAN
    await exchange(t, 'a1 sends a priority tag over a tag of 20', 'a1', [prioHop], { a2: [inner], t1: [tag(inner, 10)], t2: [inner], t3: [tag(inner, 10)] });
    t.equal(drops('a1') - a1d, 4, 'a1: the double tag counted too');

    // the classic hop: the native VLAN tagged outside, the target inside, from a trunk
    const nat = tag(frame(BCAST, g.t2.mac, 64, 85), 20);
    await exchange(t, 't2 sends 10 (its native) over 20', 't2', [tag(nat, 10)], { a1: [nat], a2: [nat], t1: [tag(nat, 10)], t3: [tag(nat, 10)] });

    const qinq = tag(tag(frame(BCAST, g.t1.mac, 64, 86), 10), 20, 0x88a8);
    await exchange(t, 't1 sends 802.1ad 0x88a8 VID 20 over 0x8100 VID 10: classified by the outer tag', 't1', [qinq], {
      b1: [tag(frame(BCAST, g.t1.mac, 64, 86), 10)],
      t2: [qinq],
      t3: [qinq],
    });

    const t1d = drops('t1');
    const bad = [
      tag(frame(BCAST, g.t1.mac, 64, 87), 40), // not carried by t1
      tag(frame(BCAST, g.t1.mac, 64, 88), 0xfff), // VID 4095 is reserved
      frame(BCAST, g.t1.mac, 64, 89), // untagged on a trunk without a native VLAN
      tag(frame(BCAST, g.t1.mac, 64, 90), 0), // priority-tagged: the same
      tag(frame(BCAST, g.t1.mac, 64, 91), 10).subarray(0, 16), // a tag with no ethertype after it
      tag(frame(BCAST, g.t1.mac, 64, 92), 10).subarray(0, 17),
      tag(frame(BCAST, g.t1.mac, 64, 93), 10, 0x88a8).subarray(0, 16),
    ];
    await exchange(t, 't1 sends frames its rules refuse', 't1', bad, {});
    t.equal(drops('t1') - t1d, bad.length, `t1: ${bad.length} VLAN drops`);
    const short = frame(BCAST, g.a1.mac, 64, 94).subarray(0, 13);
    await exchange(t, 'a1 sends 13 bytes (no ethertype)', 'a1', [short], {});
    t.equal(drops('a1') - a1d, 5, 'a1: counted');
    t.equal(drops('n1'), 0, 'ports without VLANs count no VLAN drops');
    t.equal(drops('t3'), 0, 't3: nothing refused yet');
  });

  await t.test('RARP from the backend (SEND_RARP) and MAC moves stay in their VLAN', async (t) => {
    const rarp = (mac: Uint8Array): Uint8Array => {
      const f = new Uint8Array(60);
      f.set(BCAST, 0);
      f.set(mac, 6);
      f.set([0x80, 0x35, 0, 1, 8, 0, 6, 4, 0, 3], 12);
      f.set(mac, 22);
      f.set(mac, 32);
      return f;
    };
    const got = fresh();
    await g.a1.sendRarp();
    await waitUntil(() => {
      drainAll(got);
      return got.a2.length + got.t1.length + got.t2.length + got.t3.length >= 4;
    }, 5000, 'the RARP').catch(() => undefined);
    await sleep(50);
    drainAll(got);
    const r = rarp(g.a1.mac);
    t.same(
      NAMES.map((n) => got[n].map(hex)),
      NAMES.map((n) => (n === 'a2' || n === 't2' ? [hex(r)] : n === 't1' || n === 't3' ? [hex(tag(r, 10))] : [])),
      "a1's RARP reached VLAN 10's ports only: untagged at a2 and t2 (native), tagged 10 at t1 and t3",
    );
    // a1's MAC turns up in VLAN 20 (from b1): VLAN 10 still sends it to a1
    const moved = frame(BCAST, g.a1.mac, 64, 95);
    await exchange(t, "a1's MAC from b1, in VLAN 20", 'b1', [moved], { t1: [tag(moved, 20)], t2: [tag(moved, 20)], t3: [tag(moved, 20)] });
    const to10 = frame(g.a1.mac, g.t1.mac, 64, 96);
    await exchange(t, 't1 -> a1 in VLAN 10: still a1', 't1', [tag(to10, 10)], { a1: [to10] });
    const to20 = frame(g.a1.mac, g.t1.mac, 64, 97);
    await exchange(t, 't1 -> that MAC in VLAN 20: b1', 't1', [tag(to20, 20)], { b1: [to20] });
    // and a move inside VLAN 10 (a1's MAC now behind a2) moves the VLAN 10 entry only
    const mv = frame(BCAST, g.a1.mac, 64, 98);
    await exchange(t, "a1's MAC from a2 (a move in VLAN 10)", 'a2', [mv], { a1: [mv], t1: [tag(mv, 10)], t2: [mv], t3: [tag(mv, 10)] });
    const again10 = frame(g.a1.mac, g.t1.mac, 64, 99);
    await exchange(t, 't1 -> that MAC in VLAN 10: now a2', 't1', [tag(again10, 10)], { a2: [again10] });
    const again20 = frame(g.a1.mac, g.t1.mac, 64, 100);
    await exchange(t, 'in VLAN 20: still b1', 't1', [tag(again20, 20)], { b1: [again20] });
    const back = frame(BCAST, g.a1.mac, 64, 101);
    await exchange(t, 'a1 takes its MAC back', 'a1', [back], { a2: [back], t1: [tag(back, 10)], t2: [back], t3: [tag(back, 10)] });
  });

  await t.test('dirty log: buffers written with a tag pushed or popped are logged (live migration)', async (t) => {
    const rx = { a1: g.a1, t1: g.t1, t2: g.t2 };
    for (const gst of Object.values(rx)) await gst.startLogging();
    const got: Record<string, RxPacket[]> = { a1: [], t1: [], t2: [] };
    const drain = (): void => {
      for (const [n, gst] of Object.entries(rx)) got[n].push(...gst.receive(0));
      for (const n of NAMES) g[n].reclaim(0);
    };
    // push into t1's 128-byte mergeable chains (general path), push into t2's single buffers
    // (1000 bytes: the bulk copy), pop into a1's
    g.a1.send(0, [60, 1000].map((len, k) => frame(g.t1.mac, g.a1.mac, len, 200 + k)));
    g.b1.send(0, [60, 1000].map((len, k) => frame(g.t2.mac, g.b1.mac, len, 210 + k)));
    g.t1.send(0, [60, 1000].map((len, k) => tag(frame(g.a1.mac, g.t1.mac, len, 220 + k), 10)));
    await waitUntil(() => {
      drain();
      return got.a1.length >= 2 && got.t1.length >= 2 && got.t2.length >= 2;
    }, 5000, 'the logged frames');
    for (const [n, gst] of Object.entries(rx)) {
      const dirty = new Set(gst.dirtyPages());
      const missing: number[] = [];
      for (const p of got[n]) {
        for (const u of p.used) {
          let left = u.len; // a chain's buffers are written in order
          for (const b of u.bufs) {
            const w = Math.min(b.len, left);
            left -= w;
            for (let pg = Math.floor(b.gpa / 4096); w > 0 && pg <= Math.floor((b.gpa + w - 1) / 4096); pg++) if (!dirty.has(pg)) missing.push(pg);
          }
        }
      }
      t.same(missing, [], `${n}: every page its ${got[n].length} frames were written to is in the dirty log`);
      await gst.stopLogging();
    }
  });

  await t.test('a flood of 4094 VLANs x 4 MACs against the MAC table: nothing crosses a VLAN, the table keeps working', async (t) => {
    const srcs = [0, 1, 2, 3].map((k) => Uint8Array.from([0x02, 0, 0, 0, 0x10, k]));
    const flood: Uint8Array[] = [];
    // the same 4 MACs in every VLAN: (VLAN, MAC) keys that differ in the VID alone
    for (let v = 1; v <= 4094; v++) for (const s of srcs) flood.push(tag(frame(macOf(0x7777), s, 64, v), v));
    flood.push(tag(frame(BCAST, srcs[0], 64, 4095), 0xfff)); // refused
    const got = fresh();
    let sent = 0;
    while (sent < flood.length) {
      const k = g.t3.send(0, flood.slice(sent, sent + 64));
      sent += k;
      drainAll(got);
      if (k === 0) await sleep(1);
    }
    await waitUntil(() => {
      drainAll(got);
      return g.t3.tx[0].freeDescCount() === g.t3.queueSize;
    }, 10000, 'the flood taken');
    await sleep(50);
    drainAll(got);
    t.equal(stat('t3', 'tx').dropVlan, 1, 't3: VID 4095 refused and counted');
    // every frame that arrived must be of a VLAN of the port it arrived at, and say so inside
    const pvid: Partial<Record<Name, number>> = { a1: 10, a2: 10, b1: 20, t2: 10 };
    const allowed: Partial<Record<Name, number[]>> = { t1: [10, 20, 30], t2: [20] };
    let wrong = 0;
    for (const n of NAMES) {
      for (const f of got[n]) {
        const tagged = f[12] === 0x81 && f[13] === 0x00;
        const vid = tagged ? ((f[14] << 8) | f[15]) & 0xfff : (pvid[n] ?? -1);
        const seq = Buffer.from(f).readUInt32BE(tagged ? 18 : 14);
        const ok = seq === vid && (tagged ? (allowed[n] ?? []).includes(vid) : pvid[n] === vid);
        if (!ok) wrong++;
      }
    }
    t.equal(wrong, 0, 'no frame reached a port outside its VLAN');
    t.same(
      NAMES.map((n) => got[n].length),
      [4, 4, 4, 12, 8, 0, 0, 0],
      'VLAN 10 frames reached a1, a2, t1, t2; VLAN 20 b1, t1, t2; VLAN 30 t1; nothing else anywhere',
    );

    // after it: a MAC learned before still goes to its port only; a new one is delivered in its VLAN
    const u = frame(g.a2.mac, g.a1.mac, 64, 100);
    await exchange(t, 'a1 -> a2 after the flood', 'a1', [u], { a2: [u] });
    const m = macOf(0x301);
    const f = frame(BCAST, m, 64, 101);
    await exchange(t, 'a new MAC in VLAN 10 from a1', 'a1', [f], { a2: [f], t1: [tag(f, 10)], t2: [f], t3: [tag(f, 10)] });
    const r = frame(m, g.a2.mac, 64, 102);
    const rGot = fresh();
    g.a2.send(0, [r]);
    await waitUntil(() => {
      drainAll(rGot);
      return rGot.a1.length > 0;
    }, 5000, 'the reply').catch(() => undefined);
    await sleep(50);
    drainAll(rGot);
    t.same(rGot.a1.map(hex), [hex(r)], 'a1 gets the reply to its new MAC');
    const outside = NAMES.filter((n) => !['a1', 't1', 't2', 't3'].includes(n) && rGot[n].length > 0);
    t.same(outside, [], 'and no port outside VLAN 10 sees it (a flood within VLAN 10 if the table had no room to learn)');
  });
});

t.test('VLAN config errors are named by path, in the code and in the schema', async (t) => {
  const base = (vlan: unknown, fwdMode: 'bridge' | 'xconnect' | undefined = 'bridge'): Record<string, unknown> => ({
    interfaces: [
      { name: 'a', socket: '/tmp/a.sock', vlan: { mode: 'access', tag: 10 } },
      { name: 'b', socket: '/tmp/b.sock', vlan },
    ],
    ...(fwdMode ? { forwarding: fwdMode === 'bridge' ? { mode: 'bridge' } : { mode: 'xconnect', pairs: [['a', 'b']] } } : {}),
  });
  const cases: Array<[string, unknown, RegExp]> = [
    ['tag 0', { mode: 'access', tag: 0 }, /^interfaces\[1\]\.vlan\.tag: expected an integer 1\.\.4094, got 0$/],
    ['tag 4095', { mode: 'access', tag: 4095 }, /^interfaces\[1\]\.vlan\.tag: expected an integer 1\.\.4094, got 4095$/],
    ['tag missing', { mode: 'access' }, /^interfaces\[1\]\.vlan\.tag: expected an integer 1\.\.4094/],
    ['tag a string', { mode: 'access', tag: '10' }, /^interfaces\[1\]\.vlan\.tag: expected an integer/],
    ['mode', { mode: 'hybrid', tag: 10 }, /^interfaces\[1\]\.vlan\.mode: expected "access" or "trunk", got "hybrid"$/],
    ['access with allowed', { mode: 'access', tag: 10, allowed: [20] }, /^interfaces\[1\]\.vlan\.allowed: expected one of the keys mode, tag/],
    ['trunk without allowed', { mode: 'trunk' }, /^interfaces\[1\]\.vlan\.allowed: expected an array of VLAN ids/],
    ['trunk with nothing', { mode: 'trunk', allowed: [] }, /^interfaces\[1\]\.vlan\.allowed: expected an array of VLAN ids 1\.\.4094 \(empty only with a native VLAN\)/],
    ['allowed 4095', { mode: 'trunk', allowed: [10, 4095] }, /^interfaces\[1\]\.vlan\.allowed\[1\]: expected an integer 1\.\.4094, got 4095$/],
    ['allowed twice', { mode: 'trunk', allowed: [10, 20, 10] }, /^interfaces\[1\]\.vlan\.allowed\[2\]: expected a VLAN id listed once, got 10$/],
    ['native 0', { mode: 'trunk', allowed: [10], native: 0 }, /^interfaces\[1\]\.vlan\.native: expected an integer 1\.\.4094, got 0$/],
    ['trunk with tag', { mode: 'trunk', allowed: [10], tag: 5 }, /^interfaces\[1\]\.vlan\.tag: expected one of the keys mode, allowed, native/],
    ['not an object', 10, /^interfaces\[1\]\.vlan: expected an object/],
    ['null', null, /^interfaces\[1\]\.vlan: expected an object/],
  ];
  for (const [name, vlan, re] of cases) {
    const raw = base(vlan);
    t.throws(() => parseConfig(raw, 2), re, name);
    // the published schema refuses the same value on its own
    t.throws(() => checkSchema(raw), ConfigError, `${name}: refused by schema/config.schema.json too`);
  }
  t.throws(() => parseConfig(base({ mode: 'access', tag: 20 }, 'xconnect'), 2), /^interfaces\[0\]\.vlan: expected no vlan with forwarding\.mode "xconnect" \(VLANs are a bridge feature\)/, 'xconnect refuses VLANs by name');
  const c = parseConfig(base({ mode: 'trunk', allowed: [20, 30], native: 10 }, undefined), 2);
  t.same(c.forwarding, { mode: 'bridge', agingSeconds: 300 }, 'two interfaces with VLANs default to a bridge');
  t.same(c.interfaces[1].vlan, { mode: 'trunk', allowed: [20, 30], native: 10 }, 'trunk parsed');
  t.doesNotThrow(() => checkSchema(base({ mode: 'trunk', allowed: [], native: 10 })), 'the schema takes a trunk with a native VLAN only');
  t.same(parseConfig({ interfaces: [{ name: 'a', socket: '/tmp/a.sock' }, { name: 'b', socket: '/tmp/b.sock' }] }, 2).interfaces[0].vlan, null, 'no vlan: null, today\'s behaviour');
});

/** A raw HTTP request on the control socket. */
function request(socket: string, method: string, urlPath: string, body?: unknown): Promise<{ status: number; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const text = body === undefined ? undefined : JSON.stringify(body);
    const headers: Record<string, string | number> = text === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) };
    const req = http.request({ socketPath: socket, method, path: urlPath, headers, timeout: 10000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString()) as Record<string, unknown> }));
    });
    req.on('error', reject);
    if (text !== undefined) req.write(text);
    req.end();
  });
}

t.test('control API: add with vlan (replies valid against the OpenAPI document), refused by name when wrong or in xconnect mode', async (t) => {
  const doc = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'schema', 'control-api.openapi.json'), 'utf8')) as Record<string, unknown>;
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  ajv.addSchema({ ...doc, $id: 'api' });
  const valid = (name: string, v: unknown): string | null => {
    const check = ajv.getSchema(`api#/components/schemas/${name}`)!;
    return check(v) ? null : ajv.errorsText(check.errors);
  };
  const dir = tmpDir('vhostfwd-vlan-ctl-');
  const sock = (n: string) => path.join(dir, `${n}.sock`);
  const fwd = new Forwarder(parseConfig({ interfaces: [], forwarding: { mode: 'bridge' }, control: false }, os.cpus().length));
  await fwd.start();
  const ctl = await startControl(fwd, { socket: sock('control'), socketDir: null, version: 'test' });
  const xfwd = new Forwarder(parseConfig({ interfaces: [], forwarding: { mode: 'xconnect' }, control: false }, os.cpus().length));
  await xfwd.start();
  const xctl = await startControl(xfwd, { socket: sock('xcontrol'), socketDir: null, version: 'test' });
  const guests: SyntheticGuest[] = [];
  t.teardown(async () => {
    for (const gst of guests) gst.close();
    await ctl.close();
    await xctl.close();
    await fwd.stop();
    await xfwd.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const x = await request(ctl.socket, 'POST', '/v1/interfaces', { name: 'x', socket: sock('x'), vlan: { mode: 'access', tag: 10 } });
  t.equal(x.status, 201, 'access port added');
  t.equal(valid('InterfaceInfo', x.body), null, 'the reply is a valid InterfaceInfo');
  t.same((x.body.spec as Record<string, unknown>).vlan, { mode: 'access', tag: 10 }, 'its spec shows the vlan');
  const y = await request(ctl.socket, 'POST', '/v1/interfaces', { name: 'y', socket: sock('y'), vlan: { mode: 'trunk', allowed: [10, 20] } });
  t.equal(y.status, 201, 'trunk port added');
  t.equal(valid('InterfaceInfo', y.body), null, 'valid');
  t.equal(valid('InterfaceSpec', { name: 'z', socket: '/x', vlan: { mode: 'trunk', allowed: [1], native: 2 } }), null, 'the OpenAPI InterfaceSpec takes a trunk');
  t.not(valid('InterfaceSpec', { name: 'z', socket: '/x', vlan: { mode: 'access', tag: 4095 } }), null, 'and refuses VID 4095');

  const bad = await request(ctl.socket, 'POST', '/v1/interfaces', { name: 'w', socket: sock('w'), vlan: { mode: 'access', tag: 4095 } });
  t.equal(bad.status, 400, 'VID 4095 refused');
  t.equal(valid('Error', bad.body), null, 'a valid Error');
  t.equal((bad.body.error as Record<string, unknown>).field, 'vlan.tag', 'named by its path');
  const xc = await request(xctl.socket, 'POST', '/v1/interfaces', { name: 'w', socket: sock('w'), vlan: { mode: 'access', tag: 10 } });
  t.equal(xc.status, 400, 'xconnect mode refuses a port with a vlan');
  t.equal((xc.body.error as Record<string, unknown>).field, 'vlan', 'named');
  t.same((await request(xctl.socket, 'GET', '/v1/interfaces')).body.interfaces, [], 'nothing added');

  const X = await SyntheticGuest.start({ socket: sock('x'), mac: macOf(1), memSize: 4 << 20 });
  const Y = await SyntheticGuest.start({ socket: sock('y'), mac: macOf(2), memSize: 4 << 20 });
  guests.push(X, Y);
  const f = frame(BCAST, X.mac, 64, 1);
  X.send(0, [f]);
  const got: Uint8Array[] = [];
  await waitUntil(() => {
    X.reclaim(0);
    for (const p of Y.receive(0)) got.push(Uint8Array.from(p.data));
    return got.length > 0;
  }, 5000, 'the frame at y');
  t.same(got.map(hex), [hex(tag(f, 10))], 'x (access 10, added at run time) -> y (trunk): tagged 10, byte-exact');
  const spoof = tag(frame(BCAST, X.mac, 64, 2), 20);
  X.send(0, [spoof]);
  await waitUntil(() => (fwd.stats().find((s) => s.iface === 'x' && s.dir === 'tx')?.dropVlan ?? 0) === 1, 5000, 'the drop counted');
  const show = await request(ctl.socket, 'GET', '/v1/interfaces/x');
  t.equal(valid('InterfaceInfo', show.body), null, 'show is valid');
  t.equal((show.body.rings as Array<Record<string, unknown>>).find((r) => r.dir === 'tx')?.dropVlan, 1, 'show: the spoofed frame counted as dropVlan on x');
  t.same(Y.receive(0).map((p) => hex(p.data)), [], 'y got nothing of it');
  const stats = await request(ctl.socket, 'GET', '/v1/stats');
  t.equal(((stats.body.queues as Array<Record<string, unknown>>).find((q) => q.iface === 'x' && q.dir === 'tx') ?? {}).dropVlan, 1, 'stats: dropVlan 1');
});

t.test('the 802.1Q rules and the (VLAN, MAC) table, unit by unit', async (t) => {
  const v = new VlanPorts();
  v.set(0, { mode: 'access', tag: 10 });
  v.set(1, { mode: 'trunk', allowed: [10, 20], native: 30 });
  v.set(200, { mode: 'access', tag: 4094 }); // past the first allocation: grows
  const h = (tpid: number, tci: number): Uint8Array => Uint8Array.from([...new Array<number>(12).fill(0), tpid >> 8, tpid & 0xff, tci >> 8, tci & 0xff]);
  t.equal(v.classify(0, h(0x0800, 0), 0, 60), 10, 'access: untagged -> its tag');
  t.equal(v.classify(0, h(0x8100, 0x2000), 0, 60), 10, 'access: priority-tagged -> its tag');
  t.equal(v.classify(0, h(0x8100, 10), 0, 60), -1, 'access: tagged, even with its own VID -> dropped');
  t.equal(v.classify(1, h(0x8100, 20), 0, 60), 20, 'trunk: allowed VID');
  t.equal(v.classify(1, h(0x8100, 30), 0, 60), 30, 'trunk: its native VID tagged is taken too');
  t.equal(v.classify(1, h(0x88a8, 20), 0, 60), 20, 'trunk: 802.1ad outer tag classified by its VID');
  t.equal(v.classify(1, h(0x8100, 40), 0, 60), -1, 'trunk: VID not carried -> dropped');
  t.equal(v.classify(1, h(0x0800, 0), 0, 60), 30, 'trunk: untagged -> native');
  t.equal(v.classify(1, h(0x8100, 20), 0, 17), -1, 'a tag with no ethertype -> dropped');
  t.equal(v.classify(200, h(0x0800, 0), 0, 60), 4094, 'a port past the first allocation');
  t.equal(v.egress(0, 20, -1), -1, 'not a member: not delivered');
  t.equal(v.egress(0, 10, 0x2000), EDIT_POP, 'a priority-tagged frame to an access port: the tag popped');
  t.equal(v.egress(1, 30, -1), 0, 'to the native VLAN: untagged as it came');
  t.equal(v.egress(1, 20, -1), EDIT_PUSH | 20, 'to a trunk: pushed');
  // a tagged frame to a tagged member is always rewritten from what was classified, whatever its TCI
  let notRewritten = 0;
  for (let tci = 0; tci < 0x10000; tci++) {
    const e = egressEdit(2, 20, tci);
    if ((e & 0xffff) !== ((tci & 0xf000) | 20) || (e & (EDIT_POP | EDIT_PUSH | EDIT_TPID_AD)) !== (EDIT_POP | EDIT_PUSH)) notRewritten++;
  }
  t.equal(notRewritten, 0, 'every TCI: the tag rewritten (PCP and DEI kept, the VID written), never copied from the source');
  t.equal(egressEdit(2, 20, 0x10000 | 20) & EDIT_TPID_AD, EDIT_TPID_AD, 'an 802.1ad tag stays 0x88a8');
  v.set(0, null);
  t.equal(v.egress(0, 10, -1), -1, 'cleared: no VLANs');

  const table = new MacTable(new SharedArrayBuffer(MAC_TABLE_BYTES), 300);
  const mac = macOf(7);
  for (let vid = 1; vid <= 4094; vid++) table.learn(mac, 0, vid % 13, 1000, vid);
  let found = 0;
  for (let vid = 1; vid <= 4094; vid++) if (table.lookup(mac, 0, 1000, vid) === vid % 13) found++;
  t.equal(found, 4094, 'one MAC in 4094 VLANs: 4094 entries, each found with its own port');
  t.equal(table.lookup(mac, 0, 1000, 0), -1, 'not in VLAN 0 (the ports without VLANs)');
  t.equal(table.lookup(mac, 0, 1301, 5), -1, 'aged out per VLAN entry');
});

t.test('ctl add --vlan shapes the API body', async (t) => {
  t.same(vlanArg('access:10'), { mode: 'access', tag: 10 });
  t.same(vlanArg('trunk:10,20,100-103'), { mode: 'trunk', allowed: [10, 20, 100, 101, 102, 103] });
  t.same(vlanArg('trunk::native=5'), { mode: 'trunk', allowed: [], native: 5 });
  t.same(vlanArg('trunk:1-4094').allowed, Array.from({ length: 4094 }, (_, i) => i + 1));
  t.throws(() => vlanArg('hybrid:1'), /expected access:TAG or trunk:/);
});
