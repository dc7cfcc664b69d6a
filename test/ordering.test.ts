/**
 * src/workers/ordering.ts picks plain typed-array accesses for the rings' acquire and release
 * on x86 and Atomics calls elsewhere. This machine is x86, so the suite proper runs the plain
 * form; this file runs the dataplane's own tests again under VHOSTFWD_ORDERING=atomics (the
 * form an ARM64 host runs), so both branches of every ordered access are exercised: a typo
 * in the portable branch (a wrong index, a missing store) fails the same byte-exact
 * assertions here. Each file runs in a child process, since the flag is read when the module
 * loads (workers inherit the environment).
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { TSO } from '../src/workers/ordering';

const ordering = path.join(__dirname, '..', 'src', 'workers', 'ordering.js');

function tsoIn(env: NodeJS.ProcessEnv): string {
  const r = spawnSync(process.execPath, ['-e', `process.stdout.write(String(require(${JSON.stringify(ordering)}).TSO))`], {
    env: { ...process.env, ...env },
    encoding: 'utf8',
  });
  return r.stdout;
}

t.test('the flag selects the form: plain accesses on x86 by default, Atomics when forced', async (t) => {
  const x86 = process.arch === 'x64' || process.arch === 'ia32';
  t.equal(TSO, x86 && process.env.VHOSTFWD_ORDERING !== 'atomics', 'this process');
  t.equal(tsoIn({ VHOSTFWD_ORDERING: '' }), String(x86), 'default');
  t.equal(tsoIn({ VHOSTFWD_ORDERING: 'atomics' }), 'false', 'VHOSTFWD_ORDERING=atomics');
});

// The tests that drive the rings through every ordered access: the burst fast paths and the
// general ones (virtqueue, in-order), notification suppression and EVENT_IDX (virtqueue),
// the RX lock and the worker's poll loop with its mailbox (forwarding, through real worker
// threads), the dirty log's flush (force-log), and racing guests (toctou).
// notify-defer: the provisional notification decisions, which the portable form never makes.
const files = ['virtqueue', 'in-order', 'forwarding', 'force-log', 'hostile/toctou', 'notify-defer'];

for (const f of files) {
  t.test(`${f}.test under VHOSTFWD_ORDERING=atomics`, async (t) => {
    const file = path.join(__dirname, `${f}.test.js`);
    const r = spawnSync(process.execPath, [file], {
      env: { ...process.env, VHOSTFWD_ORDERING: 'atomics', TAP_REPORTER: 'tap' },
      encoding: 'utf8',
      timeout: 300_000,
    });
    const out = `${r.stdout}\n${r.stderr}`;
    const fails = out.split('\n').filter((l) => /^\s*not ok /.test(l));
    t.equal(r.status, 0, `${f} exits 0${r.signal ? ` (signal ${r.signal})` : ''}`);
    // the first failing line in the name too: a CI log shows names when it cuts the diffs
    t.same(fails, [], `${f}: no failing assertion${fails.length > 0 ? ` (first: ${fails[0].trim()})` : ''}`);
    t.match(out, /^\s*ok \d+/m, `${f}: assertions ran`);
  });
}
