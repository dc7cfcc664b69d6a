/**
 * Issue 22: uplink ports added and removed at run time through the control API (POST
 * /v1/interfaces with a type, DELETE /v1/interfaces/NAME), while vhost-user ports (our TS
 * frontend) forward beside them. A TAP, an AF_PACKET socket and an AF_XDP socket on veths:
 * frames both ways byte-exact, bytes received == bytes sent; after DELETE the device is
 * closed (the TAP gone, no packet socket on the veth, no XDP program), nothing is forwarded
 * to or from it, the other ports still forward, and the next add takes the port number back.
 * Refusals name the key (400), the device and its cause (ENODEV, 422), a clash (409), and
 * leave nothing behind. An uplink's `vlan` is applied on the data path (config-time and
 * API-added alike). With the real process: `vhostfwd ctl add --type tap`, the state file
 * and a restart from it, a takeover carrying the added TAP, `ctl rm`.
 * Every namespace, veth and process is removed also when an assertion fails.
 */
import t, { Test } from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import Ajv2020 from 'ajv/dist/2020';
import { SyntheticGuest, frame, macOf } from '../src/frontend/guest';
import { parseConfig } from '../src/main/config';
import { Forwarder } from '../src/main/forwarder';
import { QueueStats } from '../src/main/stats';
import { startControl } from '../src/main/control/server';
import { api } from '../src/ctl';
import { NetNs, canUseNetns, linkExists, run, vethPair } from '../kit/peers/netns';
import { VhostfwdProc } from '../kit/vhostfwd-proc';
import { tmpDir, waitUntil } from '../kit/env';
import { native } from '../src/native';
import { assertFlows, pump } from './helpers/traffic';

const why = canUseNetns();
if (why) t.plan(0, `uplink API tests need root, ip netns and python3: ${why}`);

const tag = `${process.pid % 100000}`;
const ETH_TEST = 0x88b5;
const SIZES = [60, 64, 65, 128, 255, 256, 1000, 1500, 1514];
const CLI = path.join(__dirname, '..', 'src', 'cli.js');
const bytes = (fs: readonly Uint8Array[]): number => fs.reduce((n, f) => n + f.length, 0);
const q = (st: QueueStats[], iface: string, dir: 'rx' | 'tx'): QueueStats | undefined => st.find((s) => s.iface === iface && s.dir === dir);

const doc = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'schema', 'control-api.openapi.json'), 'utf8')) as Record<string, unknown>;
const ajv = new Ajv2020({ strict: false, allErrors: true });
ajv.addSchema({ ...doc, $id: 'api' });
/** null when `v` is valid against the OpenAPI document's component `name`, else why not */
function valid(name: string, v: unknown): string | null {
  const check = ajv.getSchema(`api#/components/schemas/${name}`);
  if (!check) return `no schema ${name}`;
  return check(v) ? null : ajv.errorsText(check.errors);
}

/** Frames of EtherType 0x88b5 a guest received on queue 0 until `n` came or `ms` passed. */
async function guestFrames(g: SyntheticGuest, n: number, ms: number): Promise<Buffer[]> {
  const got: Buffer[] = [];
  const end = Date.now() + ms;
  while (got.length < n && Date.now() < end) {
    for (const p of g.receive(0)) if (p.data[12] === 0x88 && p.data[13] === 0xb5) got.push(Buffer.from(p.data));
    await sleep(5);
  }
  return got;
}

/** Throw away what a guest received so far (floods of earlier steps), for `ms`. */
async function drain(g: SyntheticGuest, ms = 200): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    g.receive(0);
    await sleep(10);
  }
}

function sameFrames(t: Test, got: Buffer[], sent: Uint8Array[], what: string): void {
  t.equal(got.length, sent.length, `${what}: ${sent.length} frames arrived`);
  t.equal(bytes(got), bytes(sent), `${what}: bytes received == bytes sent (${bytes(sent)})`);
  let bad = 0;
  for (let i = 0; i < Math.min(got.length, sent.length); i++) if (Buffer.compare(got[i], Buffer.from(sent[i])) !== 0) bad++;
  t.equal(bad, 0, `${what}: every frame byte-exact and in order`);
}

/** Packet sockets of this namespace bound to `dev` (/proc/net/packet's Iface column is the ifindex). */
function packetSocketsOn(dev: string): number {
  const ifindex = fs.readFileSync(`/sys/class/net/${dev}/ifindex`, 'utf8').trim();
  return fs.readFileSync('/proc/net/packet', 'utf8').split('\n').slice(1).filter((l) => l.trim().split(/\s+/)[4] === ifindex).length;
}

/** the XDP program on a device, as ip link shows it ("prog/xdp" in driver mode, "xdpgeneric" in generic) */
const xdpOn = (dev: string): boolean => /\bxdp/.test(run('ip', ['link', 'show', 'dev', dev]));

/**
 * Capture on `dev` in namespace `ns` with the 802.1Q tag as it was on the wire: the receive
 * path takes a tag out of the frame into the packet's metadata (no 8021q module needed for
 * that), so the tag is read back from PACKET_AUXDATA and put back in place. Up to `count`
 * frames whose inner EtherType is 0x88b5, for at most `ms`.
 */
const PY_CAPTURE_TAGGED = `
import socket, struct, sys, time, select
dev, count, ms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((dev, 3))
s.setsockopt(263, 8, 1)  # SOL_PACKET, PACKET_AUXDATA
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
    data, anc, _, addr = s.recvmsg(65536, 64)
    if addr[2] == socket.PACKET_OUTGOING:
        continue
    for level, kind, val in anc:
        if level == 263 and kind == 8:
            status, _, _, _, _, tci, tpid = struct.unpack("IIIHHHH", val[:20])
            if status & 0x10:
                data = data[:12] + struct.pack("!HH", tpid or 0x8100, tci) + data[12:]
    et = data[12:14] if data[12:14] not in (b"\\x81\\x00", b"\\x88\\xa8") else data[16:18]
    if et != b"\\x88\\xb5":
        continue
    print(data.hex(), flush=True)
    got += 1
`;

async function captureTagged(ns: NetNs, dev: string, count: number, ms: number): Promise<{ frames: Promise<Buffer[]> }> {
  const p = spawn('ip', ['netns', 'exec', ns.name, 'python3', '-c', PY_CAPTURE_TAGGED, dev, String(count), String(ms)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const killer = setTimeout(() => p.kill('SIGKILL'), ms + 10000);
  const exited = new Promise<void>((resolve) => p.on('exit', () => { clearTimeout(killer); resolve(); }));
  await new Promise<void>((resolve, reject) => {
    const late = setTimeout(() => reject(new Error(`capture on ${dev} not ready in 10 s`)), 10000);
    p.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.startsWith('ready\n')) {
        clearTimeout(late);
        resolve();
      }
    });
    void exited.then(() => {
      clearTimeout(late);
      reject(new Error(`capture on ${dev} exited early`));
    });
  });
  return { frames: exited.then(() => out.split('\n').slice(1).filter((l) => /^[0-9a-f]+$/.test(l)).map((l) => Buffer.from(l, 'hex'))) };
}

/** `f` with an 802.1Q tag of VID `vid` after its MAC addresses. */
function tagged(f: Uint8Array, vid: number): Uint8Array {
  const o = new Uint8Array(f.length + 4);
  o.set(f.subarray(0, 12), 0);
  o.set([0x81, 0x00, vid >> 8, vid & 0xff], 12);
  o.set(f.subarray(12), 16);
  return o;
}

/** A forwarder from `raw` (guest ports named in `guests`), its control API, and the guests connected. */
async function setup(t: Test, raw: (dir: string) => Record<string, unknown>, guests: string[]): Promise<{ fwd: Forwarder; sock: string; g: Record<string, SyntheticGuest> }> {
  const dir = tmpDir('vhostfwd-upapi-');
  const fwd = new Forwarder(parseConfig({ ...raw(dir), control: false }, os.cpus().length));
  const g: Record<string, SyntheticGuest> = {};
  let ctl: Awaited<ReturnType<typeof startControl>> | null = null;
  t.teardown(async () => {
    for (const x of Object.values(g)) x.close();
    await ctl?.close();
    await fwd.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await fwd.start();
  const sock = path.join(dir, 'control.sock');
  ctl = await startControl(fwd, { socket: sock, socketDir: null, version: 'test' });
  for (const [k, n] of guests.entries()) g[n] = await SyntheticGuest.start({ socket: path.join(dir, `${n}.sock`), mac: macOf(k + 1), memSize: 4 << 20 });
  return { fwd, sock, g };
}

type Err = { error: { code: string; message: string; field?: string } };

t.test("the OpenAPI document's UplinkSpec takes the config's uplink entries and refuses what the parser refuses", async (t) => {
  const good = [{ type: 'tap', name: 'vf0' }, { type: 'tap', name: 'vf0', mtu: 9000, offloads: false, vlan: { mode: 'access', tag: 10 } }, { type: 'af_packet', device: 'eth1' }, { type: 'af_packet', device: 'eth1', name: 'up1', frameSize: 131072, frames: 64, vlan: { mode: 'trunk', allowed: [10, 20], native: 5 } }, { type: 'af_xdp', device: 'eth1', queue: 3, frameSize: 4096, frames: 64 }];
  for (const v of good) {
    t.equal(valid('UplinkSpec', v), null, `UplinkSpec takes ${JSON.stringify(v)}`);
    t.doesNotThrow(() => parseConfig({ interfaces: [v], forwarding: { mode: 'bridge' }, control: false }, 2), 'and so does the config parser');
  }
  const bad = [{ type: 'tap', name: 'vf0', colour: 'red' }, { type: 'tap', device: 'vf0' }, { type: 'af_packet' }, { type: 'af_packet', device: 'eth1', queue: 0 }, { type: 'af_xdp', device: 'eth1', frameSize: 8192 }, { type: 'tap', name: 'a-very-long-device-name' }];
  for (const v of bad) {
    t.not(valid('UplinkSpec', v), null, `UplinkSpec refuses ${JSON.stringify(v)}`);
    t.throws(() => parseConfig({ interfaces: [v], forwarding: { mode: 'bridge' }, control: false }, 2), 'and so does the config parser');
  }
});

t.test('TAP added through the API (xconnect): frames both ways; DELETE: the TAP gone, a and b still forward, the port number reused; refusals', async (t) => {
  const tap = `vua${tag}`;
  const tap2 = `vub${tag}`;
  const ns = new NetNs(`vhf-${tap}`);
  t.teardown(() => ns.remove());
  const { fwd, sock, g } = await setup(t, (dir) => ({ interfaces: ['a', 'b', 'c'].map((n) => ({ name: n, socket: path.join(dir, `${n}.sock`) })), forwarding: { mode: 'xconnect', pairs: [['a', 'b']] } }), ['a', 'b', 'c']);
  assertFlows(t, await pump(g.a, g.b, 500, [60, 1514], { deadlineMs: 20000 }), 500, 'a <-> b before');

  const add = await api(sock, 'POST', '/v1/interfaces', { type: 'tap', name: tap });
  t.equal(add.status, 201, `the TAP is added (${JSON.stringify(add.body).slice(0, 300)})`);
  t.equal(valid('UplinkInfo', add.body), null, 'the reply is a valid UplinkInfo');
  t.match(add.body, { name: tap, port: 3, type: 'tap', device: tap, running: true, failed: null, spec: { type: 'tap', name: tap } }, 'running at port 3 when the reply arrives');
  t.ok(linkExists(tap), 'the TAP device exists');
  ns.adopt(tap, '10.80.0.1/24');
  const list = await api(sock, 'GET', '/v1/interfaces');
  t.equal(valid('InterfaceList', list.body), null, 'the list is valid against InterfaceList');
  t.same((list.body as { uplinks: Array<Record<string, unknown>> }).uplinks.map((u) => [u.name, u.type, u.running]), [[tap, 'tap', true]], 'list shows it');
  const show = await api(sock, 'GET', `/v1/interfaces/${tap}`);
  t.equal(valid('UplinkInfo', show.body), null, 'show: a valid UplinkInfo');
  t.same(fwd.state().interfaces.map((i) => i.name), ['a', 'b', 'c', tap], 'the state (the state file, a takeover) holds it');

  t.equal((await api(sock, 'POST', '/v1/forwarding/pairs', { a: 'c', b: tap })).status, 200, 'paired with c');
  const out = SIZES.map((s, i) => frame(macOf(9), macOf(3), s, i));
  const cap = await ns.capture(tap, ETH_TEST, out.length, 5000);
  t.equal(g.c.send(0, out), out.length, 'c posted every frame');
  sameFrames(t, await cap.frames, out, 'c -> TAP');
  const back = SIZES.map((s, i) => frame(macOf(3), macOf(9), s, 100 + i));
  ns.send(tap, back);
  sameFrames(t, await guestFrames(g.c, back.length, 5000), back, 'TAP -> c');
  const st = fwd.stats();
  t.equal(q(st, tap, 'rx')?.bytes, bytes(out), 'the TAP rx byte counter: what c sent');
  t.equal(q(st, tap, 'tx')?.bytes, bytes(back), 'the TAP tx byte counter: what the namespace sent');

  // refusals: nothing changes
  const refusals: Array<[string, unknown, number, string, RegExp]> = [
    ['an unknown key', { type: 'tap', name: 'vux0', colour: 'red' }, 400, 'colour', /colour/],
    ['af_packet without a device', { type: 'af_packet' }, 400, 'device', /device/],
    ['an af_xdp queue out of range', { type: 'af_xdp', device: 'lo', queue: 5000 }, 400, 'queue', /queue/],
    ['a TAP name too long for a device', { type: 'tap', name: 'a-very-long-device-name' }, 400, 'name', /name/],
    ['vlan in xconnect mode', { type: 'tap', name: 'vux1', vlan: { mode: 'access', tag: 10 } }, 400, 'vlan', /xconnect/],
    ['a device that does not exist', { type: 'af_packet', device: `nodev${tag}` }, 422, 'device', new RegExp(`nodev${tag}: no such network device .*ENODEV`)],
    ['the name of a guest port', { type: 'af_packet', device: 'lo', name: 'a' }, 409, 'name', /interface a exists/],
    ['the TAP again', { type: 'tap', name: tap }, 409, 'name', new RegExp(`interface ${tap} exists`)],
    ['its device under another name', { type: 'af_packet', device: tap, name: 'other' }, 409, 'device', new RegExp(`network device ${tap} is used by uplink ${tap}`)],
  ];
  for (const [what, body, status, field, msg] of refusals) {
    const r = await api(sock, 'POST', '/v1/interfaces', body);
    t.equal(r.status, status, `${what}: ${status}`);
    t.equal(valid('Error', r.body), null, `${what}: a valid Error`);
    t.match((r.body as Err).error, { field, message: msg }, `${what}: field ${field}, ${(r.body as Err).error?.message}`);
  }
  // a TAP another holder has open (a single-queue TAP takes one fd): the open fails with
  // EBUSY, a conflict, and the port is undone
  const held = `vuh${tag}`;
  const heldFd = native.tapOpen(held, 0).fd;
  t.teardown(() => native.close(heldFd));
  const busy = await api(sock, 'POST', '/v1/interfaces', { type: 'tap', name: held });
  t.equal(busy.status, 409, 'a TAP held by another fd: 409');
  t.equal(valid('Error', busy.body), null, 'a valid Error');
  t.match((busy.body as Err).error, { code: 'Conflict', field: 'name', message: new RegExp(`${held}: the device is held by another process .*EBUSY`) }, `naming the device and the cause: ${(busy.body as Err).error?.message}`);
  t.same(fwd.state().interfaces.map((i) => i.name), ['a', 'b', 'c', tap], 'no refusal left a port behind');
  t.same(Object.values(fwd.portMap()).sort(), [0, 1, 2, 3], 'nor took a port number');

  const rm = await api(sock, 'DELETE', `/v1/interfaces/${tap}`);
  t.equal(rm.status, 200, 'DELETE: 200');
  t.equal(valid('Removed', rm.body), null, 'a valid Removed');
  await waitUntil(() => { try { ns.exec('ip', 'link', 'show', tap); return false; } catch { return true; } }, 5000, 'the TAP to go').catch(() => undefined);
  t.throws(() => ns.exec('ip', 'link', 'show', tap), 'its fd closed: the kernel deleted the TAP');
  t.equal(fwd.uplink(tap), undefined, 'no port of that name');
  t.same(fwd.forwardingState, { mode: 'xconnect', pairs: [['a', 'b']] }, 'its pair went with it');
  t.notOk(fwd.state().interfaces.some((i) => i.name === tap), 'nor in the state');
  t.equal((await api(sock, 'GET', `/v1/interfaces/${tap}`)).status, 404, 'show: 404');
  await drain(g.a);
  await drain(g.b);
  assertFlows(t, await pump(g.a, g.b, 500, [60, 1514], { deadlineMs: 20000 }), 500, 'a <-> b after the removal');
  t.equal((await api(sock, 'DELETE', `/v1/interfaces/${tap}`)).status, 404, 'DELETE again: 404');

  const again = await api(sock, 'POST', '/v1/interfaces', { type: 'tap', name: tap2 });
  t.equal(again.status, 201, 'another TAP is added');
  t.equal((again.body as { port: number }).port, 3, 'it takes the freed port number 3');
  t.equal((await api(sock, 'DELETE', `/v1/interfaces/${tap2}`)).status, 200, 'and is removed');
  await waitUntil(() => !linkExists(tap2), 5000, 'the second TAP to go').catch(() => undefined);
  t.notOk(linkExists(tap2), 'the second TAP is gone too');
});

t.test('AF_PACKET added through the API (bridge): frames both ways; DELETE: no socket on the veth, nothing forwarded to or from it; added again at the same port', async (t) => {
  const here = `vpa${tag}`;
  const there = `vpb${tag}`;
  const ns = vethPair(t, here, there, { addr: '10.81.0.1/24', quiet: true });
  const { fwd, sock, g } = await setup(t, (dir) => ({ interfaces: ['a', 'b'].map((n) => ({ name: n, socket: path.join(dir, `${n}.sock`) })), forwarding: { mode: 'bridge' } }), ['a', 'b']);
  const before = packetSocketsOn(here);
  const add = await api(sock, 'POST', '/v1/interfaces', { type: 'af_packet', device: here, frames: 64 });
  t.equal(add.status, 201, `added (${JSON.stringify(add.body).slice(0, 300)})`);
  t.equal(valid('UplinkInfo', add.body), null, 'a valid UplinkInfo');
  t.match(add.body, { name: here, port: 2, type: 'af_packet', running: true }, 'running at port 2');
  t.equal(packetSocketsOn(here), before + 1, 'one packet socket on the veth');

  // the namespace's MAC (9) is learned on the uplink by its first frame, then a's frames to it go there only
  const round = async (k: number): Promise<void> => {
    const hello = [frame(macOf(1), macOf(9), 100, 10_000 * k)];
    ns.send(there, hello);
    sameFrames(t, await guestFrames(g.a, 1, 5000), hello, `round ${k}: the namespace -> a (flooded, its MAC learned)`);
    const out = SIZES.map((s, i) => frame(macOf(9), macOf(1), s, 10_000 * k + i));
    const cap = await ns.capture(there, ETH_TEST, out.length, 5000);
    t.equal(g.a.send(0, out), out.length, `round ${k}: a posted every frame`);
    sameFrames(t, await cap.frames, out, `round ${k}: a -> AF_PACKET -> the namespace`);
    const back = SIZES.map((s, i) => frame(macOf(1), macOf(9), s, 10_000 * k + 100 + i));
    ns.send(there, back);
    sameFrames(t, await guestFrames(g.a, back.length, 5000), back, `round ${k}: the namespace -> AF_PACKET -> a`);
  };
  await round(1);
  const st = fwd.stats();
  t.equal(q(st, here, 'rx')?.bytes, bytes(SIZES.map((s) => new Uint8Array(s))), 'the port rx byte counter: what a sent it');

  t.equal((await api(sock, 'DELETE', `/v1/interfaces/${here}`)).status, 200, 'DELETE: 200');
  t.equal(packetSocketsOn(here), before, 'its packet socket is closed');
  await drain(g.b); // the first round's floods
  // nothing to the veth (the MAC learned on the port is forgotten: a's frame floods to b only) ...
  const cap = await ns.capture(there, ETH_TEST, 1, 1000);
  g.a.send(0, [frame(macOf(9), macOf(1), 200, 1)]);
  t.equal((await cap.frames).length, 0, 'a frame from a no longer reaches the veth');
  t.equal((await guestFrames(g.b, 1, 2000)).length, 1, 'it floods to b (the port is gone from the bridge)');
  // ... nor from it
  ns.send(there, [frame(macOf(1), macOf(9), 200, 2)]);
  t.equal((await guestFrames(g.a, 1, 1000)).length, 0, 'a frame on the veth no longer reaches a');
  await drain(g.a);
  await drain(g.b);
  assertFlows(t, await pump(g.a, g.b, 500, [60, 1514], { deadlineMs: 20000 }), 500, 'a <-> b after the removal');

  const again = await api(sock, 'POST', '/v1/interfaces', { type: 'af_packet', device: here, frames: 64 });
  t.equal(again.status, 201, 'the same device is added again');
  t.equal((again.body as { port: number }).port, 2, 'at the freed port number 2');
  await drain(g.a);
  await round(2);
  t.equal((await api(sock, 'DELETE', `/v1/interfaces/${here}`)).status, 200, 'and removed');
  t.equal(packetSocketsOn(here), before, 'its packet socket is closed');

  // with two queues (PACKET_FANOUT): two sockets, a worker each, the same frames both ways
  const two = await api(sock, 'POST', '/v1/interfaces', { type: 'af_packet', device: here, frames: 64, queues: 2 });
  t.equal(two.status, 201, `added with queues: 2 (${JSON.stringify(two.body).slice(0, 200)})`);
  t.equal(valid('UplinkInfo', two.body), null, 'a valid UplinkInfo');
  t.equal((two.body as { workers: number[] }).workers.length, 2, 'a worker for each queue');
  t.equal((two.body as { queues: unknown[] }).queues.length, 4, 'both queues\' rx and tx counters');
  t.equal(packetSocketsOn(here), before + 2, 'two packet sockets on the veth');
  await drain(g.a);
  await round(3);
  t.equal((await api(sock, 'DELETE', `/v1/interfaces/${here}`)).status, 200, 'removed');
  t.equal(packetSocketsOn(here), before, 'both packet sockets closed');
});

t.test('AF_XDP added through the API (xconnect): frames both ways; DELETE: the program leaves the device, the queue binds again', async (t) => {
  const here = `vxa${tag}`;
  const there = `vxb${tag}`;
  const ns = vethPair(t, here, there, { addr: '10.81.0.1/24', quiet: true });
  const { fwd, sock, g } = await setup(t, (dir) => ({ interfaces: ['a', 'b', 'c'].map((n) => ({ name: n, socket: path.join(dir, `${n}.sock`) })), forwarding: { mode: 'xconnect', pairs: [['a', 'b']] } }), ['a', 'b', 'c']);
  const round = async (k: number): Promise<void> => {
    const add = await api(sock, 'POST', '/v1/interfaces', { type: 'af_xdp', device: here, queue: 0, frames: 64 });
    t.equal(add.status, 201, `round ${k}: added (${JSON.stringify(add.body).slice(0, 300)})`);
    t.equal(valid('UplinkInfo', add.body), null, `round ${k}: a valid UplinkInfo`);
    t.match(add.body, { name: here, port: 3, type: 'af_xdp', running: true, spec: { type: 'af_xdp', device: here, queue: 0, frames: 64 } }, `round ${k}: running at port 3`);
    t.ok(xdpOn(here), `round ${k}: an XDP program is on the device`);
    t.equal((await api(sock, 'POST', '/v1/forwarding/pairs', { a: 'c', b: here })).status, 200, `round ${k}: paired with c`);
    const out = SIZES.map((s, i) => frame(macOf(9), macOf(3), s, 1000 * k + i));
    const cap = await ns.capture(there, ETH_TEST, out.length, 5000);
    t.equal(g.c.send(0, out), out.length, `round ${k}: c posted every frame`);
    sameFrames(t, await cap.frames, out, `round ${k}: c -> AF_XDP -> the namespace`);
    const back = SIZES.map((s, i) => frame(macOf(3), macOf(9), s, 1000 * k + 100 + i));
    ns.send(there, back);
    sameFrames(t, await guestFrames(g.c, back.length, 5000), back, `round ${k}: the namespace -> AF_XDP -> c`);
    t.equal(q(fwd.stats(), here, 'tx')?.bytes, bytes(back), `round ${k}: the port's counters start afresh: tx bytes == what the namespace sent`);
    t.equal((await api(sock, 'DELETE', `/v1/interfaces/${here}`)).status, 200, `round ${k}: DELETE: 200`);
    t.notOk(xdpOn(here), `round ${k}: no XDP program left on the device`);
    ns.send(there, [frame(macOf(3), macOf(9), 100, 1000 * k + 999)]);
    t.equal((await guestFrames(g.c, 1, 1000)).length, 0, `round ${k}: nothing from the veth reaches c any more`);
    await drain(g.a);
    await drain(g.b);
    assertFlows(t, await pump(g.a, g.b, 300, [60, 1514], { deadlineMs: 20000 }), 300, `round ${k}: a <-> b after the removal`);
  };
  // the second add binds the same queue again: the first socket (and its program) really went
  await round(1);
  await round(2);
});

t.test("an uplink's vlan is applied on the data path: a trunk uplink carries a's VLAN 10 and b's VLAN 20 tagged (config-time and API-added; TAP, AF_PACKET, AF_XDP)", async (t) => {
  const cases: Array<['config' | 'api', 'tap' | 'af_packet' | 'af_xdp']> = [['config', 'tap'], ['api', 'tap'], ['config', 'af_packet'], ['api', 'af_packet'], ['api', 'af_xdp']];
  for (const [how, type] of cases) {
    await t.test(`${how}: ${type}`, async (t) => {
      const here = `vv${how[0]}${type === 'tap' ? 't' : type === 'af_packet' ? 'p' : 'x'}${tag}`;
      // the device in the namespace where frames are sent and captured: the TAP itself, or the veth's peer
      let ns: NetNs;
      let there = here;
      if (type === 'tap') {
        ns = new NetNs(`vhf-${here}`);
        t.teardown(() => ns.remove());
      } else {
        there = `vw${how[0]}${type === 'af_packet' ? 'p' : 'x'}${tag}`;
        ns = vethPair(t, here, there, { addr: '10.81.0.1/24', quiet: true });
      }
      const vlan = { mode: 'trunk', allowed: [10, 20] };
      const spec = type === 'tap' ? { type, name: here, vlan } : { type, device: here, vlan, frames: 64 };
      const { fwd, sock, g } = await setup(
        t,
        (dir) => ({
          interfaces: [
            { name: 'a', socket: path.join(dir, 'a.sock'), vlan: { mode: 'access', tag: 10 } },
            { name: 'b', socket: path.join(dir, 'b.sock'), vlan: { mode: 'access', tag: 20 } },
            ...(how === 'config' ? [spec] : []),
          ],
          forwarding: { mode: 'bridge' },
        }),
        ['a', 'b'],
      );
      if (how === 'api') t.equal((await api(sock, 'POST', '/v1/interfaces', spec)).status, 201, 'the port is added with its vlan');
      t.match((await api(sock, 'GET', `/v1/interfaces/${here}`)).body, { spec: { vlan } }, 'show: its vlan');
      if (type === 'tap') ns.adopt(here);
      const out = SIZES.map((s, i) => frame(macOf(9), macOf(1), s, i));
      const cap = await captureTagged(ns, there, out.length, 4000);
      t.equal(g.a.send(0, out), out.length, 'a (access 10) posted every frame');
      sameFrames(t, await cap.frames, out.map((f) => tagged(f, 10)), `a -> ${type}: tagged with VID 10 on the wire`);
      // a frame of VLAN 20 from the device: to b (access 20) untagged, never to a
      const back = SIZES.map((s, i) => frame(macOf(2), macOf(9), s, 100 + i));
      ns.send(there, back.map((f) => tagged(f, 20)));
      sameFrames(t, await guestFrames(g.b, back.length, 4000), back, `${type} (tagged 20) -> b (access 20), untagged`);
      // an untagged frame from the trunk (no native VLAN): dropped, counted
      ns.send(there, [frame(macOf(1), macOf(9), 100, 999)]);
      await waitUntil(() => (q(fwd.stats(), here, 'tx')?.dropVlan ?? 0) >= 1, 3000, 'the untagged frame counted').catch(() => undefined);
      t.equal(q(fwd.stats(), here, 'tx')?.dropVlan, 1, 'an untagged frame from the trunk (no native VLAN) is dropped and counted');
      t.equal((await guestFrames(g.a, 1, 500)).length, 0, 'nothing of VLAN 20, nothing untagged reaches a');
    });
  }
});

/** `vhostfwd ctl ARGS` with a deadline: its exit code and output. */
function ctl(control: string, ...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, 'ctl', '--control', control, ...args], { encoding: 'utf8', timeout: 20000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

t.test('the real process: `ctl add --type tap`, saved in the state file, carried by a takeover, back after a restart; `ctl rm`', async (t) => {
  const tap = `vur${tag}`;
  const dir = tmpDir('vhostfwd-upapi-run-');
  const sock = (n: string): string => path.join(dir, `${n}.sock`);
  const control = sock('control');
  const state = path.join(dir, 'state.json');
  fs.writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ interfaces: [{ name: 'a', socket: sock('a') }], forwarding: { mode: 'bridge' }, control: { socket: control } }));
  const args = ['--config', path.join(dir, 'cfg.json'), '--state', state, '--handover', sock('handover')];
  const procs: VhostfwdProc[] = [];
  const ns = new NetNs(`vhf-${tap}`);
  let a: SyntheticGuest | null = null;
  t.teardown(async () => {
    a?.close();
    for (const p of procs) await p.kill();
    ns.remove();
    try {
      run('ip', ['link', 'del', tap]);
    } catch {
      // gone with its fd
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const first = VhostfwdProc.start(args);
  procs.push(first);
  await first.waitFor('takeovers accepted');
  const add = ctl(control, 'add', '--type', 'tap', '--name', tap);
  t.equal(add.status, 0, `ctl add --type tap exits 0 (${add.stderr})`);
  t.match(add.stdout, new RegExp(`^type:\\s+tap$`, 'm'), 'and prints the port');
  const bad = ctl(control, 'add', '--type', 'af_packet', '--device', `nodev${tag}`);
  t.equal(bad.status, 2, 'ctl add of a missing device exits 2');
  t.match(bad.stderr, /no such network device .*ENODEV.*\(field device\)/, `naming the cause and the field: ${bad.stderr.trim()}`);
  const saved = JSON.parse(fs.readFileSync(state, 'utf8')) as { interfaces: unknown[] };
  t.same(saved.interfaces, [{ name: 'a', socket: sock('a'), mode: 'server', queues: 1 }, { type: 'tap', name: tap }], 'the state file holds the TAP in the config form');
  ns.adopt(tap, '10.82.0.1/24');
  const ifindex = ns.exec('cat', `/sys/class/net/${tap}/ifindex`).trim();
  a = await SyntheticGuest.start({ socket: sock('a'), mac: macOf(1) });
  const round = async (k: number): Promise<void> => {
    const back = [60, 1514, 256].map((s, i) => frame(macOf(1), macOf(9), s, 1000 * k + i));
    ns.send(tap, back);
    sameFrames(t, await guestFrames(a as SyntheticGuest, back.length, 5000), back, `round ${k}: TAP -> a`);
    const out = [60, 1514, 256].map((s, i) => frame(macOf(9), macOf(1), s, 1000 * k + 100 + i));
    const cap = await ns.capture(tap, ETH_TEST, out.length, 5000);
    a?.send(0, out);
    sameFrames(t, await cap.frames, out, `round ${k}: a -> TAP`);
  };
  await round(0);

  const next = VhostfwdProc.start([...args, '--takeover']);
  procs.push(next);
  await next.waitFor('takeover step 5/5: polling');
  t.same(await first.waitExit(), { code: 0, signal: null }, 'the old process exited 0 after the takeover');
  t.equal(ns.exec('cat', `/sys/class/net/${tap}/ifindex`).trim(), ifindex, 'the same TAP (ifindex) in its namespace: the added TAP was handed over');
  await round(1);
  t.equal(a.client.closed, null, 'the guest never saw its connection close');

  // a restart from the state file: the TAP is made again (a new device: the old one went with its fd)
  a.close();
  a = null;
  await next.kill();
  await waitUntil(() => { try { ns.exec('ip', 'link', 'show', tap); return false; } catch { return true; } }, 5000, 'the TAP to go with the process').catch(() => undefined);
  const third = VhostfwdProc.start(args);
  procs.push(third);
  await third.waitFor('tap port up');
  t.ok(linkExists(tap), 'after a restart the TAP is back, from the state file');
  const list = ctl(control, 'list', '--json');
  t.same((JSON.parse(list.stdout) as { uplinks: Array<{ name: string; running: boolean }> }).uplinks.map((u) => [u.name, u.running]), [[tap, true]], 'ctl list shows it running');
  const rm = ctl(control, 'rm', tap);
  t.equal(rm.status, 0, `ctl rm exits 0 (${rm.stderr})`);
  await waitUntil(() => !linkExists(tap), 5000, 'the TAP to go').catch(() => undefined);
  t.notOk(linkExists(tap), 'the TAP is gone');
  t.same((JSON.parse(fs.readFileSync(state, 'utf8')) as { interfaces: Array<{ name: string }> }).interfaces.map((i) => i.name), ['a'], 'and gone from the state file');
});
