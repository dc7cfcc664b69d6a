#!/usr/bin/env node
/**
 * vhostfwd command line. Exit codes: 0 ok, 1 runtime failure, 2 bad usage or config.
 */
import os from 'node:os';
import path from 'node:path';
import fs from 'node:fs';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { Config, ConfigError, loadConfig, parseConfig } from './main/config';
import { Forwarder } from './main/forwarder';
import { SocketPathError } from './main/interface';
import { log, setJson, setLevel, Level } from './main/log';

const EXIT_USAGE = 2;
/** SIGINT/SIGTERM: the most a clean stop may take before the process exits with status 1 */
const SHUTDOWN_BOUND_MS = 5000;

function version(): string {
  const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version: string };
  return pkg.version;
}

/** Build a config from the one-liner flags: --socket A --socket B [--forward xconnect|bridge]. */
export function configFromFlags(sockets: string[], forward: string | undefined, queues: number, mode: string): unknown {
  return {
    interfaces: sockets.map((s, i) => ({ name: `vm${i + 1}`, socket: s, mode, queues })),
    forwarding: forward === undefined ? undefined : forward === 'bridge' ? { mode: 'bridge' } : { mode: forward, pairs: sockets.length === 2 ? [['vm1', 'vm2']] : [] },
  };
}

async function run(cfg: Config): Promise<void> {
  const fwd = new Forwarder(cfg);
  let stopping = false;
  const stop = async (sig: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    log.info('shutting down', { signal: sig });
    // A stop that hangs (a worker that will not exit, a device that will not release) must
    // not keep a service manager waiting: exit anyway after the bound, and say so.
    setTimeout(() => {
      log.error('shutdown did not finish in time; exiting anyway', { boundMs: SHUTDOWN_BOUND_MS });
      process.exit(1);
    }, SHUTDOWN_BOUND_MS).unref();
    await fwd.stop();
    process.exit(0);
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
  // SIGUSR2: pause / resume forced dirty logging (benchmarks: log on and off in one trial)
  process.on('SIGUSR2', () => {
    if (!cfg.forceLog) {
      log.warn('SIGUSR2 ignored: forced dirty logging is not configured (forceLog, --force-log)');
      return;
    }
    fwd.setForceLog(!fwd.pool.forceLogging).catch((e: unknown) => log.error('forced logging switch failed', { error: (e as Error).message }));
  });
  await fwd.start();
  for (const i of cfg.interfaces) {
    if (i.mode === 'server') {
      process.stdout.write(
        `${i.name}: attach a QEMU guest with\n  -object memory-backend-memfd,id=mem,size=256M,share=on -numa node,memdev=mem \\\n  -chardev socket,id=c-${i.name},path=${i.socket} -netdev vhost-user,id=n-${i.name},chardev=c-${i.name}${i.queues > 1 ? `,queues=${i.queues}` : ''} \\\n  -device virtio-net-pci,netdev=n-${i.name}${i.queues > 1 ? `,mq=on` : ''}\n`,
      );
    }
  }
}

function fail(e: unknown): never {
  if (e instanceof ConfigError) {
    process.stderr.write(`vhostfwd: bad config: ${e.message}\n`);
    process.exit(EXIT_USAGE);
  }
  if (e instanceof SocketPathError) {
    process.stderr.write(`vhostfwd: ${e.message}\n`);
    process.exit(EXIT_USAGE);
  }
  process.stderr.write(`vhostfwd: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
}

export async function main(argv: string[]): Promise<void> {
  await yargs(argv)
    .scriptName('vhostfwd')
    .version(version())
    .option('log-level', { choices: ['debug', 'info', 'warn', 'error'] as const, default: 'info' as const, describe: 'log threshold' })
    .option('log-json', { type: 'boolean', default: false, describe: 'structured JSON log lines' })
    .middleware((a) => {
      setLevel(a['log-level'] as Level);
      setJson(a['log-json'] === true);
    })
    .command(
      'run',
      'forward packets between the configured vhost-user interfaces',
      (y) =>
        y
          .option('config', { type: 'string', describe: 'JSON config file' })
          .option('socket', { type: 'string', array: true, describe: 'vhost-user socket path (repeat for each interface)' })
          .option('mode', { choices: ['server', 'client'] as const, default: 'server' as const, describe: 'socket mode for --socket interfaces' })
          .option('queues', { type: 'number', default: 1, describe: 'queue pairs per --socket interface' })
          .option('forward', { choices: ['xconnect', 'bridge'] as const, describe: 'forwarding mode for --socket interfaces' })
          .option('stats-interval', { type: 'number', describe: 'seconds between stats tables (0 = off)' })
          .option('force-log', { type: 'boolean', describe: 'log dirty pages even when the frontend did not ask (benchmarks)' })
          .option('metrics', { type: 'string', describe: 'HTTP endpoint HOST:PORT for /stats (JSON), /metrics (Prometheus), /healthz' })
          .check((a) => {
            if (!a.config && !(a.socket && a.socket.length > 0)) throw new Error('give --config FILE or at least one --socket PATH');
            return true;
          })
          .example('$0 run --config examples/xconnect.json', 'start the interfaces of a config file')
          .example('$0 run --socket /tmp/vm1.sock --socket /tmp/vm2.sock --forward xconnect --stats-interval 1', 'two guests, cross-connected'),
      async (a) => {
        try {
          const cpus = os.cpus().length;
          const cfg = a.config ? loadConfig(a.config, cpus) : parseConfig(configFromFlags(a.socket ?? [], a.forward, a.queues, a.mode), cpus);
          if (a['stats-interval'] !== undefined) cfg.statsInterval = a['stats-interval'];
          if (a['force-log'] !== undefined) cfg.forceLog = a['force-log'];
          if (a.metrics !== undefined) cfg.metrics = { listen: a.metrics };
          // command-line log flags win over the config file's "log" section
          if (!process.argv.some((x) => x.startsWith('--log-level'))) setLevel(cfg.log.level);
          if (!process.argv.some((x) => x.startsWith('--log-json'))) setJson(cfg.log.json);
          await run(cfg);
        } catch (e) {
          fail(e);
        }
      },
    )
    .command(
      'check-config <file>',
      'validate a config file and print it with defaults filled in',
      (y) => y.positional('file', { type: 'string', demandOption: true }),
      (a) => {
        try {
          const cfg = loadConfig(a.file, os.cpus().length);
          process.stdout.write(JSON.stringify(cfg, null, 2) + '\n');
        } catch (e) {
          fail(e);
        }
      },
    )
    .command(
      'demo',
      'two synthetic guests through a bridge, with a live migration midway (no QEMU, no root)',
      (y) => y.option('seconds', { type: 'number', default: 6 }),
      async (a) => {
        try {
          const { runDemo } = await import('./demo');
          const ok = await runDemo({ seconds: a.seconds });
          process.exit(ok ? 0 : 1);
        } catch (e) {
          fail(e);
        }
      },
    )
    .command(
      'bench',
      'throughput against DPDK in the same run (see bench/README.md); arguments after -- go to bench/run',
      (y) => y.strict(false),
      async () => {
        const script = path.join(__dirname, '..', 'bench', 'run.js');
        if (!fs.existsSync(script)) {
          // the package carries no bench/ (package.json files): it runs from a git checkout
          const checkout = fs.existsSync(path.join(__dirname, '..', '..', 'bench'));
          process.stderr.write(checkout ? `vhostfwd: ${script} is missing: run npm run build\n` : 'vhostfwd: bench runs from a git checkout of vhostfwd (the installed package has no bench/)\n');
          process.exit(1);
        }
        const rest = process.argv.slice(process.argv.indexOf('bench') + 1).filter((x) => x !== '--');
        const { spawnSync } = await import('node:child_process');
        const r = spawnSync(process.execPath, [script, ...rest], { stdio: 'inherit' });
        process.exit(r.status ?? 1);
      },
    )
    .demandCommand(1, 'give a command: run, check-config, demo, bench')
    .epilog('Exit codes: 0 ok (also after SIGINT/SIGTERM), 1 runtime failure (also a stop that took over 5 s), 2 bad usage, config or socket path. SIGUSR2 pauses / resumes forced dirty logging (--force-log).')
    .strict()
    .help()
    .fail((msg, err, y) => {
      // yargs calls this for usage errors (a failed .check() arrives as err): exit 2
      if (err instanceof ConfigError) fail(err);
      process.stderr.write(`${String(y.help())}\n\nvhostfwd: ${msg ?? err?.message}\n`);
      process.exit(EXIT_USAGE);
    })
    .parseAsync();
}

if (require.main === module) {
  void main(hideBin(process.argv));
}
