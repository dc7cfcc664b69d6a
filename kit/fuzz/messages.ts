/**
 * Fuzz (a): random vhost-user messages (headers, payloads, fd counts, truncations) thrown at
 * the victim interface of a live forwarder (arena of kit/hostile/harness.ts) while the bystander pair
 * forwards. One fuzzed message per connection, after an optional negotiation prefix, then a
 * GET_FEATURES probe. Properties (a failure throws with the input):
 *  - the process never crashes and never hangs: the probe is answered or the connection is
 *    closed within 3 s;
 *  - a message that is bad at the header level (framing, version, > 8 fds, size or fd count
 *    against the request table, a protocol feature not acked, truncated) ends in a reset with
 *    one 'device reset' line;
 *  - no fd leaks: the fd count is back at the baseline after every connection;
 *  - the bystanders lose nothing (checked at the end).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import fc from 'fast-check';
import { native } from '../../src/native';
import { VhostUserClient } from '../../src/frontend/vhost-user-client';
import { FLAG_NEED_REPLY, FLAG_VERSION, Req, hasBit } from '../../src/protocol/constants';
import { encodeMessage } from '../../src/protocol/codec';
import { SPEC_REQUESTS, allowedFds, allowedSize, specById } from '../oracle/vhost-user-spec';
import { LogLine } from '../../src/main/log';
import { captureLogs, fdCount, waitUntil } from '../env';
import { Arena, Bystander, negotiate, startArena } from '../hostile/harness';

export interface MsgInput {
  /** 0: nothing before; 1: features without PROTOCOL_FEATURES; 2: with them (all offered acked) */
  prefix: number;
  request: number;
  flags: number;
  payload: number[];
  /** fds attached (eventfds; memfds of 64 KiB when `memfd`) */
  fds: number;
  memfd: boolean;
  /** send only the first `cut` bytes, then close (0: send it all) */
  cut: number;
  /** header size field above 4096, no payload */
  oversize: number;
}

// requests and their rules from the oracle written from QEMU's vhost-user.rst, not the backend's table
const known = SPEC_REQUESTS.map((r) => r.id);

const msgInputArb: fc.Arbitrary<MsgInput> = fc
  .record({
    prefix: fc.integer({ min: 0, max: 2 }),
    request: fc.oneof({ weight: 8, arbitrary: fc.constantFrom(...known) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 60 }) }, { weight: 1, arbitrary: fc.nat() }),
    flags: fc.oneof({ weight: 8, arbitrary: fc.constantFrom(FLAG_VERSION, FLAG_VERSION | FLAG_NEED_REPLY) }, { weight: 1, arbitrary: fc.nat() }),
    sizeKind: fc.integer({ min: 0, max: 3 }),
    delta: fc.integer({ min: -8, max: 8 }),
    rnd: fc.integer({ min: 0, max: 300 }),
    bytes: fc.uint8Array({ minLength: 300, maxLength: 300 }),
    small: fc.boolean(),
    fds: fc.oneof({ weight: 6, arbitrary: fc.integer({ min: 0, max: 2 }) }, { weight: 1, arbitrary: fc.integer({ min: 3, max: 12 }) }),
    memfd: fc.boolean(),
    cut: fc.oneof({ weight: 9, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 400 }) }),
    oversize: fc.oneof({ weight: 19, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 4097, max: 0xffffffff }) }),
  })
  .map((r) => {
    const spec = specById(r.request);
    const want = spec ? allowedSize(spec)[r.sizeKind === 0 ? 0 : 1] : 8;
    const len = Math.max(0, Math.min(300, r.sizeKind <= 1 ? want : r.sizeKind === 2 ? want + r.delta : r.rnd));
    // small values make the fields plausible (indices, sizes) so handlers run deeper
    const payload = Array.from(r.bytes.subarray(0, len), (b, i) => (r.small && i % 8 >= 2 ? 0 : b));
    return { prefix: r.prefix, request: r.request, flags: r.flags, payload, fds: r.fds, memfd: r.memfd, cut: r.cut, oversize: r.oversize };
  });

/** Must this message reset the device, judged by the header and the request table alone? */
function mustReset(inp: MsgInput, protocolFeatures: bigint): string | null {
  const total = 12 + inp.payload.length;
  if (inp.cut > 0 && inp.cut < total) return 'truncated';
  if (inp.oversize > 0) return 'oversize';
  if ((inp.flags & 3) !== FLAG_VERSION) return 'version';
  if (inp.fds > 8) return 'fds > 8';
  const spec = specById(inp.request);
  if (!spec) return null;
  const size = inp.payload.length;
  const [lo, hi] = allowedSize(spec);
  if (size < lo || size > hi) return 'size';
  const [fmin, fmax] = allowedFds(spec, Uint8Array.from(inp.payload));
  if (inp.fds < fmin || inp.fds > fmax) return 'fd count';
  if (spec.gate !== undefined && !hasBit(protocolFeatures, spec.gate)) return 'protocol feature';
  return null;
}

const resets = (lines: LogLine[]) => lines.filter((l) => l.msg === 'device reset' && l.fields.iface === 'v');

/** One fuzzed connection; throws when a property does not hold. Returns the outcome. */
export async function fuzzOne(arena: Arena, inp: MsgInput, baseline: number): Promise<string> {
  const logs = captureLogs();
  const v = arena.env.fwd.interfaces.find((i) => i.name === 'v')!;
  const c = await VhostUserClient.connect(arena.sock('v'));
  const fds: number[] = [];
  try {
    const pf = inp.prefix === 0 ? 0n : await negotiate(c, inp.prefix === 2);
    for (let i = 0; i < inp.fds; i++) fds.push(inp.memfd ? native.memfdCreate('fuzz', 0x10000) : native.eventfdCreate(0));
    const expectReset = mustReset(inp, inp.prefix === 2 ? pf : 0n);
    let bytes: Buffer;
    if (inp.oversize > 0) {
      bytes = Buffer.alloc(12);
      bytes.writeUInt32LE(inp.request >>> 0, 0);
      bytes.writeUInt32LE(inp.flags >>> 0, 4);
      bytes.writeUInt32LE(inp.oversize >>> 0, 8);
    } else {
      bytes = encodeMessage(inp.request >>> 0, inp.flags >>> 0, Buffer.from(inp.payload));
    }
    if (inp.cut > 0 && inp.cut < bytes.length) bytes = bytes.subarray(0, inp.cut);
    native.sendmsgUnchecked(c.fd, bytes, fds);
    for (const fd of fds.splice(0)) native.close(fd);
    if (inp.cut > 0 && inp.cut < 12 + inp.payload.length) c.close();
    // probe: answered (alive) or the connection closed (reset); a reply to the fuzzed message may come first
    let outcome = 'hang';
    const closed = c.waitClosed().then(() => 'reset');
    for (let attempt = 0; attempt < 2 && outcome === 'hang'; attempt++) {
      const probe = c.closed !== null ? Promise.resolve('reset') : c.callU64(Req.GET_FEATURES).then(() => 'alive', (e: Error) => (/expected reply/.test(e.message) ? 'hang' : 'reset'));
      outcome = await Promise.race([probe, closed, sleep(3000).then(() => 'timeout')]);
    }
    if (outcome === 'timeout' || outcome === 'hang') throw new Error(`no answer and no reset within 3 s (${outcome})`);
    if (outcome === 'reset') {
      // (also after a truncation, where we closed first: the backend must still log it, and
      // until it has, it may not even have accepted this connection)
      await waitUntil(() => resets(logs.lines).length > 0, 2000).catch(() => undefined);
      if (resets(logs.lines).length !== 1) throw new Error(`reset without exactly one 'device reset' line: ${JSON.stringify(logs.lines)}`);
    }
    if (expectReset && outcome !== 'reset') throw new Error(`header-level violation (${expectReset}) did not reset the device`);
    c.close();
    await waitUntil(() => v.device === null, 3000, 'device released');
    await waitUntil(() => fdCount() === baseline, 2000).catch(() => undefined);
    if (fdCount() !== baseline) throw new Error(`fd leak: ${fdCount()} fds, baseline ${baseline}`);
    return expectReset ? `reset:${expectReset}` : outcome;
  } finally {
    for (const fd of fds) native.close(fd);
    c.close();
    logs.stop();
  }
}

/** A whole fuzz campaign on its own arena. */
export async function fuzzMessages(o: { seed: number; runs: number; arena?: Arena }): Promise<{ runs: number; ms: number; outcomes: Record<string, number>; examples: Array<MsgInput & { expect: string }> }> {
  const arena = o.arena ?? (await startArena());
  const by = new Bystander(arena.b1, arena.b2);
  const outcomes = new Map<string, number>();
  const examples = new Map<string, MsgInput & { expect: string }>();
  const t0 = Date.now();
  try {
    const baseline = fdCount();
    by.start();
    await fc.assert(
      fc.asyncProperty(msgInputArb, async (inp) => {
        const out = await fuzzOne(arena, inp, baseline);
        outcomes.set(out, (outcomes.get(out) ?? 0) + 1);
        const key = `${out} ${inp.request} ${inp.prefix}`;
        if (!examples.has(key)) examples.set(key, { ...inp, expect: out });
      }),
      { seed: o.seed, numRuns: o.runs, endOnFailure: true, includeErrorInReport: true },
    );
    const f = await by.stop();
    if (f.recvAB !== f.sentAB || f.recvBA !== f.sentBA || f.mismatched !== 0 || f.sentAB === 0) throw new Error(`bystanders lost frames: ${JSON.stringify(f)}`);
    const guards = [arena.b1, arena.b2].flatMap((g) => g.brokenGuards());
    if (guards.length) throw new Error(`canaries broken at ${guards.join(', ')}`);
  } finally {
    await by.stop();
    if (!o.arena) await arena.stop();
  }
  return { runs: o.runs, ms: Date.now() - t0, outcomes: Object.fromEntries(outcomes), examples: [...examples.values()] };
}

