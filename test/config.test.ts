import t from 'tap';
import { ConfigError, parseConfig } from '../src/main/config';

const two = () => ({
  interfaces: [
    { name: 'vm1', socket: '/tmp/a.sock' },
    { name: 'vm2', socket: '/tmp/b.sock', mode: 'client', queues: 2 },
  ],
});

t.test('defaults are filled in', async (t) => {
  const c = parseConfig(two(), 2);
  t.equal(c.interfaces[0].mode, 'server');
  t.equal(c.interfaces[0].queues, 1);
  t.equal(c.interfaces[0].mtu, null, 'no MTU unless configured (no VIRTIO_NET_F_MTU, no limit)');
  t.same(c.forwarding, { mode: 'xconnect', pairs: [['vm1', 'vm2']] }, 'two interfaces default to a cross-connect');
  t.equal(c.workers.length, 1, 'one poller on a 2-CPU machine');
  t.same(c.workers[0].queues.sort(), ['vm1:0', 'vm2:0', 'vm2:1']);
});

t.test('every bad key is named with what was expected', async (t) => {
  const cases: Array<[string, (c: Record<string, unknown>) => void, RegExp]> = [
    ['queues 0', (c) => ((c.interfaces as Array<Record<string, unknown>>)[1].queues = 0), /^interfaces\[1\]\.queues: expected an integer 1\.\.128, got 0$/],
    ['mode', (c) => ((c.interfaces as Array<Record<string, unknown>>)[0].mode = 'both'), /^interfaces\[0\]\.mode: expected "server" or "client"/],
    ['unknown key', (c) => ((c.interfaces as Array<Record<string, unknown>>)[0].sokcet = 'x'), /^interfaces\[0\]\.sokcet: expected one of the keys/],
    ['dup name', (c) => ((c.interfaces as Array<Record<string, unknown>>)[1].name = 'vm1'), /^interfaces\[1\]\.name: expected a name used once/],
    ['bad pair', (c) => (c.forwarding = { mode: 'xconnect', pairs: [['vm1', 'vm3']] }), /^forwarding\.pairs\[0\]\[1\]: expected an interface name/],
    ['bad mode', (c) => (c.forwarding = { mode: 'hub' }), /^forwarding\.mode: expected "xconnect" or "bridge"/],
    ['bad feature', (c) => ((c.interfaces as Array<Record<string, unknown>>)[0].maskFeatures = ['VIRTIO_NET_F_NOPE']), /^interfaces\[0\]\.maskFeatures\[0\]: expected one of/],
    ['bad cpu', (c) => (c.workers = [{ cpus: [5], queues: ['vm1:0'] }]), /^workers\[0\]\.cpus\[0\]: expected an integer 0\.\.1, got 5$/],
    ['bad queue', (c) => (c.workers = [{ cpus: [1], queues: ['vm1:3'] }]), /^workers\[0\]\.queues\[0\]: expected one of vm1:0/],
    ['interfaces not an array', (c) => (c.interfaces = 'vm1'), /^interfaces: expected an array/],
    ['name unfit for a URL', (c) => ((c.interfaces as Array<Record<string, unknown>>)[0].name = 'a/b'), /^interfaces\[0\]\.name: expected a name of 1\.\.64 letters/],
    ['owner in client mode', (c) => Object.assign((c.interfaces as Array<Record<string, unknown>>)[0], { mode: 'client', owner: 'root' }), /^interfaces\[0\]\.owner: expected no socket ownership in client mode/],
    ['bad permissions', (c) => ((c.interfaces as Array<Record<string, unknown>>)[0].permissions = '0999'), /^interfaces\[0\]\.permissions: expected an octal mode string/],
    ['bad owner', (c) => ((c.interfaces as Array<Record<string, unknown>>)[0].owner = 'no body'), /^interfaces\[0\]\.owner: expected a user or group name/],
    ['control socketDir relative', (c) => (c.control = { socketDir: 'run' }), /^control\.socketDir: expected an absolute directory path/],
  ];
  for (const [name, mutate, re] of cases) {
    const c = two() as unknown as Record<string, unknown>;
    mutate(c);
    t.throws(() => parseConfig(c, 2), re, name);
    try {
      parseConfig(c, 2);
    } catch (e) {
      t.type(e, ConfigError, `${name}: a ConfigError`);
    }
  }
});

t.test('workers: explicit pinning kept, unassigned queues go to the first worker', async (t) => {
  const c = { ...two(), workers: [{ cpus: [1], queues: ['vm1:0'] }] };
  const cfg = parseConfig(c, 2);
  t.same(cfg.workers[0].cpus, [1]);
  t.same(cfg.workers[0].queues, ['vm1:0', 'vm2:0', 'vm2:1']);
});

t.test('interfaces may all come at run time: an empty list, the control API on by default', async (t) => {
  const c = parseConfig({ interfaces: [], forwarding: { mode: 'xconnect' } }, 2);
  t.same(c.interfaces, []);
  t.same(c.forwarding, { mode: 'xconnect', pairs: [] }, 'xconnect without pairs yet');
  t.same(c.control, { socket: '/run/vhostfwd/control.sock', socketDir: null }, 'the default control socket');
  t.equal(parseConfig({ interfaces: [], control: false }, 2).control, false, 'control: false turns it off');
  const o = parseConfig({ interfaces: [{ name: 'vm1', socket: '/tmp/a.sock', owner: 'libvirt-qemu', group: 64055, permissions: '660' }] }, 2).interfaces[0];
  t.same([o.owner, o.group, o.permissions], ['libvirt-qemu', 64055, 0o660], 'ownership kept as given, the mode parsed as octal');
});

t.test('TAP uplink ports (issue 22): parsed, defaults, errors named, and round-tripped', async (t) => {
  const { interfaceToRaw } = await import('../src/main/config');
  const c = parseConfig({ interfaces: [{ name: 'vm1', socket: '/tmp/a.sock' }, { type: 'tap', name: 'vf0' }] }, 2);
  const tap = c.interfaces[1];
  t.equal(tap.type, 'tap');
  t.equal(tap.name, 'vf0');
  t.equal(tap.offloads, true, 'offloads on by default');
  t.equal(tap.mtu, null);
  t.equal(c.interfaces[0].type, 'vhost-user', 'a port without type is vhost-user');
  t.same(c.forwarding, { mode: 'xconnect', pairs: [['vm1', 'vf0']] }, 'a guest and a TAP default to a cross-connect');
  t.same(c.workers[0].queues.sort(), ['vf0:0', 'vm1:0'], "the TAP's queue is placed like a queue pair");
  t.same(interfaceToRaw(tap), { type: 'tap', name: 'vf0' }, 'the config form (state file, show) is minimal');
  const back = parseConfig({ interfaces: [interfaceToRaw({ ...tap, mtu: 9000, offloads: false })] }, 2);
  t.same([back.interfaces[0].mtu, back.interfaces[0].offloads], [9000, false], 'mtu and offloads round-trip');
  t.equal(parseConfig({ interfaces: [{ type: 'tap', name: 'vf0' }, { type: 'tap', name: 'vf1' }] }, 2).interfaces.length, 2, 'two TAPs (no socket to clash)');
  const bad: Array<[string, unknown, RegExp]> = [
    ['a name over 15 bytes', { type: 'tap', name: 'vf0123456789abcd' }, /^interfaces\[0\]\.name: expected a network device name of 1\.\.15/],
    ['a name with a slash', { type: 'tap', name: 'a/b' }, /^interfaces\[0\]\.name: expected a network device name/],
    ['the name ..', { type: 'tap', name: '..' }, /^interfaces\[0\]\.name: expected a network device name/],
    ['a socket on a TAP', { type: 'tap', name: 'vf0', socket: '/tmp/x' }, /^interfaces\[0\]\.socket: expected one of the keys type, name, mtu, offloads, vlan/],
    ['queues on a TAP', { type: 'tap', name: 'vf0', queues: 2 }, /^interfaces\[0\]\.queues: expected one of the keys/],
    ['an unknown type', { type: 'vxlan', name: 'vf0' }, /^interfaces\[0\]\.type: expected "vhost-user", "tap", "af_packet" or "af_xdp"/],
    ['a bad mtu', { type: 'tap', name: 'vf0', mtu: 10 }, /^interfaces\[0\]\.mtu: expected an integer 68\.\.65535/],
  ];
  for (const [what, itf, re] of bad) t.throws(() => parseConfig({ interfaces: [itf] }, 2), re, what);
  t.throws(() => parseConfig({ interfaces: [{ type: 'tap', name: 'vf0' }, { name: 'vf0', socket: '/tmp/a' }] }, 2), /^interfaces\[1\]\.name: expected a name used once/, 'a TAP and a guest port share one name space');
});

t.test('AF_PACKET uplink ports (issue 22): parsed, defaults, errors named, and round-tripped', async (t) => {
  const { interfaceToRaw } = await import('../src/main/config');
  const c = parseConfig({ interfaces: [{ name: 'vm1', socket: '/tmp/a.sock' }, { type: 'af_packet', device: 'eth1' }] }, 2);
  const p = c.interfaces[1];
  t.same([p.type, p.name, p.device, p.frameSize, p.frames, p.offloads], ['af_packet', 'eth1', 'eth1', 2048, 1024, true], 'the port is named after its device; 1024 frames of 2048 bytes');
  t.same(interfaceToRaw(p), { type: 'af_packet', device: 'eth1' }, 'the config form is minimal');
  const named = parseConfig({ interfaces: [{ type: 'af_packet', device: 'eth1', name: 'uplink', frameSize: 131072, frames: 64 }] }, 2).interfaces[0];
  t.same(interfaceToRaw(named), { type: 'af_packet', device: 'eth1', name: 'uplink', frameSize: 131072, frames: 64 }, 'name, frameSize and frames round-trip');
  const bad: Array<[string, unknown, RegExp]> = [
    ['no device', { type: 'af_packet' }, /^interfaces\[0\]\.device: expected a non-empty string/],
    ['a frame size not a power of two', { type: 'af_packet', device: 'eth1', frameSize: 3000 }, /^interfaces\[0\]\.frameSize: expected a power of two 2048\.\.131072/],
    ['frames not a power of two', { type: 'af_packet', device: 'eth1', frames: 100 }, /^interfaces\[0\]\.frames: expected a power of two 8\.\.65536/],
    ['a socket', { type: 'af_packet', device: 'eth1', socket: '/tmp/x' }, /^interfaces\[0\]\.socket: expected one of the keys/],
    ['queues 0', { type: 'af_packet', device: 'eth1', queues: 0 }, /^interfaces\[0\]\.queues: expected an integer 1\.\.128, got 0/],
    ['queues "x"', { type: 'af_packet', device: 'eth1', queues: 'x' }, /^interfaces\[0\]\.queues: expected an integer 1\.\.128, got "x"/],
    ['queues 1.5', { type: 'af_packet', device: 'eth1', queues: 1.5 }, /^interfaces\[0\]\.queues: expected an integer 1\.\.128/],
    ['queues 129', { type: 'af_packet', device: 'eth1', queues: 129 }, /^interfaces\[0\]\.queues: expected an integer 1\.\.128, got 129/],
    ['a steering not hash or pair', { type: 'af_packet', device: 'eth1', queues: 2, steering: 'rss' }, /^interfaces\[0\]\.steering: expected "hash" or "pair"/],
  ];
  for (const [what, itf, re] of bad) t.throws(() => parseConfig({ interfaces: [itf] }, 2), re, what);
  t.throws(() => parseConfig({ interfaces: [{ type: 'tap', name: 'vf0' }, { type: 'af_packet', device: 'vf0', name: 'x' }] }, 2), /^interfaces\[1\]\.device: expected a network device used by one uplink port only/, 'one device, one uplink port');
  // queues (PACKET_FANOUT): queue pairs placed on workers as a guest's, round-tripped
  t.equal(p.queues, 1, 'one queue by default');
  const mq = parseConfig({ interfaces: [{ name: 'vm1', socket: '/tmp/a.sock' }, { type: 'af_packet', device: 'eth1', queues: 4, steering: 'pair' }], workers: [{ queues: ['vm1:0', 'eth1:0', 'eth1:2'] }, { queues: ['eth1:1'] }] }, 4);
  t.same([mq.interfaces[1].queues, mq.interfaces[1].steering], [4, 'pair'], 'queues and steering parsed');
  t.same(mq.workers.map((w) => w.queues), [['vm1:0', 'eth1:0', 'eth1:2', 'eth1:3'], ['eth1:1']], 'its queue pairs are "eth1:0".."eth1:3" in the placement (an unplaced one goes to worker 0)');
  t.same(interfaceToRaw(mq.interfaces[1]), { type: 'af_packet', device: 'eth1', queues: 4, steering: 'pair' }, 'queues and steering round-trip');
  t.same(parseConfig({ interfaces: [interfaceToRaw(mq.interfaces[1])] }, 2).interfaces[0], mq.interfaces[1], 'and parse back the same');
  t.throws(() => parseConfig({ interfaces: [{ type: 'af_packet', device: 'eth1', queues: 2 }], workers: [{ queues: ['eth1:2'] }] }, 2), /^workers\[0\]\.queues\[0\]: expected one of eth1:0, eth1:1/, 'a queue pair the port does not have is named');
  t.throws(() => parseConfig({ interfaces: [{ type: 'tap', name: 'vf0', queues: 2 }] }, 2), /^interfaces\[0\]\.queues: expected one of the keys/, 'a TAP has no queues key');
  t.throws(() => parseConfig({ interfaces: [{ type: 'af_xdp', device: 'eth1', queues: 2 }] }, 2), /^interfaces\[0\]\.queues: expected one of the keys/, 'an AF_XDP port has no queues key (one socket per device queue: `queue`)');
});

t.test('AF_XDP uplink ports (issue 22): parsed, defaults, errors named, and round-tripped', async (t) => {
  const { interfaceToRaw } = await import('../src/main/config');
  const c = parseConfig({ interfaces: [{ name: 'vm1', socket: '/tmp/a.sock' }, { type: 'af_xdp', device: 'eth1', queue: 0 }] }, 2);
  const p = c.interfaces[1];
  t.same([p.type, p.name, p.device, p.queue, p.frameSize, p.frames], ['af_xdp', 'eth1', 'eth1', 0, 2048, 4096], 'named after its device; queue 0; 4096 UMEM frames of 2048 bytes');
  t.same(interfaceToRaw(p), { type: 'af_xdp', device: 'eth1', queue: 0 }, 'the config form is minimal (the queue always written)');
  t.equal(parseConfig({ interfaces: [{ type: 'af_xdp', device: 'eth1' }] }, 2).interfaces[0].queue, 0, 'queue defaults to 0');
  const named = parseConfig({ interfaces: [{ type: 'af_xdp', device: 'eth1', queue: 3, name: 'wire', frameSize: 4096, frames: 64, mtu: 1500 }] }, 2).interfaces[0];
  t.same(interfaceToRaw(named), { type: 'af_xdp', device: 'eth1', queue: 3, name: 'wire', frameSize: 4096, frames: 64, mtu: 1500 }, 'queue, name, frameSize, frames and mtu round-trip');
  t.same(parseConfig({ interfaces: [interfaceToRaw(named)] }, 2).interfaces[0], named, 'and parse back the same');
  const bad: Array<[string, unknown, RegExp]> = [
    ['no device', { type: 'af_xdp', queue: 0 }, /^interfaces\[0\]\.device: expected a non-empty string/],
    ['a negative queue', { type: 'af_xdp', device: 'eth1', queue: -1 }, /^interfaces\[0\]\.queue: expected an integer 0\.\.1023/],
    ['a frame size over a page', { type: 'af_xdp', device: 'eth1', frameSize: 8192 }, /^interfaces\[0\]\.frameSize: expected an integer 2048\.\.4096/],
    ['too few frames', { type: 'af_xdp', device: 'eth1', frames: 8 }, /^interfaces\[0\]\.frames: expected an integer 16\.\.65536/],
    ['a socket', { type: 'af_xdp', device: 'eth1', socket: '/tmp/x' }, /^interfaces\[0\]\.socket: expected one of the keys/],
    ['a queue on af_packet', { type: 'af_packet', device: 'eth1', queue: 1 }, /^interfaces\[0\]\.queue: expected one of the keys/],
  ];
  for (const [what, itf, re] of bad) t.throws(() => parseConfig({ interfaces: [itf] }, 2), re, what);
  t.throws(() => parseConfig({ interfaces: [{ type: 'af_packet', device: 'eth1' }, { type: 'af_xdp', device: 'eth1', name: 'x' }] }, 2), /^interfaces\[1\]\.device: expected a network device used by one uplink port only/, 'one device, one uplink port (one XDP program per device)');
  const { checkSchema } = await import('../src/main/config');
  t.doesNotThrow(() => checkSchema({ interfaces: [{ type: 'af_xdp', device: 'eth1', queue: 2, frameSize: 4096, frames: 64, mtu: 1500 }] }), 'the schema takes an af_xdp port');
  t.throws(() => checkSchema({ interfaces: [{ type: 'af_xdp', device: 'eth1', frameSize: 8192 }] }), 'the schema refuses a UMEM frame over a page');
  t.throws(() => checkSchema({ interfaces: [{ type: 'af_packet', device: 'eth1', queue: 0 }] }), 'the schema refuses a queue on af_packet');
});
