/**
 * Real QEMU 7.2 guests for the real-peer tests and bench/: the Debian kernel plus a busybox
 * initramfs built at test time, with a virtio-net device on a vhost-user socket. The
 * guest's /init reads its job from the kernel command line (vf.*) and prints markers on
 * the serial console.
 */
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const MODULES = [
  'kernel/drivers/virtio/virtio_ring.ko',
  'kernel/drivers/virtio/virtio.ko',
  'kernel/drivers/virtio/virtio_pci_modern_dev.ko',
  'kernel/drivers/virtio/virtio_pci_legacy_dev.ko',
  'kernel/drivers/virtio/virtio_pci.ko',
  'kernel/net/core/failover.ko',
  'kernel/drivers/net/net_failover.ko',
  'kernel/drivers/net/virtio_net.ko',
];

const INIT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
arg() { sed -n "s/.*vf\\.$1=\\([^ ]*\\).*/\\1/p" /proc/cmdline; }
for m in ${MODULES.map((m) => path.basename(m)).join(' ')}; do insmod /lib/$m || echo "VF:INSMOD-FAIL $m"; done
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
[ -e /sys/class/net/eth0 ] || { echo "VF:NO-ETH0"; poweroff -f; }
ip link set lo up
ip addr add $(arg ip) dev eth0
ip link set eth0 up
i=0
while ! grep -q up /sys/class/net/eth0/operstate && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "VF:ETH0-UP $(cat /sys/class/net/eth0/operstate) $(cat /sys/class/net/eth0/address)"
mode=$(arg mode)
peer=$(arg peer)
if [ "$mode" = ping ]; then
  n=$(arg count); iv=$(arg interval)
  # wait for the peer to answer once (it may still be booting), then measure
  j=0
  while ! ping -c 1 -W 1 $peer >/dev/null 2>&1 && [ $j -lt 60 ]; do j=$((j+1)); done
  ping -c $n -i $iv $peer > /tmp/ping.out 2>&1
  cat /tmp/ping.out
  r=$(sed -n 's/.* \\([0-9]*\\) packets received.*/\\1/p' /tmp/ping.out)
  echo "VF:PING-DONE sent=$n received=$r"
  [ "$(arg stay)" = 1 ] && while true; do sleep 1; done
  poweroff -f
elif [ "$mode" = pingloop ]; then
  j=0
  while ! ping -c 1 -W 1 $peer >/dev/null 2>&1 && [ $j -lt 60 ]; do j=$((j+1)); done
  echo "VF:PINGLOOP-START"
  ping -i $(arg interval) $peer
elif [ "$mode" = serve ]; then
  echo "VF:SERVING"
  while true; do sleep 1; done
elif [ "$mode" = shell ]; then
  # commands from the test on the serial console (QemuGuest.sh), not echoed, no prompt.
  # Not exec'd: ash reading the console with echo off takes a SIGCHLD during its read for
  # the end of its input and exits, so orphans must not become its children (they go to
  # this PID 1), and background jobs are started detached: ( cmd & ).
  stty -echo 2>/dev/null
  export PS1= PS2=
  echo "VF:SHELL $(grep -c ^processor /proc/cpuinfo) cpus, $(ls -d /sys/class/net/eth0/queues/rx-* | wc -l) rx queues"
  sh
fi
poweroff -f
`;

/**
 * Host binaries copied into the guest with every library ldd lists (PEERS.md: Debian's
 * ethtool runs in the busybox initramfs that way): ethtool -L / -l / -S for multi-queue and
 * -k for offloads, iperf3 for TCP throughput (test/real/qemu-offload.test.ts).
 */
const GUEST_TOOLS = ['/usr/sbin/ethtool', '/usr/bin/iperf3'];

function toolFiles(): string[] {
  const files = new Set<string>();
  for (const tool of GUEST_TOOLS) {
    if (!fs.existsSync(tool)) continue;
    files.add(tool);
    for (const m of execFileSync('ldd', [tool]).toString().matchAll(/(\/\S+) \(0x/g)) files.add(m[1]);
  }
  return [...files].sort();
}

/** Kernel and initramfs for test guests, built once per kernel version and cached. */
function guestImage(): { kernel: string; initrd: string } {
  const kver = fs.readdirSync('/lib/modules').sort().pop();
  if (!kver) throw new Error('no kernel modules: run scripts/install-peers.sh');
  const kernel = `/boot/vmlinuz-${kver}`;
  if (!fs.existsSync(kernel)) throw new Error(`missing ${kernel}: run scripts/install-peers.sh`);
  const dir = path.join(os.tmpdir(), 'vhostfwd-guest', kver);
  const initrd = path.join(dir, 'initrd.gz');
  const stamp = path.join(dir, 'init.sh');
  const tools = toolFiles();
  const stampText = `${INIT}\n# tools: ${tools.join(' ')}\n`;
  if (fs.existsSync(initrd) && fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8') === stampText) return { kernel, initrd };
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'vhostfwd-initrd-'));
  for (const d of ['bin', 'lib', 'proc', 'sys', 'dev', 'tmp']) fs.mkdirSync(path.join(root, d));
  fs.copyFileSync('/bin/busybox', path.join(root, 'bin', 'busybox'));
  fs.chmodSync(path.join(root, 'bin', 'busybox'), 0o755);
  for (const m of MODULES) fs.copyFileSync(path.join('/lib/modules', kver, m), path.join(root, 'lib', path.basename(m)));
  for (const f of tools) {
    const to = path.join(root, f);
    fs.mkdirSync(path.dirname(to), { recursive: true });
    fs.copyFileSync(fs.realpathSync(f), to);
    fs.chmodSync(to, 0o755);
  }
  fs.writeFileSync(path.join(root, 'init'), INIT, { mode: 0o755 });
  fs.mkdirSync(dir, { recursive: true });
  execFileSync('sh', ['-c', `cd ${root} && find . | cpio -o -H newc 2>/dev/null | gzip -1 > ${initrd}.tmp`]);
  fs.renameSync(`${initrd}.tmp`, initrd);
  fs.writeFileSync(stamp, stampText);
  fs.rmSync(root, { recursive: true, force: true });
  return { kernel, initrd };
}

export interface GuestOptions {
  name: string;
  socket: string;
  mac: string;
  ip: string;
  peer: string;
  /** shell: after eth0 is up, a shell reads commands from the serial console (QemuGuest.sh) */
  mode: 'ping' | 'pingloop' | 'serve' | 'shell';
  count?: number;
  interval?: number;
  /** after a ping run, keep running (do not power off) */
  stay?: boolean;
  /** QEMU is the socket server (vhostfwd in client mode) */
  server?: boolean;
  /** reconnect=1: the client chardev reconnects after the backend restarts */
  reconnect?: boolean;
  /** queue pairs: -netdev queues=N, virtio-net mq=on */
  queues?: number;
  /** vCPUs (-smp): the guest driver uses min(queues, vCPUs) queue pairs, XPS maps CPU i to queue i */
  smp?: number;
  monitor?: string;
  incoming?: string;
  memMb?: number;
  /** host_mtu=N on the virtio-net device (VIRTIO_NET_F_MTU, if the backend offers it) */
  hostMtu?: number;
  /** memory hot-plug: -m MEM,slots=N,maxmem=MAXM (DIMMs added through the monitor) */
  hotplug?: { slots: number; maxMb: number };
  /** more kernel command line arguments */
  append?: string[];
  /** packed=on: the device offers VIRTIO_F_RING_PACKED to the guest (if the backend does) */
  packed?: boolean;
}

export class QemuGuest {
  readonly proc: ChildProcess;
  output = '';
  readonly args: string[];
  private exited: Promise<number | null>;
  private cmds = 0;

  constructor(readonly o: GuestOptions) {
    const img = guestImage();
    const mem = o.memMb ?? 256;
    const q = o.queues ?? 1;
    const chardev = `socket,id=c0,path=${o.socket}${o.server ? ',server=on,wait=off' : ''}${o.reconnect ? ',reconnect=1' : ''}`;
    const append = [
      'console=ttyS0', 'quiet', 'panic=-1', 'loglevel=3',
      `vf.ip=${o.ip}`, `vf.peer=${o.peer}`, `vf.mode=${o.mode}`, `vf.count=${o.count ?? 10}`, `vf.interval=${o.interval ?? 0.2}`, `vf.stay=${o.stay ? 1 : 0}`,
      ...(o.append ?? []),
    ].join(' ');
    this.args = [
      '-accel', 'tcg', '-m', o.hotplug ? `${mem},slots=${o.hotplug.slots},maxmem=${o.hotplug.maxMb}M` : `${mem}`, '-smp', `${o.smp ?? 1}`, '-nographic', '-no-reboot', '-nodefaults', '-serial', 'stdio',
      '-object', `memory-backend-memfd,id=mem,size=${mem}M,share=on`, '-numa', 'node,memdev=mem',
      '-kernel', img.kernel, '-initrd', img.initrd, '-append', append,
      '-chardev', chardev,
      '-netdev', `vhost-user,id=n0,chardev=c0${q > 1 ? `,queues=${q}` : ''}`,
      '-device', `virtio-net-pci,netdev=n0,mac=${o.mac},vectors=0${q > 1 ? ',mq=on' : ''}${o.hostMtu ? `,host_mtu=${o.hostMtu}` : ''}${o.packed ? ',packed=on' : ''}`,
      ...(o.monitor ? ['-monitor', `unix:${o.monitor},server=on,wait=off`] : []),
      ...(o.incoming ? ['-incoming', `unix:${o.incoming}`] : []),
    ];
    this.proc = spawn('qemu-system-x86_64', this.args, { stdio: [o.mode === 'shell' ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
    const add = (b: Buffer) => {
      this.output += b.toString();
    };
    this.proc.stdout?.on('data', add);
    this.proc.stderr?.on('data', add);
    this.exited = new Promise((r) => this.proc.on('exit', (code) => r(code)));
  }

  /** Resolve with the first match of `re` in the serial output after `from` (waits up to timeoutMs). */
  async waitFor(re: RegExp, timeoutMs: number, from = 0): Promise<RegExpMatchArray> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const m = this.output.slice(from).match(re);
      if (m) return m;
      if (Date.now() > end) throw new Error(`${this.o.name}: timed out waiting for ${re}; output:\n${this.output.slice(-3000)}`);
      if (this.proc.exitCode !== null) throw new Error(`${this.o.name}: QEMU exited (${this.proc.exitCode}) before ${re}; output:\n${this.output.slice(-3000)}`);
      await sleep(50);
    }
  }

  /**
   * mode 'shell': run `cmd` in the guest's shell and resolve with what the console printed
   * until it finished, and its exit status (waits up to timeoutMs). Start background jobs
   * detached, `( cmd & )`, and wait for them by polling (see the guest's /init).
   */
  async sh(cmd: string, timeoutMs = 30000): Promise<{ out: string; rc: number }> {
    const stdin = this.proc.stdin;
    if (!stdin) throw new Error(`${this.o.name}: not started in shell mode`);
    const id = ++this.cmds;
    const from = this.output.length;
    // the marker is printed by the shell, never echoed: $((id)) is expanded only when it runs
    stdin.write(`${cmd}\necho "VF:DONE-$((${id})) rc=$?"\n`);
    const m = await this.waitFor(new RegExp(`VF:DONE-${id} rc=(\\d+)`), timeoutMs, from);
    return { out: this.output.slice(from, from + (m.index ?? 0)), rc: Number(m[1]) };
  }

  /** Send one HMP command to the monitor socket and return what it printed. */
  async monitor(cmd: string): Promise<string> {
    const sock = this.o.monitor;
    if (!sock) throw new Error('no monitor');
    return await new Promise((resolve, reject) => {
      const c = net.connect(sock);
      let out = '';
      let sent = false;
      c.on('data', (d) => {
        out += d.toString();
        if (!sent && out.includes('(qemu)')) {
          sent = true;
          out = '';
          c.write(cmd + '\n');
          setTimeout(() => c.end(), 300);
        }
      });
      c.on('end', () => resolve(out));
      c.on('error', reject);
    });
  }

  wait(): Promise<number | null> {
    return this.exited;
  }

  async kill(): Promise<void> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill('SIGKILL');
      await this.exited;
    }
  }
}

/** Count ping replies ("bytes from") in a guest's output after `from`. */
export function pingReplies(output: string): number[] {
  const seqs: number[] = [];
  for (const m of output.matchAll(/bytes from [0-9.]+: seq=(\d+)/g)) seqs.push(Number(m[1]));
  return seqs;
}
