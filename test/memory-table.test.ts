/**
 * Memory regions repeated per queue pair (issue 26). QEMU 7.2 keeps one vhost_dev per
 * queue pair on one socket and each sends its own ADD_MEM_REG for every region (and
 * REM_MEM_REG, SET_LOG_BASE). An ADD_MEM_REG identical to a mapped region, from the same
 * backing file, is one more reference on the mapping; REM_MEM_REG drops one and the
 * region leaves the table with the last; anything else that overlaps is refused by name.
 * First on the MemoryTable itself, then through a device driven the way QEMU 7.2 drives
 * a two-queue-pair virtio-net device.
 */
import t from 'tap';
import fs from 'node:fs';
import { native } from '../src/native';
import { MemoryTable } from '../src/main/memory-table';
import { MemoryRegion, ProtocolError, encodeLog, encodeSingleRegion, encodeU64, encodeVringAddr, encodeVringState } from '../src/protocol/messages';
import { VhostUserClient } from '../src/frontend/vhost-user-client';
import { F, MAX_MEM_SLOTS, PF, Req, bit } from '../src/protocol/constants';
import { fdCount, startForwarder, waitUntil } from '../kit/env';

const MEM = 1 << 20;
const UVA = 0x7f0000000000;

const region = (gpa: number, size: number, uva: number, mmapOffset = 0): MemoryRegion => ({ gpa, size, uva, mmapOffset });

/** Another fd on the same memfd inode (what QEMU passes for each queue pair's ADD_MEM_REG). */
function reopen(fd: number): number {
  return fs.openSync(`/proc/self/fd/${fd}`, 'r+');
}

function isClosed(fd: number): boolean {
  try {
    native.fdStat(fd);
    return false;
  } catch {
    return true;
  }
}

function reasonOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof ProtocolError) return e.message;
    throw e;
  }
  throw new Error('did not throw');
}

t.test('MemoryTable: an identical ADD_MEM_REG twice is one mapping with two references', async (t) => {
  const base = fdCount();
  const memfd = native.memfdCreate('guest', 2 * MEM);
  const tbl = new MemoryTable();
  const first = tbl.add(region(0, MEM, UVA), reopen(memfd), 'ADD_MEM_REG');
  t.same(first, { shared: false, refs: 1, index: 0 }, 'first add maps the region');
  const sab = tbl.list()[0].sab;
  const fd2 = reopen(memfd);
  const second = tbl.add(region(0, MEM, UVA), fd2, 'ADD_MEM_REG');
  t.same(second, { shared: true, refs: 2, index: 0 }, 'the repeat is one more reference');
  t.ok(isClosed(fd2), 'the repeat fd was closed');
  t.equal(tbl.count, 1, 'one region in the table');
  t.equal(tbl.list()[0].sab, sab, 'no second mapping: the same SharedArrayBuffer');
  // a second region from the same file at another offset is a region of its own
  const other = tbl.add(region(MEM, MEM, UVA + MEM, MEM), reopen(memfd), 'ADD_MEM_REG');
  t.same(other, { shared: false, refs: 1, index: 1 }, 'the next part of the file is a new region');
  t.equal(tbl.fromGpa(MEM + 8, 8)?.region, 1, 'translation still finds both');

  t.equal(tbl.remove(region(0, MEM, UVA), 'REM_MEM_REG'), 1, 'first REM_MEM_REG drops one reference');
  t.equal(tbl.count, 2, 'the region stays mapped while a queue pair still holds it');
  t.equal(tbl.fromGpa(8, 8)?.region, 0, 'and still translates');
  t.equal(tbl.remove(region(0, MEM, UVA), 'REM_MEM_REG'), 0, 'second REM_MEM_REG drops the last');
  t.equal(tbl.count, 1, 'the region left the table');
  t.equal(tbl.fromGpa(8, 8), null, 'its addresses no longer translate');
  t.equal(tbl.list()[0].gpa, MEM, 'the other region is untouched');
  t.match(reasonOf(() => tbl.remove(region(0, MEM, UVA), 'REM_MEM_REG')), /^REM_MEM_REG: no region at gpa 0x0 size 0x100000/, 'a third REM_MEM_REG is refused by name');
  tbl.clear();
  native.close(memfd);
  t.equal(fdCount(), base, 'no fd leaked');
});

t.test('MemoryTable: overlaps are still refused, naming both regions', async (t) => {
  const base = fdCount();
  const memfd = native.memfdCreate('guest', 2 * MEM);
  const tbl = new MemoryTable();
  tbl.add(region(0, MEM, UVA), reopen(memfd), 'ADD_MEM_REG');
  const cases: Array<[string, MemoryRegion, number, RegExp]> = [
    ['overlapping guest addresses', region(MEM / 2, MEM, UVA + 4 * MEM), reopen(memfd), /^ADD_MEM_REG: regions 0 and 1 overlap in guest physical space: new gpa 0x80000 size 0x100000 uva 0x7f0000400000 mmap_offset 0x0; region 0: gpa 0x0 size 0x100000 uva 0x7f0000000000/],
    ['overlapping user addresses', region(8 * MEM, MEM, UVA + MEM / 2), reopen(memfd), /^ADD_MEM_REG: regions 0 and 1 overlap in user address space: new gpa 0x800000/],
    ['the same range at another file offset', region(0, MEM, UVA, MEM), reopen(memfd), /^ADD_MEM_REG: regions 0 and 1 overlap in guest physical space: new gpa 0x0 size 0x100000 uva 0x7f0000000000 mmap_offset 0x100000/],
    ['the same range backed by a different file', region(0, MEM, UVA), native.memfdCreate('other', MEM), /^ADD_MEM_REG: regions 0 and 1 overlap in guest physical space: the same range backed by a different file \(dev \d+ inode \d+; region 0: dev \d+ inode \d+\)/],
  ];
  for (const [name, r, fd, re] of cases) {
    t.match(reasonOf(() => tbl.add(r, fd, 'ADD_MEM_REG')), re, `${name}: refused by name`);
    t.ok(isClosed(fd), `${name}: the fd was closed`);
    t.equal(tbl.count, 1, `${name}: the table is unchanged`);
    t.equal(tbl.list()[0].refs, 1, `${name}: no reference taken`);
  }
  // a refused add took no reference: one REM_MEM_REG empties the table
  t.equal(tbl.remove(region(0, MEM, UVA), 'REM_MEM_REG'), 0);
  t.equal(tbl.count, 0);
  native.close(memfd);
  t.equal(fdCount(), base, 'no fd leaked');
});

t.test('MemoryTable: SET_MEM_TABLE regions hold one reference', async (t) => {
  const memfd = native.memfdCreate('guest', MEM);
  const tbl = new MemoryTable();
  tbl.replace([region(0, MEM, UVA)], [reopen(memfd)], 'SET_MEM_TABLE');
  t.equal(tbl.list()[0].refs, 1);
  t.equal(tbl.add(region(0, MEM, UVA), reopen(memfd), 'ADD_MEM_REG').refs, 2, 'an ADD_MEM_REG of the same region adds to it');
  tbl.clear();
  native.close(memfd);
});

/**
 * The device, driven as QEMU 7.2 drives a virtio-net device with two queue pairs and
 * CONFIGURE_MEM_SLOTS: each queue pair's vhost_dev negotiates, adds the regions, sets up
 * its two rings; migration sends SET_LOG_BASE from both; memory going away is removed by
 * both.
 */
t.test('device: per-queue-pair ADD_MEM_REG, SET_LOG_BASE, REM_MEM_REG repeats are acknowledged', async (t) => {
  const env = await startForwarder(['a', 'b'], {}, { queues: 2 });
  t.teardown(env.stop);
  const base = fdCount();
  const c = await VhostUserClient.connect(env.sock('a'));
  const memfd = native.memfdCreate('guest', 2 * MEM);
  const lo = region(0, MEM, UVA);
  const hi = region(0x10000000, MEM, UVA + MEM, MEM);
  let features = 0n;
  for (let pair = 0; pair < 2; pair++) {
    // vhost_user_backend_init, once per vhost_dev (SET_OWNER and GET_QUEUE_NUM only for the first)
    const offered = await c.callU64(Req.GET_FEATURES);
    const pf = await c.callU64(Req.GET_PROTOCOL_FEATURES);
    c.send(Req.SET_PROTOCOL_FEATURES, encodeU64(pf));
    if (pair === 0) {
      t.equal(await c.callU64(Req.GET_QUEUE_NUM), 2n, 'two queue pairs');
      c.send(Req.SET_OWNER);
    }
    t.equal(await c.callU64(Req.GET_MAX_MEM_SLOTS), BigInt(MAX_MEM_SLOTS));
    features = offered & (bit(F.VIRTIO_F_VERSION_1) | bit(F.VIRTIO_NET_F_MRG_RXBUF) | bit(F.VHOST_USER_F_PROTOCOL_FEATURES) | bit(F.VIRTIO_NET_F_MQ));
  }
  const dev = env.fwd.interfaces[0].device!;
  t.ok(dev.hasProtocol(PF.CONFIGURE_MEM_SLOTS) && dev.hasProtocol(PF.REPLY_ACK));
  const ack = async (req: number, payload: Buffer, fds: number[] = []) => {
    const m = await c.call(req, payload, fds, true);
    return m.payload.readBigUInt64LE(0);
  };
  const fds: number[] = [];
  for (let pair = 0; pair < 2; pair++) {
    // vhost_dev_start: SET_FEATURES, the memory (ADD_MEM_REG per region), then its rings
    c.send(Req.SET_FEATURES, encodeU64(features));
    for (const r of [lo, hi]) {
      const fd = reopen(memfd);
      fds.push(fd);
      t.equal(await ack(Req.ADD_MEM_REG, encodeSingleRegion(r), [fd]), 0n, `queue pair ${pair}: ADD_MEM_REG gpa 0x${r.gpa.toString(16)} acknowledged`);
    }
    t.equal(dev.mem.count, 2, `queue pair ${pair}: two regions mapped, not ${2 * (pair + 1)}`);
    for (let i = 2 * pair; i < 2 * pair + 2; i++) {
      const at = 0x10000 * (i + 1);
      c.send(Req.SET_VRING_NUM, encodeVringState({ index: i, num: 256 }));
      c.send(Req.SET_VRING_BASE, encodeVringState({ index: i, num: 0 }));
      c.send(Req.SET_VRING_ADDR, encodeVringAddr({ index: i, flags: 0, desc: UVA + at, avail: UVA + at + 0x1000, used: UVA + at + 0x2000, log: 0 }));
      const kick = native.eventfdCreate(0);
      const call = native.eventfdCreate(0);
      fds.push(kick, call);
      c.send(Req.SET_VRING_KICK, encodeU64(i), [kick]);
      c.send(Req.SET_VRING_CALL, encodeU64(i), [call]);
      t.equal(await ack(Req.SET_VRING_ENABLE, encodeVringState({ index: i, num: 1 })), 0n);
    }
  }
  await waitUntil(() => dev.vrings.every((v) => v.started), 5000, 'all four rings started');
  t.same(dev.mem.list().map((r) => r.refs), [2, 2], 'each region is held by both queue pairs');

  // migration: vhost_dev_log_resize of each vhost_dev sends the one shared log
  // (one bit per 4 KiB page up to 0x10100000: 8224 bytes)
  const logFd = native.memfdCreate('log', 16384);
  t.equal(await c.callU64(Req.SET_LOG_BASE, encodeLog({ mmapSize: 16384, mmapOffset: 0 }), [logFd]), 0n, 'SET_LOG_BASE of queue pair 0 replied');
  const log = dev.log;
  t.equal(await c.callU64(Req.SET_LOG_BASE, encodeLog({ mmapSize: 16384, mmapOffset: 0 }), [logFd]), 0n, 'the repeat of queue pair 1 replied');
  t.equal(dev.log, log, 'the repeat kept the log in use (no second mapping)');
  const logFd2 = native.memfdCreate('log2', 32768);
  t.equal(await c.callU64(Req.SET_LOG_BASE, encodeLog({ mmapSize: 32768, mmapOffset: 0 }), [logFd2]), 0n, 'a resized log');
  t.not(dev.log, log, 'a different log is mapped');
  t.equal(dev.log?.size, 32768);
  c.send(Req.SET_FEATURES, encodeU64(features | bit(F.VHOST_F_LOG_ALL)));
  c.send(Req.SET_FEATURES, encodeU64(features | bit(F.VHOST_F_LOG_ALL)));
  t.equal(await c.callU64(Req.GET_FEATURES), dev.offered, 'SET_FEATURES twice (LOG_ALL) is fine');
  t.ok(dev.vrings.every((v) => v.started), 'rings kept running through the repeats');

  // the high region goes away: each vhost_dev removes it (QEMU sends mmap_offset 0, no fd)
  const remHi = encodeSingleRegion({ ...hi, mmapOffset: 0 });
  t.equal(await ack(Req.REM_MEM_REG, remHi), 0n, 'REM_MEM_REG of queue pair 0 acknowledged');
  t.equal(dev.mem.count, 2, 'still mapped: queue pair 1 holds it');
  t.equal(await ack(Req.REM_MEM_REG, remHi), 0n, 'REM_MEM_REG of queue pair 1 acknowledged');
  t.equal(dev.mem.count, 1, 'unmapped with its last reference');
  t.same(dev.mem.list().map((r) => [r.gpa, r.refs]), [[0, 2]]);
  await waitUntil(() => dev.vrings.every((v) => v.started), 5000, 'rings running again');
  t.same(env.fwd.interfaces[0].resets, [], 'no reset');

  // a different file at the same range: refused by name, the device is reset
  const stranger = native.memfdCreate('stranger', MEM);
  c.send(Req.ADD_MEM_REG, encodeSingleRegion(lo), [stranger]);
  const reason = await c.waitClosed();
  t.ok(reason, 'the backend closed the connection');
  await waitUntil(() => env.fwd.interfaces[0].resets.length > 0, 5000, 'the reset');
  t.match(env.fwd.interfaces[0].resets[0], /^ADD_MEM_REG: regions 0 and 1 overlap in guest physical space: the same range backed by a different file/);
  c.close();
  for (const fd of [...fds, memfd, logFd, logFd2, stranger]) native.close(fd);
  await waitUntil(() => fdCount() <= base, 5000, 'every fd closed (kick and call fds included)');
});
