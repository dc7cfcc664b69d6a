/**
 * The offload features in the offer (issue 18): on by default, maskable one by one
 * (maskFeatures) or all at once (`offloads: false`), and the offer identical across restarts
 * with the same config, also through the state file's form of an interface (QEMU refuses to
 * reconnect to a backend offering fewer features than its guest acked).
 */
import t from 'tap';
import os from 'node:os';
import path from 'node:path';
import fs from 'node:fs';
import { interfaceToRaw, parseConfig, parseInterface } from '../src/main/config';
import { Forwarder } from '../src/main/forwarder';
import { F, OFFLOAD_FEATURES, Req, bit, hasBit } from '../src/protocol/constants';
import { VhostUserClient } from '../src/frontend/vhost-user-client';
import { tmpDir } from '../kit/env';

const offloadMask = OFFLOAD_FEATURES.reduce((m, n) => m | bit(F[n]), 0n);

async function offers(raw: unknown): Promise<bigint[]> {
  const fwd = new Forwarder(parseConfig(raw, os.cpus().length));
  await fwd.start();
  try {
    const out: bigint[] = [];
    for (const itf of fwd.interfaces) {
      const c = await VhostUserClient.connect(itf.opts.socket);
      out.push(await c.callU64(Req.GET_FEATURES));
      c.close();
    }
    return out;
  } finally {
    await fwd.stop();
  }
}

t.test('offloads offered by default, masked by offloads: false or one by one, same offer after a restart', async (t) => {
  const dir = tmpDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const raw = {
    interfaces: [
      { name: 'on', socket: path.join(dir, 'on.sock') },
      { name: 'off', socket: path.join(dir, 'off.sock'), offloads: false },
      { name: 'rx', socket: path.join(dir, 'rx.sock'), maskFeatures: ['VIRTIO_NET_F_GUEST_TSO4', 'VIRTIO_NET_F_GUEST_TSO6', 'VIRTIO_NET_F_GUEST_CSUM'] },
    ],
    forwarding: { mode: 'bridge' },
  };
  const first = await offers(raw);
  t.equal(first[0] & offloadMask, offloadMask, 'every offload feature offered by default');
  t.equal(first[1] & offloadMask, 0n, 'offloads: false offers none of them');
  t.equal(first[1] | offloadMask, first[0], '... and everything else as before');
  t.notOk(hasBit(first[2], F.VIRTIO_NET_F_GUEST_TSO4) || hasBit(first[2], F.VIRTIO_NET_F_GUEST_TSO6) || hasBit(first[2], F.VIRTIO_NET_F_GUEST_CSUM), 'maskFeatures takes single offloads out');
  t.ok(hasBit(first[2], F.VIRTIO_NET_F_HOST_TSO4) && hasBit(first[2], F.VIRTIO_NET_F_CSUM), '... and leaves the rest');
  const second = await offers(raw);
  t.same(second.map(String), first.map(String), 'identical offer after a restart with the same config');
  // through the state file's form of each interface (interfaceToRaw, then parsed back)
  const viaState = await offers({ ...raw, interfaces: raw.interfaces.map((i, k) => interfaceToRaw(parseInterface(i, `interfaces[${k}]`))) });
  t.same(viaState.map(String), first.map(String), 'identical offer when restored from the state file form');
  t.throws(() => parseInterface({ name: 'x', socket: '/tmp/x', offloads: 'no' }, 'interfaces[0]'), /interfaces\[0\]\.offloads: expected a boolean/);
});
