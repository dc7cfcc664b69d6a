/**
 * Issue 25, failure safety: a successor that fails at any step of the takeover (killed
 * after each step, exits, hangs past the step deadline, speaks garbage or another handover
 * format) leaves the running vhostfwd forwarding with nothing lost: traffic runs throughout.
 * Up to the step where the successor's workers poll, every frame sent arrives byte-exact, in
 * order, exactly once; a successor killed while polling, before it confirmed, is a crash
 * mid-burst: every frame still arrives, and at most a burst per ring arrives twice. A format
 * mismatch is refused by name before anything stops.
 */
import t, { Test } from 'tap';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { SyntheticGuest, macOf } from '../src/frontend/guest';
import { Traffic } from '../src/frontend/traffic';
import { api } from '../src/ctl';
import { tmpDir, waitUntil } from '../kit/env';
import { LogRecord, VhostfwdProc } from '../kit/vhostfwd-proc';

/** Both sides wait 1.5 s at a step (the hang case), not 10 s. */
const STEP_MS = '1500';

async function flowFor(tr: Traffic, more: number, what: string): Promise<void> {
  const ab = tr.ab.received + more;
  const ba = tr.ba.received + more;
  await waitUntil(() => tr.ab.received >= ab && tr.ba.received >= ba, 30_000, `${more} more frames each way ${what}`);
}

t.test('a successor failing at each step: the running process resumes, not a frame lost', async (t: Test) => {
  const dir = tmpDir('vhostfwd-hof-');
  const sock = (n: string): string => path.join(dir, `${n}.sock`);
  fs.writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({
    interfaces: [{ name: 'a', socket: sock('a') }, { name: 'b', socket: sock('b') }],
    forwarding: { mode: 'xconnect', pairs: [['a', 'b']] },
    control: { socket: sock('control') },
  }));
  const args = ['--config', path.join(dir, 'cfg.json'), '--handover', sock('handover')];
  const procs: VhostfwdProc[] = [];
  const guests: SyntheticGuest[] = [];
  t.teardown(async () => {
    for (const g of guests) g.close();
    for (const p of procs) await p.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const env = { VHOSTFWD_TAKEOVER_STEP_MS: STEP_MS };
  // nothing to take over from: refused by name, exit 2, nothing left behind
  const orphan = VhostfwdProc.start([...args, '--takeover'], env);
  procs.push(orphan);
  t.equal((await orphan.waitExit()).code, 2, '--takeover with no running vhostfwd exits 2');
  t.match(orphan.text.join('\n'), /NO_PEER: no running vhostfwd takes handovers at .*handover\.sock/, 'it says there is no running vhostfwd');
  t.notOk(fs.existsSync(sock('a')) || fs.existsSync(sock('control')), 'and made no socket');
  const old = VhostfwdProc.start(args, env);
  procs.push(old);
  await old.waitFor('takeovers accepted');
  const a = await SyntheticGuest.start({ socket: sock('a'), mac: macOf(1) });
  guests.push(a);
  const b = await SyntheticGuest.start({ socket: sock('b'), mac: macOf(2) });
  guests.push(b);
  const tr = new Traffic(a, b, { sizes: [60, 1514, 256, 4000, 9000, 64], seqBaseBA: 1 << 30 });
  tr.start();
  let tr2: Traffic | null = null;
  const failures = (): LogRecord[] => old.lines.filter((l) => l.msg === 'takeover failed; this process keeps forwarding' || l.msg === 'takeover refused');
  try {
    await flowFor(tr, 1000, 'at the start');

    // a handover format this process does not speak: refused by name, nothing stopped
    const alien = VhostfwdProc.start([...args, '--takeover'], { ...env, VHOSTFWD_TAKEOVER_FORMAT: '1' });
    procs.push(alien);
    const ex = await alien.waitExit();
    t.equal(ex.code, 2, 'the successor with format 1 (an older build) exits 2');
    t.match(alien.text.join('\n'), /HANDOVER_FORMAT_MISMATCH: the running vhostfwd refused the takeover: handover format mismatch: the successor speaks format 1, this process \(vhostfwd [^)]+\) speaks 2/, 'it names the mismatch');
    await waitUntil(() => failures().length === 1, 5000, 'the refusal in the old log');
    t.notOk(old.lines.some((l) => String(l.msg).startsWith('takeover step 3/5') || String(l.msg).startsWith('takeover step 2/5')), 'refused before anything stopped: no state sent, no ring stopped');
    await flowFor(tr, 1000, 'after the format mismatch');

    // garbage on the handover socket (not a vhostfwd at all)
    await new Promise<void>((resolve) => {
      const c = net.createConnection(sock('handover'), () => {
        c.end(Buffer.from([0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8]));
      });
      c.on('error', () => undefined); // the old process hangs up on it (ECONNRESET)
      c.on('close', () => resolve());
      c.resume();
    });
    await waitUntil(() => failures().length === 2, 5000, 'the garbage refused');
    await flowFor(tr, 1000, 'after garbage');

    // A successor that fails before its workers poll (every step up to `state`, and
    // `started` below): the old process resumes with nothing lost and nothing twice.
    const failAt = async (at: string, k: number, n: number, traffic: Traffic): Promise<void> => {
      const before = failures().length;
      const resumedBefore = old.lines.filter((l) => l.msg === 'forwarding resumed after the failed takeover').length;
      const bad = VhostfwdProc.start([...args, '--takeover'], { ...env, VHOSTFWD_TAKEOVER_FAIL_AT: at });
      procs.push(bad);
      await waitUntil(() => failures().length === before + 1, 15_000, `the old process to see the successor fail at ${at}`);
      const gone = await bad.waitExit(10_000);
      t.ok(gone.signal === 'SIGKILL' || gone.code === 1, `failing at ${at}: the successor is gone (${JSON.stringify(gone)})`);
      const stopped = failures()[before].ringsWereStopped === true;
      if (stopped) await waitUntil(() => old.lines.filter((l) => l.msg === 'forwarding resumed after the failed takeover').length === resumedBefore + 1, 10_000, 'forwarding resumed');
      t.equal(old.exit, null, `failing at ${at}: the old process runs on (its rings were ${stopped ? '' : 'not '}stopped)`);
      await flowFor(traffic, 1000, `after the successor failed at ${at} (${k + 1}/${n})`);
      const v = await api(sock('control'), 'GET', '/v1/version');
      t.equal(v.status, 200, `failing at ${at}: the old process's control API answers`);
    };
    const exact = ['hello', 'ready', 'go', 'mapped', 'state', 'ready:exit', 'mapped:exit', 'state:exit', 'go:hang', 'mapped:hang', 'state:hang'];
    for (const [k, at] of exact.entries()) await failAt(at, k, exact.length, tr);
    await tr.stop(10_000);
    t.equal(tr.ab.received, tr.ab.sent, `A->B: received ${tr.ab.received} == sent ${tr.ab.sent}`);
    t.equal(tr.ba.received, tr.ba.sent, `B->A: received ${tr.ba.received} == sent ${tr.ba.sent}`);
    t.equal(tr.ab.mismatched + tr.ba.mismatched, 0, 'every frame byte-exact, in its position (none lost, none twice)');
    t.equal(tr.ab.reordered + tr.ba.reordered, 0, 'none reordered');

    // A successor killed after its workers started polling, before it confirmed (`started`,
    // and hanging there): like any crash of a forwarder mid-burst, the burst it was in
    // may have reached its receiver while its TX completion did not reach the sender, and the
    // old process, resuming from used->idx, forwards that burst again (README, Hitless
    // restart). RX is published before TX completes, so nothing is lost: every frame arrives,
    // at least once, and the extra copies stay within a burst per ring per failure.
    tr2 = new Traffic(a, b, { sizes: [60, 1514, 256, 4000, 9000, 64], seqBaseBA: 1 << 30, verify: false, recordSeqs: true });
    tr2.start();
    const crash = ['started', 'started:hang'];
    for (const [k, at] of crash.entries()) await failAt(at, k, crash.length, tr2);
    const mid = old.lines.filter((l) => l.msg === 'forwarding resumed after the failed takeover').length;
    t.ok(mid >= 6, `the rings were stopped and resumed in ${mid} of the failures`);

    // and a takeover that succeeds after all that
    const next = VhostfwdProc.start([...args, '--takeover'], env);
    procs.push(next);
    await next.waitFor('takeover step 5/5: polling');
    t.same(await old.waitExit(), { code: 0, signal: null }, 'then a good successor takes over and the old process exits 0');
    await flowFor(tr2, 1000, 'after the good takeover');
  } finally {
    await tr.stop(10_000);
    await tr2?.stop(10_000);
  }
  if (tr2) {
    // 2 failures x 2 rings a direction x a burst of 32
    const bound = 2 * 2 * 32;
    for (const [name, f] of [['A->B', tr2.ab], ['B->A', tr2.ba]] as const) {
      t.equal(f.seen?.size, f.sent, `${name} after the crashes: every one of the ${f.sent} frames sent arrived (none lost)`);
      t.ok(f.duplicates <= bound, `${name}: ${f.duplicates} frames arrived twice, at most ${bound} (a burst per ring per crash)`);
      t.equal(f.received, f.sent + f.duplicates, `${name}: nothing else arrived`);
    }
  }
  t.equal(a.client.closed, null, 'frontend a never saw its connection close');
  t.equal(b.client.closed, null, 'frontend b never saw its connection close');
});
