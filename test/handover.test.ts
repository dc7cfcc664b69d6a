/**
 * Issue 25: hitless restart. `vhostfwd run --takeover` takes the dataplane over from the
 * running process (the real CLI, two child processes) while synthetic frontends keep
 * traffic going through it: every frame sent arrives exactly once, byte-exact and in order;
 * the frontends' connections are never closed and they send no vhost-user message; the
 * counters go on from where they were; the bridge's MAC table, ports added at run time and
 * a dirty log in progress come along.
 */
import t, { Test } from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import readline from 'node:readline';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { SyntheticGuest, macOf } from '../src/frontend/guest';
import { VhostUserClient } from '../src/frontend/vhost-user-client';
import { native } from '../src/native';
import { Traffic } from '../src/frontend/traffic';
import { api } from '../src/ctl';
import { QueueStats } from '../src/main/stats';
import { tmpDir, waitUntil } from '../kit/env';
import { VhostfwdProc } from '../kit/vhostfwd-proc';

interface Setup {
  dir: string;
  sock: (n: string) => string;
  control: string;
  args: string[];
  procs: VhostfwdProc[];
  guests: SyntheticGuest[];
}

/** A config in a temp dir and the teardown that leaves no process, guest or socket behind. */
function setup(t: Test, cfg: (sock: (n: string) => string) => Record<string, unknown>): Setup {
  const dir = tmpDir('vhostfwd-ho-');
  const sock = (n: string): string => path.join(dir, `${n}.sock`);
  const control = sock('control');
  fs.writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ ...cfg(sock), control: { socket: control } }));
  const s: Setup = { dir, sock, control, args: ['--config', path.join(dir, 'cfg.json'), '--handover', sock('handover')], procs: [], guests: [] };
  t.teardown(async () => {
    for (const g of s.guests) g.close();
    for (const p of s.procs) await p.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return s;
}

function start(s: Setup, extra: string[] = [], env: Record<string, string> = {}): VhostfwdProc {
  const p = VhostfwdProc.start([...s.args, ...extra], env);
  s.procs.push(p);
  return p;
}

/** A successor takes over from `cur`: resolves once it polls, takes handovers itself and `cur` exited 0. */
async function handover(t: Test, s: Setup, cur: VhostfwdProc): Promise<{ next: VhostfwdProc; blackoutMs: number }> {
  const next = start(s, ['--takeover']);
  const polling = await next.waitFor('takeover step 5/5: polling');
  await next.waitFor('takeovers accepted');
  const ex = await cur.waitExit();
  t.same(ex, { code: 0, signal: null }, `the old process ${cur.pid} exited 0 after the takeover`);
  const done = cur.lines.find((l) => l.msg === 'takeover step 5/5: the successor polls; this process exits');
  t.ok(done, 'the old process logged the successor polling');
  for (const step of ['1/5', '2/5', '3/5', '4/5']) t.ok(cur.lines.some((l) => String(l.msg).startsWith(`takeover step ${step}`)), `old side logged step ${step}`);
  return { next, blackoutMs: Number(polling.blackoutMs) };
}

async function stats(control: string): Promise<QueueStats[]> {
  const r = await api(control, 'GET', '/v1/stats');
  if (r.status !== 200) throw new Error(`GET /v1/stats: ${r.status}`);
  return (r.body as { queues: QueueStats[] }).queues;
}

function counter(st: QueueStats[], iface: string, dir: 'rx' | 'tx'): number {
  return st.filter((q) => q.iface === iface && q.dir === dir).reduce((n, q) => n + q.packets, 0);
}

/** Run traffic until both flows received `more` frames beyond what they had (bounded). */
async function flowFor(tr: Traffic, more: number, what: string): Promise<void> {
  const ab = tr.ab.received + more;
  const ba = tr.ba.received + more;
  await waitUntil(() => tr.ab.received >= ab && tr.ba.received >= ba, 30_000, `${more} more frames each way ${what}`);
}

const SIZES = [60, 1514, 256, 4000, 128, 9000, 64];

t.test('xconnect: 3 takeovers during traffic; every frame byte-exact, counters go on, no disconnect', async (t) => {
  // b in client mode: vhostfwd connected to the frontend, and the connection is handed over too
  const s = setup(t, (sock) => ({ interfaces: [{ name: 'a', socket: sock('a') }, { name: 'b', socket: sock('b'), mode: 'client' }], forwarding: { mode: 'xconnect', pairs: [['a', 'b']] } }));
  const lfd = native.listen(s.sock('b'), 4);
  t.teardown(() => native.close(lfd));
  let cur = start(s);
  await cur.waitFor('takeovers accepted');
  const a = await SyntheticGuest.start({ socket: s.sock('a'), mac: macOf(1) });
  s.guests.push(a);
  let bfd = -1;
  await waitUntil(() => (bfd = native.accept(lfd)) >= 0, 10_000, 'vhostfwd to connect to frontend b');
  const b = await SyntheticGuest.start({ socket: s.sock('b'), mac: macOf(2), client: VhostUserClient.fromFd(bfd) });
  s.guests.push(b);
  const tr = new Traffic(a, b, { sizes: SIZES, seqBaseBA: 1 << 30 });
  tr.start();
  const blackouts: number[] = [];
  try {
    await flowFor(tr, 2000, 'before the first takeover');
    for (let k = 0; k < 3; k++) {
      const before = await stats(s.control);
      const { next, blackoutMs } = await handover(t, s, cur);
      blackouts.push(blackoutMs);
      cur = next;
      await flowFor(tr, 2000, `after takeover ${k + 1}`).catch(async (e: unknown) => {
        t.comment(JSON.stringify(await stats(s.control)));
        t.comment(`flows ${JSON.stringify({ ab: [tr.ab.sent, tr.ab.received], ba: [tr.ba.sent, tr.ba.received] })}; the new process:\n${cur.tail(30)}`);
        throw e;
      });
      const after = await stats(s.control);
      t.ok(counter(after, 'a', 'tx') >= counter(before, 'a', 'tx') + 2000, `takeover ${k + 1}: a's TX counter went on (${counter(before, 'a', 'tx')} -> ${counter(after, 'a', 'tx')}), not reset`);
    }
  } finally {
    await tr.stop(10_000);
  }
  t.ok(tr.ab.sent > 8000 && tr.ba.sent > 8000, `traffic ran: ${tr.ab.sent} + ${tr.ba.sent} frames`);
  t.equal(tr.ab.received, tr.ab.sent, `A->B: received ${tr.ab.received} == sent ${tr.ab.sent}`);
  t.equal(tr.ba.received, tr.ba.sent, `B->A: received ${tr.ba.received} == sent ${tr.ba.sent}`);
  t.equal(tr.ab.mismatched + tr.ba.mismatched, 0, 'every frame byte-exact, in its position');
  t.equal(tr.ab.reordered + tr.ba.reordered, 0, 'none reordered');
  const st = await stats(s.control);
  t.equal(counter(st, 'a', 'tx'), tr.ab.sent, `a's TX counter over all 4 processes == frames a sent (${tr.ab.sent})`);
  t.equal(counter(st, 'b', 'rx'), tr.ab.received, `b's RX counter == frames b received (${tr.ab.received})`);
  t.equal(counter(st, 'b', 'tx'), tr.ba.sent, `b's TX counter == frames b sent (${tr.ba.sent})`);
  t.equal(a.client.closed, null, 'frontend a never saw its connection close');
  t.equal(b.client.closed, null, 'frontend b never saw its connection close');
  t.equal(native.accept(lfd), -1, 'no vhostfwd connected to frontend b again (its connection was handed over, client mode)');
  t.equal(a.brokenGuards().length + b.brokenGuards().length, 0, 'no write outside the posted buffers');
  t.ok(blackouts.every((ms) => Number.isFinite(ms) && ms >= 0 && ms < 1000), `blackouts ${blackouts.join(', ')} ms (each under 1 s on this shared machine)`);
  t.comment(`blackout per takeover (ms): ${blackouts.join(', ')}`);
});

t.test('bridge: MAC table, a port added at run time and a dirty log in progress carried across a takeover', async (t) => {
  const cpu1 = os.cpus().length > 1 ? 1 : 0;
  const s = setup(t, (sock) => ({
    interfaces: [{ name: 'a', socket: sock('a') }, { name: 'b', socket: sock('b') }],
    forwarding: { mode: 'bridge' },
    workers: [{ cpus: [0], queues: ['a:0', 'b:0'] }, { cpus: [cpu1], queues: [] }],
  }));
  let cur = start(s);
  await cur.waitFor('takeovers accepted');
  const add = await api(s.control, 'POST', '/v1/interfaces', { name: 'c', socket: s.sock('c') });
  t.equal(add.status, 201, 'port c added at run time');
  // placement changed at run time: a's TX ring polled by worker 1 (the config says 0)
  const move = await api(s.control, 'PUT', '/v1/interfaces/a/queues/0', { worker: 1 });
  t.equal(move.status, 200, "a's queue pair 0 moved to worker 1");
  const a = await SyntheticGuest.start({ socket: s.sock('a'), mac: macOf(1) });
  s.guests.push(a);
  const b = await SyntheticGuest.start({ socket: s.sock('b'), mac: macOf(2) });
  s.guests.push(b);
  const c = await SyntheticGuest.start({ socket: s.sock('c'), mac: macOf(3) });
  s.guests.push(c);
  let atC = 0;
  let fromC = 0;
  const tr = new Traffic(a, b, {
    sizes: SIZES,
    seqBaseBA: 1 << 30,
    onOther: (at, p) => {
      if (at === 'a' && p.data[12] === 0x08 && p.data[13] === 0x00) fromC++;
    },
  });
  // c receives whatever the bridge floods: with the MAC table carried, nothing of a<->b
  const drainC = (): void => {
    atC += c.receive(0).length;
  };
  const cTimer = setInterval(drainC, 1);
  t.teardown(() => clearInterval(cTimer));
  tr.start();
  let blackoutMs = -1;
  let logged = 0;
  let image: Uint8Array | null = null;
  try {
    await flowFor(tr, 1000, 'before logging');
    t.comment(`c got ${atC} frames flooded before a and b were learned`);
    // a migration of b is in progress: LOG_ALL, SET_LOG_BASE, ring log addresses
    await b.startLogging();
    await flowFor(tr, 1000, 'with logging on');
    atC = 0;
    const r = await handover(t, s, cur);
    cur = r.next;
    blackoutMs = r.blackoutMs;
    // from here on only the new process writes: snapshot b, clear its log
    image = Uint8Array.from(b.mem);
    new Int32Array(b.logSab as SharedArrayBuffer).fill(0);
    b.guestDirty.clear();
    await flowFor(tr, 3000, 'after the takeover');
  } finally {
    await tr.stop(10_000);
  }
  t.equal(tr.ab.received, tr.ab.sent, `A->B: received ${tr.ab.received} == sent ${tr.ab.sent}`);
  t.equal(tr.ba.received, tr.ba.sent, `B->A: received ${tr.ba.received} == sent ${tr.ba.sent}`);
  t.equal(tr.ab.mismatched + tr.ba.mismatched, 0, 'every frame byte-exact, in its position');
  // GET_VRING_BASE on b (the end of a migration): no write into b after this
  await b.stopRings();
  t.equal(atC, 0, 'c got no frame of a<->b across the takeover: the MAC table came along (an empty one floods)');

  // the dirty log: the snapshot plus the pages logged (and those the driver wrote) is b's memory
  if (image) {
    const pages = b.dirtyPages();
    logged = pages.length;
    for (const pg of new Set([...pages, ...b.guestDirty])) image.set(b.mem.subarray(pg * 4096, (pg + 1) * 4096), pg * 4096);
    let diff = 0;
    for (let k = 0; k < image.length; k++) if (image[k] !== b.mem[k]) diff++;
    const bad = new Set<number>();
    for (let k = 0; k < image.length; k++) if (image[k] !== b.mem[k]) bad.add(k >> 12);
    if (bad.size) t.comment(`pages differing: ${[...bad].slice(0, 20).join(',')}; rings at ${[0, 1].map((i) => JSON.stringify(b.ringGpa(i))).join(' ')}`);
    t.equal(diff, 0, `b's memory rebuilt from the snapshot and the ${logged} pages logged after the takeover equals live memory`);
    const backendOnly = pages.filter((p) => !b.guestDirty.has(p));
    t.ok(backendOnly.length > 0, `${backendOnly.length} pages were logged by the new process alone (the check has teeth)`);
    t.ok(pages.includes(b.ringGpa(0).used >> 12), "b's RX used ring page is logged");
  }

  // the port added at run time: listed, connected, forwarding in the new process
  const list = await api(s.control, 'GET', '/v1/interfaces');
  const names = (list.body as { interfaces: Array<{ name: string; connected: boolean }> }).interfaces;
  t.same(names.map((i) => [i.name, i.connected]), [['a', true], ['b', true], ['c', true]], 'the new process lists a, b and c (added at run time), all connected');
  const showA = await api(s.control, 'GET', '/v1/interfaces/a');
  const txA = (showA.body as { rings: Array<{ dir: string; worker: number | null; started: boolean }> }).rings.find((r) => r.dir === 'tx');
  t.same([txA?.worker, txA?.started], [1, true], "a's TX ring runs on worker 1 in the new process: the run-time placement came along");
  const f = new Uint8Array(100);
  f.set(a.mac, 0);
  f.set(c.mac, 6);
  f[12] = 0x08;
  f[13] = 0x00;
  c.send(0, [f]);
  await waitUntil(() => {
    tr.receive();
    return fromC === 1;
  }, 5000, 'the frame from c at a');
  t.equal(fromC, 1, 'a frame from c reaches a through the new process');
  const st = await stats(s.control);
  t.equal(counter(st, 'a', 'tx'), tr.ab.sent, `a's TX counter over both processes == frames a sent (${tr.ab.sent})`);
  t.equal(counter(st, 'c', 'tx'), 1, "c's TX counter: 1");
  for (const g of [a, b, c]) t.equal(g.client.closed, null, 'no frontend saw its connection close');
  t.comment(`bridge takeover blackout: ${blackoutMs} ms`);
  // the takeover freed nothing twice and left nothing: the old process is gone, the new one stops cleanly
  cur.child.kill('SIGTERM');
  t.same(await cur.waitExit(), { code: 0, signal: null }, 'the new process exits 0 on SIGTERM');
  await sleep(10);
  t.notOk(fs.existsSync(s.sock('handover')), 'its handover socket is unlinked');
});

t.test('SIGHUP (systemd ExecReload): the process starts its successor, which tells systemd MAINPID before the old one exits', async (t) => {
  const s = setup(t, (sock) => ({ interfaces: [{ name: 'a', socket: sock('a') }, { name: 'b', socket: sock('b') }], forwarding: { mode: 'xconnect', pairs: [['a', 'b']] } }));
  // systemd's notify socket, played by a python datagram listener printing each message
  const notifySock = path.join(s.dir, 'notify.sock');
  const py = spawn('python3', ['-u', '-c', 'import socket,sys\ns=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\ns.bind(sys.argv[1])\nprint("bound")\nwhile True: print(s.recv(4096).decode().replace("\\n"," "))', notifySock], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => {
    py.kill('SIGKILL');
  });
  const notes: string[] = [];
  readline.createInterface({ input: py.stdout }).on('line', (l) => notes.push(l));
  await waitUntil(() => notes.includes('bound'), 10_000, 'the notify listener');
  const old = start(s, [], { NOTIFY_SOCKET: notifySock });
  await old.waitFor('takeovers accepted');
  await waitUntil(() => notes.includes('READY=1'), 5000, 'READY=1 from the first process');
  const a = await SyntheticGuest.start({ socket: s.sock('a'), mac: macOf(1) });
  s.guests.push(a);
  const b = await SyntheticGuest.start({ socket: s.sock('b'), mac: macOf(2) });
  s.guests.push(b);
  const tr = new Traffic(a, b, { sizes: SIZES, seqBaseBA: 1 << 30 });
  tr.start();
  let succ = -1;
  try {
    await flowFor(tr, 1000, 'before SIGHUP');
    old.child.kill('SIGHUP');
    const spawned = await old.waitFor('takeover: successor started (SIGHUP)');
    succ = Number(spawned.pid);
    t.teardown(() => {
      try {
        process.kill(succ, 'SIGKILL');
      } catch {
        // gone
      }
    });
    t.same(await old.waitExit(), { code: 0, signal: null }, 'the old process exits 0 once its successor polls');
    t.ok(notes.includes(`MAINPID=${succ} READY=1`), `systemd was told MAINPID=${succ} (${notes.join(' | ')})`);
    await flowFor(tr, 2000, 'after the reload');
  } finally {
    await tr.stop(10_000);
  }
  t.equal(tr.ab.received, tr.ab.sent, `A->B: received ${tr.ab.received} == sent ${tr.ab.sent}`);
  t.equal(tr.ba.received, tr.ba.sent, `B->A: received ${tr.ba.received} == sent ${tr.ba.sent}`);
  t.equal(tr.ab.mismatched + tr.ba.mismatched, 0, 'every frame byte-exact');
  // the successor is not our child: stop it as systemd would, and see it go
  process.kill(succ, 'SIGTERM');
  await waitUntil(() => !fs.existsSync(`/proc/${succ}`) || fs.readFileSync(`/proc/${succ}/stat`, 'utf8').includes(') Z'), 10_000, 'the successor to exit on SIGTERM');
  t.notOk(fs.existsSync(s.sock('a')), 'it unlinked the sockets on SIGTERM');
});
