/**
 * Issue 21 (limits): 128 queue pairs per interface and 509 memory slots, each used to its
 * end. A frame on every one of 128 TX queues arrives byte-exact on the same RX queue of the
 * peer (steering "pair"), both ways, with the workers sleeping on more kick eventfds than
 * poll's stack array holds; a guest whose memory is 509 slots of 64 KiB (ADD_MEM_REG each)
 * forwards byte-exact from buffers in slots past 255 (the batch's region index is 16-bit),
 * a 510th slot is refused by name and resets only that device, and a slot removed with
 * REM_MEM_REG leaves the others forwarding and frees its place for a new one.
 */
import t from 'tap';
import { SyntheticGuest, frame, macOf } from '../src/frontend/guest';
import { encodeSingleRegion } from '../src/protocol/messages';
import { MAX_MEM_SLOTS, Req } from '../src/protocol/constants';
import { captureLogs, startForwarder, waitUntil } from '../kit/env';

const eq = (a: Uint8Array, b: Uint8Array): boolean => Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;

/** Send `frames[q]` on TX queue q of `from`, collect what `to` receives per RX queue. */
async function exchange(from: SyntheticGuest, to: SyntheticGuest, frames: Uint8Array[][], what: string): Promise<Uint8Array[][]> {
  const got: Uint8Array[][] = frames.map(() => []);
  const want = frames.reduce((n, f) => n + f.length, 0);
  let sent = 0;
  frames.forEach((f, q) => (sent += from.send(q, f)));
  if (sent !== want) throw new Error(`${what}: ${sent} of ${want} frames posted`);
  let n = 0;
  await waitUntil(() => {
    for (let q = 0; q < frames.length; q++) {
      from.reclaim(q);
      for (const p of to.receive(q)) {
        got[q].push(Uint8Array.from(p.data));
        n++;
      }
    }
    return n >= want;
  }, 20000, what).catch(() => undefined);
  return got;
}

t.test('128 queue pairs: every queue pair forwards its own frames, byte-exact, both ways', async (t) => {
  const QP = 128;
  const env = await startForwarder(['a', 'b'], {}, { queues: QP, steering: 'pair' });
  t.teardown(env.stop);
  // 256 rings of 64 entries, each RX ring with 64 buffers of 2 KiB posted: 64 MiB holds them
  const opts = { queuePairs: QP, queueSize: 64, memSize: 64 << 20 };
  const a = await SyntheticGuest.start({ socket: env.sock('a'), mac: macOf(1), ...opts });
  const b = await SyntheticGuest.start({ socket: env.sock('b'), mac: macOf(2), ...opts });
  t.teardown(() => {
    a.close();
    b.close();
  });
  t.equal(Number(await a.client.callU64(Req.GET_QUEUE_NUM)), QP, 'GET_QUEUE_NUM answers 128');
  const da = env.fwd.interface('a')?.device;
  await waitUntil(() => (da?.vrings.filter((v) => v.started).length ?? 0) === 2 * QP, 10000, 'all 256 rings started');
  t.equal(da?.vrings.filter((v) => v.started).length, 2 * QP, 'a: all 256 rings started');

  // queue q carries frames whose length and sequence name q, so a frame on the wrong queue shows
  const mk = (to: SyntheticGuest, from: SyntheticGuest) => Array.from({ length: QP }, (_, q) => [frame(to.mac, from.mac, 60 + q, q), frame(to.mac, from.mac, 1514 - q, q + 1000)]);
  for (const [from, to, name] of [[a, b, 'a -> b'], [b, a, 'b -> a']] as const) {
    const frames = mk(to, from);
    const got = await exchange(from, to, frames, name);
    const wrong = frames.map((f, q) => (got[q].length === 2 && eq(got[q][0], f[0]) && eq(got[q][1], f[1]) ? -1 : q)).filter((q) => q >= 0);
    t.same(wrong, [], `${name}: each of the 128 RX queues received exactly its TX queue's 2 frames, byte-exact`);
  }
  const stats = env.fwd.stats().filter((s) => s.iface === 'a' && s.dir === 'tx');
  t.equal(stats.length, QP, 'stats: 128 TX queues of a');
  t.ok(stats.every((s) => s.packets === 2), 'stats: 2 packets on every one of them');
});

t.test('509 memory slots: forwarding from the high slots, the 510th refused, a removed slot freed', async (t) => {
  const SLOT = 64 << 10;
  const env = await startForwarder(['a', 'b', 'c']);
  t.teardown(env.stop);
  const a = await SyntheticGuest.start({ socket: env.sock('a'), mac: macOf(1), memSlots: true, slotSize: SLOT, memSize: MAX_MEM_SLOTS * SLOT });
  const b = await SyntheticGuest.start({ socket: env.sock('b'), mac: macOf(2) });
  t.teardown(() => {
    a.close();
    b.close();
  });
  t.equal(Number(await a.client.callU64(Req.GET_MAX_MEM_SLOTS)), 509, 'GET_MAX_MEM_SLOTS answers 509');
  const da = env.fwd.interface('a')?.device;
  t.equal(da?.mem.count, 509, 'a: 509 regions mapped, one per ADD_MEM_REG');
  const txSlot = Math.floor(a.arena(1).bufBase / SLOT);
  t.ok(txSlot > 255, `a's TX buffers start in slot ${txSlot}, past what 8 bits can name`);

  const sizes = [60, 128, 1514, 777, 64, 1500, 9000, 60];
  const roundTrip = async (what: string): Promise<void> => {
    for (const [from, to, name] of [[a, b, `${what}: a -> b`], [b, a, `${what}: b -> a`]] as const) {
      const frames = [sizes.map((len, i) => frame(to.mac, from.mac, len, i))];
      const got = await exchange(from, to, frames, name);
      t.ok(got[0].length === sizes.length && got[0].every((f, i) => eq(f, frames[0][i])), `${name}: ${got[0].length} of ${sizes.length} frames, byte-exact`);
    }
  };
  await roundTrip('509 slots');
  t.same(a.tx[0].brokenGuards(), [], "nothing written past a's buffers");

  // the last slot holds no ring and no buffer: removing it leaves the device running
  const last = a.slots()[MAX_MEM_SLOTS - 1];
  await a.ack(Req.REM_MEM_REG, encodeSingleRegion(last));
  t.equal(da?.mem.count, 508, 'REM_MEM_REG: 508 regions left');
  await roundTrip('after REM_MEM_REG');
  await a.ack(Req.ADD_MEM_REG, encodeSingleRegion(last), [a.memFd]);
  t.equal(da?.mem.count, 509, 'the freed slot is taken again by ADD_MEM_REG');
  await roundTrip('slot re-added');

  // a third guest fills its 509 slots and asks for one more: refused by name, that device reset
  const c = await SyntheticGuest.start({ socket: env.sock('c'), mac: macOf(3), memSlots: true, slotSize: SLOT, memSize: MAX_MEM_SLOTS * SLOT });
  t.teardown(() => c.close());
  const logs = captureLogs();
  t.teardown(logs.stop);
  const extra = { gpa: MAX_MEM_SLOTS * SLOT, size: SLOT, uva: 0x7e0000000000, mmapOffset: 0 };
  const refused = await c.ack(Req.ADD_MEM_REG, encodeSingleRegion(extra), [c.memFd]).then(() => 'accepted', (e: Error) => e.message);
  t.not(refused, 'accepted', `the 510th ADD_MEM_REG is refused (${refused})`);
  await waitUntil(() => logs.lines.some((l) => /all 509 memory slots are in use/.test(JSON.stringify(l))), 5000, 'the refusal logged').catch(() => undefined);
  const line = logs.lines.find((l) => /all 509 memory slots are in use/.test(JSON.stringify(l)));
  t.ok(line, 'logged: ADD_MEM_REG: all 509 memory slots are in use');
  t.match(JSON.stringify(line ?? {}), /dev.*c/, 'naming device c');
  await roundTrip('beside the refused device');
  t.equal(da?.mem.count, 509, "a's 509 slots untouched");
});
