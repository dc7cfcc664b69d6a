/**
 * Issue 22, real peers: a QEMU 7.2 guest (TCG, busybox) on a vhost-user port cross-connected
 * to an uplink port: a TAP moved into a network namespace the test creates, or an AF_PACKET
 * or AF_XDP socket on a veth pair whose other end is in such a namespace. The guest
 * pings the namespace's address and files cross byte-exact over TCP both ways (busybox wget
 * from a busybox httpd on the other side): the kernel's and the guest's checksum and TSO
 * offloads cross the TAP as virtio-net headers. Every loop is bounded, the guest, the
 * servers, the namespace and the TAP are removed also when an assertion fails.
 */
import t from 'tap';
import { ChildProcess, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { QemuGuest, pingReplies } from '../../kit/peers/qemu';
import { NetNs, canUseNetns, linkExists, run } from '../../kit/peers/netns';
import { tmpDir } from '../../kit/env';
import { parseConfig } from '../../src/main/config';
import { Forwarder } from '../../src/main/forwarder';

const why = canUseNetns();
if (why) t.plan(0, `needs root, ip netns and python3: ${why}`);

const FILE_BYTES = 3 * 1024 * 1024 + 12345;

const VARIANTS = [
  { kind: 'tap', offloads: true },
  { kind: 'tap', offloads: false },
  // ring frames that hold a GSO frame: TSO both ways through the packet socket
  { kind: 'af_packet', offloads: true },
  // no virtio-net header on AF_XDP: the guest's offloads are done in software towards it
  { kind: 'af_xdp', offloads: false },
] as const;

for (const { kind, offloads } of VARIANTS) {
t.test(`a QEMU guest reaches a namespace through ${kind === 'tap' ? 'a TAP' : kind === 'af_xdp' ? 'an AF_XDP' : 'an AF_PACKET'} port (offloads ${offloads ? 'on' : 'off'}): ping, and a file each way byte-exact over TCP`, async (t) => {
  const tap = `v${kind === 'tap' ? 't' : kind === 'af_xdp' ? 'x' : 'p'}${offloads ? 'q' : 'o'}${process.pid % 100000}`;
  const peer = `${tap}b`;
  if (kind !== 'tap') {
    try {
      run('ip', ['link', 'del', tap]);
    } catch {
      // none left behind
    }
    run('ip', ['link', 'add', tap, 'type', 'veth', 'peer', 'name', peer]);
    run('sysctl', ['-qw', `net.ipv6.conf.${tap}.disable_ipv6=1`]);
    run('ip', ['link', 'set', tap, 'up']);
  }
  const ns = new NetNs(`vhf-${tap}`);
  const dir = tmpDir('vhostfwd-qtap-');
  const sock = path.join(dir, 'vm1.sock');
  const fwd = new Forwarder(parseConfig({ interfaces: [{ name: 'vm1', socket: sock }, kind === 'tap' ? { type: 'tap', name: tap, offloads } : kind === 'af_xdp' ? { type: 'af_xdp', device: tap, queue: 0, frames: 256 } : { type: 'af_packet', device: tap, offloads, frameSize: 131072, frames: 64 }] }, os.cpus().length));
  const www = fs.mkdtempSync('/tmp/vhostfwd-www-');
  const blob = crypto.randomBytes(FILE_BYTES);
  fs.writeFileSync(path.join(www, 'blob'), blob);
  let g: QemuGuest | null = null;
  let httpd: ChildProcess | null = null;
  t.teardown(async () => {
    httpd?.kill('SIGKILL');
    await g?.kill();
    await fwd.stop();
    ns.remove();
    if (kind !== 'tap') {
      try {
        run('ip', ['link', 'del', tap]);
      } catch {
        // went with the namespace
      }
    }
    fs.rmSync(www, { recursive: true, force: true });
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await fwd.start();
  ns.adopt(kind === 'tap' ? tap : peer, '10.78.0.1/24');
  // AF_XDP carries no checksum metadata: a frame the namespace's stack leaves to the veth to
  // checksum (CHECKSUM_PARTIAL) would reach the guest with its checksum undone, so the
  // namespace's end computes them itself (README: Uplink ports: AF_XDP)
  if (kind === 'af_xdp') ns.exec('ethtool', '-K', peer, 'tx', 'off');
  httpd = spawn('ip', ['netns', 'exec', ns.name, 'busybox', 'httpd', '-f', '-p', '10.78.0.1:8080', '-h', www], { stdio: 'ignore' });
  g = new QemuGuest({ name: 'g1', socket: sock, mac: '52:54:00:00:00:01', ip: '10.78.0.2/24', peer: '10.78.0.1', mode: 'shell', memMb: 256 });
  const up = await g.waitFor(/VF:ETH0-UP (\S+)/, 90000);
  t.equal(up[1], 'up', 'the guest brought eth0 up');
  await g.waitFor(/VF:SHELL/, 30000);

  // ping the namespace's address through the TAP
  const ping = await g.sh('ping -c 10 -i 0.2 -W 2 10.78.0.1', 60000);
  const report = ping.out.match(/(\d+) packets transmitted, (\d+) packets received/);
  t.equal(Number(report?.[2]), 10, `10 of 10 pings to 10.78.0.1 answered (ping says: ${report?.[0]})`);
  t.same([...new Set(pingReplies(ping.out))].sort((x, y) => x - y), Array.from({ length: 10 }, (_, i) => i), 'a reply for every sequence number');

  // the namespace -> the guest: wget from busybox httpd in the namespace
  const want = crypto.createHash('md5').update(blob).digest('hex');
  const down = await g.sh('timeout 120 wget -q -O /tmp/blob http://10.78.0.1:8080/blob; md5sum /tmp/blob; wc -c < /tmp/blob', 180000);
  t.equal(down.rc, 0, 'the guest fetched the file');
  if (down.rc !== 0) t.comment(down.out + JSON.stringify(fwd.stats()));
  t.match(down.out, new RegExp(`${want}\\s+/tmp/blob`), `the guest's copy has the file's md5 (${want})`);
  t.match(down.out, new RegExp(`\\b${FILE_BYTES}\\b`), `and its ${FILE_BYTES} bytes`);

  // the guest -> the namespace: the guest serves the file it got, the namespace fetches it
  const serve = await g.sh('mkdir -p /www && cp /tmp/blob /www/back && ( httpd -p 8080 -h /www & ) ; sleep 1', 30000);
  t.equal(serve.rc, 0, 'the guest serves the file');
  const back = path.join(www, 'back');
  // (busybox 1.35's wget -T segfaults: the deadline is the command's)
  run('ip', ['netns', 'exec', ns.name, 'busybox', 'wget', '-q', '-O', back, 'http://10.78.0.2:8080/back'], 120000);
  const got = fs.readFileSync(back);
  t.equal(got.length, FILE_BYTES, 'the namespace fetched every byte from the guest');
  t.equal(Buffer.compare(got, blob), 0, 'byte-exact');

  const st = fwd.stats();
  const tapTx = st.find((s) => s.iface === tap && s.dir === 'tx');
  const tapRx = st.find((s) => s.iface === tap && s.dir === 'rx');
  t.ok((tapTx?.bytes ?? 0) >= FILE_BYTES && (tapRx?.bytes ?? 0) >= FILE_BYTES, `the uplink carried the file both ways (from the kernel ${tapTx?.bytes} bytes, to it ${tapRx?.bytes})`);
  t.equal(st.reduce((n, s) => n + s.errors + s.dropBadOffload, 0), 0, 'no errors and no header refused anywhere');
  const vmRx = st.find((s) => s.iface === 'vm1' && s.dir === 'rx');
  t.comment(`to the kernel: ${tapRx?.packets} frames, GSO passed ${tapRx?.gsoPassed}, segmented ${tapRx?.gsoSegmented}, checksums completed ${tapRx?.csumSoftware}; to the guest: ${vmRx?.packets} frames, GSO passed ${vmRx?.gsoPassed}`);
  if (offloads) {
    t.ok((tapRx?.gsoPassed ?? 0) > 0, `the guest's TSO frames crossed to the kernel with their header (${tapRx?.gsoPassed})`);
    t.ok((vmRx?.gsoPassed ?? 0) > 0, `the kernel's GSO frames crossed to the guest with their header (${vmRx?.gsoPassed})`);
  } else {
    t.ok((tapRx?.gsoSegmented ?? 0) + (tapRx?.csumSoftware ?? 0) > 0, `the guest's offloads were done in software towards the TAP (segmented ${tapRx?.gsoSegmented}, checksums ${tapRx?.csumSoftware})`);
    t.equal(vmRx?.gsoPassed, 0, 'the kernel sent no GSO frame (TUNSETOFFLOAD 0)');
  }
  if (kind === 'tap') t.ok(linkExists(tap) === false, 'the TAP lives in the namespace, not here');
});
}
