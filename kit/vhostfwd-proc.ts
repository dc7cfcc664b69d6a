/**
 * `vhostfwd run` as a child process for the tests that need the real process (takeovers):
 * JSON log lines collected as they come, waits with deadlines, and a kill that every test
 * registers in its teardown so that no process outlives a failed test.
 */
import { ChildProcess, spawn } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';

const CLI = path.join(__dirname, '..', 'src', 'cli.js');

export type LogRecord = Record<string, unknown> & { msg?: string; level?: string };

export class VhostfwdProc {
  readonly lines: LogRecord[] = [];
  /** stderr lines that are not JSON (a crash's stack, say) */
  readonly text: string[] = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  exit: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  private readonly waiters: Array<() => void> = [];

  private constructor(readonly child: ChildProcess) {
    this.exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        this.exit = { code, signal };
        this.wake();
        resolve(this.exit);
      });
    });
    if (child.stderr) {
      readline.createInterface({ input: child.stderr }).on('line', (l) => {
        try {
          this.lines.push(JSON.parse(l) as LogRecord);
        } catch {
          this.text.push(l);
        }
        this.wake();
      });
    }
  }

  /** `vhostfwd run ARGS --log-json` with `env` added to this process's environment; `cli`: another build's dist/src/cli.js (bench A/B runs). */
  static start(args: readonly string[], env: Record<string, string> = {}, cli = CLI): VhostfwdProc {
    const child = spawn(process.execPath, [cli, 'run', ...args, '--log-json'], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
    return new VhostfwdProc(child);
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  /** The first log line whose msg matches, waiting up to `timeoutMs` (a named error after). */
  async waitFor(msg: string | RegExp, timeoutMs = 20_000): Promise<LogRecord> {
    const end = Date.now() + timeoutMs;
    const match = (l: LogRecord): boolean => (typeof msg === 'string' ? l.msg === msg : msg.test(String(l.msg)));
    for (;;) {
      const hit = this.lines.find(match);
      if (hit) return hit;
      if (this.exit) throw new Error(`vhostfwd ${this.pid} exited (${JSON.stringify(this.exit)}) before logging "${String(msg)}": ${this.tail()}`);
      const left = end - Date.now();
      if (left <= 0) throw new Error(`vhostfwd ${this.pid} did not log "${String(msg)}" in ${timeoutMs} ms: ${this.tail()}`);
      await new Promise<void>((r) => {
        const timer = setTimeout(r, Math.min(left, 200));
        this.waiters.push(() => {
          clearTimeout(timer);
          r();
        });
      });
    }
  }

  /** The exit, waiting up to `timeoutMs` (a named error after). */
  async waitExit(timeoutMs = 20_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    let timer: NodeJS.Timeout | null = null;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`vhostfwd ${this.pid} did not exit in ${timeoutMs} ms: ${this.tail()}`)), timeoutMs);
    });
    try {
      return await Promise.race([this.exited, late]);
    } finally {
      if (timer) clearTimeout(timer);
    }
  }

  /** The last log lines, for failure messages. */
  tail(n = 8): string {
    return [...this.lines.slice(-n).map((l) => JSON.stringify(l)), ...this.text.slice(-n)].join('\n');
  }

  /** SIGKILL unless it exited already; resolves once it is gone (bounded). */
  async kill(): Promise<void> {
    if (this.exit) return;
    this.child.kill('SIGKILL');
    await this.waitExit(5000).catch(() => undefined);
  }
}
