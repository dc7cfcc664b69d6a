/**
 * Issue 17: reconnect churn against the vhostfwd process an operator runs. 200 cycles of
 * test/kit/pyfront/churn.py (the independent Python frontend): two cross-connected
 * interfaces are churned with every way of leaving (close with rings running,
 * GET_VRING_BASE then close, RESET_OWNER, half a message, SIGKILL of the frontend process)
 * and random negotiations, memory (plain and hugetlb memfds, 2 MiB and 256 MiB, one or two
 * regions) and eventfd modes; a bystander pair exchanges frames before and after every cycle.
 * The process must not leak: its fds, its guest mappings and its RSS at the end are what
 * they were after the warm-up.
 */
import t from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { tmpDir, waitUntil } from '../kit/env';

const CLI = path.join(__dirname, '..', 'src', 'cli.js');
const CHURN = path.join(__dirname, '..', '..', 'test', 'kit', 'pyfront', 'churn.py');
const CYCLES = 200;

interface Usage {
  fds: number;
  rssKiB: number;
  guestMaps: number;
}

function usage(pid: number): Usage {
  const rss = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  const maps = fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter((l) => l.includes('pyfront-guest')).length;
  return { fds: fs.readdirSync(`/proc/${pid}/fd`).length, rssKiB: rss ? Number(rss[1]) : -1, guestMaps: maps };
}

/** Usage once the fd count held still for 5 readings 50 ms apart (a release may be finishing), at most 5 s. */
async function settled(pid: number): Promise<Usage> {
  let last = usage(pid);
  let same = 0;
  const end = Date.now() + 5000;
  while (same < 5 && Date.now() < end) {
    await sleep(50);
    const u = usage(pid);
    same = u.fds === last.fds && u.guestMaps === last.guestMaps ? same + 1 : 0;
    last = u;
  }
  return last;
}

function freeHugepages(): number {
  const m = /HugePages_Free:\s+(\d+)/.exec(fs.readFileSync('/proc/meminfo', 'utf8'));
  return m ? Number(m[1]) : 0;
}

t.test(`reconnect churn: ${CYCLES} cycles with every way of leaving; bystanders unharmed; no fd, mapping or memory leak`, async (t) => {
  // Two 256 MiB hugetlb guests can be up at once, with the bystanders' on plain memory:
  // 256 free 2 MiB pages. npm test reserves 1024 (scripts/install-peers.sh); the fast
  // subset runs without hugetlb guests where there are none.
  const huge = freeHugepages() >= 256;
  if (!huge && !process.env.VHOSTFWD_NO_PEERS) t.fail(`only ${freeHugepages()} free hugepages: npm test reserves them in scripts/install-peers.sh`);
  const dir = tmpDir('vhostfwd-churn-');
  const sock = (n: string) => path.join(dir, `${n}.sock`);
  const cfg = {
    interfaces: ['a', 'b', 'c', 'd'].map((n) => ({ name: n, socket: sock(n) })),
    forwarding: { mode: 'xconnect', pairs: [['a', 'b'], ['c', 'd']] },
    workers: [{ cpus: [os.cpus().length > 1 ? 1 : 0], queues: ['a:0', 'b:0', 'c:0', 'd:0'] }],
  };
  fs.writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify(cfg));
  const fwd = spawn(process.execPath, [CLI, 'run', '--config', path.join(dir, 'cfg.json'), '--log-level', 'warn'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let fwdErr = '';
  fwd.stderr.on('data', (b: Buffer) => (fwdErr += b.toString()));
  const fwdExit = new Promise<number | null>((r) => fwd.on('exit', (c) => r(c)));
  let churnPid = 0;
  t.teardown(() => {
    if (churnPid) {
      try {
        process.kill(churnPid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    fwd.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await waitUntil(() => ['a', 'b', 'c', 'd'].every((n) => fs.existsSync(sock(n))), 10000, 'the four sockets');

  const args = [CHURN, '--a', sock('a'), '--b', sock('b'), '--c', sock('c'), '--d', sock('d'), '--cycles', String(CYCLES), '--seed', '17', ...(huge ? ['--hugepages'] : [])];
  const churn = spawn('python3', args, { stdio: ['pipe', 'pipe', 'pipe'] });
  churnPid = churn.pid ?? 0;
  let churnErr = '';
  churn.stderr.on('data', (b: Buffer) => (churnErr += b.toString()));
  const churnExit = new Promise<number | null>((r) => churn.on('exit', (c) => r(c)));
  const killer = setTimeout(() => churn.kill('SIGKILL'), 300000);
  let baseline: Usage | null = null;
  let end: Usage | null = null;
  let summary: Record<string, unknown> | null = null;
  for await (const line of readline.createInterface({ input: churn.stdout })) {
    const ev = JSON.parse(line) as Record<string, unknown>;
    if (ev.event === 'baseline') baseline = await settled(fwd.pid ?? 0);
    if (ev.event === 'end') {
      end = await settled(fwd.pid ?? 0);
      summary = ev;
    }
    churn.stdin.write('\n');
  }
  const code = await churnExit;
  clearTimeout(killer);
  churnPid = 0;

  t.ok(summary, `the churn reported its end (exit ${code}) ${churnErr.slice(-600)}`);
  if (!summary || !baseline || !end) return;
  t.same(summary.failures, [], 'no check of the churn failed');
  t.equal(summary.failureCount, 0, 'failure count 0');
  t.equal(code, 0, 'the churn exited 0');
  t.equal(summary.cycles, CYCLES, `${CYCLES} cycles`);
  const leaves = summary.leaves as Record<string, number>;
  for (const k of ['close-running', 'get-vring-base', 'reset-owner', 'half-message', 'sigkill']) t.ok(leaves[k] > 0, `left by ${k}: ${leaves[k]} times`);
  const variants = Object.keys(summary.variants as Record<string, number>);
  t.ok(variants.some((v) => v.includes('blocking')), 'blocking eventfds among the variants');
  if (huge) t.ok(variants.some((v) => v.includes('huge')), 'hugetlb guests among the variants');
  t.ok(variants.some((v) => v.includes('x2')), 'two-region guests among the variants');
  const by = summary.bystander as { sent: number; received: number };
  t.ok(by.sent > 0, `the bystanders exchanged ${by.sent} frames`);
  t.equal(by.received, by.sent, 'every bystander frame arrived byte-exact');
  t.ok((summary.forwardMsMax as number) <= 100, `a fresh device forwards within 100 ms of its setup (max ${String(summary.forwardMsMax)} ms, median ${String(summary.forwardMsMedian)} ms)`);
  t.ok((summary.frames as number) > CYCLES, `${String(summary.frames)} frames through churned devices`);

  t.equal(end.fds, baseline.fds, `vhostfwd's fds: ${baseline.fds} after the warm-up, ${end.fds} after ${CYCLES} cycles`);
  t.equal(end.guestMaps, baseline.guestMaps, `guest memory mappings: ${baseline.guestMaps} then ${end.guestMaps} (left guests' memory is not kept)`);
  const grew = end.rssKiB - baseline.rssKiB;
  t.ok(grew < 64 * 1024, `RSS ${baseline.rssKiB} KiB then ${end.rssKiB} KiB (grew ${grew} KiB, bound 64 MiB)`);
  t.notMatch(fwdErr, /did not acknowledge|uncaught|FATAL/i, 'no worker stalled, nothing crashed');

  fwd.kill('SIGTERM');
  t.equal(await fwdExit, 0, 'vhostfwd exits 0 on SIGTERM after the churn');
});
