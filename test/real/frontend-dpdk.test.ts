/**
 * Our TypeScript frontend (src/frontend/guest.ts: the tests' synthetic guest and bench/gen.ts)
 * against a backend we did not write: DPDK 22.11 testpmd with two net_vhost ports, io forward.
 * DPDK calls a device ready only when, with the STATUS protocol feature negotiated, the
 * frontend has set DRIVER_OK; a frontend that negotiates STATUS and never says so is never
 * started (its link stays down). Then frames both ways arrive byte-exact, every one.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { tmpDir } from '../../kit/env';
import { SyntheticGuest, macOf } from '../../src/frontend/guest';
import { PF, hasBit } from '../../src/protocol/constants';
import { Testpmd } from '../../kit/peers/testpmd';
import { assertFlows, pump } from '../helpers/traffic';

t.test('synthetic guests through DPDK net_vhost: link up after DRIVER_OK, frames byte-exact both ways', async (t) => {
  const dir = tmpDir('fe-dpdk');
  const sockets = [path.join(dir, 'a.sock'), path.join(dir, 'b.sock')];
  const be = new Testpmd({ role: 'backend', sockets, lcores: [0, 1], prefix: `vhostfwd-bedpdk-${process.pid}`, memMb: 256, extraArgs: ['--total-num-mbufs=16384'] });
  const guests: SyntheticGuest[] = [];
  t.teardown(async () => {
    for (const g of guests) g.close();
    await be.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await be.ready(60000);
  for (const [i, s] of sockets.entries()) guests.push(await SyntheticGuest.start({ socket: s, mac: macOf(i + 1) }));
  const [a, b] = guests;
  t.ok(hasBit(a.protocolFeatures, PF.STATUS), 'DPDK offered STATUS and the frontend took it');
  for (const p of [0, 1]) await be.waitFor(new RegExp(`Port ${p}: link state change event`), 15000);
  t.pass('both ports came up: DPDK saw DRIVER_OK');
  await be.cmd('start');
  const frames = 2000;
  const r = await pump(a, b, frames, [60, 128, 1514], { deadlineMs: 60000 });
  assertFlows(t, r, frames, 'through DPDK');
  await be.cmd('stop');
});
