/**
 * Issue 21 (flow spreading): towards a multi-queue port with steering "hash" (the default),
 * the RX queue is chosen by a hash of the flow, so a 1-queue source sending many flows
 * reaches every queue of a 4-queue guest while each flow stays on one queue, in order;
 * steering "pair" keeps the queue pair the packets came from. The hash itself: addresses
 * and ports for IPv4/IPv6 TCP/UDP, the ICMP echo id, MACs otherwise, one VLAN tag skipped,
 * IPv4 fragments hashed together.
 */
import t from 'tap';
import { SyntheticGuest, macOf } from '../src/frontend/guest';
import { flowHash } from '../src/workers/flow-hash';
import { startForwarder, waitUntil } from '../kit/env';

/** An Ethernet + IPv4 + UDP frame of flow `flow` (source port 10000 + flow) carrying `seq`. */
function udp(dst: Uint8Array, src: Uint8Array, flow: number, seq: number, len = 128): Uint8Array {
  const f = new Uint8Array(len);
  const v = new DataView(f.buffer);
  f.set(dst, 0);
  f.set(src, 6);
  v.setUint16(12, 0x0800);
  f[14] = 0x45;
  v.setUint16(16, len - 14);
  f[22] = 64;
  f[23] = 17;
  f.set([10, 0, 0, 1], 26);
  f.set([10, 0, 0, 2], 30);
  v.setUint16(34, 10000 + flow);
  v.setUint16(36, 4789);
  v.setUint16(38, len - 34);
  v.setUint32(42, seq);
  return f;
}

async function spreadRun(steering: 'hash' | 'pair'): Promise<{ perQueue: number[]; flowQueues: Map<number, Set<number>>; inOrder: boolean; received: number; sent: number }> {
  const env = await startForwarder(['a', 'b'], {}, { queues: 4, steering });
  const a = await SyntheticGuest.start({ socket: env.sock('a'), mac: macOf(1), queuePairs: 1 });
  const b = await SyntheticGuest.start({ socket: env.sock('b'), mac: macOf(2), queuePairs: 4 });
  try {
    const FLOWS = 64;
    const PER = 16;
    const frames: Uint8Array[] = [];
    for (let k = 0; k < PER; k++) for (let f = 0; f < FLOWS; f++) frames.push(udp(b.mac, a.mac, f, k));
    const perQueue = [0, 0, 0, 0];
    const flowQueues = new Map<number, Set<number>>();
    const lastSeq = new Map<number, number>();
    let inOrder = true;
    let sent = 0;
    let received = 0;
    await waitUntil(() => {
      if (sent < frames.length) sent += a.send(0, frames.slice(sent, sent + 32));
      a.reclaim(0);
      for (let q = 0; q < 4; q++) {
        for (const p of b.receive(q)) {
          const v = new DataView(p.data.buffer, p.data.byteOffset);
          const flow = v.getUint16(34) - 10000;
          const seq = v.getUint32(42);
          perQueue[q]++;
          received++;
          if (!flowQueues.has(flow)) flowQueues.set(flow, new Set());
          flowQueues.get(flow)?.add(q);
          if ((lastSeq.get(flow) ?? -1) + 1 !== seq) inOrder = false;
          lastSeq.set(flow, seq);
        }
      }
      return received >= frames.length;
    }, 15000, 'every frame').catch(() => undefined);
    return { perQueue, flowQueues, inOrder, received, sent: frames.length };
  } finally {
    a.close();
    b.close();
    await env.stop();
  }
}

t.test('steering "hash": 64 flows from a 1-queue guest reach all 4 queues of the other; each flow on one queue, in order', async (t) => {
  const r = await spreadRun('hash');
  t.equal(r.received, r.sent, `every frame arrived (${r.received} of ${r.sent})`);
  t.ok(r.perQueue.every((n) => n > 0), `every RX queue received a share: ${r.perQueue.join(', ')}`);
  t.ok(Math.max(...r.perQueue) <= r.sent / 2, `no queue took more than half (${Math.max(...r.perQueue)} of ${r.sent})`);
  t.equal(r.flowQueues.size, 64, 'all 64 flows seen');
  t.ok([...r.flowQueues.values()].every((s) => s.size === 1), 'each flow stayed on one queue');
  t.ok(r.inOrder, 'each flow arrived in order');
});

t.test('steering "pair": the same traffic stays on the queue pair it came from', async (t) => {
  const r = await spreadRun('pair');
  t.equal(r.received, r.sent, `every frame arrived (${r.received} of ${r.sent})`);
  t.same(r.perQueue, [r.sent, 0, 0, 0], 'all on queue 0 (the source has one queue pair)');
  t.ok(r.inOrder, 'in order');
});

t.test('the flow hash: what it looks at', async (t) => {
  const m1 = macOf(1);
  const m2 = macOf(2);
  const h = (f: Uint8Array): number => flowHash(f, Math.min(f.length, 62));
  t.equal(h(udp(m2, m1, 5, 0)), h(udp(m2, m1, 5, 99)), 'the payload does not count');
  t.not(h(udp(m2, m1, 5, 0)), h(udp(m2, m1, 6, 0)), 'the source port does');
  const tagged = (f: Uint8Array): Uint8Array => {
    const g = new Uint8Array(f.length + 4);
    g.set(f.subarray(0, 12), 0);
    g.set([0x81, 0x00, 0x00, 0x0a], 12);
    g.set(f.subarray(12), 16);
    return g;
  };
  t.equal(h(tagged(udp(m2, m1, 5, 0))), h(udp(m2, m1, 5, 0)), 'one VLAN tag is skipped');
  const frag = (f: Uint8Array, off: number, more: boolean): Uint8Array => {
    const g = Uint8Array.from(f);
    new DataView(g.buffer).setUint16(20, (more ? 0x2000 : 0) | off);
    return g;
  };
  t.equal(h(frag(udp(m2, m1, 5, 0), 0, true)), h(frag(udp(m2, m1, 6, 0), 185, false)), 'IPv4 fragments of one datagram hash together (addresses only)');
  const v6 = (sport: number): Uint8Array => {
    const f = new Uint8Array(62 + 8);
    f.set(m2, 0);
    f.set(m1, 6);
    f.set([0x86, 0xdd, 0x60], 12);
    f[20] = 6;
    f.set([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 22);
    f.set([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2], 38);
    new DataView(f.buffer).setUint16(54, sport);
    return f;
  };
  t.not(h(v6(1)), h(v6(2)), 'IPv6 TCP: ports count');
  const arp = (src: Uint8Array): Uint8Array => {
    const f = new Uint8Array(60);
    f.set(m2, 0);
    f.set(src, 6);
    f.set([0x08, 0x06], 12);
    return f;
  };
  t.not(h(arp(m1)), h(arp(macOf(3))), 'non-IP: the MACs count');
  const buckets = [0, 0, 0, 0];
  for (let f = 0; f < 4096; f++) buckets[h(udp(m2, m1, f, 0)) % 4]++;
  t.ok(buckets.every((n) => n > 900 && n < 1150), `4096 flows over 4 queues spread evenly: ${buckets.join(', ')}`);
});
