/**
 * Hostile frontends at the message layer: framing (truncation, disconnects in the middle,
 * oversized payloads, bad versions, fd floods), payload values (regions, ring addresses,
 * queue sizes, log areas) and requests out of order, against a live forwarder whose
 * bystander pair keeps forwarding. Cases already in test/control-plane.test.ts are not
 * repeated here. Every case runs through runCase() (kit/hostile/harness.ts): see README.md.
 */
import t from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { native } from '../../src/native';
import { VhostUserClient } from '../../src/frontend/vhost-user-client';
import { FLAG_NEED_REPLY, FLAG_VERSION, Req, VRING_NOFD_MASK } from '../../src/protocol/constants';
import { encodeLog, encodeMemoryTable, encodeSingleRegion, encodeU64, encodeVringAddr, encodeVringState } from '../../src/protocol/messages';
import { encodeMessage } from '../../src/protocol/codec';
import { Case, Ctx, UVA, negotiate, runCase, setMem, startArena } from '../../kit/hostile/harness';

const MEM = 4 << 20;
const Q = 256;
const ring1 = { desc: 0x10000, avail: 0x11000, used: 0x12000 };

function header(req: number, size: number, flags = FLAG_VERSION): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt32LE(req, 0);
  b.writeUInt32LE(flags, 4);
  b.writeUInt32LE(size >>> 0, 8);
  return b;
}

/** A memory table region with raw u64 fields (values beyond 2^53 included). */
function rawRegion(gpa: bigint, size: bigint, uva: bigint, off: bigint): Buffer {
  const b = Buffer.alloc(8 + 32);
  b.writeUInt32LE(1, 0);
  b.writeBigUInt64LE(gpa, 8);
  b.writeBigUInt64LE(size, 16);
  b.writeBigUInt64LE(uva, 24);
  b.writeBigUInt64LE(off, 32);
  return b;
}

async function withMem(ctx: Ctx, protocol = true): Promise<VhostUserClient> {
  const c = await ctx.client();
  await negotiate(c, protocol);
  await setMem(c, ctx.memfd(MEM), MEM);
  return c;
}

function vringAddr(index: number, desc: number, avail: number, used: number, flags = 0): Buffer {
  return encodeVringAddr({ index, flags, desc, avail, used, log: 0 });
}

function setupRing1(c: VhostUserClient, ctx: Ctx, addrs = ring1): void {
  c.send(Req.SET_VRING_NUM, encodeVringState({ index: 1, num: Q }));
  c.send(Req.SET_VRING_ADDR, vringAddr(1, UVA + addrs.desc, UVA + addrs.avail, UVA + addrs.used));
  c.send(Req.SET_VRING_KICK, encodeU64(1), [ctx.eventfd()]);
  c.send(Req.SET_VRING_ENABLE, encodeVringState({ index: 1, num: 1 }));
}

const cases: Case[] = [
  // ---- framing ----
  {
    name: 'truncated header (5 of 12 bytes) then close',
    cve: 'CVE-2022-0669 (malformed message handling)',
    reason: /peer closed the socket in the middle of a message/,
    attack: async (ctx) => {
      const c = await ctx.client();
      native.sendmsg(c.fd, header(Req.GET_FEATURES, 0).subarray(0, 5), []);
      c.close();
    },
  },
  {
    name: 'partial payload (20 of 40 bytes) then close',
    reason: /peer closed the socket in the middle of a message/,
    attack: async (ctx) => {
      const c = await ctx.client();
      await negotiate(c);
      const m = encodeMessage(Req.SET_VRING_ADDR, FLAG_VERSION, vringAddr(0, UVA, UVA + 0x1000, UVA + 0x2000));
      native.sendmsg(c.fd, m.subarray(0, 12 + 20), []);
      c.close();
    },
  },
  {
    name: 'header carrying an fd, then close before the payload (the fd must not leak)',
    cve: 'CVE-2020-10726 / CVE-2022-0669 (fd leaks)',
    reason: /peer closed the socket in the middle of a message/,
    attack: async (ctx) => {
      const c = await ctx.client();
      native.sendmsg(c.fd, header(Req.SET_MEM_TABLE, 40), [ctx.memfd(MEM)]);
      c.close();
    },
  },
  {
    name: 'payload size field 4097 (> 4096)',
    reason: /payload size 4097 exceeds 4096/,
    attack: async (ctx) => {
      const c = await ctx.client();
      native.sendmsg(c.fd, header(Req.SET_MEM_TABLE, 4097), []);
    },
  },
  {
    name: 'payload size field 0xffffffff',
    reason: /payload size 4294967295 exceeds 4096/,
    attack: async (ctx) => {
      const c = await ctx.client();
      native.sendmsg(c.fd, header(Req.SET_LOG_BASE, 0xffffffff), []);
    },
  },
  {
    name: 'unsupported version in flags',
    reason: /unsupported version in flags 0x0/,
    attack: async (ctx) => {
      const c = await ctx.client();
      native.sendmsg(c.fd, header(Req.GET_FEATURES, 0, 0), []);
    },
  },
  {
    name: '9 fds on one message (sendmsgUnchecked)',
    cve: 'CVE-2022-0669 (unexpected number of fds)',
    reason: /recvmsg failed: EPROTO/,
    attack: async (ctx) => {
      const c = await ctx.client();
      const fds = Array.from({ length: 9 }, () => ctx.eventfd());
      native.sendmsgUnchecked(c.fd, encodeMessage(Req.SET_MEM_TABLE, FLAG_VERSION, encodeMemoryTable([{ gpa: 0, size: 4096, uva: UVA, mmapOffset: 0 }])), fds);
    },
  },
  {
    name: '253 fds on one message (SCM_MAX_FD)',
    cve: 'CVE-2022-0669',
    reason: /recvmsg failed: EPROTO/,
    attack: async (ctx) => {
      const c = await ctx.client();
      const fd = ctx.eventfd();
      native.sendmsgUnchecked(c.fd, encodeMessage(Req.GET_FEATURES, FLAG_VERSION), new Array(253).fill(fd));
    },
  },
  {
    name: 'fds sent with the payload bytes instead of the header',
    reason: /file descriptors arrived with payload bytes/,
    attack: async (ctx) => {
      const c = await ctx.client();
      native.sendmsg(c.fd, header(Req.SET_VRING_CALL, 8), []);
      await sleep(20); // two reads on the backend side
      native.sendmsg(c.fd, encodeU64(0), [ctx.eventfd()]);
    },
  },
  {
    name: 'extra fd on a request that takes none (GET_FEATURES)',
    cve: 'CVE-2022-0669',
    reason: /GET_FEATURES: 1 file descriptors, expected 0/,
    attack: async (ctx) => {
      const c = await ctx.client();
      c.send(Req.GET_FEATURES, Buffer.alloc(0), [ctx.eventfd()]);
    },
  },
  {
    name: 'SET_VRING_KICK with the no-fd flag and an fd',
    reason: /SET_VRING_KICK: 1 file descriptors, expected 0/,
    attack: async (ctx) => {
      const c = await ctx.client();
      await negotiate(c);
      c.send(Req.SET_VRING_KICK, encodeU64(1 | VRING_NOFD_MASK), [ctx.eventfd()]);
    },
  },
  {
    name: 'unknown request carrying 3 fds: refused without a reset, fds closed',
    reason: null,
    attack: async (ctx) => {
      const c = await ctx.client();
      c.send(77, Buffer.alloc(8), [ctx.eventfd(), ctx.eventfd(), ctx.eventfd()]);
      await c.callU64(Req.GET_FEATURES);
    },
  },
  // ---- memory regions ----
  {
    name: 'SET_MEM_TABLE with 0 regions',
    cve: 'CVE-2018-1059 (memory region checks)',
    reason: /SET_MEM_TABLE: no regions/,
    attack: async (ctx) => {
      const c = await ctx.client();
      const p = encodeMemoryTable([{ gpa: 0, size: 4096, uva: UVA, mmapOffset: 0 }]);
      p.writeUInt32LE(0, 0);
      c.send(Req.SET_MEM_TABLE, p);
    },
  },
  {
    name: 'SET_MEM_TABLE claims 2 regions, payload holds 1',
    cve: 'CVE-2018-1059',
    reason: /SET_MEM_TABLE: payload of 40 bytes is too short for 2 regions/,
    attack: async (ctx) => {
      const c = await ctx.client();
      const p = encodeMemoryTable([{ gpa: 0, size: 4096, uva: UVA, mmapOffset: 0 }]);
      p.writeUInt32LE(2, 0);
      c.send(Req.SET_MEM_TABLE, p, [ctx.memfd(4096), ctx.memfd(4096)]);
    },
  },
  {
    name: 'region of size 0',
    cve: 'CVE-2018-1059',
    reason: /SET_MEM_TABLE: region of size 0/,
    attack: async (ctx) => {
      const c = await ctx.client();
      c.send(Req.SET_MEM_TABLE, rawRegion(0n, 0n, BigInt(UVA), 0n), [ctx.memfd(4096)]);
    },
  },
  {
    name: 'region gpa + size wraps 2^64',
    cve: 'CVE-2018-1059',
    reason: /SET_MEM_TABLE: guest_phys_addr 0xfffffffffffff000 is beyond 2\^53/,
    attack: async (ctx) => {
      const c = await ctx.client();
      c.send(Req.SET_MEM_TABLE, rawRegion(0xfffffffffffff000n, 0x2000n, BigInt(UVA), 0n), [ctx.memfd(0x2000)]);
    },
  },
  {
    name: 'region size beyond 2^53 (u64 size that would wrap the user address)',
    cve: 'CVE-2018-1059',
    reason: /SET_MEM_TABLE: memory_size 0x8000000000000000 is beyond 2\^53/,
    attack: async (ctx) => {
      const c = await ctx.client();
      c.send(Req.SET_MEM_TABLE, rawRegion(0n, 0x8000000000000000n, BigInt(UVA), 0n), [ctx.memfd(0x2000)]);
    },
  },
  {
    name: 'regions overlap in user address space',
    cve: 'CVE-2018-1059',
    reason: /SET_MEM_TABLE: regions 0 and 1 overlap in user address space/,
    attack: async (ctx) => {
      const c = await ctx.client();
      const p = encodeMemoryTable([{ gpa: 0, size: 0x10000, uva: UVA, mmapOffset: 0 }, { gpa: 0x100000, size: 0x10000, uva: UVA + 0x8000, mmapOffset: 0 }]);
      c.send(Req.SET_MEM_TABLE, p, [ctx.memfd(0x10000), ctx.memfd(0x10000)]);
    },
  },
  {
    name: 'mmap_offset + size beyond the fd size',
    cve: 'CVE-2018-1059',
    reason: /SET_MEM_TABLE: region gpa 0x0: mmap_offset 0x1000 \+ size 0x400000 exceeds the fd size 0x400000/,
    attack: async (ctx) => {
      const c = await ctx.client();
      c.send(Req.SET_MEM_TABLE, encodeMemoryTable([{ gpa: 0, size: MEM, uva: UVA, mmapOffset: 0x1000 }]), [ctx.memfd(MEM)]);
    },
  },
  {
    name: 'ADD_MEM_REG overlapping a region already added',
    cve: 'CVE-2018-1059',
    reason: /ADD_MEM_REG: regions 0 and 1 overlap in guest physical space/,
    attack: async (ctx) => {
      const c = await ctx.client();
      await negotiate(c);
      await c.call(Req.ADD_MEM_REG, encodeSingleRegion({ gpa: 0, size: 0x10000, uva: UVA, mmapOffset: 0 }), [ctx.memfd(0x10000)], true);
      c.send(Req.ADD_MEM_REG, encodeSingleRegion({ gpa: 0x8000, size: 0x10000, uva: UVA + 0x100000, mmapOffset: 0 }), [ctx.memfd(0x10000)]);
    },
  },
  {
    name: 'REM_MEM_REG of a region never added',
    reason: /REM_MEM_REG: no region at gpa 0x10000/,
    attack: async (ctx) => {
      const c = await ctx.client();
      await negotiate(c);
      c.send(Req.REM_MEM_REG, encodeSingleRegion({ gpa: 0x10000, size: 0x1000, uva: UVA, mmapOffset: 0 }));
    },
  },
  // ---- rings ----
  {
    name: 'used ring crossing the end of guest memory',
    cve: 'CVE-2020-10723 (translated ring address not checked)',
    reason: /SET_VRING_ADDR: ring 0 used ring 0x7f00003ffff8\+2052 is outside guest memory/,
    attack: async (ctx) => {
      const c = await withMem(ctx);
      c.send(Req.SET_VRING_NUM, encodeVringState({ index: 0, num: Q }));
      c.send(Req.SET_VRING_ADDR, vringAddr(0, UVA + 0x10000, UVA + 0x11000, UVA + MEM - 8));
    },
  },
  {
    name: 'available ring below guest memory',
    cve: 'CVE-2020-10723',
    reason: /SET_VRING_ADDR: ring 0 available ring 0x7effffff0000\+516 is outside guest memory/,
    attack: async (ctx) => {
      const c = await withMem(ctx);
      c.send(Req.SET_VRING_NUM, encodeVringState({ index: 0, num: Q }));
      c.send(Req.SET_VRING_ADDR, vringAddr(0, UVA + 0x10000, UVA - 0x10000, UVA + 0x12000));
    },
  },
  {
    name: 'descriptor table address beyond 2^53',
    cve: 'CVE-2020-10723',
    reason: /SET_VRING_ADDR: descriptor address 0xfffffffffffff000 is beyond 2\^53/,
    attack: async (ctx) => {
      const c = await withMem(ctx);
      const p = vringAddr(0, UVA, UVA + 0x1000, UVA + 0x2000);
      p.writeBigUInt64LE(0xfffffffffffff000n, 8);
      c.send(Req.SET_VRING_ADDR, p);
    },
  },
  {
    name: 'misaligned descriptor table',
    reason: /SET_VRING_ADDR: ring 1 addresses are misaligned/,
    attack: async (ctx) => {
      const c = await withMem(ctx);
      c.send(Req.SET_VRING_NUM, encodeVringState({ index: 1, num: Q }));
      c.send(Req.SET_VRING_ADDR, vringAddr(1, UVA + 0x10008, UVA + 0x11000, UVA + 0x12000));
    },
  },
  {
    name: 'SET_VRING_ADDR with unknown flags',
    reason: /SET_VRING_ADDR: unknown flags 0x6/,
    attack: async (ctx) => {
      const c = await withMem(ctx);
      c.send(Req.SET_VRING_ADDR, vringAddr(1, UVA + 0x10000, UVA + 0x11000, UVA + 0x12000, 6));
    },
  },
  {
    name: 'queue size 0',
    reason: /SET_VRING_NUM: queue size 0 is not a power of two/,
    attack: async (ctx) => {
      const c = await ctx.client();
      c.send(Req.SET_VRING_NUM, encodeVringState({ index: 1, num: 0 }));
    },
  },
  {
    name: 'queue size 3',
    reason: /SET_VRING_NUM: queue size 3 is not a power of two/,
    attack: async (ctx) => {
      const c = await ctx.client();
      c.send(Req.SET_VRING_NUM, encodeVringState({ index: 1, num: 3 }));
    },
  },
  {
    name: 'SET_VRING_BASE beyond 16 bits',
    cve: 'CVE-2020-10723 (index truncated to 16 bits)',
    reason: /SET_VRING_BASE: base 65536 does not fit a 16-bit index/,
    attack: async (ctx) => {
      const c = await ctx.client();
      c.send(Req.SET_VRING_BASE, encodeVringState({ index: 1, num: 0x10000 }));
    },
  },
  {
    name: 'GET_VRING_BASE on ring index 255',
    cve: 'CVE-2020-10726 (vring index check), CVE-2021-3839 (queue index not validated)',
    reason: /GET_VRING_BASE: ring index 255 out of range \(device has 2 rings\)/,
    attack: async (ctx) => {
      const c = await ctx.client();
      // a request with a reply gets a failure reply before the reset: no hang
      const r = await c.call(Req.GET_VRING_BASE, encodeVringState({ index: 255, num: 0 })).catch((e: Error) => e);
      if (!(r instanceof Error) && r.payload.length !== 8) throw new Error('reply of unexpected size');
    },
  },
  {
    name: 'SET_VRING_CALL on ring index 200',
    cve: 'CVE-2020-10726, CVE-2021-3839',
    reason: /SET_VRING_CALL: ring index 200 out of range/,
    attack: async (ctx) => {
      const c = await ctx.client();
      c.send(Req.SET_VRING_CALL, encodeU64(200), [ctx.eventfd()]);
    },
  },
  {
    name: 'SET_VRING_ENABLE with value 2',
    reason: /SET_VRING_ENABLE: enable value 2 is neither 0 nor 1/,
    attack: async (ctx) => {
      const c = await ctx.client();
      await negotiate(c);
      c.send(Req.SET_VRING_ENABLE, encodeVringState({ index: 0, num: 2 }));
    },
  },
  {
    name: 'NEED_REPLY on a failing request: failure reply first, then the reset',
    reason: /SET_VRING_NUM: queue size 5 is not a power of two/,
    attack: async (ctx) => {
      const c = await ctx.client();
      await negotiate(c);
      const r = await c.callU64(Req.SET_VRING_NUM, encodeVringState({ index: 0, num: 5 }), [], true);
      if (r !== 1n) throw new Error(`expected a failure reply, got ${r}`);
    },
  },
  // ---- dirty log ----
  {
    name: 'SET_LOG_BASE with a log too small for guest memory',
    cve: 'CVE-2020-10722 (log area smaller than needed)',
    reason: /SET_LOG_BASE: dirty log of 64 bytes covers 2097152 bytes of guest memory, which ends at 0x400000/,
    attack: async (ctx) => {
      const c = await withMem(ctx);
      await c.call(Req.SET_LOG_BASE, encodeLog({ mmapSize: 64, mmapOffset: 0 }), [ctx.memfd(4096)]).catch(() => undefined);
    },
  },
  {
    name: 'SET_LOG_BASE mmap_offset + mmap_size beyond the log fd',
    cve: 'CVE-2020-10722',
    reason: /SET_LOG_BASE: region gpa 0x0: mmap_offset 0x1000 \+ size 0x1000 exceeds the fd size 0x1000/,
    attack: async (ctx) => {
      const c = await withMem(ctx);
      await c.call(Req.SET_LOG_BASE, encodeLog({ mmapSize: 4096, mmapOffset: 4096 }), [ctx.memfd(4096)]).catch(() => undefined);
    },
  },
  {
    name: 'SET_LOG_BASE mmap_size + mmap_offset overflow',
    cve: 'CVE-2020-10722 (integer overflow in vhost_user_set_log_base)',
    reason: /SET_LOG_BASE: mmap_size 0xfffffffffffff000 is beyond 2\^53/,
    attack: async (ctx) => {
      const c = await withMem(ctx);
      const p = Buffer.alloc(16);
      p.writeBigUInt64LE(0xfffffffffffff000n, 0);
      p.writeBigUInt64LE(0x2000n, 8);
      await c.call(Req.SET_LOG_BASE, p, [ctx.memfd(4096)]).catch(() => undefined);
    },
  },
  {
    name: 'SET_LOG_BASE area wrapping 2^53',
    cve: 'CVE-2020-10722',
    reason: /SET_LOG_BASE: log area wraps/,
    attack: async (ctx) => {
      const c = await withMem(ctx);
      await c.call(Req.SET_LOG_BASE, encodeLog({ mmapSize: 2 ** 52, mmapOffset: 2 ** 52 }), [ctx.memfd(4096)]).catch(() => undefined);
    },
  },
  // ---- order ----
  {
    name: 'rings set up before the memory table (valid addresses): the ring starts once memory arrives',
    reason: null,
    attack: async (ctx) => {
      const c = await ctx.client();
      await negotiate(c);
      setupRing1(c, ctx);
      await c.callU64(Req.GET_FEATURES);
      const dev = ctx.arena.env.fwd.interfaces[0].device!;
      if (dev.vrings[1].started) throw new Error('ring started without memory');
      await setMem(c, ctx.memfd(MEM), MEM);
      if (!dev.vrings[1].started) throw new Error('ring did not start once memory arrived');
    },
  },
  {
    name: 'rings set up before the memory table (addresses outside it): refused when the memory arrives',
    cve: 'CVE-2020-10723',
    reason: /SET_MEM_TABLE: ring 1 descriptor table 0x7f0000500000\+4096 is outside guest memory/,
    attack: async (ctx) => {
      const c = await ctx.client();
      await negotiate(c);
      setupRing1(c, ctx, { desc: 0x500000, avail: 0x11000, used: 0x12000 });
      await c.callU64(Req.GET_FEATURES);
      await setMem(c, ctx.memfd(MEM), MEM).catch(() => undefined);
    },
  },
  {
    name: 'GET_VRING_BASE on a ring never started replies {index, 0} (no hang, no reset)',
    reason: null,
    attack: async (ctx) => {
      const c = await ctx.client();
      await negotiate(c);
      const r = await c.call(Req.GET_VRING_BASE, encodeVringState({ index: 1, num: 0 }));
      if (r.payload.readUInt32LE(0) !== 1 || r.payload.readUInt32LE(4) !== 0) throw new Error(`bad reply ${r.payload.toString('hex')}`);
      // twice, and before anything else was set up at all
      const c2 = r && (await c.call(Req.GET_VRING_BASE, encodeVringState({ index: 0, num: 0 })));
      if (c2.payload.readUInt32LE(4) !== 0) throw new Error('second GET_VRING_BASE');
    },
  },
  {
    name: 'GET_QUEUE_NUM without MQ negotiated',
    reason: /GET_QUEUE_NUM: protocol feature MQ not negotiated/,
    attack: async (ctx) => {
      const c = await ctx.client();
      await negotiate(c, false);
      await c.call(Req.GET_QUEUE_NUM).catch(() => undefined);
    },
  },
  {
    name: 'NEED_REPLY set on a GET (reply sent once, not twice)',
    reason: null,
    attack: async (ctx) => {
      const c = await ctx.client();
      await negotiate(c);
      native.sendmsg(c.fd, encodeMessage(Req.GET_FEATURES, FLAG_VERSION | FLAG_NEED_REPLY), []);
      await sleep(20);
      // a second reply to the first GET_FEATURES would be taken as the answer here
      const r = await c.call(Req.GET_PROTOCOL_FEATURES);
      if (r.payload.length !== 8) throw new Error('bad reply');
    },
  },
];

t.test('hostile frontends at the message layer', async (t) => {
  const arena = await startArena();
  t.teardown(arena.stop);
  for (const c of cases) await t.test(c.name, (tt) => runCase(tt, arena, c));
});

