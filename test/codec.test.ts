import t from 'tap';
import { Framer, FrameError, encodeMessage } from '../src/protocol/codec';
import { FLAG_NEED_REPLY, FLAG_VERSION, Req } from '../src/protocol/constants';
import {
  ProtocolError, encodeMemoryTable, encodeVringAddr, parseMemoryTable, parseVringAddr, parseVringFile, parseLog, encodeLog,
} from '../src/protocol/messages';

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

// ---- against the independent oracle written from QEMU's docs/interop/vhost-user.rst ----
import { Req as ReqEnum, PF as PFBits, F as FBits, HEADER_SIZE, reqName } from '../src/protocol/constants';
import { REQUESTS } from '../src/main/request-table';
import { Message, encodeReply } from '../src/protocol/codec';
import { encodeVringState, encodeU64, encodeSingleRegion, parseVringState, parseSingleRegion } from '../src/protocol/messages';
import {
  GOLDEN, SPEC_F_PROTOCOL_FEATURES, SPEC_FLAGS, SPEC_HEADER_SIZE, SPEC_OTHER_IDS, SPEC_PF, SPEC_REQUESTS, VHOSTFWD_TOLERATES, allowedFds, allowedSize, hex,
  specAddr, specById, specHeader, specLog, specMemory, specMessage, specSingleRegion, specState, specU64,
} from '../kit/oracle/vhost-user-spec';

t.test('oracle: request ids, flags and protocol feature bits equal the document', async (t) => {
  for (const r of SPEC_REQUESTS) t.equal((ReqEnum as unknown as Record<string, number>)[r.name], r.id, `${r.name} is request ${r.id}`);
  for (const [name, id] of Object.entries(SPEC_OTHER_IDS)) t.ok(reqName(id).length > 0, `request ${id} (${name}) has a name`);
  t.same([FLAG_VERSION, FLAG_NEED_REPLY], [SPEC_FLAGS.VERSION, SPEC_FLAGS.NEED_REPLY], 'header flag bits');
  t.equal(HEADER_SIZE, SPEC_HEADER_SIZE, 'the header is 12 bytes');
  t.equal(FBits.VHOST_USER_F_PROTOCOL_FEATURES, SPEC_F_PROTOCOL_FEATURES, 'VHOST_USER_F_PROTOCOL_FEATURES is bit 30');
  const pf = PFBits as unknown as Record<string, number>;
  for (const [name, bitNo] of Object.entries(SPEC_PF)) {
    const ours = name === 'MTU' ? pf.NET_MTU : pf[name];
    if (ours !== undefined) t.equal(ours, bitNo, `protocol feature ${name} is bit ${bitNo}`);
  }
});

t.test('oracle: the request table agrees with the document on size, fds, replies and gating', async (t) => {
  const served = [...REQUESTS.keys()].sort((a, b) => a - b);
  t.same(served.filter((id) => !specById(id)), [], 'every request the backend serves is in the oracle table');
  for (const [id, spec] of REQUESTS) {
    const doc = specById(id);
    if (!doc) continue;
    const [lo, hi] = allowedSize(doc);
    const ours = typeof spec.size === 'number' ? [spec.size, spec.size] : [spec.size.min, spec.size.max];
    t.same(ours, [lo, hi], `${doc.name}: payload size ${lo === hi ? lo : `${lo}..${hi}`}`);
    t.equal(spec.replies, doc.replies, `${doc.name}: ${doc.replies ? 'has' : 'has no'} reply payload`);
    t.equal(spec.protocolFeature, doc.gate, `${doc.name}: gated by ${doc.gate === undefined ? 'no protocol feature' : `protocol feature ${doc.gate}`}`);
    // fd counts for representative payloads of the right size
    const payloads: Buffer[] = [Buffer.alloc(lo)];
    if (doc.fds.kind === 'vringFile') payloads.push(Buffer.from(specU64(0x101n)));
    if (doc.fds.kind === 'perRegion') payloads.push(Buffer.from(specMemory([{ gpa: 0n, size: 4096n, uva: 0n, mmapOffset: 0n }, { gpa: 4096n, size: 4096n, uva: 4096n, mmapOffset: 0n }])));
    for (const p of payloads) {
      const m: Message = { request: id, flags: FLAG_VERSION, payload: p, fds: [] };
      const rule = spec.fds(m);
      const got = typeof rule === 'number' ? [rule, rule] : [rule.min, rule.max];
      t.same(got, allowedFds(doc, p), `${doc.name}: fd count for payload ${p.subarray(0, 8).toString('hex')}`);
    }
  }
  for (const [name, tol] of Object.entries(VHOSTFWD_TOLERATES)) {
    const doc = SPEC_REQUESTS.find((r) => r.name === name)!;
    const d = typeof doc.size === 'number' ? [doc.size, doc.size] : doc.size;
    t.ok(tol.size && tol.size[0] <= d[0] && tol.size[1] >= d[1], `${name}: the tolerance only widens the document's size (${tol.why})`);
  }
});

t.test('oracle: golden bytes, the backend encoders and parsers against hand-written layouts', async (t) => {
  const h = (b: Uint8Array) => hex(b);
  // the oracle's own layout functions produce the literal goldens (a check of the oracle)
  t.equal(h(specHeader(1, 1, 0)), GOLDEN.getFeatures, 'oracle header layout');
  t.equal(h(specMessage(2, 9, specU64(0x140000000n))), GOLDEN.setFeatures, 'oracle u64 layout');
  // the backend's encoders
  t.equal(h(encodeMessage(Req.GET_FEATURES, FLAG_VERSION)), GOLDEN.getFeatures, 'GET_FEATURES');
  t.equal(h(encodeMessage(Req.SET_FEATURES, FLAG_VERSION | FLAG_NEED_REPLY, encodeU64(0x140000000n))), GOLDEN.setFeatures, 'SET_FEATURES with need_reply');
  t.equal(h(encodeReply(Req.GET_FEATURES, encodeU64(0x140000000n))), GOLDEN.getFeaturesReply, 'a reply carries version | reply');
  t.equal(h(encodeMessage(Req.SET_VRING_NUM, FLAG_VERSION, encodeVringState({ index: 1, num: 256 }))), GOLDEN.setVringNum, 'vring state');
  t.equal(h(encodeReply(Req.GET_VRING_BASE, encodeVringState({ index: 1, num: 17 }))), GOLDEN.getVringBaseReply, 'GET_VRING_BASE reply');
  const addr = { index: 1, flags: 1, desc: 0x7f0000001000, used: 0x7f0000003000, avail: 0x7f0000002000, log: 0x3000 };
  t.equal(h(encodeMessage(Req.SET_VRING_ADDR, FLAG_VERSION, encodeVringAddr(addr))), GOLDEN.setVringAddr, 'vring address: used before available');
  t.equal(h(specMessage(9, 1, specAddr({ index: 1, flags: 1, desc: 0x7f0000001000n, used: 0x7f0000003000n, avail: 0x7f0000002000n, log: 0x3000n }))), GOLDEN.setVringAddr, 'oracle address layout');
  const mem = [{ gpa: 0, size: 0x10000000, uva: 0x7f1200000000, mmapOffset: 0 }];
  t.equal(h(encodeMessage(Req.SET_MEM_TABLE, FLAG_VERSION, encodeMemoryTable(mem))), GOLDEN.setMemTable, 'memory regions description');
  t.equal(h(specMessage(5, 1, specMemory([{ gpa: 0n, size: 0x10000000n, uva: 0x7f1200000000n, mmapOffset: 0n }]))), GOLDEN.setMemTable, 'oracle memory layout');
  const reg = { gpa: 0x100000000, size: 0x8000000, uva: 0x7f3400000000, mmapOffset: 0x1000 };
  t.equal(h(encodeMessage(Req.ADD_MEM_REG, FLAG_VERSION, encodeSingleRegion(reg))), GOLDEN.addMemReg, 'single memory region description');
  t.equal(h(specMessage(37, 1, specSingleRegion({ gpa: 0x100000000n, size: 0x8000000n, uva: 0x7f3400000000n, mmapOffset: 0x1000n }))), GOLDEN.addMemReg, 'oracle single region layout');
  t.equal(h(encodeMessage(Req.SET_LOG_BASE, FLAG_VERSION, encodeLog({ mmapSize: 0x2000, mmapOffset: 0 }))), GOLDEN.setLogBase, 'log description');
  t.equal(h(specMessage(6, 1, specLog(0x2000n, 0n))), GOLDEN.setLogBase, 'oracle log layout');
  t.equal(h(encodeMessage(Req.SET_VRING_KICK, FLAG_VERSION, encodeU64(0x101))), GOLDEN.setVringKickNoFd, 'vring file u64 with the invalid FD flag');
  t.equal(h(encodeMessage(Req.SET_VRING_ENABLE, FLAG_VERSION, encodeVringState({ index: 0, num: 1 }))), GOLDEN.setVringEnable, 'SET_VRING_ENABLE');
  t.equal(h(specMessage(18, 1, specState(0, 1))), GOLDEN.setVringEnable, 'oracle state layout');
  t.equal(h(encodeReply(Req.SET_STATUS, encodeU64(0))), GOLDEN.setStatusAck, 'REPLY_ACK success');
  // the backend's framer and parsers read the golden bytes
  const frame = (g: string) => {
    const f = new Framer();
    const out = feed(f, Buffer.from(g, 'hex'), 7);
    t.equal(out.length, 1, 'one message framed');
    return out[0];
  };
  const sf = frame(GOLDEN.setFeatures);
  t.same([sf.request, sf.flags, sf.payload.readBigUInt64LE(0)], [2, 9, 0x140000000n], 'framer reads SET_FEATURES');
  t.same(parseVringState(frame(GOLDEN.setVringNum).payload), { index: 1, num: 256 }, 'parse vring state');
  t.same(parseVringAddr(frame(GOLDEN.setVringAddr).payload, 'SET_VRING_ADDR'), addr, 'parse vring address');
  t.same(parseMemoryTable(frame(GOLDEN.setMemTable).payload, 'SET_MEM_TABLE'), mem, 'parse memory table');
  t.same(parseSingleRegion(frame(GOLDEN.addMemReg).payload, 'ADD_MEM_REG'), reg, 'parse single region');
  t.same(parseLog(frame(GOLDEN.setLogBase).payload, 'SET_LOG_BASE'), { mmapSize: 0x2000, mmapOffset: 0 }, 'parse log');
  t.same(parseVringFile(frame(GOLDEN.setVringKickNoFd).payload, 'SET_VRING_KICK'), { index: 1, noFd: true }, 'parse vring file');
});
