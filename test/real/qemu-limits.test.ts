/**
 * Issue 21 (limits) with QEMU 7.2 guests: a virtio-net device of 128 queue pairs, all
 * enabled from inside the guest (ethtool -L eth0 combined 128), and memory hot-plug of
 * DIMMs through the monitor while the guests ping.
 *
 * Hot-plug: `-m 256,slots=4,maxmem=1G`; the guest boots with memhp_default_state=offline
 * and onlines each new memory block itself. DIMM 1 (a file in /dev/shm the test can read)
 * is onlined for the kernel, so the guest's new RX buffers come from it (the kernel takes
 * ZONE_NORMAL before DMA32); B then pings A with a payload pattern, and the test finds in
 * DIMM 1's bytes what only vhostfwd writes there: a virtio-net header with num_buffers 1
 * followed by B's echo request to A. DIMM 2 is onlined movable and unplugged again
 * (device_del): QEMU sends REM_MEM_REG and the region leaves vhostfwd's table.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startForwarder } from '../../kit/env';
import { QemuGuest } from '../../kit/peers/qemu';

const ETHTOOL = '/usr/sbin/ethtool';
const MAC_A = '52:54:00:00:00:01';
const MAC_B = '52:54:00:00:00:02';

async function until(cond: () => boolean, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) return false;
    await sleep(50);
  }
  return true;
}

function shellGuest(name: 'A' | 'B', socket: string, extra: Partial<ConstructorParameters<typeof QemuGuest>[0]> = {}): QemuGuest {
  const id = name === 'A' ? 1 : 2;
  return new QemuGuest({ name, socket, mac: id === 1 ? MAC_A : MAC_B, ip: `10.0.0.${id}/24`, peer: `10.0.0.${3 - id}`, mode: 'shell', ...extra });
}

const reach = (peer: string) => `j=0; while ! ping -c 1 -W 1 ${peer} >/dev/null 2>&1; do j=$((j+1)); [ $j -ge 30 ] && break; done; ping -c 1 -W 1 ${peer} >/dev/null 2>&1`;
const pingResult = (out: string) => out.match(/(\d+) packets transmitted, (\d+) packets received/);

t.test('QEMU guests with 128 queue pairs: all 256 rings negotiated, enabled from the guest, pinging', async (t) => {
  const QP = 128;
  const env = await startForwarder(['a', 'b'], {}, { queues: QP, steering: 'pair' });
  const a = shellGuest('A', env.sock('a'), { queues: QP });
  const b = shellGuest('B', env.sock('b'), { queues: QP });
  t.teardown(async () => {
    await a.kill();
    await b.kill();
    await env.stop();
  });
  for (const g of [a, b]) await g.waitFor(/VF:SHELL/, 180000);
  const da = env.fwd.interfaces[0].device;
  t.equal(da?.seen.get('GET_QUEUE_NUM') !== undefined, true, 'QEMU asked GET_QUEUE_NUM');
  const l = await a.sh(`${ETHTOOL} -l eth0`);
  t.match(l.out, /Pre-set maximums:[\s\S]*?Combined:\s+128/, 'the guest sees 128 queue pairs (ethtool -l: maximum combined 128)');
  for (const g of [a, b]) {
    const r = await g.sh(`${ETHTOOL} -L eth0 combined ${QP}`, 60000);
    t.equal(r.rc, 0, `${g.o.name}: ethtool -L eth0 combined 128`);
  }
  const started = await until(() => env.fwd.interfaces.every((i) => i.device?.vrings.filter((v) => v.enabled && v.started).length === 2 * QP), 60000);
  t.ok(started, `all 256 rings of both devices enabled and started (${env.fwd.interfaces.map((i) => i.device?.vrings.filter((v) => v.started).length).join(', ')})`);
  const regions = da?.mem.list() ?? [];
  t.ok(regions.length > 0 && regions.every((r) => r.refs === QP), `each memory region added once per queue pair and mapped once (refs ${regions.map((r) => r.refs).join(', ')})`);
  t.equal((await a.sh(reach('10.0.0.2'), 60000)).rc, 0, 'A reaches B');
  const p = await a.sh('ping -c 20 -i 0.1 10.0.0.2', 60000);
  const m = pingResult(p.out);
  t.ok(m && m[1] === '20' && m[2] === '20', `A: 20 pings to B, 20 answered (${m?.[0]})`);
  t.same(env.fwd.interfaces.map((i) => i.resets), [[], []], 'no device was reset');
});

t.test('QEMU memory hot-plug while pinging: buffers in a new DIMM forwarded, a DIMM unplugged leaves the table', async (t) => {
  const env = await startForwarder(['a', 'b']);
  const mon = path.join(env.dir, 'mon-a.sock');
  const dimm1 = path.join('/dev/shm', `vhostfwd-dimm1-${process.pid}`);
  const a = shellGuest('A', env.sock('a'), { monitor: mon, hotplug: { slots: 4, maxMb: 1024 }, append: ['memhp_default_state=offline'] });
  const b = shellGuest('B', env.sock('b'));
  t.teardown(async () => {
    await a.kill();
    await b.kill();
    await env.stop();
    fs.rmSync(dimm1, { force: true });
  });
  for (const g of [a, b]) await g.waitFor(/VF:SHELL/, 180000);
  if (!t.equal((await a.sh(reach('10.0.0.2'), 60000)).rc, 0, 'A reaches B')) return;
  const dev = () => env.fwd.interfaces[0].device;
  const gpas = () => (dev()?.mem.list() ?? []).map((r) => r.gpa);
  const before = gpas();
  t.comment(`A's regions at boot: ${(dev()?.mem.list() ?? []).map((r) => `0x${r.gpa.toString(16)}+0x${r.size.toString(16)}`).join(' ')}`);
  // online every offline memory block: $1 = online_kernel or online_movable
  await a.sh(String.raw`onl() { for m in /sys/devices/system/memory/memory*; do [ "$(cat $m/state)" = offline ] && echo $1 > $m/state; done; grep MemTotal /proc/meminfo; }`);

  // A pings B through everything that follows
  await a.sh('( ping -c 400 -i 0.05 10.0.0.2 > /tmp/hp 2>&1 & )');

  // DIMM 1: a file the test reads, onlined for the kernel
  const memTotal = (out: string) => Number(out.match(/MemTotal:\s+(\d+) kB/)?.[1] ?? 0);
  const total0 = memTotal((await a.sh('grep MemTotal /proc/meminfo')).out);
  await a.monitor(`object_add memory-backend-file,id=hp1,size=128M,mem-path=${dimm1},share=on`);
  await a.monitor('device_add pc-dimm,id=dimm1,memdev=hp1');
  const added = await until(() => gpas().length === before.length + 1, 30000);
  const newGpa = gpas().find((g) => !before.includes(g)) ?? -1;
  const newRegion = dev()?.mem.list().find((r) => r.gpa === newGpa);
  t.ok(added && newRegion?.size === 128 << 20, `ADD_MEM_REG: a region of 128 MiB at 0x${newGpa.toString(16)} joined A's table`);
  const on1 = await a.sh('onl online_kernel');
  t.equal(on1.rc, 0, 'the guest onlined DIMM 1');
  t.equal(memTotal(on1.out) - total0, 128 * 1024, `the guest's MemTotal grew by 128 MiB (${total0} -> ${memTotal(on1.out)} kB)`);

  // B pings A with a pattern: A's RX buffers refilled from now on come from DIMM 1
  const p = await b.sh('ping -c 200 -i 0.02 -s 1000 -p a5 10.0.0.1', 60000);
  const pm = pingResult(p.out);
  t.ok(pm && pm[1] === '200' && pm[2] === '200', `B: 200 pings with payload a5 to A, 200 answered (${pm?.[0]})`);
  const img = fs.readFileSync(dimm1);
  const macA = Buffer.from(MAC_A.split(':').map((x) => parseInt(x, 16)));
  const macB = Buffer.from(MAC_B.split(':').map((x) => parseInt(x, 16)));
  // virtio-net header (MRG_RXBUF: 12 bytes, num_buffers 1) + Ethernet header of B -> A, IPv4
  const prefix = Buffer.concat([Buffer.alloc(10), Buffer.from([1, 0]), macA, macB, Buffer.from([8, 0, 0x45])]);
  let frames = 0;
  for (let at = img.indexOf(prefix); at >= 0; at = img.indexOf(prefix, at + 1)) {
    const icmpData = img.subarray(at + 12 + 14 + 20 + 8, at + 12 + 14 + 20 + 1008);
    if (img[at + 12 + 14 + 20] === 8 && icmpData.filter((x) => x === 0xa5).length >= 980) frames++;
  }
  t.ok(frames > 0, `DIMM 1 holds ${frames} echo requests from B written by vhostfwd into A's RX buffers (virtio-net header + frame)`);

  // DIMM 2: memfd, onlined movable, then unplugged
  await a.monitor('object_add memory-backend-memfd,id=hp2,size=128M,share=on');
  await a.monitor('device_add pc-dimm,id=dimm2,memdev=hp2');
  const added2 = await until(() => gpas().length === before.length + 2, 30000);
  t.ok(added2, `ADD_MEM_REG: DIMM 2 joined (${gpas().length} regions)`);
  const dimm2Gpa = gpas().find((g) => !before.includes(g) && g !== newGpa) ?? -1;
  t.equal((await a.sh('onl online_movable')).rc, 0, 'the guest onlined DIMM 2 movable');
  await a.monitor('device_del dimm2');
  const removed = await until(() => !gpas().includes(dimm2Gpa), 60000);
  t.ok(removed, `device_del: REM_MEM_REG took DIMM 2 (0x${dimm2Gpa.toString(16)}) out of A's table (${gpas().length} regions)`);
  t.ok(gpas().includes(newGpa), 'DIMM 1 stays');

  const done = await a.sh('while pidof ping >/dev/null; do sleep 0.2; done; cat /tmp/hp', 90000);
  const am = pingResult(done.out);
  t.ok(am && am[1] === '400' && am[2] === '400', `A: 400 pings to B across both plugs and the unplug, all answered (${am?.[0]})`);
  t.same(env.fwd.interfaces.map((i) => i.resets), [[], []], 'no device was reset');
});
