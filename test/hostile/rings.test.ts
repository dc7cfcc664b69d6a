/**
 * Hostile guests at the ring level, on a LIVE forwarder: a victim SyntheticGuest negotiates
 * normally, then writes malformed descriptors / avail entries into its rings with the
 * DriverRing raw helpers and kicks (or has its peer send to it, for RX rings). The worker
 * must detect the violation, stop only that device (one 'device reset' line naming the rule),
 * and never touch memory outside the guest's own buffers, while the bystander pair keeps
 * forwarding without loss. See README.md for the list and the CVEs mirrored.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { native } from '../../src/native';
import { DriverRing } from '../../src/frontend/driver-ring';
import { DEFAULT_WANT, SyntheticGuest, UVA_BASE, frame } from '../../src/frontend/guest';
import { F, Req, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, bit } from '../../src/protocol/constants';
import { encodeSingleRegion, encodeVringAddr, encodeVringState, encodeU64 } from '../../src/protocol/messages';
import { Case, Ctx, MAC_V, MAC_W, kickTx, runCase, startArena } from '../../kit/hostile/harness';
import { waitUntil } from '../../kit/env';

const NEXT = VRING_DESC_F_NEXT;
const WRITE = VRING_DESC_F_WRITE;
const INDIRECT = VRING_DESC_F_INDIRECT;

/** A TX buffer (12-byte header + 100-byte frame to W) in the ring's arena, canary-guarded. */
function txBuf(r: DriverRing): number {
  const bytes = new Uint8Array(112);
  bytes.set(frame(MAC_W, MAC_V, 100, 1), 12);
  const gpa = r.alloc(bytes.length);
  r.write(gpa, bytes);
  return gpa;
}

/** Victim guest; `build` writes raw descriptors into its TX ring and returns the head to publish. */
function txAttack(build: (r: DriverRing, g: SyntheticGuest) => number | Promise<number>, opts = {}) {
  return async (ctx: Ctx) => {
    const g = await ctx.guest(opts);
    const r = g.tx[0];
    const head = await build(r, g);
    r.pushAvail(head);
    kickTx(g);
  };
}

/** An indirect table of `n` descriptors (filled by `fill`) in the ring's arena. */
function table(r: DriverRing, n: number, fill: (i: number, tableGpa: number) => void): number {
  const gpa = r.alloc(16 * n);
  for (let i = 0; i < n; i++) fill(i, gpa);
  return gpa;
}

/** Victim with no RX buffers posted; `build` posts a malformed one; the peer W then sends to it. */
function rxAttack(build: (r: DriverRing, g: SyntheticGuest) => void) {
  return async (ctx: Ctx) => {
    const g = await ctx.guest({ rxPosted: 0 });
    const w = await ctx.guest({}, 'w');
    build(g.rx[0], g);
    native.eventfdWrite(g.kickFds[0], 1);
    w.send(0, [frame(MAC_V, MAC_W, 100, 7)]);
  };
}

const cases: Case[] = [
  {
    name: 'TX descriptor outside guest memory',
    cve: 'CVE-2018-1059 (descriptor address not checked against the regions)',
    reason: /guest error: ring 1: descriptor outside guest memory: addr 0x401000 len 112/,
    attack: txAttack((r, g) => {
      const h = r.allocDesc();
      r.writeDesc(h, g.memSize + 0x1000, 112, 0, 0);
      return h;
    }),
  },
  {
    name: 'TX descriptor crossing the end of guest memory',
    cve: 'CVE-2018-1059',
    reason: /guest error: ring 1: descriptor crosses a memory region end: addr 0x3ffff0 len 112/,
    attack: txAttack((r, g) => {
      const h = r.allocDesc();
      r.writeDesc(h, g.memSize - 16, 112, 0, 0);
      return h;
    }),
  },
  {
    name: 'TX descriptor address near 2^64',
    cve: 'CVE-2018-1059',
    reason: /guest error: ring 1: descriptor outside guest memory/,
    attack: txAttack((r) => {
      const h = r.allocDesc();
      r.writeDesc(h, 2 ** 64 - 4096, 8192, 0, 0);
      return h;
    }),
  },
  {
    name: 'TX descriptor length 0xffffffff',
    cve: 'CVE-2018-1059, CVE-2020-14374 (length not bounded)',
    reason: /guest error: ring 1: descriptor crosses a memory region end: addr 0x[0-9a-f]+ len 4294967295/,
    attack: txAttack((r) => {
      const h = r.allocDesc();
      r.writeDesc(h, txBuf(r), 0xffffffff, 0, 0);
      return h;
    }),
  },
  {
    name: 'TX descriptor spanning two adjacent memory regions',
    cve: 'CVE-2018-1059 (buffers across regions)',
    reason: /guest error: ring 1: descriptor crosses a memory region end: addr 0x3fffe0 len 112/,
    attack: async (ctx) => {
      const g = await ctx.guest();
      // a second region right after the first (gpa-adjacent): the two need not be adjacent in any mapping
      await g.ack(Req.ADD_MEM_REG, encodeSingleRegion({ gpa: g.memSize, size: 0x10000, uva: UVA_BASE + g.memSize, mmapOffset: 0 }), [ctx.memfd(0x10000)]);
      const r = g.tx[0];
      const h = r.allocDesc();
      r.writeDesc(h, g.memSize - 32, 112, 0, 0);
      r.pushAvail(h);
      kickTx(g);
    },
  },
  {
    name: 'descriptor chain loop (a -> b -> a)',
    cve: 'CVE-2020-14378 (descriptor walk not bounded)',
    reason: /guest error: ring 1: descriptor chain loop \(longer than the queue size\)/,
    attack: txAttack((r) => {
      const a = r.allocDesc();
      const b = r.allocDesc();
      const buf = txBuf(r);
      r.writeDesc(a, buf, 112, NEXT, b);
      r.writeDesc(b, buf, 112, NEXT, a);
      return a;
    }),
  },
  {
    name: 'descriptor chain self-loop of zero-length descriptors',
    cve: 'CVE-2020-14378',
    reason: /guest error: ring 1: descriptor chain loop/,
    attack: txAttack((r) => {
      const a = r.allocDesc();
      const buf = txBuf(r);
      const b = r.allocDesc();
      r.writeDesc(a, buf, 112, NEXT, b);
      r.writeDesc(b, buf, 0, NEXT, b);
      return a;
    }),
  },
  {
    name: 'next index beyond the queue size',
    reason: /guest error: ring 1: descriptor next index out of range: next 300/,
    attack: txAttack((r) => {
      const a = r.allocDesc();
      r.writeDesc(a, txBuf(r), 112, NEXT, 300);
      return a;
    }),
  },
  {
    name: 'indirect table length 24 (not a multiple of 16)',
    cve: 'CVE-2018-1059 (indirect table translation size)',
    reason: /guest error: ring 1: indirect table length not a non-zero multiple of 16: len 24/,
    attack: txAttack((r) => {
      const tbl = table(r, 2, (i, tg) => r.writeDesc(i, txBuf(r), 112, 0, 0, tg));
      const h = r.allocDesc();
      r.writeDesc(h, tbl, 24, INDIRECT, 0);
      return h;
    }),
  },
  {
    name: 'indirect table length 0',
    reason: /guest error: ring 1: indirect table length not a non-zero multiple of 16: len 0/,
    attack: txAttack((r) => {
      const h = r.allocDesc();
      r.writeDesc(h, table(r, 1, () => undefined), 0, INDIRECT, 0);
      return h;
    }),
  },
  {
    name: 'indirect table outside guest memory',
    cve: 'CVE-2018-1059',
    reason: /guest error: ring 1: indirect table outside guest memory: addr 0x3ffff0 len 32/,
    attack: txAttack((r, g) => {
      const h = r.allocDesc();
      r.writeDesc(h, g.memSize - 16, 32, INDIRECT, 0);
      return h;
    }),
  },
  {
    name: 'nested indirect descriptor',
    reason: /guest error: ring 1: nested indirect descriptor/,
    attack: txAttack((r) => {
      const inner = table(r, 1, (i, tg) => r.writeDesc(i, txBuf(r), 112, 0, 0, tg));
      const outer = table(r, 1, (i, tg) => r.writeDesc(i, inner, 16, INDIRECT, 0, tg));
      const h = r.allocDesc();
      r.writeDesc(h, outer, 16, INDIRECT, 0);
      return h;
    }),
  },
  {
    name: 'indirect chain loop inside its table',
    cve: 'CVE-2020-14378',
    reason: /guest error: ring 1: indirect chain loop \(longer than its table\)/,
    attack: txAttack((r) => {
      const buf = txBuf(r);
      const tbl = table(r, 2, (i, tg) => r.writeDesc(i, buf, 112, NEXT, 1 - i, tg));
      const h = r.allocDesc();
      r.writeDesc(h, tbl, 32, INDIRECT, 0);
      return h;
    }),
  },
  {
    name: 'indirect next index beyond its table',
    reason: /guest error: ring 1: indirect next index out of range: next 5/,
    attack: txAttack((r) => {
      const tbl = table(r, 2, (i, tg) => r.writeDesc(i, txBuf(r), 112, NEXT, 5, tg));
      const h = r.allocDesc();
      r.writeDesc(h, tbl, 32, INDIRECT, 0);
      return h;
    }),
  },
  {
    name: 'indirect descriptor with NEXT',
    reason: /guest error: ring 1: indirect descriptor with NEXT/,
    attack: txAttack((r) => {
      const tbl = table(r, 1, (i, tg) => r.writeDesc(i, txBuf(r), 112, 0, 0, tg));
      const h = r.allocDesc();
      const n = r.allocDesc();
      r.writeDesc(h, tbl, 16, INDIRECT | NEXT, n);
      r.writeDesc(n, txBuf(r), 112, 0, 0);
      return h;
    }),
  },
  {
    name: 'indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC negotiated',
    reason: /guest error: ring 1: indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC/,
    attack: txAttack(
      (r) => {
        const tbl = table(r, 1, (i, tg) => r.writeDesc(i, txBuf(r), 112, 0, 0, tg));
        const h = r.allocDesc();
        r.writeDesc(h, tbl, 16, INDIRECT, 0);
        return h;
      },
      { want: DEFAULT_WANT & ~bit(F.VIRTIO_RING_F_INDIRECT_DESC) },
    ),
  },
  {
    name: 'avail idx jumps queue size + 1 ahead',
    cve: 'CVE-2020-10723 (index not bounded)',
    reason: /guest error: ring 1: avail idx more than queue size ahead: avail 257 last 0 size 256/,
    attack: async (ctx) => {
      const g = await ctx.guest();
      g.tx[0].setAvailIdxRaw(257);
      kickTx(g);
    },
  },
  {
    name: 'avail ring head beyond the queue size',
    reason: /guest error: ring 1: avail ring head out of range: head 300/,
    attack: txAttack(() => 300),
  },
  {
    name: 'writable descriptor in a TX chain',
    reason: /guest error: ring 1: writable descriptor in TX chain/,
    attack: txAttack((r) => {
      const h = r.allocDesc();
      r.writeDesc(h, txBuf(r), 112, WRITE, 0);
      return h;
    }),
  },
  {
    name: 'TX chain shorter than the virtio-net header',
    reason: /guest error: ring 1: TX chain shorter than the virtio-net header/,
    attack: txAttack((r) => {
      const h = r.allocDesc();
      r.writeDesc(h, txBuf(r), 4, 0, 0);
      return h;
    }),
  },
  {
    name: 'RX: read-only descriptor posted as a receive buffer',
    reason: /guest error: ring 0: readable descriptor in RX chain/,
    attack: rxAttack((r) => {
      const h = r.allocDesc();
      r.writeDesc(h, r.alloc(2048), 2048, 0, 0);
      r.pushAvail(h);
    }),
  },
  {
    name: 'RX: writable descriptor outside guest memory',
    cve: 'CVE-2018-1059, CVE-2020-10725 (descriptor address not checked on the RX path)',
    reason: /guest error: ring 0: descriptor outside guest memory: addr 0x1000000 len 2048/,
    attack: rxAttack((r) => {
      const h = r.allocDesc();
      r.writeDesc(h, 0x1000000, 2048, WRITE, 0);
      r.pushAvail(h);
    }),
  },
  {
    name: 'RX: writable descriptor crossing the end of memory',
    cve: 'CVE-2018-1059, CVE-2020-10725',
    reason: /guest error: ring 0: descriptor crosses a memory region end/,
    attack: rxAttack((r, g) => {
      const h = r.allocDesc();
      r.writeDesc(h, g.memSize - 64, 2048, WRITE, 0);
      r.pushAvail(h);
    }),
  },
  {
    name: 'RX: avail idx jumps far ahead',
    reason: /guest error: ring 0: avail idx more than queue size ahead/,
    attack: rxAttack((r) => {
      r.setAvailIdxRaw(1000);
    }),
  },
  {
    // (a loop of non-empty buffers is walked only as far as the packet needs: its bytes land,
    // repeatedly, in the guest's own buffer and nothing else; zero-length ones never fill it)
    name: 'RX: chain loop of zero-length writable descriptors',
    cve: 'CVE-2020-14378',
    reason: /guest error: ring 0: descriptor chain loop/,
    attack: rxAttack((r) => {
      const a = r.allocDesc();
      r.writeDesc(a, r.alloc(4), 0, WRITE | NEXT, a);
      r.pushAvail(a);
    }),
  },
];

/**
 * Rings that overlap (the used ring placed over the descriptor table) are the guest's own
 * business as long as every write stays inside guest memory: virtio does not forbid it and
 * a backend cannot tell a sloppy layout from an attack. The backend must forward as usual,
 * write only the used-ring bytes, and not reset anything.
 */
const overlap: Case = {
  name: 'used ring placed over the descriptor table: forwarded, nothing written outside the used ring, no reset',
  reason: null,
  attack: async (ctx) => {
    const g = await ctx.guest();
    const w = await ctx.guest({}, 'w');
    await g.ack(Req.SET_VRING_ENABLE, encodeVringState({ index: 1, num: 0 }));
    await g.client.call(Req.GET_VRING_BASE, encodeVringState({ index: 1, num: 0 }));
    const gp = g.ringGpa(1);
    const r = g.tx[0];
    // buffer at gpa 0x8000: bits 16..31 of its address are the used->idx the backend resumes from (0)
    const pkt = frame(MAC_W, MAC_V, 100, 42);
    g.mem.fill(0, 0x8000, 0x8000 + 12);
    g.mem.set(pkt, 0x8000 + 12);
    r.writeDesc(0, 0x8000, 112, 0, 0);
    r.pushAvail(0);
    const snapshot = g.mem.slice();
    await g.ack(Req.SET_VRING_ADDR, encodeVringAddr({ index: 1, flags: 0, desc: UVA_BASE + gp.desc, avail: UVA_BASE + gp.avail, used: UVA_BASE + gp.desc, log: 0 }));
    await g.ack(Req.SET_VRING_KICK, encodeU64(1), [g.kickFds[1]]);
    await g.ack(Req.SET_VRING_ENABLE, encodeVringState({ index: 1, num: 1 }));
    kickTx(g);
    const got: Uint8Array[] = [];
    await waitUntil(() => {
      for (const p of w.receive(0)) got.push(p.data);
      return got.length > 0;
    }, 3000, 'the frame through overlapping rings');
    await sleep(50);
    for (const p of w.receive(0)) got.push(p.data);
    if (got.length !== 1 || Buffer.compare(Buffer.from(got[0]), Buffer.from(pkt)) !== 0) throw new Error(`peer got ${got.length} frames`);
    const usedEnd = gp.desc + 6 + 8 * g.queueSize;
    let outside = 0;
    for (let i = 0; i < g.memSize; i++) if ((i < gp.desc || i >= usedEnd) && g.mem[i] !== snapshot[i]) outside++;
    if (outside !== 0) throw new Error(`${outside} bytes changed outside the used ring`);
    const used = new DataView(g.sab, gp.desc, 12);
    if (used.getUint16(2, true) !== 1 || used.getUint32(4, true) !== 0) throw new Error('used entry not written where the used ring is');
  },
};

t.test('hostile guests at the ring level (live forwarder)', async (t) => {
  const arena = await startArena();
  t.teardown(arena.stop);
  for (const c of [...cases, overlap]) await t.test(c.name, (tt) => runCase(tt, arena, c));
});
