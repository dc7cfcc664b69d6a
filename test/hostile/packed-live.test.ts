/**
 * Hostile PACKED rings on a LIVE forwarder (issue 19), as rings.test.ts for split rings: the
 * arena offers VIRTIO_F_RING_PACKED on every interface; the bystanders (SyntheticGuest, split
 * only) do not take it, the victim does: a SyntheticGuest negotiating with the packed bit,
 * whose ring memory is then driven as packed rings by the packed test driver
 * (test/packed-driver.ts) over the guest's own memory. The victim writes malformed packed
 * descriptors and kicks (TX) or has its peer send to it (RX). Every case goes through
 * runCase (kit/hostile/harness.ts): one 'device reset' line naming the rule, no other error,
 * the bystander pair loses nothing; and here, since packed buffers carry no DriverRing
 * canaries, the victim's whole memory outside its packed descriptor rings and event areas
 * must be as it was before the kick. A control case forwards a good packed frame, no reset.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { native } from '../../src/native';
import { DEFAULT_WANT, SyntheticGuest, frame } from '../../src/frontend/guest';
import { F, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, bit } from '../../src/protocol/constants';
import { Case, Ctx, MAC_V, MAC_W, kickTx, runCase, startArena } from '../../kit/hostile/harness';
import { waitUntil } from '../../kit/env';
import { PackedDriver } from '../packed-driver';

const NEXT = VRING_DESC_F_NEXT;
const WRITE = VRING_DESC_F_WRITE;
const INDIRECT = VRING_DESC_F_INDIRECT;
const QSIZE = 64;

/**
 * A packed driver over ring i of g (the guest's split layout reused: desc, driver area at
 * avail, device area at used). SyntheticGuest sets each ring's base to 0: for a packed ring
 * that is slot 0 with wrap counter 0 (GET/SET_VRING_BASE carry the wrap in bit 15).
 */
function packedRing(g: SyntheticGuest, i: number): PackedDriver {
  const r = g.ringGpa(i);
  return new PackedDriver(g.mem, { size: g.queueSize, descGpa: r.desc, drvGpa: r.avail, devGpa: r.used, ...g.arena(i), startWrap: 0 });
}

/** The victim memory outside its packed rings must not change after `snap`: checked in `after`. */
class Watch {
  snap: Uint8Array | null = null;
  g: SyntheticGuest | null = null;

  take(g: SyntheticGuest): void {
    this.g = g;
    this.snap = g.mem.slice();
  }

  changedOutsideRings(): number {
    const g = this.g!;
    const snap = this.snap!;
    const skip: Array<[number, number]> = [0, 1].flatMap((i): Array<[number, number]> => {
      const r = g.ringGpa(i);
      return [[r.desc, r.desc + 16 * g.queueSize], [r.used, r.used + 4]];
    });
    let n = 0;
    for (let k = 0; k < g.memSize; k++) {
      if (g.mem[k] !== snap[k] && !skip.some(([s, e]) => k >= s && k < e)) n++;
    }
    return n;
  }
}

async function victim(ctx: Ctx): Promise<SyntheticGuest> {
  const g = await ctx.guest({ want: DEFAULT_WANT | bit(F.VIRTIO_F_RING_PACKED), rxPosted: 0, queueSize: QSIZE });
  if ((g.features & bit(F.VIRTIO_F_RING_PACKED)) === 0n) throw new Error('the victim did not get packed rings');
  return g;
}

/** TX: 12-byte header + a 100-byte frame to W in the TX arena. */
function txBuf(d: PackedDriver): number {
  const bytes = new Uint8Array(112);
  bytes.set(frame(MAC_W, MAC_V, 100, 1), 12);
  const gpa = d.alloc(bytes.length);
  d.write(gpa, bytes);
  return gpa;
}

function txCase(name: string, reason: RegExp | null, build: (d: PackedDriver, g: SyntheticGuest) => void, after?: Case['after']): Case {
  const w = new Watch();
  return {
    name,
    reason,
    attack: async (ctx) => {
      const g = await victim(ctx);
      const d = packedRing(g, 1);
      build(d, g);
      w.take(g);
      kickTx(g);
    },
    after: async (tt, ctx) => {
      if (after) await after(tt, ctx);
      tt.equal(w.changedOutsideRings(), 0, `${name}: nothing written outside the victim's packed rings`);
    },
  };
}

function rxCase(name: string, reason: RegExp, build: (d: PackedDriver, g: SyntheticGuest) => void): Case {
  const w = new Watch();
  return {
    name,
    reason,
    attack: async (ctx) => {
      const g = await victim(ctx);
      const peer = await ctx.guest({}, 'w');
      const d = packedRing(g, 0);
      build(d, g);
      w.take(g);
      native.eventfdWrite(g.kickFds[0], 1);
      peer.send(0, [frame(MAC_V, MAC_W, 100, 7)]);
    },
    after: (tt) => {
      tt.equal(w.changedOutsideRings(), 0, `${name}: nothing written outside the victim's packed rings`);
    },
  };
}

const A = 1 << 15; // available at wrap counter 0: AVAIL clear, USED set

const cases: Case[] = [
  txCase('packed TX: a good frame is forwarded (control: the victim really runs packed rings)', null, (d) => {
    d.postChain([[txBuf(d), 112]], false);
  }, async (tt, ctx) => {
    const peer = await ctx.guest({}, 'w');
    // the frame was kicked before W connected; send another, and look for it at W
    const g = ctx.guests[0];
    const d = packedRing(g, 1);
    d.next = 1;
    d.usedNext = 1;
    d.wrap = d.usedWrap = 0;
    d.postChain([[txBuf(d), 112]], false);
    kickTx(g);
    const got: Uint8Array[] = [];
    await waitUntil(() => {
      for (const p of peer.receive(0)) got.push(p.data);
      return got.length > 0;
    }, 3000, 'the packed frame at W').catch(() => undefined);
    tt.ok(got.some((p) => Buffer.compare(Buffer.from(p), Buffer.from(frame(MAC_W, MAC_V, 100, 1))) === 0), 'W received the frame byte-exact');
    await sleep(20);
  }),
  txCase('packed TX: descriptor outside guest memory', /guest error: ring 1: descriptor outside guest memory: addr 0x401000 len 112/, (d, g) => {
    d.writeDesc(0, g.memSize + 0x1000, 112, 0, A);
  }),
  txCase('packed TX: descriptor crossing the end of guest memory', /guest error: ring 1: descriptor crosses a memory region end: addr 0x3ffff0 len 112/, (d, g) => {
    d.writeDesc(0, g.memSize - 16, 112, 0, A);
  }),
  txCase('packed TX: chain longer than the ring (NEXT on every descriptor)', /guest error: ring 1: descriptor chain longer than the queue size/, (d) => {
    const b = txBuf(d);
    for (let s = QSIZE - 1; s >= 0; s--) d.writeDesc(s, b, 112, 0, A | NEXT);
  }),
  txCase('packed TX: indirect inside indirect', /guest error: ring 1: nested indirect descriptor/, (d) => {
    const inner = d.alloc(16);
    const outer = d.alloc(16);
    const w = (o: number, addr: number, len: number, flags: number): void => {
      const v = new DataView(new ArrayBuffer(16));
      v.setUint32(0, addr, true);
      v.setUint32(8, len, true);
      v.setUint16(14, flags, true);
      d.write(o, new Uint8Array(v.buffer));
    };
    w(inner, txBuf(d), 112, 0);
    w(outer, inner, 16, INDIRECT);
    d.writeDesc(0, outer, 16, 0, A | INDIRECT);
  }),
  txCase('packed TX: buffer id = queue size', /guest error: ring 1: buffer id out of range: id 64 size 64/, (d) => {
    d.writeDesc(0, txBuf(d), 112, QSIZE, A);
  }),
  txCase('packed TX: writable descriptor', /guest error: ring 1: writable descriptor in TX chain/, (d) => {
    d.writeDesc(0, txBuf(d), 112, 0, A | WRITE);
  }),
  rxCase('packed RX: readable descriptor posted as a receive buffer', /guest error: ring 0: readable descriptor in RX chain/, (d) => {
    d.writeDesc(0, d.alloc(2048), 2048, 0, A);
  }),
  rxCase('packed RX: writable descriptor crossing the end of memory', /guest error: ring 0: descriptor crosses a memory region end/, (d, g) => {
    d.writeDesc(0, g.memSize - 64, 2048, 0, A | WRITE);
  }),
  rxCase('packed RX: indirect table outside guest memory', /guest error: ring 0: indirect table outside guest memory/, (d, g) => {
    d.writeDesc(0, g.memSize + 0x100, 32, 0, A | INDIRECT);
  }),
];

t.test('hostile packed rings (live forwarder)', async (t) => {
  const arena = await startArena({}, { packedRing: true });
  t.teardown(arena.stop);
  for (const c of cases) await t.test(c.name, (tt) => runCase(tt, arena, c));
});
