/**
 * Issue 18 (checksum and segmentation offloads) with real guests: four QEMU 7.2 TCG guests on
 * a vhostfwd bridge. A and B take every offload (A -> B: TSO frames of up to 64 KiB handed
 * over whole), C masks GUEST_CSUM/GUEST_TSO4/TSO6/ECN/UFO (A -> C: vhostfwd segments and
 * checksums in software), D has `offloads: false` (D -> C: plain MTU frames, the baseline).
 * The guests' `ethtool -k eth0` shows what they negotiated; iperf3 (Debian's, copied into the
 * initramfs) runs TCP for 10 s on each path; a file crosses each path byte-exact (sha256,
 * busybox nc); vhostfwd's counters show which path each frame took.
 */
import t from 'tap';
import os from 'node:os';
import path from 'node:path';
import { parseConfig } from '../../src/main/config';
import { Forwarder } from '../../src/main/forwarder';
import { tmpDir } from '../../kit/env';
import { QemuGuest } from '../../kit/peers/qemu';

const SECONDS = Number(process.env.OFFLOAD_IPERF_SECONDS ?? 10);

/** Gbit/s of the receiver's summary line of an iperf3 client run, or NaN */
export function iperfGbits(out: string): number {
  const m = out.match(/([\d.]+) ([KMG])bits\/sec[^\n]*receiver/);
  if (!m) return NaN;
  return Number(m[1]) * (m[2] === 'G' ? 1 : m[2] === 'M' ? 1e-3 : 1e-6);
}

t.test('offloads with QEMU guests: TSO and checksum offload on, TCP through pass-through, software segmentation and no offloads, files byte-exact', async (t) => {
  const dir = tmpDir();
  const sock = (n: string) => path.join(dir, `${n}.sock`);
  const masked = ['VIRTIO_NET_F_GUEST_CSUM', 'VIRTIO_NET_F_GUEST_TSO4', 'VIRTIO_NET_F_GUEST_TSO6', 'VIRTIO_NET_F_GUEST_ECN', 'VIRTIO_NET_F_GUEST_UFO'];
  const cfg = parseConfig(
    {
      interfaces: [
        { name: 'a', socket: sock('a') },
        { name: 'b', socket: sock('b') },
        { name: 'c', socket: sock('c'), maskFeatures: masked },
        { name: 'd', socket: sock('d'), offloads: false },
      ],
      forwarding: { mode: 'bridge' },
    },
    os.cpus().length,
  );
  const fwd = new Forwarder(cfg);
  await fwd.start();
  const mk = (name: string, id: number) =>
    new QemuGuest({ name, socket: sock(name.toLowerCase()), mac: `52:54:00:00:04:0${id}`, ip: `10.0.4.${id}/24`, peer: '10.0.4.1', mode: 'shell', memMb: 512 });
  const guests = [mk('A', 1), mk('B', 2), mk('C', 3), mk('D', 4)];
  const [a, b, c, d] = guests;
  t.teardown(async () => {
    for (const g of guests) await g.kill();
    await fwd.stop();
    const fs = await import('node:fs');
    fs.rmSync(dir, { recursive: true, force: true });
  });
  for (const g of guests) await g.waitFor(/VF:SHELL/, 180000);

  const k = async (g: QemuGuest) => (await g.sh('ethtool -k eth0', 20000)).out;
  const feat = (out: string, name: string) => out.match(new RegExp(`^${name}: (\\w+)`, 'm'))?.[1];
  const ka = await k(a);
  t.equal(feat(ka, 'tx-checksumming'), 'on', 'A: tx-checksumming on');
  t.equal(feat(ka, 'tcp-segmentation-offload'), 'on', 'A: tcp-segmentation-offload on');
  const kc = await k(c);
  t.equal(feat(kc, 'tcp-segmentation-offload'), 'on', 'C (GUEST_* masked) still sends with TSO');
  const kd = await k(d);
  t.equal(feat(kd, 'tx-checksumming'), 'off', 'D (offloads: false): tx-checksumming off');
  t.equal(feat(kd, 'tcp-segmentation-offload'), 'off', 'D: tcp-segmentation-offload off');

  // ARP everywhere, then the servers
  t.equal((await a.sh('ping -c 1 -W 5 10.0.4.2 >/dev/null; ping -c 1 -W 5 10.0.4.3 >/dev/null; true', 60000)).rc, 0);
  t.equal((await d.sh('ping -c 1 -W 5 10.0.4.3 >/dev/null; true', 60000)).rc, 0);
  for (const g of [b, c]) await g.sh('( iperf3 -s >/dev/null 2>&1 & ); sleep 1');

  const stat = (n: string, dir: 'rx' | 'tx') => fwd.stats().filter((s) => s.iface === n && s.dir === dir);
  const sum = (n: string, dir: 'rx' | 'tx', key: 'gsoPassed' | 'gsoSegmented' | 'csumSoftware' | 'dropBadOffload') => stat(n, dir).reduce((s, q) => s + q[key], 0);

  const results: Record<string, number> = {};
  const run = async (from: QemuGuest, to: string, label: string) => {
    const r = await from.sh(`iperf3 -c ${to} --connect-timeout 10000 -t ${SECONDS} -f m`, (SECONDS + 40) * 1000);
    const g = iperfGbits(r.out);
    results[label] = g;
    t.ok(g > 0, `${label}: TCP for ${SECONDS} s, ${g.toFixed(3)} Gbit/s`);
  };
  const passedBefore = sum('b', 'rx', 'gsoPassed');
  await run(a, '10.0.4.2', 'A -> B offloads (pass-through)');
  t.ok(sum('b', 'rx', 'gsoPassed') - passedBefore > 100, `TSO frames handed to B whole: ${sum('b', 'rx', 'gsoPassed') - passedBefore}`);
  const segBefore = sum('c', 'rx', 'gsoSegmented');
  await run(a, '10.0.4.3', 'A -> C software segmentation');
  t.ok(sum('c', 'rx', 'gsoSegmented') - segBefore > 100, `TSO frames segmented for C: ${sum('c', 'rx', 'gsoSegmented') - segBefore}`);
  t.ok(sum('c', 'rx', 'gsoPassed') === 0, 'nothing handed whole to C');
  await run(d, '10.0.4.3', 'D -> C no offloads');
  t.equal(sum('a', 'tx', 'dropBadOffload') + sum('b', 'tx', 'dropBadOffload') + sum('c', 'tx', 'dropBadOffload') + sum('d', 'tx', 'dropBadOffload'), 0, 'no header refused');
  t.comment(`iperf3 Gbit/s: ${JSON.stringify(results)}`);

  // a file with a known sha256 over each path (busybox nc; the listener exits at EOF)
  const mkFile = await a.sh('dd if=/dev/urandom of=/tmp/f bs=1024 count=4096 2>/dev/null; sha256sum /tmp/f');
  const want = mkFile.out.trim().split(/\s+/)[0];
  await d.sh('dd if=/dev/urandom of=/tmp/f bs=1024 count=4096 2>/dev/null');
  const wantD = (await d.sh('sha256sum /tmp/f')).out.trim().split(/\s+/)[0];
  t.match(want, /^[0-9a-f]{64}$/);
  const send = async (from: QemuGuest, to: QemuGuest, ip: string, port: number, label: string, sha: string) => {
    // stdin from a pipe that stays open and silent: the console (the shell's stdin) must not
    // be eaten, and busybox nc closes the connection when its stdin ends (/dev/null truncated
    // the file); it exits at the sender's EOF
    await to.sh(`rm -f /tmp/r; ( sleep 600 | nc -l -p ${port} > /tmp/r 2>/dev/null & ); sleep 1`);
    const s = await from.sh(`nc -w 10 ${ip} ${port} < /tmp/f`, 60000);
    t.equal(s.rc, 0, `${label}: sent`);
    // the listener finishes writing once it saw EOF: poll its size, bounded
    let got = '';
    for (let i = 0; i < 30; i++) {
      got = (await to.sh('sha256sum /tmp/r')).out.trim().split(/\s+/)[0];
      if (got === sha) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    const size = got === sha ? '' : (await to.sh('ls -l /tmp/r')).out.trim();
    t.equal(got, sha, `${label}: 4 MiB file byte-exact (sha256 ${sha.slice(0, 16)}...) ${size}`);
  };
  await send(a, b, '10.0.4.2', 7001, 'A -> B (pass-through)', want);
  await send(a, c, '10.0.4.3', 7002, 'A -> C (software segmentation)', want);
  await send(d, c, '10.0.4.3', 7003, 'D -> C (no offloads)', wantD);
});
