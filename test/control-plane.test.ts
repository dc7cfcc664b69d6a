/**
 * Every handler of the request table, driven by our frontend's message layer against an
 * in-process forwarder: replies, REPLY_ACK, ring enable/start/stop semantics, and the
 * reset (with a named error) of a device that sends a malformed request, while another
 * interface keeps its connection.
 */
import t from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { native } from '../src/native';
import { VhostUserClient } from '../src/frontend/vhost-user-client';
import { Frontend } from '../src/frontend/frontend';
import { F, PF, Req, VRING_NOFD_MASK, bit, hasBit, FLAG_VERSION } from '../src/protocol/constants';
import { encodeMemoryTable, encodeVringAddr, encodeVringState, encodeU64, encodeLog, encodeSingleRegion } from '../src/protocol/messages';
import { captureLogs, fdCount, startForwarder, waitUntil } from '../kit/env';

const MEM = 4 << 20;
const UVA = 0x7f0000000000;
const Q = 256;
// ring layout inside guest memory (gpa 0): desc, avail, used per ring
const ringAt = (i: number) => ({ desc: 0x10000 * (i + 1), avail: 0x10000 * (i + 1) + 16 * Q, used: 0x10000 * (i + 1) + 0x4000 });

function guestMemory() {
  const fd = native.memfdCreate('guest', MEM);
  return { fd, sab: native.mmap(fd, MEM, 0) };
}

/** The shared negotiation (src/frontend/frontend.ts), SET_OWNER first as some frontends send it. */
async function negotiate(c: VhostUserClient, opts: { protocol: boolean }) {
  const n = await new Frontend(c).negotiate({
    protocol: opts.protocol, ownerFirst: true,
    want: bit(F.VIRTIO_F_VERSION_1) | bit(F.VIRTIO_NET_F_MRG_RXBUF) | bit(F.VIRTIO_RING_F_EVENT_IDX) | bit(F.VHOST_USER_F_PROTOCOL_FEATURES),
  });
  return { offered: n.offered, pf: n.protocolFeatures, f: n.features };
}

async function setMemTable(c: VhostUserClient, fd: number) {
  await c.call(Req.SET_MEM_TABLE, encodeMemoryTable([{ gpa: 0, size: MEM, uva: UVA, mmapOffset: 0 }]), [fd], true);
}

function setupRing(c: VhostUserClient, i: number, kick: number, call: number, base = 0) {
  const r = ringAt(i);
  c.send(Req.SET_VRING_NUM, encodeVringState({ index: i, num: Q }));
  c.send(Req.SET_VRING_BASE, encodeVringState({ index: i, num: base }));
  c.send(Req.SET_VRING_ADDR, encodeVringAddr({ index: i, flags: 0, desc: UVA + r.desc, avail: UVA + r.avail, used: UVA + r.used, log: 0 }));
  c.send(Req.SET_VRING_KICK, encodeU64(i), [kick]);
  c.send(Req.SET_VRING_CALL, encodeU64(i), [call]);
}

t.test('GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_MAX_MEM_SLOTS, STATUS with REPLY_ACK', async (t) => {
  const env = await startForwarder(['a', 'b'], {}, { queues: 2 });
  t.teardown(env.stop);
  const c = await VhostUserClient.connect(env.sock('a'));
  const { offered, pf } = await negotiate(c, { protocol: true });
  for (const f of [F.VIRTIO_NET_F_MRG_RXBUF, F.VIRTIO_F_ANY_LAYOUT, F.VIRTIO_F_VERSION_1, F.VIRTIO_F_IN_ORDER, F.VIRTIO_RING_F_INDIRECT_DESC, F.VIRTIO_RING_F_EVENT_IDX, F.VIRTIO_NET_F_GUEST_ANNOUNCE, F.VIRTIO_NET_F_MQ, F.VHOST_F_LOG_ALL, F.VHOST_USER_F_PROTOCOL_FEATURES]) {
    t.ok(hasBit(offered, f), `feature bit ${f} offered`);
  }
  for (const p of [PF.MQ, PF.LOG_SHMFD, PF.RARP, PF.REPLY_ACK, PF.NET_MTU, PF.CONFIGURE_MEM_SLOTS, PF.STATUS]) t.ok(hasBit(pf, p), `protocol feature ${p} offered`);
  t.equal(await c.callU64(Req.GET_QUEUE_NUM), 2n, 'queue pairs from config');
  t.equal(await c.callU64(Req.GET_MAX_MEM_SLOTS), 509n);
  t.equal(await c.callU64(Req.SET_STATUS, encodeU64(0x0f), [], true), 0n, 'REPLY_ACK: success is 0');
  t.equal(await c.callU64(Req.GET_STATUS), 0x0fn);
  t.equal(await c.callU64(Req.NET_SET_MTU, encodeU64(9000), [], true), 0n);
  t.equal(await c.callU64(Req.SET_OWNER, Buffer.alloc(0), [], true), 0n, 'REPLY_ACK honoured on SET_OWNER');
  const unknown = await c.callU64(99, Buffer.alloc(0), [], true);
  t.equal(unknown, 1n, 'an unknown request with NEED_REPLY gets a failure reply, not a hang');
  t.equal(c.closed, null, 'an unknown request does not reset the device');
  c.close();
});

t.test('ring lifecycle with PROTOCOL_FEATURES: disabled until SET_VRING_ENABLE; GET_VRING_BASE stops and returns last_avail_idx', async (t) => {
  const env = await startForwarder(['a', 'b']);
  t.teardown(env.stop);
  const c = await VhostUserClient.connect(env.sock('a'));
  const mem = guestMemory();
  await negotiate(c, { protocol: true });
  await setMemTable(c, mem.fd);
  const kick = [native.eventfdCreate(0), native.eventfdCreate(0)];
  const call = [native.eventfdCreate(0), native.eventfdCreate(0)];
  // used->idx in guest memory is where the ring resumes (the destination side of a migration)
  // (a consistent guest: avail->idx too is at 17, nothing new posted)
  new DataView(mem.sab).setUint16(ringAt(1).used + 2, 17, true);
  new DataView(mem.sab).setUint16(ringAt(1).avail + 2, 17, true);
  setupRing(c, 0, kick[0], call[0]);
  setupRing(c, 1, kick[1], call[1], 17);
  await c.call(Req.GET_FEATURES); // barrier: everything before is handled
  const dev = env.fwd.interfaces[0].device!;
  t.notOk(dev.vrings[0].started, 'ring 0 waits for SET_VRING_ENABLE');
  t.notOk(dev.vrings[1].started, 'ring 1 waits for SET_VRING_ENABLE');
  await c.call(Req.SET_VRING_ENABLE, encodeVringState({ index: 1, num: 1 }), [], true);
  t.ok(dev.vrings[1].started, 'ring 1 started once enabled');
  t.notOk(dev.vrings[0].started, 'ring 0 still disabled');
  const base = await c.call(Req.GET_VRING_BASE, encodeVringState({ index: 1, num: 0 }));
  t.equal(base.payload.readUInt32LE(0), 1, 'reply names the ring');
  t.equal(base.payload.readUInt32LE(4), 17, 'last_avail_idx returned');
  t.notOk(dev.vrings[1].started, 'GET_VRING_BASE stopped the ring');
  await c.call(Req.SET_VRING_ENABLE, encodeVringState({ index: 1, num: 0 }), [], true);
  c.close();
  for (const fd of [...kick, ...call, mem.fd]) native.close(fd);
});

t.test('without PROTOCOL_FEATURES a ring starts enabled as soon as it is kicked; no-fd kick flag', async (t) => {
  const env = await startForwarder(['a', 'b']);
  t.teardown(env.stop);
  const c = await VhostUserClient.connect(env.sock('a'));
  const mem = guestMemory();
  await negotiate(c, { protocol: false });
  c.send(Req.SET_MEM_TABLE, encodeMemoryTable([{ gpa: 0, size: MEM, uva: UVA, mmapOffset: 0 }]), [mem.fd]);
  const r = ringAt(1);
  c.send(Req.SET_VRING_NUM, encodeVringState({ index: 1, num: Q }));
  c.send(Req.SET_VRING_ADDR, encodeVringAddr({ index: 1, flags: 0, desc: UVA + r.desc, avail: UVA + r.avail, used: UVA + r.used, log: 0 }));
  await c.call(Req.GET_FEATURES);
  const dev = env.fwd.interfaces[0].device!;
  t.notOk(dev.vrings[1].started, 'no kick yet: not started');
  c.send(Req.SET_VRING_KICK, encodeU64(1 | VRING_NOFD_MASK));
  await c.call(Req.GET_FEATURES);
  t.ok(dev.vrings[1].started, 'started by the no-fd kick, enabled without SET_VRING_ENABLE');
  c.close();
  native.close(mem.fd);
});

t.test('SET_LOG_BASE maps the log and replies; ADD/REM_MEM_REG; RESET_OWNER', async (t) => {
  const env = await startForwarder(['a', 'b']);
  t.teardown(env.stop);
  const c = await VhostUserClient.connect(env.sock('a'));
  const mem = guestMemory();
  await negotiate(c, { protocol: true });
  const slotFd = native.memfdCreate('slot', MEM);
  await c.call(Req.ADD_MEM_REG, encodeSingleRegion({ gpa: 0, size: MEM, uva: UVA, mmapOffset: 0 }), [slotFd], true);
  const dev = env.fwd.interfaces[0].device!;
  t.equal(dev.mem.count, 1, 'region added');
  const logFd = native.memfdCreate('log', 4096);
  const reply = await c.callU64(Req.SET_LOG_BASE, encodeLog({ mmapSize: 4096, mmapOffset: 0 }), [logFd]);
  t.equal(reply, 0n, 'SET_LOG_BASE replied');
  t.equal(dev.log?.size, 4096);
  await c.call(Req.REM_MEM_REG, encodeSingleRegion({ gpa: 0, size: MEM, uva: UVA, mmapOffset: 0 }), [], true);
  t.equal(dev.mem.count, 0, 'region removed');
  await c.call(Req.RESET_OWNER, Buffer.alloc(0), [], true);
  t.equal(dev.features, 0n, 'features cleared by RESET_OWNER');
  c.close();
  native.close(logFd);
  native.close(slotFd);
  native.close(mem.fd);
});

/** Poll until the process's fd count is `want` (fds are closed asynchronously), with a deadline; returns the last count. */
async function fdCountSettles(want: number, deadlineMs = 3000): Promise<number> {
  await waitUntil(() => fdCount() === want, deadlineMs, `fd count ${want}`).catch(() => undefined);
  return fdCount();
}

t.test('SET_LOG_FD: acked, the legacy log eventfd is taken and closed, the device carries on', async (t) => {
  const env = await startForwarder(['a', 'b']);
  t.teardown(env.stop);
  const c = await VhostUserClient.connect(env.sock('a'));
  await negotiate(c, { protocol: true });
  const before = fdCount();
  const efd = native.eventfdCreate(0);
  t.equal(await c.callU64(Req.SET_LOG_FD, Buffer.alloc(0), [efd], true), 0n, 'REPLY_ACK: success');
  native.close(efd);
  t.equal(await fdCountSettles(before), before, 'the received copy of the fd was closed (no fd kept)');
  t.equal(c.closed, null, 'the connection stays up');
  t.ok((await c.callU64(Req.GET_FEATURES)) > 0n, 'the device still answers');
  t.equal(env.fwd.interfaces[0].device?.seen.get('SET_LOG_FD'), 1, 'the device handled one SET_LOG_FD');
  c.close();
});

t.test('SET_VRING_ERR: the ring keeps the error eventfd (the same eventfd), replaces it, clears it with the no-fd flag', async (t) => {
  const env = await startForwarder(['a', 'b']);
  t.teardown(env.stop);
  const c = await VhostUserClient.connect(env.sock('a'));
  await negotiate(c, { protocol: true });
  const dev = env.fwd.interfaces[0].device!;
  const before = fdCount();
  const e1 = native.eventfdCreate(0);
  t.equal(await c.callU64(Req.SET_VRING_ERR, encodeU64(1), [e1], true), 0n, 'REPLY_ACK: success');
  const held = dev.vrings[1].errFd;
  t.ok(held >= 0 && native.isEventfd(held), 'ring 1 holds an eventfd as its error fd');
  t.equal(dev.vrings[0].errFd, -1, 'ring 0 untouched');
  native.eventfdWrite(e1, 5);
  t.equal(native.eventfdRead(held), 5, 'it is the frontend\'s eventfd: a write on ours is read on the ring\'s');
  native.close(e1);
  const e2 = native.eventfdCreate(0);
  t.equal(await c.callU64(Req.SET_VRING_ERR, encodeU64(1), [e2], true), 0n, 'second SET_VRING_ERR acked');
  native.eventfdWrite(e2, 7);
  t.equal(native.eventfdRead(dev.vrings[1].errFd), 7, 'the ring now holds the second eventfd');
  native.close(e2);
  t.equal(await fdCountSettles(before + 1), before + 1, 'the first error fd was closed when replaced (one held)');
  t.equal(await c.callU64(Req.SET_VRING_ERR, encodeU64(1 | VRING_NOFD_MASK), [], true), 0n, 'no-fd SET_VRING_ERR acked');
  t.equal(dev.vrings[1].errFd, -1, 'the no-fd flag clears the error fd');
  t.equal(await fdCountSettles(before), before, 'and closes it');
  c.close();
});

t.test('RESET_DEVICE: running rings stopped, fds and memory released, features cleared; the connection renegotiates', async (t) => {
  const env = await startForwarder(['a', 'b']);
  t.teardown(env.stop);
  const c = await VhostUserClient.connect(env.sock('a'));
  const mem = guestMemory();
  const { pf } = await negotiate(c, { protocol: true });
  t.ok(hasBit(pf, PF.RESET_DEVICE), 'RESET_DEVICE offered');
  const kick = native.eventfdCreate(0);
  const call = native.eventfdCreate(0);
  const before = fdCount();
  await setMemTable(c, mem.fd);
  setupRing(c, 0, kick, call);
  await c.call(Req.SET_VRING_ENABLE, encodeVringState({ index: 0, num: 1 }), [], true);
  t.equal(await c.callU64(Req.SET_STATUS, encodeU64(0x0f), [], true), 0n, 'status set');
  const dev = env.fwd.interfaces[0].device!;
  t.ok(dev.vrings[0].started, 'ring 0 running before the reset');
  t.equal(dev.mem.count, 1, 'memory mapped before the reset');
  t.equal(await c.callU64(Req.RESET_DEVICE, Buffer.alloc(0), [], true), 0n, 'RESET_DEVICE acked');
  t.notOk(dev.vrings[0].started, 'ring 0 stopped');
  t.same([dev.vrings[0].kickFd, dev.vrings[0].callFd], [-1, -1], 'ring fds dropped');
  t.equal(dev.vrings[0].addr, null, 'ring address forgotten');
  t.equal(dev.features, 0n, 'features cleared');
  t.equal(dev.protocolFeatures, 0n, 'protocol features cleared');
  t.equal(dev.status, 0, 'status cleared');
  t.equal(dev.mem.count, 0, 'memory unmapped');
  t.equal(await fdCountSettles(before), before, 'the received kick, call and memory fds were closed');
  t.equal(c.closed, null, 'the connection stays up');
  t.equal(env.fwd.interfaces[0].device, dev, 'the same device object serves on');
  // the same connection negotiates again and starts the ring again
  await negotiate(c, { protocol: true });
  await setMemTable(c, mem.fd);
  setupRing(c, 0, kick, call);
  await c.call(Req.SET_VRING_ENABLE, encodeVringState({ index: 0, num: 1 }), [], true);
  t.ok(dev.vrings[0].started, 'ring 0 runs again after renegotiation');
  c.close();
  for (const fd of [kick, call, mem.fd]) native.close(fd);
});

interface Bad {
  name: string;
  reason: RegExp;
  send: (c: VhostUserClient, fd: number) => Promise<unknown> | void;
}

const bad: Bad[] = [
  { name: 'wrong size for SET_FEATURES', reason: /SET_FEATURES.*payload size 4, expected 8/, send: (c) => c.send(Req.SET_FEATURES, Buffer.alloc(4)) },
  { name: 'missing fd for SET_MEM_TABLE', reason: /SET_MEM_TABLE.*0 file descriptors, expected 1/, send: (c) => c.send(Req.SET_MEM_TABLE, encodeMemoryTable([{ gpa: 0, size: MEM, uva: UVA, mmapOffset: 0 }])) },
  { name: 'region wraps', reason: /SET_MEM_TABLE.*wraps/, send: (c, fd) => c.send(Req.SET_MEM_TABLE, encodeMemoryTable([{ gpa: Number.MAX_SAFE_INTEGER - 4096, size: MEM, uva: UVA, mmapOffset: 0 }]), [fd]) },
  {
    name: 'regions overlap',
    reason: /SET_MEM_TABLE.*overlap/,
    send: (c, fd) => {
      const x = native.memfdCreate('x', 4096);
      c.send(Req.SET_MEM_TABLE, encodeMemoryTable([{ gpa: 0, size: MEM, uva: UVA, mmapOffset: 0 }, { gpa: 4096, size: 4096, uva: UVA * 2, mmapOffset: 0 }]), [fd, x]);
      native.close(x);
    },
  },
  { name: 'region beyond the fd size', reason: /SET_MEM_TABLE.*exceeds the fd size/, send: (c, fd) => c.send(Req.SET_MEM_TABLE, encodeMemoryTable([{ gpa: 0, size: MEM * 2, uva: UVA, mmapOffset: 0 }]), [fd]) },
  { name: 'too many regions', reason: /SET_MEM_TABLE.*9 file descriptors|SET_MEM_TABLE.*payload size/, send: (c, fd) => { const b = Buffer.concat([encodeMemoryTable(Array.from({ length: 8 }, (_, i) => ({ gpa: i * 4096, size: 4096, uva: UVA + i * 4096, mmapOffset: 0 }))), Buffer.alloc(32)]); b.writeUInt32LE(9, 0); c.send(Req.SET_MEM_TABLE, b, [fd]); } },
  { name: 'queue size not a power of two', reason: /SET_VRING_NUM.*queue size 100 is not a power of two/, send: (c) => c.send(Req.SET_VRING_NUM, encodeVringState({ index: 0, num: 100 })) },
  { name: 'queue size over 32768', reason: /SET_VRING_NUM.*queue size 65536/, send: (c) => c.send(Req.SET_VRING_NUM, encodeVringState({ index: 0, num: 65536 })) },
  { name: 'ring index out of range', reason: /SET_VRING_NUM.*ring index 9 out of range/, send: (c) => c.send(Req.SET_VRING_NUM, encodeVringState({ index: 9, num: 256 })) },
  {
    name: 'ring address outside memory',
    reason: /SET_VRING_ADDR.*outside guest memory/,
    send: async (c, fd) => {
      await c.call(Req.SET_MEM_TABLE, encodeMemoryTable([{ gpa: 0, size: MEM, uva: UVA, mmapOffset: 0 }]), [fd], true);
      c.send(Req.SET_VRING_NUM, encodeVringState({ index: 0, num: 256 }));
      c.send(Req.SET_VRING_ADDR, encodeVringAddr({ index: 0, flags: 0, desc: UVA + MEM - 16, avail: UVA, used: UVA + 0x1000, log: 0 }));
    },
  },
  { name: 'kick without fd and without the no-fd flag', reason: /SET_VRING_KICK.*0 file descriptors, expected 1/, send: (c) => c.send(Req.SET_VRING_KICK, encodeU64(0)) },
  { name: 'SET_LOG_BASE before LOG_SHMFD', reason: /SET_LOG_BASE.*LOG_SHMFD not negotiated/, send: (c, fd) => c.send(Req.SET_LOG_BASE, encodeLog({ mmapSize: 4096, mmapOffset: 0 }), [fd]) },
  { name: 'SET_FEATURES with a feature not offered', reason: /SET_FEATURES.*were not offered/, send: (c) => c.send(Req.SET_FEATURES, encodeU64(bit(F.VIRTIO_F_RING_PACKED))) },
];

t.test('malformed requests: named error, device reset, other interface untouched, no fd leaked', async (t) => {
  const env = await startForwarder(['a', 'b']);
  t.teardown(env.stop);
  const other = await VhostUserClient.connect(env.sock('b'));
  await negotiate(other, { protocol: true });
  for (const b of bad) {
    const before = fdCount();
    const logs = captureLogs();
    const c = await VhostUserClient.connect(env.sock('a'));
    const memfd = native.memfdCreate('guest', MEM);
    await negotiate(c, { protocol: b.name.includes('LOG_SHMFD') ? false : true });
    await b.send(c, memfd);
    const why = await c.waitClosed();
    t.ok(why.length > 0, `${b.name}: connection reset`);
    await waitUntil(() => logs.lines.some((l) => l.level === 'error' && b.reason.test(`${String(l.fields.request)}: ${String(l.fields.reason)}`)), 2000, b.name).then(
      () => t.pass(`${b.name}: error names request and reason`),
      () => t.fail(`${b.name}: no error line matching ${b.reason}; got ${JSON.stringify(logs.lines.filter((l) => l.level === 'error'))}`),
    );
    logs.stop();
    native.close(memfd);
    await waitUntil(() => env.fwd.interfaces[0].device === null, 2000, 'device released');
    t.equal(other.closed, null, `${b.name}: the other interface keeps its connection`);
    t.equal(await other.callU64(Req.GET_FEATURES) > 0n, true, `${b.name}: the other interface still answers`);
    t.equal(await fdCountSettles(before), before, `${b.name}: no fd leaked`);
  }
  other.close();
});

t.test('client mode: vhostfwd connects to a listening frontend and reconnects after a disconnect', async (t) => {
  const { tmpDir } = await import('../kit/env');
  const dir = tmpDir();
  const path = `${dir}/front.sock`;
  const lfd = native.listen(path, 4);
  const env = await startForwarder(['a'], { forwarding: { mode: 'bridge' } }, { mode: 'client', socket: path });
  t.teardown(async () => {
    await env.stop();
    native.close(lfd);
  });
  const acceptOne = async () => {
    for (let i = 0; i < 500; i++) {
      const fd = native.accept(lfd);
      if (fd >= 0) return VhostUserClient.fromFd(fd);
      await sleep(10);
    }
    throw new Error('vhostfwd never connected');
  };
  const c1 = await acceptOne();
  t.ok((await c1.callU64(Req.GET_FEATURES)) > 0n, 'negotiates over the accepted connection');
  c1.close();
  const c2 = await acceptOne();
  t.ok((await c2.callU64(Req.GET_FEATURES)) > 0n, 'reconnected after the frontend dropped it');
  c2.close();
  void FLAG_VERSION;
});
