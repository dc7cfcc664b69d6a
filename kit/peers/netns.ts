/**
 * Network namespaces for the uplink tests (issue 22): a namespace the test creates and
 * removes, devices moved into it, and raw frames sent and captured on a device inside it
 * (AF_PACKET, through python3: what the kernel's side of a TAP or veth sees, byte for byte).
 * Everything is bounded: every command has a timeout, a capture stops after its count or its
 * deadline, and remove() deletes the namespace with whatever was moved into it.
 */
import { execFileSync, spawn } from 'node:child_process';

/** Run `ip` (or any command) with a deadline; throws with its stderr. */
export function run(cmd: string, args: string[], timeoutMs = 10000): string {
  return execFileSync(cmd, args, { encoding: 'utf8', timeout: timeoutMs, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Whether this process may make namespaces and TAPs (root, /dev/net/tun, ip, python3). */
export function canUseNetns(): string | null {
  if (process.getuid?.() !== 0) return 'not root';
  try {
    run('ip', ['netns', 'list']);
    run('python3', ['-c', 'import socket; socket.AF_PACKET']);
  } catch (e) {
    return `ip netns or python3 missing: ${(e as Error).message.split('\n')[0]}`;
  }
  return null;
}

const PY_SEND = `
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
for line in sys.stdin:
    line = line.strip()
    if line:
        s.send(bytes.fromhex(line))
print("sent")
`;

const PY_CAPTURE = `
import socket, sys, time, select
dev, proto, count, ms = sys.argv[1], int(sys.argv[2], 16), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
s.bind((dev, proto))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
print("ready", flush=True)
end = time.time() + ms / 1000.0
got = 0
while got < count:
    left = end - time.time()
    if left <= 0:
        break
    r, _, _ = select.select([s], [], [], left)
    if not r:
        break
    data, addr = s.recvfrom(65536)
    if addr[2] == socket.PACKET_OUTGOING:
        continue
    print(data.hex(), flush=True)
    got += 1
print("done", got, flush=True)
`;

export class NetNs {
  private removed = false;

  /** A new namespace (removed first if a crashed run left one of the name), IPv6 off (no stray frames). */
  constructor(readonly name: string) {
    try {
      run('ip', ['netns', 'del', name]);
    } catch {
      // none left behind
    }
    run('ip', ['netns', 'add', name]);
    this.exec('sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1');
    this.exec('ip', 'link', 'set', 'lo', 'up');
  }

  /** Run a command inside the namespace. */
  exec(cmd: string, ...args: string[]): string {
    return run('ip', ['netns', 'exec', this.name, cmd, ...args]);
  }

  /** Move device `dev` (of the test's namespace) in, bring it up with `addr` (CIDR) if given. */
  adopt(dev: string, addr?: string): void {
    run('ip', ['link', 'set', dev, 'netns', this.name]);
    if (addr) this.exec('ip', 'addr', 'add', addr, 'dev', dev);
    this.exec('ip', 'link', 'set', dev, 'up');
  }

  /** Send raw Ethernet frames out of `dev` (in order, one send each). */
  send(dev: string, frames: readonly Uint8Array[]): void {
    const input = frames.map((f) => Buffer.from(f).toString('hex')).join('\n') + '\n';
    execFileSync('ip', ['netns', 'exec', this.name, 'python3', '-c', PY_SEND, dev], { input, timeout: 10000, stdio: ['pipe', 'pipe', 'pipe'] });
  }

  /**
   * Capture up to `count` frames of EtherType `proto` arriving on `dev`, for at most `ms`.
   * Resolves once the socket is bound (`ready`); `frames` resolves with what came.
   */
  async capture(dev: string, proto: number, count: number, ms: number): Promise<{ frames: Promise<Buffer[]> }> {
    const p = spawn('ip', ['netns', 'exec', this.name, 'python3', '-c', PY_CAPTURE, dev, proto.toString(16), String(count), String(ms)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const killer = setTimeout(() => p.kill('SIGKILL'), ms + 10000);
    const exited = new Promise<number | null>((resolve) => p.on('exit', (c) => { clearTimeout(killer); resolve(c); }));
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`capture on ${dev} not ready in 10 s: ${err}`)), 10000);
      p.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.startsWith('ready\n')) {
          clearTimeout(t);
          resolve();
        }
      });
      void exited.then((c) => {
        clearTimeout(t);
        if (!out.startsWith('ready\n')) reject(new Error(`capture on ${dev} exited (${c}): ${err}`));
      });
    });
    return {
      frames: exited.then(() => out.split('\n').slice(1).filter((l) => /^[0-9a-f]+$/.test(l)).map((l) => Buffer.from(l, 'hex'))),
    };
  }

  /**
   * Join two devices inside the namespace back to back: whatever comes in on one leaves by
   * the other (tc ingress, u32 match-all, mirred redirect; matchall is not built into every
   * kernel). An uplink's frames out of one veth come back in on the other (bench/uplink.ts).
   */
  mirror(a: string, b: string): void {
    for (const [from, to] of [[a, b], [b, a]]) {
      this.exec('tc', 'qdisc', 'add', 'dev', from, 'ingress');
      this.exec('tc', 'filter', 'add', 'dev', from, 'parent', 'ffff:', 'protocol', 'all', 'u32', 'match', 'u32', '0', '0', 'action', 'mirred', 'egress', 'redirect', 'dev', to);
    }
  }

  /** Delete the namespace and every device in it (idempotent). */
  remove(): void {
    if (this.removed) return;
    this.removed = true;
    try {
      run('ip', ['netns', 'del', this.name]);
    } catch {
      // gone already
    }
  }
}

/** Whether a network device of that name exists in this namespace. */
export function linkExists(dev: string): boolean {
  try {
    run('ip', ['link', 'show', dev]);
    return true;
  } catch {
    return false;
  }
}

export interface VethOptions {
  /** both ends' MTU (default: the kernel's, 1500) */
  mtu?: number;
  /** `here` is pushed on it: a test file's closing check that none is left */
  made?: string[];
  /** the far end's address in the namespace (default 10.79.0.1/24) */
  addr?: string;
  /** IPv6 off on the far end too (no neighbour discovery frames besides the test's) */
  quiet?: boolean;
}

/**
 * A veth pair for one test: `here` in this namespace (up, IPv6 off), `there` in a namespace
 * of its own with `addr`. A `here` an earlier crashed run left is deleted first; both go at
 * the test's end, also when it fails (`t.teardown`).
 */
export function vethPair(t: { teardown(fn: () => void): void }, here: string, there: string, o: VethOptions = {}): NetNs {
  try {
    run('ip', ['link', 'del', here]);
  } catch {
    // none left behind
  }
  const mtu = o.mtu === undefined ? [] : ['mtu', String(o.mtu)];
  run('ip', ['link', 'add', here, ...mtu, 'type', 'veth', 'peer', 'name', there, ...mtu]);
  o.made?.push(here);
  const ns = new NetNs(`vhf-${here}`);
  t.teardown(() => {
    ns.remove();
    try {
      run('ip', ['link', 'del', here]);
    } catch {
      // went with the namespace
    }
  });
  for (const dev of o.quiet ? [here, there] : [here]) run('sysctl', ['-qw', `net.ipv6.conf.${dev}.disable_ipv6=1`]);
  run('ip', ['link', 'set', here, 'up']);
  ns.adopt(there, o.addr ?? '10.79.0.1/24');
  return ns;
}
