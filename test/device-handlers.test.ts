/**
 * The typed handlers of Device driven through Device.handle() with a fake dataplane and a
 * fake link: no socket, no worker. The fake dataplane records every call and resolves at
 * once; on stopRing it writes the ring's last_avail_idx into the ring's ctrl, as a worker
 * does. What is checked: the table's checks run before a handler (size, gating), the
 * `pause` column (which rings stop when), and the bytes of the replies.
 */
import t, { Test } from 'tap';
import { native } from '../src/native';
import { F, FLAG_NEED_REPLY, FLAG_VERSION, PF, Req, VRING_NOFD_MASK, bit, hasBit } from '../src/protocol/constants';
import { CTRL_LAST_AVAIL, CTRL_LAST_USED, LogDesc, RegionDesc, VringDesc } from '../src/shared/types';
import { Dataplane, Device, DeviceLink, DeviceOptions } from '../src/main/device';
import { encodeMemoryTable, encodeU64, encodeVringAddr, encodeVringState } from '../src/protocol/messages';
import { LogLine, setLevel, setSink } from '../src/main/log';
import { REQUESTS } from '../src/main/request-table';

if (!process.env.VHOSTFWD_LOG) setLevel('error');

const MEM = 1 << 20;
const UVA = 0x7f0000000000;
const Q = 256;
const ringAt = (i: number) => ({ desc: 0x10000 * (i + 1), avail: 0x10000 * (i + 1) + 16 * Q, used: 0x10000 * (i + 1) + 0x4000 });

type Call =
  | ['startRing', number, number]
  | ['stopRing', number, number]
  | ['setRingLogging', number, number, boolean, number, LogDesc | null]
  | ['injectFrame', number, number];

class FakeDataplane implements Dataplane {
  readonly calls: Call[] = [];
  /** ctrl of each ring handed over, by index (the worker's view of it). */
  readonly ctrl = new Map<number, SharedArrayBuffer>();
  /** last_avail_idx the "worker" reached when a ring stops, by ring index. */
  readonly lastAvailAtStop = new Map<number, number>();

  startRing(ring: VringDesc, _regions: readonly RegionDesc[], _log: LogDesc | null): Promise<void> {
    this.calls.push(['startRing', ring.device, ring.index]);
    this.ctrl.set(ring.index, ring.ctrl);
    return Promise.resolve();
  }
  stopRing(device: number, index: number): Promise<void> {
    this.calls.push(['stopRing', device, index]);
    const ctrl = this.ctrl.get(index);
    const at = this.lastAvailAtStop.get(index);
    if (ctrl && at !== undefined) new Int32Array(ctrl)[CTRL_LAST_AVAIL] = at;
    return Promise.resolve();
  }
  setRingLogging(device: number, index: number, logAll: boolean, logUsedGpa: number, log: LogDesc | null): Promise<void> {
    this.calls.push(['setRingLogging', device, index, logAll, logUsedGpa, log]);
    return Promise.resolve();
  }
  injectFrame(port: number, frame: Uint8Array): void {
    this.calls.push(['injectFrame', port, frame.length]);
  }
}

class FakeLink implements DeviceLink {
  readonly sent: string[] = [];
  readonly resets: string[] = [];
  send(bytes: Uint8Array, fds: readonly number[] = []): void {
    if (fds.length) throw new Error('the device never sends fds');
    this.sent.push(Buffer.from(bytes).toString('hex'));
  }
  reset(reason: string): void {
    this.resets.push(reason);
  }
}

/** A device on fakes, with the log lines it writes. */
function makeDevice(t: Test, opts: Partial<DeviceOptions> = {}) {
  const dp = new FakeDataplane();
  const link = new FakeLink();
  const dev = new Device({ name: 'fake', port: 7, queuePairs: 2, ...opts }, dp, link);
  const lines: LogLine[] = [];
  setSink((l) => lines.push(l));
  t.teardown(async () => {
    setSink(null);
    await dev.release();
  });
  const send = (request: Req, payload: Buffer = Buffer.alloc(0), fds: number[] = [], flags = FLAG_VERSION) =>
    dev.handle({ request, flags, payload, fds });
  return { dp, link, dev, lines, send };
}

type Fixture = ReturnType<typeof makeDevice>;

/** Negotiated (VERSION_1, no PROTOCOL_FEATURES: rings enabled from the start), memory set, rings `running` started. */
async function running(f: Fixture, rings: number[], features = bit(F.VIRTIO_F_VERSION_1)): Promise<bigint> {
  await f.send(Req.SET_OWNER);
  await f.send(Req.SET_FEATURES, encodeU64(features));
  const fd = native.memfdCreate('guest', MEM);
  await f.send(Req.SET_MEM_TABLE, encodeMemoryTable([{ gpa: 0, size: MEM, uva: UVA, mmapOffset: 0 }]), [fd]);
  for (const i of rings) {
    const r = ringAt(i);
    await f.send(Req.SET_VRING_NUM, encodeVringState({ index: i, num: Q }));
    await f.send(Req.SET_VRING_ADDR, encodeVringAddr({ index: i, flags: 0, desc: UVA + r.desc, avail: UVA + r.avail, used: UVA + r.used, log: 0 }));
    await f.send(Req.SET_VRING_KICK, encodeU64(i | VRING_NOFD_MASK));
  }
  if (f.link.resets.length) throw new Error(`setup reset the device: ${f.link.resets.join('; ')}`);
  f.dp.calls.length = 0;
  f.link.sent.length = 0;
  return features;
}

/** A header (request, flags VERSION|REPLY, size) and payload, as hex. */
const replyHex = (request: number, payload: Buffer) => {
  const h = Buffer.alloc(12);
  h.writeUInt32LE(request, 0);
  h.writeUInt32LE(0x5, 4);
  h.writeUInt32LE(payload.length, 8);
  return Buffer.concat([h, payload]).toString('hex');
};

t.test('every table entry has a parser and a handler; the table names its requests', async (t) => {
  for (const [code, spec] of REQUESTS) {
    t.equal(Req[spec.name], code, `${spec.name} is request ${code}`);
    t.type(spec.parse, 'function', `${spec.name} has a parser`);
    t.type(spec.handle, 'function', `${spec.name} has a handler`);
  }
});

t.test('SET_VRING_NUM with a bad payload size is rejected by name before its handler runs', async (t) => {
  const f = makeDevice(t);
  let handled = 0;
  const real = f.dev.setVringNum.bind(f.dev);
  f.dev.setVringNum = (s, rq) => {
    handled++;
    real(s, rq);
  };
  await f.send(Req.SET_VRING_NUM, Buffer.from([0, 0, 0, 0]));
  t.equal(handled, 0, 'the handler never ran');
  t.same(f.link.resets, ['SET_VRING_NUM: payload size 4, expected 8'], 'the device is reset, the request and the reason named');
  t.equal(f.dev.vrings[0].num, 0, 'no ring changed');
  t.same(f.link.sent, [], 'no reply (no reply payload, no NEED_REPLY)');
  t.same(f.dp.calls, [], 'the dataplane saw nothing');
  const rejected = f.lines.find((l) => l.msg === 'vhost-user request rejected; resetting device');
  t.same(rejected?.fields, { dev: 'fake', request: 'SET_VRING_NUM', reason: 'payload size 4, expected 8' }, 'one log line names it');

  // the same request, well formed, reaches the handler with its typed payload
  const g = makeDevice(t);
  const got: unknown[] = [];
  g.dev.setVringNum = (s, rq) => void got.push(s, rq.name, rq.fds.length);
  await g.send(Req.SET_VRING_NUM, encodeVringState({ index: 1, num: 512 }));
  t.same(got, [{ index: 1, num: 512 }, 'SET_VRING_NUM', 0], 'the handler gets {index, num} and the name from the table');
  t.same(g.link.resets, []);
});

t.test('a value the handler refuses is named with the request from the table', async (t) => {
  const f = makeDevice(t);
  await f.send(Req.SET_VRING_NUM, encodeVringState({ index: 0, num: 100 }));
  t.same(f.link.resets, ['SET_VRING_NUM: queue size 100 is not a power of two in 1..32768']);
  const g = makeDevice(t);
  await g.send(Req.GET_VRING_BASE, encodeVringState({ index: 9, num: 0 }));
  t.same(g.link.resets, ['GET_VRING_BASE: ring index 9 out of range (device has 4 rings)']);
  t.same(g.link.sent, [replyHex(Req.GET_VRING_BASE, encodeU64(1))], 'a request with a reply payload is answered 1 (failed) before the reset');
  t.same(g.dp.calls, [], 'nothing stopped');
});

t.test('a request gated on a protocol feature that was not negotiated is rejected', async (t) => {
  const f = makeDevice(t);
  let handled = 0;
  f.dev.getQueueNum = () => {
    handled++;
    return encodeU64(2);
  };
  await f.send(Req.GET_QUEUE_NUM);
  t.equal(handled, 0, 'the handler never ran');
  t.same(f.link.resets, ['GET_QUEUE_NUM: protocol feature MQ not negotiated']);
  t.same(f.link.sent, [replyHex(Req.GET_QUEUE_NUM, encodeU64(1))], 'the frontend waiting for the reply gets 1 (failed): 11000000 05000000 08000000 01...');
  t.equal(f.link.sent[0], '110000000500000008000000' + '0100000000000000');

  // once negotiated (PROTOCOL_FEATURES acked, MQ in SET_PROTOCOL_FEATURES) the same request is answered
  const g = makeDevice(t);
  await g.send(Req.SET_FEATURES, encodeU64(bit(F.VHOST_USER_F_PROTOCOL_FEATURES)));
  await g.send(Req.SET_PROTOCOL_FEATURES, encodeU64(bit(PF.MQ)));
  await g.send(Req.GET_QUEUE_NUM);
  t.same(g.link.resets, []);
  t.same(g.link.sent, [replyHex(Req.GET_QUEUE_NUM, encodeU64(2))], 'GET_QUEUE_NUM answers the queue pairs');

  // REPLY_ACK asked for but not negotiated: a gated request without reply payload gets no ack
  const h = makeDevice(t);
  await h.send(Req.SEND_RARP, encodeU64(0x0605040302), [], FLAG_VERSION | FLAG_NEED_REPLY);
  t.same(h.link.resets, ['SEND_RARP: protocol feature RARP not negotiated']);
  t.same(h.link.sent, [], 'no reply: REPLY_ACK not negotiated, no reply payload');
  t.same(h.dp.calls, [], 'no frame injected');

  // a request only valid when VHOST_USER_F_PROTOCOL_FEATURES is offered
  const k = makeDevice(t, { maskFeatures: ['VHOST_USER_F_PROTOCOL_FEATURES'] });
  await k.send(Req.GET_PROTOCOL_FEATURES);
  t.same(k.link.resets, ['GET_PROTOCOL_FEATURES: VHOST_USER_F_PROTOCOL_FEATURES not offered']);
});

t.test('GET_VRING_BASE stops only its ring and answers its last_avail_idx', async (t) => {
  const f = makeDevice(t);
  await running(f, [0, 1]);
  t.same([f.dev.vrings[0].started, f.dev.vrings[1].started], [true, true], 'rings 0 and 1 run');
  f.dp.lastAvailAtStop.set(1, 17);
  await f.send(Req.GET_VRING_BASE, encodeVringState({ index: 1, num: 0 }));
  t.same(f.link.resets, []);
  t.same(f.dp.calls, [['stopRing', f.dev.id, 1]], 'one stopRing, for ring 1; nothing restarted');
  t.same(f.link.sent, ['0b0000000500000008000000' + '01000000' + '11000000'], 'reply: GET_VRING_BASE {index 1, num 17}');
  t.same([f.dev.vrings[0].started, f.dev.vrings[1].started], [true, false], 'ring 0 still runs');
  t.equal(f.dev.vrings[1].hasKick, false, 'ring 1 waits for a new kick');
  t.ok(f.lines.some((l) => l.msg === 'ring stopped' && l.fields.ring === 1 && l.fields.lastAvail === 17), 'logged with its last_avail_idx');
});

t.test('SET_FEATURES: LOG_ALL alone is applied to each running ring in place; another change pauses every ring', async (t) => {
  const f = makeDevice(t, { queuePairs: 2 });
  const base = await running(f, [0, 1]);
  const withLog = base | bit(F.VHOST_F_LOG_ALL);
  await f.send(Req.SET_FEATURES, encodeU64(withLog));
  t.same(f.link.resets, []);
  t.same(f.dp.calls, [
    ['setRingLogging', f.dev.id, 0, true, -1, null],
    ['setRingLogging', f.dev.id, 1, true, -1, null],
  ], 'setRingLogging for rings 0 and 1 (the running ones), no stop, no start');
  t.equal(f.dev.lastLogAllFeatures, withLog);
  t.same(f.link.sent, [], 'no reply');

  f.dp.calls.length = 0;
  const more = withLog | bit(F.VIRTIO_RING_F_EVENT_IDX);
  await f.send(Req.SET_FEATURES, encodeU64(more));
  t.same(f.dp.calls.map((c) => c.slice(0, 3)), [
    ['stopRing', f.dev.id, 0],
    ['stopRing', f.dev.id, 1],
    ['startRing', f.dev.id, 0],
    ['startRing', f.dev.id, 1],
  ], 'a layout change stops every running ring before the handler and restarts them after');
  t.equal(f.dev.features, more);

  f.dp.calls.length = 0;
  const notOffered = 1n << 63n;
  await f.send(Req.SET_FEATURES, encodeU64(more | notOffered));
  t.same(f.link.resets, ['SET_FEATURES: features 0x8000000000000000 were not offered']);
  t.same(f.dp.calls, [], 'features that are refused stop nothing');
});

t.test('RESET_OWNER: the table pauses every running ring once, the handler resets the state', async (t) => {
  const f = makeDevice(t);
  await running(f, [0, 1, 3]);
  await f.send(Req.RESET_OWNER);
  t.same(f.link.resets, []);
  t.same(f.dp.calls, [['stopRing', f.dev.id, 0], ['stopRing', f.dev.id, 1], ['stopRing', f.dev.id, 3]], 'one stop per running ring, nothing restarted');
  t.equal(f.dev.features, 0n);
  t.equal(f.dev.mem.count, 0, 'memory dropped');
  t.same(f.dev.vrings.map((v) => v.started), [false, false, false, false]);
});

t.test('SET_VRING_ENABLE 0 stops only its ring; SET_VRING_ADDR with the same rings and a log address updates in place', async (t) => {
  const f = makeDevice(t);
  await f.send(Req.SET_FEATURES, encodeU64(bit(F.VIRTIO_F_VERSION_1) | bit(F.VHOST_USER_F_PROTOCOL_FEATURES)));
  await f.send(Req.SET_PROTOCOL_FEATURES, encodeU64(0n));
  const fd = native.memfdCreate('guest', MEM);
  await f.send(Req.SET_MEM_TABLE, encodeMemoryTable([{ gpa: 0, size: MEM, uva: UVA, mmapOffset: 0 }]), [fd]);
  for (const i of [0, 1]) {
    const r = ringAt(i);
    await f.send(Req.SET_VRING_NUM, encodeVringState({ index: i, num: Q }));
    await f.send(Req.SET_VRING_ADDR, encodeVringAddr({ index: i, flags: 0, desc: UVA + r.desc, avail: UVA + r.avail, used: UVA + r.used, log: 0 }));
    await f.send(Req.SET_VRING_KICK, encodeU64(i | VRING_NOFD_MASK));
    await f.send(Req.SET_VRING_ENABLE, encodeVringState({ index: i, num: 1 }));
  }
  t.same(f.link.resets, []);
  t.same(f.dev.vrings.map((v) => v.started), [true, true, false, false], 'enabled rings started');
  f.dp.calls.length = 0;
  await f.send(Req.SET_VRING_ENABLE, encodeVringState({ index: 0, num: 0 }));
  t.same(f.dp.calls, [['stopRing', f.dev.id, 0]], 'disabling ring 0 stops ring 0 only');

  f.dp.calls.length = 0;
  const r = ringAt(1);
  await f.send(Req.SET_VRING_ADDR, encodeVringAddr({ index: 1, flags: 1, desc: UVA + r.desc, avail: UVA + r.avail, used: UVA + r.used, log: 0x4000 + r.used }));
  t.same(f.dp.calls, [['setRingLogging', f.dev.id, 1, false, 0x4000 + r.used, null]], 'same rings, VHOST_VRING_F_LOG set: logging changed in place, nothing stopped');
  t.same(f.link.resets, []);
});

t.test('packed rings: SET_VRING_BASE and GET_VRING_BASE carry the wrap counter in bit 15, used in bits 16-31; ring areas 16n + 4 + 4', async (t) => {
  const f = makeDevice(t, { packedRing: true });
  const features = bit(F.VIRTIO_F_VERSION_1) | bit(F.VIRTIO_F_RING_PACKED);
  await f.send(Req.SET_OWNER);
  await f.send(Req.SET_FEATURES, encodeU64(features));
  const fd = native.memfdCreate('guest', MEM);
  await f.send(Req.SET_MEM_TABLE, encodeMemoryTable([{ gpa: 0, size: MEM, uva: UVA, mmapOffset: 0 }]), [fd]);
  // as QEMU sends it for a fresh ring: avail 0 wrap 1, used 0 wrap 1
  await f.send(Req.SET_VRING_NUM, encodeVringState({ index: 1, num: Q }));
  await f.send(Req.SET_VRING_BASE, encodeVringState({ index: 1, num: 0x8000_8000 }));
  // the device event area in the last 4 bytes of memory: a split used ring there would not fit
  await f.send(Req.SET_VRING_ADDR, encodeVringAddr({ index: 1, flags: 0, desc: UVA + 0x10000, avail: UVA + 0x10000 + 16 * Q, used: UVA + MEM - 4, log: 0 }));
  await f.send(Req.SET_VRING_KICK, encodeU64(1 | VRING_NOFD_MASK));
  t.same(f.link.resets, [], 'a packed ring is sized as one: 16n of descriptors, 4 + 4 of event areas');
  t.same(f.dp.calls, [['startRing', f.dev.id, 1]]);
  const ctrl = new Int32Array(f.dp.ctrl.get(1)!);
  t.equal(ctrl[CTRL_LAST_AVAIL], 0x8000, 'the worker starts at slot 0 with wrap counter 1');
  t.equal(ctrl[CTRL_LAST_USED], 0x8000);
  // the worker stopped at slot 5 after a lap (wrap 0): GET_VRING_BASE answers 5 | 5 << 16
  f.dp.lastAvailAtStop.set(1, 5);
  f.link.sent.length = 0;
  await f.send(Req.GET_VRING_BASE, encodeVringState({ index: 1, num: 0 }));
  t.same(f.link.sent, [replyHex(Req.GET_VRING_BASE, encodeVringState({ index: 1, num: 0x0005_0005 }))], 'avail 5 wrap 0, used 5 wrap 0');
  // DPDK's form (avail only, wrap 1) resumes as given
  await f.send(Req.SET_VRING_BASE, encodeVringState({ index: 1, num: 0x8000 | 200 }));
  await f.send(Req.SET_VRING_KICK, encodeU64(1 | VRING_NOFD_MASK));
  const again = new Int32Array(f.dp.ctrl.get(1)!);
  t.same([again[CTRL_LAST_AVAIL], again[CTRL_LAST_USED]], [0x8000 | 200, 0x8000 | 200], 'resumes at slot 200, wrap 1, used = avail');
  // an index past the ring is refused before any worker sees it
  await f.send(Req.GET_VRING_BASE, encodeVringState({ index: 1, num: 0 }));
  await f.send(Req.SET_VRING_BASE, encodeVringState({ index: 1, num: Q }));
  await f.send(Req.SET_VRING_KICK, encodeU64(1 | VRING_NOFD_MASK));
  t.match(f.link.resets, [/base 256 is not below the queue size 256/]);
});

t.test('VIRTIO_F_RING_PACKED is offered only with packedRing (config)', async (t) => {
  const plain = makeDevice(t);
  t.notOk(hasBit(plain.dev.offered, F.VIRTIO_F_RING_PACKED), 'default: not offered (frontends use split rings)');
  const packed = makeDevice(t, { packedRing: true });
  t.ok(hasBit(packed.dev.offered, F.VIRTIO_F_RING_PACKED), 'packedRing: offered');
  t.equal(packed.dev.offered & ~bit(F.VIRTIO_F_RING_PACKED), plain.dev.offered, 'nothing else differs');
});
