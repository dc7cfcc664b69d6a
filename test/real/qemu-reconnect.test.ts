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
import { tmpDir } from '../helpers/env';
import { QemuGuest, pingReplies } from './qemu';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

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
  await sleep(1500);
  const before = pingReplies(a.output).length;
  t.ok(before >= 5, `pings flow before the restart (${before})`);

  await fwd.stop(); // sockets unlinked, devices released: QEMU sees the backend go away
  await sleep(2000);
  const during = pingReplies(a.output).length;
  fwd = new Forwarder(cfg());
  await fwd.start();
  const end = Date.now() + 30000;
  while (Date.now() < end && !(fwd.interfaces.every((i) => i.device?.vrings.some((v) => v.started)))) await sleep(200);
  t.ok(fwd.interfaces.every((i) => i.connections >= 1), 'both QEMUs reconnected to the new vhostfwd');
  await sleep(4000);
  const after = pingReplies(a.output).length;
  t.ok(after - during >= 10, `pings flow again after the restart (${after - during} more replies)`);
});
