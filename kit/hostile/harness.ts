/**
 * Scaffolding of the hostile-guest suite (test/hostile/, see its README.md); also the
 * arena of the message fuzzer (kit/fuzz/messages.ts).
 *
 * An "arena" is one in-process forwarder with four interfaces: the victim `v` and its
 * cross-connect peer `w`, and a bystander pair `b1` <-> `b2` that carries credit-based
 * traffic (never more frames in flight than RX buffers posted) during every attack.
 * runCase() wraps one attack with the checks every case must pass:
 *  - the offending device is reset with exactly one 'device reset' line naming the cause
 *    (or, for cases that must NOT reset, none);
 *  - no other error line (no other interface reset, no worker failure);
 *  - the bystander pair loses nothing: sent == received, byte-exact, in order;
 *  - every canary (DriverRing guard bytes) of every guest is intact;
 *  - no fd leaked (fd count back to the baseline once the async close settled).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { Test } from 'tap';
import { native } from '../../src/native';
import { VhostUserClient } from '../../src/frontend/vhost-user-client';
import { Frontend } from '../../src/frontend/frontend';
import { SyntheticGuest, GuestOptions, macOf } from '../../src/frontend/guest';
import { Traffic } from '../../src/frontend/traffic';
import { F, Req, bit } from '../../src/protocol/constants';
import { encodeMemoryTable } from '../../src/protocol/messages';
import { LogLine } from '../../src/main/log';
import { captureLogs, fdCount, startForwarder, waitUntil } from '../env';

export const UVA = 0x7f0000000000;

export const MAC_V = macOf(0x10);
export const MAC_W = macOf(0x11);
const MAC_B1 = macOf(0x21);
const MAC_B2 = macOf(0x22);

/** Bystander traffic both ways between two guests (src/frontend/traffic.ts), until stop(). */
export class Bystander {
  private readonly traffic: Traffic;

  constructor(readonly a: SyntheticGuest, readonly b: SyntheticGuest, readonly sizes: readonly number[] = [60, 333, 1514]) {
    // every size here fits one 2048-byte RX buffer: one frame uses one posted chain;
    // B->A frames are numbered from 2^30, A->B from 0
    this.traffic = new Traffic(a, b, { sizes, burst: 16, seqBaseBA: 1 << 30 });
  }

  get sentAB(): number {
    return this.traffic.ab.sent;
  }

  get recvAB(): number {
    return this.traffic.ab.received;
  }

  get sentBA(): number {
    return this.traffic.ba.sent;
  }

  get recvBA(): number {
    return this.traffic.ba.received;
  }

  get mismatched(): number {
    return this.traffic.ab.mismatched + this.traffic.ba.mismatched;
  }

  start(): void {
    this.traffic.start();
  }

  /** Stop sending, drain what is in flight (up to 10 s); returns the totals since construction. */
  async stop(): Promise<{ sentAB: number; recvAB: number; sentBA: number; recvBA: number; mismatched: number }> {
    await this.traffic.stop(10000);
    return { sentAB: this.sentAB, recvAB: this.recvAB, sentBA: this.sentBA, recvBA: this.recvBA, mismatched: this.mismatched };
  }
}

export interface Arena {
  env: Awaited<ReturnType<typeof startForwarder>>;
  b1: SyntheticGuest;
  b2: SyntheticGuest;
  sock: (n: 'v' | 'w' | 'b1' | 'b2') => string;
  stop: () => Promise<void>;
}

const PAIRS = [['b1', 'b2'], ['v', 'w']];

/** `perIface`: options of every interface (e.g. packedRing: offered to all, taken only by a guest that wants it) */
export async function startArena(extra: Record<string, unknown> = {}, perIface: Record<string, unknown> = {}): Promise<Arena> {
  const env = await startForwarder(['v', 'w', 'b1', 'b2'], { forwarding: { mode: 'xconnect', pairs: PAIRS }, ...extra }, perIface);
  const b1 = await SyntheticGuest.start({ socket: env.sock('b1'), mac: MAC_B1 });
  const b2 = await SyntheticGuest.start({ socket: env.sock('b2'), mac: MAC_B2 });
  return {
    env,
    b1,
    b2,
    sock: env.sock as Arena['sock'],
    stop: async () => {
      b1.close();
      b2.close();
      await env.stop();
    },
  };
}

/** What an attack may create; everything is closed by runCase. */
export class Ctx {
  readonly guests: SyntheticGuest[] = [];
  readonly clients: VhostUserClient[] = [];
  readonly fds: number[] = [];
  constructor(readonly arena: Arena) {}

  async client(iface: 'v' | 'w' = 'v'): Promise<VhostUserClient> {
    const c = await VhostUserClient.connect(this.arena.sock(iface));
    this.clients.push(c);
    return c;
  }

  async guest(opts: Partial<GuestOptions> = {}, iface: 'v' | 'w' = 'v'): Promise<SyntheticGuest> {
    const g = await SyntheticGuest.start({ socket: this.arena.sock(iface), mac: iface === 'v' ? MAC_V : MAC_W, memSize: 4 << 20, rxPosted: 64, ...opts });
    this.guests.push(g);
    return g;
  }

  memfd(size: number): number {
    const fd = native.memfdCreate('hostile', size);
    this.fds.push(fd);
    return fd;
  }

  eventfd(): number {
    const fd = native.eventfdCreate(0);
    this.fds.push(fd);
    return fd;
  }

  closeAll(): void {
    for (const g of this.guests) g.close();
    for (const c of this.clients) c.close();
    for (const fd of this.fds.splice(0)) {
      try {
        native.close(fd);
      } catch {
        // already closed by the attack
      }
    }
  }
}

/** The negotiation a QEMU-like frontend does before memory: returns the acked protocol features. */
export async function negotiate(c: VhostUserClient, protocol = true): Promise<bigint> {
  const n = await new Frontend(c).negotiate({
    protocol,
    want: bit(F.VIRTIO_F_VERSION_1) | bit(F.VIRTIO_NET_F_MRG_RXBUF) | bit(F.VIRTIO_RING_F_INDIRECT_DESC) | bit(F.VHOST_USER_F_PROTOCOL_FEATURES),
  });
  await c.callU64(Req.GET_FEATURES); // barrier
  return n.protocolFeatures;
}

export async function setMem(c: VhostUserClient, fd: number, size: number): Promise<void> {
  await c.call(Req.SET_MEM_TABLE, encodeMemoryTable([{ gpa: 0, size, uva: UVA, mmapOffset: 0 }]), [fd], true);
}

/** Kick guest TX queue 0 of g (ring 1). */
export function kickTx(g: SyntheticGuest): void {
  native.eventfdWrite(g.kickFds[1], 1);
}

export interface Case {
  name: string;
  /** CVE(s) the case mirrors (README.md) */
  cve?: string;
  /** the reset reason expected in the 'device reset' line of `iface`; null: no reset allowed */
  reason: RegExp | null;
  iface?: 'v' | 'w';
  attack: (ctx: Ctx) => Promise<void>;
  /** extra assertions after the attack, before cleanup */
  after?: (t: Test, ctx: Ctx) => Promise<void> | void;
}

const resetLines = (lines: LogLine[], iface: string) => lines.filter((l) => l.msg === 'device reset' && l.fields.iface === iface && l.level === 'error');

/** Run one attack with every check of the suite; see the file comment. */
export async function runCase(t: Test, arena: Arena, c: Case): Promise<void> {
  const iface = c.iface ?? 'v';
  const before = fdCount();
  const logs = captureLogs();
  const by = new Bystander(arena.b1, arena.b2);
  by.start();
  const ctx = new Ctx(arena);
  try {
    await c.attack(ctx);
    if (c.reason) {
      await waitUntil(() => resetLines(logs.lines, iface).length > 0, 3000, `${c.name}: reset of ${iface}`).catch(() => undefined);
      await sleep(30); // a second (duplicate) reset line would show up here
    } else {
      await sleep(150);
    }
    const resets = resetLines(logs.lines, iface);
    if (c.reason) {
      t.equal(resets.length, 1, `${c.name}: exactly one 'device reset' line`);
      t.match(String(resets[0]?.fields.reason), c.reason, `${c.name}: the reset names the cause`);
    } else {
      t.same(resets.map((l) => l.fields.reason), [], `${c.name}: no reset`);
    }
    const others = logs.lines.filter((l) => l.level === 'error' && l.fields.iface !== iface && l.fields.dev !== iface);
    t.same(others.map((l) => `${l.msg} ${JSON.stringify(l.fields)}`), [], `${c.name}: no other interface reset, no worker failure`);
    if (c.after) await c.after(t, ctx);
  } catch (e) {
    t.fail(`${c.name}: attack threw ${(e as Error).stack}`);
  }
  const f = await by.stop();
  t.ok(f.sentAB > 0 && f.sentBA > 0, `${c.name}: bystanders sent during the attack (${f.sentAB}/${f.sentBA})`);
  t.same([f.recvAB, f.recvBA, f.mismatched], [f.sentAB, f.sentBA, 0], `${c.name}: bystanders lost nothing, byte-exact`);
  const guards = [arena.b1, arena.b2, ...ctx.guests].flatMap((g) => g.brokenGuards());
  t.same(guards, [], `${c.name}: every canary intact`);
  t.equal(arena.b1.client.closed, null, `${c.name}: bystander still connected`);
  ctx.closeAll();
  await waitUntil(() => arena.env.fwd.interfaces.every((i) => i.device === null || i.name.startsWith('b')), 3000, 'victim released').catch(() => undefined);
  await waitUntil(() => fdCount() === before, 3000, 'fd count settles').catch(() => undefined);
  t.equal(fdCount(), before, `${c.name}: no fd leaked`);
  logs.stop();
}
