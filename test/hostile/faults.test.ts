/**
 * Faults: a frontend that disconnects and reconnects under traffic 100 times (fds and RSS
 * stable), a worker that throws (restarted; only its queues pause; nothing lost), and a
 * clean SIGTERM shutdown of the real CLI (exit 0, socket files unlinked).
 */
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';
import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { SyntheticGuest, frame } from '../../src/frontend/guest';
import { Bystander, MAC_V, MAC_W, startArena } from '../../kit/hostile/harness';
import { captureLogs, fdCount, tmpDir, waitUntil } from '../../kit/env';

// A forced GC before RSS readings: mappings of released guests are unmapped by their SAB's
// deleter, i.e. only once V8 collects the SAB. Without a GC, RSS would measure V8's
// collection schedule, not a leak. (--expose-gc at run time, as tap runs plain node.)
v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;
async function settle(): Promise<void> {
  for (let i = 0; i < 3; i++) {
    gc();
    await sleep(20);
  }
}

t.test('frontend disconnects and reconnects under traffic 100 times: fds and RSS stable', async (t) => {
  const arena = await startArena();
  t.teardown(arena.stop);
  const w = await SyntheticGuest.start({ socket: arena.sock('w'), mac: MAC_W, memSize: 4 << 20, rxPosted: 64 });
  t.teardown(() => w.close());
  const v = arena.env.fwd.interfaces.find((i) => i.name === 'v')!;
  let delivered = 0;
  const cycle = async (seq: number) => {
    const g = await SyntheticGuest.start({ socket: arena.sock('v'), mac: MAC_V, memSize: 4 << 20, rxPosted: 64 });
    const frames = Array.from({ length: 16 }, (_, k) => frame(MAC_W, MAC_V, 60 + ((seq * 16 + k) % 1400), seq * 16 + k));
    g.send(0, frames);
    // disconnect with frames still in flight (after the first arrive)
    await waitUntil(() => {
      delivered += w.receive(0).length;
      return w.rx[0].usedIdx() > 0 || delivered > 0;
    }, 2000).catch(() => undefined);
    g.close();
    await waitUntil(() => v.device === null, 3000, 'device released');
    delivered += w.receive(0).length;
  };
  const fd0 = fdCount();
  const by = new Bystander(arena.b1, arena.b2);
  by.start();
  // The first 20 cycles are the warm-up of RSS (JIT, heaps of both threads grown to their
  // working size); the 80 after must not grow it further beyond noise.
  let rss0 = 0;
  for (let i = 0; i < 100; i++) {
    if (i === 20) {
      await settle();
      rss0 = process.memoryUsage().rss;
    }
    await cycle(i);
  }
  const f = await by.stop();
  await settle();
  const rss1 = process.memoryUsage().rss;
  t.equal(v.connections, 100, '100 connections accepted');
  t.ok(delivered > 100, `frames crossed during the cycles (${delivered})`);
  t.same([f.recvAB, f.recvBA, f.mismatched], [f.sentAB, f.sentBA, 0], `bystanders lost nothing (${f.sentAB}/${f.sentBA} frames)`);
  t.same([arena.b1, arena.b2, w].flatMap((g) => g.brokenGuards()), [], 'canaries intact');
  await waitUntil(() => fdCount() === fd0, 3000).catch(() => undefined);
  t.equal(fdCount(), fd0, 'fd count back to the baseline');
  // 80 guests of 4 MiB each are mapped twice (guest + backend side): a leak of the mappings
  // alone would be 80 x the touched pages (~0.7 MiB each side), over this bound. Garbage of
  // the worker isolates (released mappings not collected yet: a worker collects on its own
  // schedule, gc() here reaches only this isolate) is what the margin is for.
  t.ok(rss1 - rss0 < 32 << 20, `RSS growth over 80 cycles ${((rss1 - rss0) / 1048576).toFixed(1)} MiB < 32 MiB`);
});

t.test('a worker that throws is restarted; only its queues pause; nothing is lost', async (t) => {
  const two = os.cpus().length >= 2;
  const arena = await startArena({
    workers: [
      { cpus: two ? [0] : [], queues: ['b1:0', 'b2:0'] },
      { cpus: two ? [1] : [], queues: ['v:0', 'w:0'] },
    ],
  });
  t.teardown(arena.stop);
  const v = await SyntheticGuest.start({ socket: arena.sock('v'), mac: MAC_V, memSize: 4 << 20, rxPosted: 64 });
  const w = await SyntheticGuest.start({ socket: arena.sock('w'), mac: MAC_W, memSize: 4 << 20, rxPosted: 64 });
  t.teardown(() => {
    v.close();
    w.close();
  });
  const pool = arena.env.fwd.pool;
  const logs = captureLogs();
  t.teardown(logs.stop);
  const bys = new Bystander(arena.b1, arena.b2);
  const vw = new Bystander(v, w);
  bys.start();
  vw.start();
  await sleep(100);
  const tid = pool.workerInfo()[1].threadId;
  const atCrash = { bys: bys.recvAB + bys.recvBA, vw: vw.recvAB + vw.recvBA };
  pool.crashWorker(1);
  await waitUntil(() => pool.workerInfo()[1].threadId === -1, 3000, 'worker 1 gone');
  const vwDuring = vw.recvAB + vw.recvBA;
  await waitUntil(() => pool.workerInfo()[1].threadId !== -1, 3000, 'worker 1 restarted');
  // the new thread loads its modules first: its pair resumes when it polls again
  await waitUntil(() => vw.recvAB + vw.recvBA > vwDuring + 10, 10000, 'the crashed worker\'s pair resumes').catch(() => undefined);
  const vwAfter = vw.recvAB + vw.recvBA;
  const bysAtResume = bys.recvAB + bys.recvBA;
  const fb = await bys.stop();
  const fv = await vw.stop();
  t.same(pool.restarts(), [0, 1], 'worker 1 restarted once, worker 0 never');
  t.not(pool.workerInfo()[1].threadId, tid, 'a new thread');
  t.ok(bysAtResume > atCrash.bys, `the other pair kept forwarding while worker 1's queues were paused (${atCrash.bys} -> ${bysAtResume})`);
  t.ok(vwAfter > vwDuring, `the crashed worker's pair resumed after the restart (${vwDuring} -> ${vwAfter})`);
  t.same([fb.recvAB, fb.recvBA, fb.mismatched], [fb.sentAB, fb.sentBA, 0], `bystanders lost nothing (${fb.sentAB}/${fb.sentBA})`);
  t.same([fv.recvAB, fv.recvBA, fv.mismatched], [fv.sentAB, fv.sentBA, 0], `the crashed worker's pair lost nothing either (${fv.sentAB}/${fv.sentBA})`);
  const errors = logs.lines.filter((l) => l.level === 'error');
  t.equal(errors.filter((l) => /worker failed; restarting it/.test(l.msg)).length, 1, 'one line names the worker failure');
  t.same(errors.filter((l) => l.msg === 'device reset'), [], 'no device was reset');
  t.same([arena.b1, arena.b2, v, w].flatMap((g) => g.brokenGuards()), [], 'canaries intact');
});

t.test('SIGTERM: the CLI shuts down cleanly with a guest attached (exit 0, sockets unlinked)', async (t) => {
  const dir = tmpDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const a = path.join(dir, 'a.sock');
  const b = path.join(dir, 'b.sock');
  const cli = path.join(__dirname, '..', '..', 'src', 'cli.js');
  const child = spawn(process.execPath, [cli, 'run', '--socket', a, '--socket', b], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, VHOSTFWD_LOG: 'warn' } });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += String(d)));
  child.stdout.resume();
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  await waitUntil(() => fs.existsSync(a) && fs.existsSync(b), 10000, 'sockets');
  const ga = await SyntheticGuest.start({ socket: a, mac: MAC_V, memSize: 4 << 20, rxPosted: 64 });
  const gb = await SyntheticGuest.start({ socket: b, mac: MAC_W, memSize: 4 << 20, rxPosted: 64 });
  t.teardown(() => {
    ga.close();
    gb.close();
  });
  const f = frame(MAC_W, MAC_V, 200, 1);
  ga.send(0, [f]);
  const got: Uint8Array[] = [];
  await waitUntil(() => {
    for (const p of gb.receive(0)) got.push(p.data);
    return got.length > 0;
  }, 5000, 'a frame through the child');
  t.same(Buffer.from(got[0]), Buffer.from(f), 'the child forwards');
  child.kill('SIGTERM');
  const code = await Promise.race([exited, sleep(10000).then(() => 'timeout' as const)]);
  t.equal(code, 0, `exit code 0 after SIGTERM${code !== 0 ? ` (stderr: ${stderr.trim().slice(-2000)})` : ''}`);
  t.notOk(fs.existsSync(a), 'socket a unlinked');
  t.notOk(fs.existsSync(b), 'socket b unlinked');
  await waitUntil(() => ga.client.closed !== null && gb.client.closed !== null, 3000).catch(() => undefined);
  t.ok(ga.client.closed !== null && gb.client.closed !== null, 'the guests saw the disconnect');
});
