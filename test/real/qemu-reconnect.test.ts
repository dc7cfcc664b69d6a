/**
 * Faults with a real peer: vhostfwd is restarted while two QEMU guests run with their
 * vhost-user chardevs in reconnect mode; QEMU reconnects, renegotiates, and the guests'
 * pings flow again.
 */
import t from 'tap';
import os from 'node:os';
import path from 'node:path';
import { parseConfig } from '../../src/main/config';
import { Forwarder } from '../../src/main/forwarder';
import { tmpDir, waitUntil } from '../../kit/env';
import { QemuGuest, pingReplies } from '../../kit/peers/qemu';

t.test('vhostfwd restarted under running QEMU guests (reconnect=1): traffic resumes', async (t) => {
  const dir = tmpDir();
  const sock = (n: string) => path.join(dir, `${n}.sock`);
  const cfg = () => parseConfig({ interfaces: [{ name: 'vm1', socket: sock('vm1') }, { name: 'vm2', socket: sock('vm2') }], forwarding: { mode: 'bridge' } }, os.cpus().length);
  let fwd = new Forwarder(cfg());
  await fwd.start();
  const b = new QemuGuest({ name: 'B', socket: sock('vm2'), mac: '52:54:00:00:01:0b', ip: '10.0.1.2/24', peer: '10.0.1.1', mode: 'serve', reconnect: true });
  const a = new QemuGuest({ name: 'A', socket: sock('vm1'), mac: '52:54:00:00:01:0a', ip: '10.0.1.1/24', peer: '10.0.1.2', mode: 'pingloop', interval: 0.2, reconnect: true });
  t.teardown(async () => {
    await a.kill();
    await b.kill();
    await fwd.stop();
  });
  await a.waitFor(/VF:PINGLOOP-START/, 90000);
  const waited = (p: Promise<void>) => p.then(() => true, () => false);
  t.ok(await waited(waitUntil(() => pingReplies(a.output).length >= 5, 60000, '5 replies')), `pings flow before the restart (${pingReplies(a.output).length})`);
  const firstConnections = fwd.interfaces.map((i) => i.connections);

  // sockets unlinked, devices released: QEMU sees its connection closed. Started again at
  // once: that QEMU connects to the new process at all shows it saw the old one go.
  await fwd.stop();
  const during = pingReplies(a.output).length;
  fwd = new Forwarder(cfg());
  await fwd.start();
  const ringsUp = () => fwd.interfaces.every((i) => i.device?.vrings.some((v) => v.started) === true);
  t.ok(await waited(waitUntil(ringsUp, 60000, 'both QEMUs reconnected with a started ring')), 'both QEMUs reconnected to the new vhostfwd and started a ring');
  t.ok(fwd.interfaces.every((i) => i.connections >= 1), `both QEMUs reconnected (before the restart: ${firstConnections.join(', ')} connections)`);
  t.ok(await waited(waitUntil(() => pingReplies(a.output).length - during >= 10, 60000, '10 more replies')), `pings flow again after the restart (${pingReplies(a.output).length - during} more replies)`);
});
