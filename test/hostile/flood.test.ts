/**
 * A frontend that floods requests and never reads the replies must not freeze the main
 * thread: vhostfwd gives up on the blocked reply after a bounded wait, resets that device
 * with a named reason, and the other interfaces keep being served.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { VhostUserClient } from '../../src/frontend/vhost-user-client';
import { Req } from '../../src/protocol/constants';
import { captureLogs, startForwarder, waitUntil } from '../../kit/env';

t.test('a frontend that never reads its replies is reset; the control plane stays responsive', async (t) => {
  const env = await startForwarder(['a', 'b']);
  t.teardown(env.stop);
  const logs = captureLogs();
  t.teardown(logs.stop);
  const native = path.join(__dirname, '..', '..', 'src', 'native.js');
  // The flooder runs in its own process: in-process it would block this event loop too.
  const script = `
    const { native } = require(${JSON.stringify(native)});
    const fd = native.connect(${JSON.stringify(env.sock('a'))});
    const m = Buffer.alloc(12); m.writeUInt32LE(${Req.GET_FEATURES}, 0); m.writeUInt32LE(1, 4);
    const burst = Buffer.concat(Array.from({ length: 512 }, () => m));
    const end = Date.now() + 8000;
    try { while (Date.now() < end) native.sendmsg(fd, burst, [], 200); } catch (e) { }
    setTimeout(() => process.exit(0), 5000); // stay connected, still not reading`;
  const child = spawn(process.execPath, ['-e', script], { stdio: 'ignore' });
  t.teardown(() => child.kill('SIGKILL'));
  await waitUntil(() => logs.lines.some((l) => /cannot send a reply: .*ETIMEDOUT/.test(String(l.fields.reason))), 15000, 'reset of the flooding device');
  t.pass('the flooding device was reset: its replies timed out (ETIMEDOUT), named in the log');
  const other = await VhostUserClient.connect(env.sock('b'));
  const t0 = Date.now();
  t.ok((await other.callU64(Req.GET_FEATURES)) > 0n, 'another interface still answers');
  t.ok(Date.now() - t0 < 1000, 'and promptly');
  other.close();
});
