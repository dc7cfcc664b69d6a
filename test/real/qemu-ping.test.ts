/**
 * Real peers: two QEMU 7.2 guests (Debian kernel, busybox) on vhostfwd sockets boot,
 * their virtio-net drivers bring eth0 up, and they ping each other with no loss, in
 * cross-connect and in bridge mode.
 */
import t from 'tap';
import { startForwarder } from '../../kit/env';
import { QemuGuest, pingReplies } from '../../kit/peers/qemu';
import { F, hasBit } from '../../src/protocol/constants';

for (const mode of ['xconnect', 'bridge'] as const) {
  t.test(`two QEMU guests ping each other through vhostfwd (${mode})`, async (t) => {
    const env = await startForwarder(['vm1', 'vm2'], { forwarding: mode === 'bridge' ? { mode: 'bridge' } : { mode: 'xconnect', pairs: [['vm1', 'vm2']] } });
    const g1 = new QemuGuest({ name: 'g1', socket: env.sock('vm1'), mac: '52:54:00:00:00:01', ip: '10.0.0.1/24', peer: '10.0.0.2', mode: 'ping', count: 20, interval: 0.2, stay: true });
    const g2 = new QemuGuest({ name: 'g2', socket: env.sock('vm2'), mac: '52:54:00:00:00:02', ip: '10.0.0.2/24', peer: '10.0.0.1', mode: 'serve' });
    t.teardown(async () => {
      await g1.kill();
      await g2.kill();
      await env.stop();
    });
    const up1 = await g1.waitFor(/VF:ETH0-UP (\S+)/, 60000);
    const up2 = await g2.waitFor(/VF:ETH0-UP (\S+)/, 60000);
    t.equal(up1[1], 'up', 'guest 1 virtio-net eth0 is up');
    t.equal(up2[1], 'up', 'guest 2 virtio-net eth0 is up');
    const done = await g1.waitFor(/VF:PING-DONE sent=(\d+) received=(\d+)/, 90000);
    // counted from ping's own report and its reply lines, not from the guest's echo of -c
    const report = g1.output.match(/(\d+) packets transmitted, (\d+) packets received/);
    t.ok(report, "ping's summary line is there");
    t.equal(Number(report?.[1]), 20, '20 pings transmitted (ping says)');
    t.equal(Number(report?.[2]), 20, 'all 20 answered (ping says): no loss');
    t.same([...new Set(pingReplies(g1.output))].sort((x, y) => x - y), Array.from({ length: 20 }, (_, i) => i), 'a reply line for every sequence number 0..19');
    t.equal(Number(done[2]), 20, "the guest's marker agrees");
    // and vhostfwd carried them: at least 20 frames each way between the two ports
    const pk = (iface: string, dir: 'rx' | 'tx') => env.fwd.stats().filter((s) => s.iface === iface && s.dir === dir).reduce((n, s) => n + s.packets, 0);
    t.ok(pk('vm1', 'tx') >= 20 && pk('vm2', 'rx') >= 20, `vhostfwd took >= 20 frames from g1 and delivered >= 20 to g2 (${pk('vm1', 'tx')}, ${pk('vm2', 'rx')})`);
    t.ok(pk('vm2', 'tx') >= 20 && pk('vm1', 'rx') >= 20, `and >= 20 back (${pk('vm2', 'tx')}, ${pk('vm1', 'rx')})`);
    const dev = env.fwd.interfaces[0].device;
    t.ok((dev?.seen.get('SET_MEM_TABLE') ?? 0) + (dev?.seen.get('ADD_MEM_REG') ?? 0) > 0, `QEMU passed its memory (${[...(dev?.seen.keys() ?? [])].join(' ')})`);
    const rx = env.fwd.stats().filter((s) => s.dir === 'rx').reduce((a, s) => a + s.packets, 0);
    t.ok(rx >= 40, `frames forwarded to the guests (${rx})`);
  });
}

t.test('two QEMU guests with packed=on ping each other through vhostfwd: packed rings negotiated, no loss', async (t) => {
  const env = await startForwarder(['vm1', 'vm2'], { forwarding: { mode: 'xconnect', pairs: [['vm1', 'vm2']] } }, { packedRing: true });
  const g1 = new QemuGuest({ name: 'g1', socket: env.sock('vm1'), mac: '52:54:00:00:00:01', ip: '10.0.0.1/24', peer: '10.0.0.2', mode: 'ping', count: 20, interval: 0.2, stay: true, packed: true });
  const g2 = new QemuGuest({ name: 'g2', socket: env.sock('vm2'), mac: '52:54:00:00:00:02', ip: '10.0.0.2/24', peer: '10.0.0.1', mode: 'serve', packed: true });
  t.teardown(async () => {
    await g1.kill();
    await g2.kill();
    await env.stop();
  });
  const up1 = await g1.waitFor(/VF:ETH0-UP (\S+)/, 60000);
  const up2 = await g2.waitFor(/VF:ETH0-UP (\S+)/, 60000);
  t.same([up1[1], up2[1]], ['up', 'up'], 'both guests brought eth0 up');
  t.same(env.fwd.interfaces.map((i) => hasBit(i.device?.features ?? 0n, F.VIRTIO_F_RING_PACKED)), [true, true], 'VIRTIO_F_RING_PACKED negotiated by both guests');
  await g1.waitFor(/VF:PING-DONE sent=(\d+) received=(\d+)/, 90000);
  const report = g1.output.match(/(\d+) packets transmitted, (\d+) packets received/);
  t.equal(Number(report?.[1]), 20, '20 pings transmitted (ping says)');
  t.equal(Number(report?.[2]), 20, 'all 20 answered: no loss');
  t.same([...new Set(pingReplies(g1.output))].sort((x, y) => x - y), Array.from({ length: 20 }, (_, i) => i), 'a reply line for every sequence number 0..19');
  t.equal(env.fwd.stats().reduce((a, s) => a + s.errors, 0), 0, 'no ring errors');
});
