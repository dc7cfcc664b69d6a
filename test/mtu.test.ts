/**
 * Issue 21 (MTU): VIRTIO_NET_F_MTU is offered only by a port with an `mtu`; frames over
 * MTU + 18 bytes (Ethernet header and one VLAN tag) towards it are dropped and counted as
 * too big on its RX ring, never delivered in part; NET_SET_MTU moves the limit on a running
 * ring; a port without an MTU takes any size, as before.
 */
import t from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import os from 'node:os';
import path from 'node:path';
import { parseConfig } from '../src/main/config';
import { Forwarder } from '../src/main/forwarder';
import { F } from '../src/protocol/constants';
import { SyntheticGuest, frame, macOf } from '../src/frontend/guest';
import { tmpDir, waitUntil } from '../kit/env';

const hasMtu = (f: bigint): boolean => ((f >> BigInt(F.VIRTIO_NET_F_MTU)) & 1n) === 1n;

t.test('MTU: offered only when configured, enforced at the destination, raised by NET_SET_MTU', async (t) => {
  const dir = tmpDir();
  const sock = (n: string) => path.join(dir, `${n}.sock`);
  const fwd = new Forwarder(parseConfig({ interfaces: [{ name: 'a', socket: sock('a') }, { name: 'b', socket: sock('b'), mtu: 1500 }] }, os.cpus().length));
  await fwd.start();
  const A = await SyntheticGuest.start({ socket: sock('a'), mac: macOf(1) });
  const B = await SyntheticGuest.start({ socket: sock('b'), mac: macOf(2) });
  t.teardown(async () => {
    A.close();
    B.close();
    await fwd.stop();
  });
  const [da, db] = fwd.interfaces.map((i) => i.device);
  t.notOk(hasMtu(da?.offered ?? 0n), 'a (no mtu): VIRTIO_NET_F_MTU not offered');
  t.ok(hasMtu(db?.offered ?? 0n), 'b (mtu 1500): VIRTIO_NET_F_MTU offered');

  const tooBig = (): number => fwd.stats().find((s) => s.iface === 'b' && s.dir === 'rx')?.dropTooBig ?? -1;
  const sendAndCollect = async (from: SyntheticGuest, to: SyntheticGuest, sizes: number[], expect: number): Promise<Uint8Array[]> => {
    const frames = sizes.map((len, i) => frame(to.mac, from.mac, len, i));
    t.equal(from.send(0, frames), frames.length, `sent ${sizes.join(', ')}`);
    const got: Uint8Array[] = [];
    await waitUntil(() => {
      from.reclaim(0);
      for (const p of to.receive(0)) got.push(Uint8Array.from(p.data));
      return got.length >= expect;
    }, 5000, `${expect} frames`).catch(() => undefined);
    await sleep(100); // anything more that would arrive
    for (const p of to.receive(0)) got.push(Uint8Array.from(p.data));
    from.reclaim(0);
    return got;
  };

  // sizes are whole frames (Ethernet header included, no virtio-net header): the limit is 1518
  const sizes = [60, 1514, 1518, 1519, 4000, 9000, 1000];
  const got = await sendAndCollect(A, B, sizes, 4);
  t.same(got.map((f) => f.length), [60, 1514, 1518, 1000], 'b receives the frames up to 1518 bytes, in order');
  const sent = sizes.map((len, i) => frame(B.mac, A.mac, len, i)).filter((f) => f.length <= 1518);
  t.ok(got.length === sent.length && got.every((f, i) => Buffer.compare(Buffer.from(f), Buffer.from(sent[i])) === 0), 'each byte-exact');
  t.equal(tooBig(), 3, "b's RX ring counts the 3 frames over its MTU as too big");

  const back = await sendAndCollect(B, A, [9000, 64], 2);
  t.same(back.map((f) => f.length), [9000, 64], 'a (no mtu) takes a 9000-byte frame as before');

  await B.setMtu(9000);
  t.equal(db?.mtu, 9000, 'NET_SET_MTU 9000 accepted');
  const jumbo = await sendAndCollect(A, B, [9018, 9019, 4000], 2);
  t.same(jumbo.map((f) => f.length), [9018, 4000], 'after NET_SET_MTU 9000: 9018 bytes pass, 9019 do not');
  t.equal(tooBig(), 4, 'one more too big');
});
