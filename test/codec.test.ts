import t from 'tap';
import { Framer, FrameError, encodeMessage } from '../src/main/codec';
import { FLAG_NEED_REPLY, FLAG_VERSION, Req } from '../src/shared/constants';
import {
  ProtocolError, encodeMemoryTable, encodeVringAddr, parseMemoryTable, parseVringAddr, parseVringFile, parseLog, encodeLog,
} from '../src/main/messages';

/** Feed `bytes` to a framer in chunks of `step`, the way a non-blocking socket would deliver them. */
function feed(f: Framer, bytes: Buffer, step: number, fds: number[] = []) {
  const out = [];
  let off = 0;
  let first = true;
  while (off < bytes.length) {
    const dst = f.nextBuffer();
    const n = Math.min(step, dst.length, bytes.length - off);
    dst.set(bytes.subarray(off, off + n));
    off += n;
    const m = f.advance(n, first ? fds : []);
    first = false;
    if (m) out.push(m);
  }
  return out;
}

t.test('framer reassembles messages split at every byte', async (t) => {
  const a = encodeMessage(Req.SET_FEATURES, FLAG_VERSION | FLAG_NEED_REPLY, Buffer.from([1, 2, 3, 4, 5, 6, 7, 8]));
  const b = encodeMessage(Req.GET_FEATURES, FLAG_VERSION);
  for (const step of [1, 5, 12, 13, 100]) {
    const f = new Framer();
    const msgs = [...feed(f, a, step, [7]), ...feed(f, b, step)];
    t.equal(msgs.length, 2, `step ${step}: two messages`);
    t.equal(msgs[0].request, Req.SET_FEATURES);
    t.same([...msgs[0].payload], [1, 2, 3, 4, 5, 6, 7, 8]);
    t.same(msgs[0].fds, [7], 'fds stay with their message');
    t.equal(msgs[1].request, Req.GET_FEATURES);
    t.equal(msgs[1].payload.length, 0);
    t.same(msgs[1].fds, []);
    t.notOk(f.partial);
  }
});

t.test('framer rejects a bad version and an oversized payload', async (t) => {
  const bad = encodeMessage(Req.GET_FEATURES, 0x2);
  t.throws(() => feed(new Framer(), bad, 100), { name: 'FrameError', message: /GET_FEATURES: unsupported version/ });
  const big = Buffer.alloc(12);
  big.writeUInt32LE(Req.SET_MEM_TABLE, 0);
  big.writeUInt32LE(FLAG_VERSION, 4);
  big.writeUInt32LE(1 << 20, 8);
  t.throws(() => feed(new Framer(), big, 100), /SET_MEM_TABLE: payload size 1048576 exceeds 4096/);
});

t.test('framer rejects fds arriving with payload bytes', async (t) => {
  const f = new Framer();
  const m = encodeMessage(Req.SET_FEATURES, FLAG_VERSION, Buffer.alloc(8));
  feed(f, m.subarray(0, 12), 12);
  const dst = f.nextBuffer();
  dst.set(m.subarray(12, 14));
  t.throws(() => f.advance(2, [9]), FrameError);
  t.same(f.takeFds(), [9], 'the stray fd is held so its owner can close it');
});

const region = (gpa: number, size: number, uva: number, mmapOffset = 0) => ({ gpa, size, uva, mmapOffset });

t.test('memory table parse: round trip and every malformed case named', async (t) => {
  const regs = [region(0, 0x100000, 0x7f0000000000), region(0x100000, 0x200000, 0x7f1000000000, 0x1000)];
  t.same(parseMemoryTable(encodeMemoryTable(regs), 'SET_MEM_TABLE'), regs);
  const cases: Array<[string, Buffer, RegExp]> = [
    ['no regions', encodeMemoryTable([]), /no regions/],
    ['too many regions', (() => { const b = encodeMemoryTable(Array.from({ length: 8 }, (_, i) => region(i * 0x1000, 0x1000, 0x10000 + i * 0x1000))); b.writeUInt32LE(9, 0); return b; })(), /9 regions, at most 8/],
    ['short payload', encodeMemoryTable([region(0, 0x1000, 0x1000)]).subarray(0, 20), /too short/],
    ['zero size', encodeMemoryTable([region(0, 0, 0x1000)]), /size 0/],
    ['gpa wrap', encodeMemoryTable([region(Number.MAX_SAFE_INTEGER - 10, 0x1000, 0x1000)]), /wraps the guest address space/],
    ['overlap gpa', encodeMemoryTable([region(0, 0x2000, 0x10000), region(0x1000, 0x2000, 0x20000)]), /overlap in guest physical space/],
    ['overlap uva', encodeMemoryTable([region(0, 0x1000, 0x10000), region(0x1000, 0x1000, 0x10800)]), /overlap in user address space/],
  ];
  for (const [name, buf, re] of cases) {
    t.throws(() => parseMemoryTable(buf, 'SET_MEM_TABLE'), re, name);
  }
  const huge = encodeMemoryTable([region(0, 0x1000, 0x1000)]);
  huge.writeBigUInt64LE(0xffff_ffff_ffff_f000n, 8);
  t.throws(() => parseMemoryTable(huge, 'SET_MEM_TABLE'), ProtocolError, 'a u64 beyond 2^53 is refused, never rounded');
});

t.test('vring addr, vring file and log payloads', async (t) => {
  const a = { index: 1, flags: 1, desc: 0x7f0000001000, used: 0x7f0000003000, avail: 0x7f0000002000, log: 0x3000 };
  t.same(parseVringAddr(encodeVringAddr(a), 'SET_VRING_ADDR'), a);
  const file = Buffer.alloc(8);
  file.writeUInt32LE(0x103, 0);
  t.same(parseVringFile(file, 'SET_VRING_KICK'), { index: 3, noFd: true });
  file.writeUInt32LE(0x203, 0);
  t.throws(() => parseVringFile(file, 'SET_VRING_KICK'), /reserved bits/);
  t.same(parseLog(encodeLog({ mmapSize: 8192, mmapOffset: 0 }), 'SET_LOG_BASE'), { mmapSize: 8192, mmapOffset: 0 });
  t.throws(() => parseLog(encodeLog({ mmapSize: 0, mmapOffset: 0 }), 'SET_LOG_BASE'), /log of size 0/);
});
