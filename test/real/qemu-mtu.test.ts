/**
 * Issue 21 (MTU) with real guests: three QEMU 7.2 guests on a vhostfwd bridge, A and B on
 * ports with mtu 9000 (host_mtu=9000), C on a port with mtu 1500 (host_mtu=1500). The
 * guests' eth0 take the MTU the device reports (VIRTIO_NET_F_MTU), QEMU sends NET_SET_MTU,
 * 8972-byte pings cross between A and B in one frame each, and the same pings towards C
 * are dropped at C's port and counted as too big, while ordinary pings to C pass.
 */
import t from 'tap';
import os from 'node:os';
import path from 'node:path';
import { parseConfig } from '../../src/main/config';
import { Forwarder } from '../../src/main/forwarder';
import { F } from '../../src/protocol/constants';
import { tmpDir } from '../../kit/env';
import { QemuGuest } from '../../kit/peers/qemu';

t.test('jumbo frames with QEMU guests: host_mtu=9000 reaches eth0, 8972-byte pings pass, a 1500 port drops them by count', async (t) => {
  const dir = tmpDir();
  const sock = (n: string) => path.join(dir, `${n}.sock`);
  const cfg = parseConfig(
    {
      interfaces: [
        { name: 'a', socket: sock('a'), mtu: 9000 },
        { name: 'b', socket: sock('b'), mtu: 9000 },
        { name: 'c', socket: sock('c'), mtu: 1500 },
      ],
      forwarding: { mode: 'bridge' },
    },
    os.cpus().length,
  );
  const fwd = new Forwarder(cfg);
  await fwd.start();
  const mk = (name: string, id: number, mtu: number) =>
    new QemuGuest({ name, socket: sock(name.toLowerCase()), mac: `52:54:00:00:03:0${id}`, ip: `10.0.3.${id}/24`, peer: '10.0.3.1', mode: 'shell', hostMtu: mtu });
  const guests = [mk('A', 1, 9000), mk('B', 2, 9000), mk('C', 3, 1500)];
  const [a, b, c] = guests;
  t.teardown(async () => {
    for (const g of guests) await g.kill();
    await fwd.stop();
    const fs = await import('node:fs');
    fs.rmSync(dir, { recursive: true, force: true });
  });
  for (const g of guests) await g.waitFor(/VF:SHELL/, 120000);
  for (const [g, mtu] of [[a, 9000], [b, 9000], [c, 1500]] as const) {
    const r = await g.sh('cat /sys/class/net/eth0/mtu');
    t.equal(r.out.trim(), String(mtu), `${g.o.name}: eth0 mtu ${mtu} (from the device's VIRTIO_NET_F_MTU)`);
  }
  for (const [i, itf] of fwd.interfaces.entries()) {
    const d = itf.device;
    t.ok(d && ((d.features >> BigInt(F.VIRTIO_NET_F_MTU)) & 1n) === 1n, `${itf.name}: the guest acked VIRTIO_NET_F_MTU`);
    t.equal(d?.seen.get('NET_SET_MTU') ?? 0, 1, `${itf.name}: QEMU sent NET_SET_MTU`);
    t.equal(d?.mtu, i < 2 ? 9000 : 1500, `${itf.name}: MTU ${d?.mtu}`);
  }
  const rxOf = (n: string) => fwd.stats().find((s) => s.iface === n && s.dir === 'rx');
  // warm the path (ARP) with small pings, then the jumbo ones
  t.equal((await a.sh('ping -c 2 -W 5 10.0.3.2 >/dev/null; ping -c 2 -W 5 10.0.3.3 > /dev/null; true', 60000)).rc, 0, 'ARP warmed');
  const bBefore = rxOf('b');
  const big = await a.sh('ping -c 5 -i 0.3 -W 5 -s 8972 10.0.3.2', 60000);
  t.match(big.out, /5 packets transmitted, 5 packets received/, `A -> B: 5 of 5 8972-byte pings answered (${big.out.trim().split('\n').pop()})`);
  const bAfter = rxOf('b');
  const frames = (bAfter?.packets ?? 0) - (bBefore?.packets ?? 0);
  const bytes = (bAfter?.bytes ?? 0) - (bBefore?.bytes ?? 0);
  // whole: 5 frames of 9014 bytes (and maybe an ARP or two beside them); fragmented at 1500
  // they would have been 35 frames or more
  t.ok(frames >= 5 && frames <= 8 && bytes >= 5 * 9014, `they crossed whole: ${frames} frames, ${bytes} bytes to B (5 x 9014 bytes, not fragments)`);

  const tooBigBefore = rxOf('c')?.dropTooBig ?? 0;
  const toC = await c.sh('true'); // C is up (its shell answers)
  t.equal(toC.rc, 0, 'C answers');
  const dropped = await a.sh('ping -c 3 -i 0.3 -W 2 -s 8972 10.0.3.3', 60000);
  t.match(dropped.out, /3 packets transmitted, 0 packets received/, 'A -> C (mtu 1500): 8972-byte pings get no answer');
  t.ok((rxOf('c')?.dropTooBig ?? 0) - tooBigBefore >= 3, `C's port counted them as too big (${(rxOf('c')?.dropTooBig ?? 0) - tooBigBefore})`);
  const small = await a.sh('ping -c 3 -i 0.3 -W 5 -s 1472 10.0.3.3', 60000);
  t.match(small.out, /3 packets transmitted, 3 packets received/, 'A -> C: 1472-byte pings (1514-byte frames) pass');
});
