/** Shared test scaffolding: temp dirs, an in-process forwarder, fd counting, log capture. */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseConfig } from '../src/main/config';
import { Forwarder } from '../src/main/forwarder';
import { LogLine, setLevel, setSink } from '../src/main/log';
import { GuestOptions, SyntheticGuest, macOf } from '../src/frontend/guest';

// Tests read log lines through captureLogs() (the sink sees every level); keep stderr quiet.
if (!process.env.VHOSTFWD_LOG) setLevel('warn');

export function tmpDir(prefix = 'vhostfwd-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export function fdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

/** Start a forwarder for `names` interfaces in server mode under a fresh temp dir. */
export async function startForwarder(
  names: string[],
  extra: Record<string, unknown> = {},
  perIface: Record<string, unknown> = {},
  opts: ConstructorParameters<typeof Forwarder>[1] = {},
): Promise<{ fwd: Forwarder; sock: (name: string) => string; dir: string; stop: () => Promise<void> }> {
  const dir = tmpDir();
  const sock = (n: string) => path.join(dir, `${n}.sock`);
  const cfg = parseConfig({ interfaces: names.map((n) => ({ name: n, socket: sock(n), ...perIface })), ...extra }, os.cpus().length);
  const fwd = new Forwarder(cfg, opts);
  await fwd.start();
  return {
    fwd,
    sock,
    dir,
    stop: async () => {
      await fwd.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

type TestForwarder = Awaited<ReturnType<typeof startForwarder>>;

/**
 * The usual two-guest setup: a forwarder for interfaces a and b (config `extra`), a
 * synthetic guest on each (macOf(1), macOf(2); `bOpts` for b), all torn down after `t`.
 */
export async function withTwoGuests(
  t: { teardown: (fn: () => unknown) => void },
  extra: Record<string, unknown> = {},
  bOpts: Partial<GuestOptions> = {},
): Promise<{ env: TestForwarder; a: SyntheticGuest; b: SyntheticGuest }> {
  const env = await startForwarder(['a', 'b'], extra);
  t.teardown(env.stop);
  const a = await SyntheticGuest.start({ socket: env.sock('a'), mac: macOf(1) });
  const b = await SyntheticGuest.start({ socket: env.sock('b'), mac: macOf(2), ...bOpts });
  t.teardown(() => {
    a.close();
    b.close();
  });
  return { env, a, b };
}

/** Collect log lines while `fn` runs. */
export function captureLogs(): { lines: LogLine[]; stop: () => void } {
  const lines: LogLine[] = [];
  setSink((l) => lines.push(l));
  return { lines, stop: () => setSink(null) };
}

/**
 * Wait until the unix socket at `sock` accepts a connection. Its file appears at bind(2),
 * before listen(2): a client that goes by the file alone can be refused in between (a CI
 * run's control-api test was, ECONNREFUSED).
 */
export async function waitListening(sock: string, timeoutMs = 10000, what = sock): Promise<void> {
  const end = Date.now() + timeoutMs;
  const accepts = (): Promise<boolean> =>
    new Promise((resolve) => {
      const c = net.connect(sock);
      c.once('connect', () => {
        c.destroy();
        resolve(true);
      });
      c.once('error', () => resolve(false));
    });
  while (!(fs.existsSync(sock) && (await accepts()))) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what} to accept connections`);
    await sleep(5);
  }
}

export async function waitUntil(cond: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}
