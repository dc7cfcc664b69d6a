#!/usr/bin/env node
/**
 * vhostfwd command line. Exit codes: 0 ok, 1 runtime failure, 2 bad usage or config.
 */
import os from 'node:os';
import path from 'node:path';
import fs from 'node:fs';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { Config, ConfigError, DEFAULT_CONTROL_SOCKET, loadConfig, parseConfig } from './main/config';
import { Forwarder } from './main/forwarder';
import { SocketPathError } from './main/interface';
import { UplinkOpenError } from './main/ports/uplink';
import { ControlServer, ControlSocketError, startControl } from './main/control/server';
import { OwnershipError } from './main/control/ownership';
import { StateFileError, readState, writeState } from './main/control/state';
import { ApiUnreachable, api, render, vlanArg } from './ctl';
import { log, setJson, setLevel, Level } from './main/log';
import { spawn } from 'node:child_process';
import { native } from './native';
import { HandoverServer, HandoverSocketError, TakeoverError, configFor, takeOver } from './main/handover/handover';

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

/**
 * sd_notify (systemd Type=notify): READY=1 once serving; a takeover's successor also says
 * MAINPID=<its pid> before the old process may exit, and a failed takeover gives the main
 * pid back. No-op outside systemd (no $NOTIFY_SOCKET).
 */
function sdNotify(msg: string): void {
  const sock = process.env.NOTIFY_SOCKET;
  if (!sock) return;
  try {
    native.sdNotify(sock, msg);
  } catch (e) {
    log.warn('sd_notify failed', { socket: sock, error: (e as Error).message });
  }
}

/**
 * SIGHUP (systemd ExecReload): start a successor, the same command line with --takeover,
 * from the files on disk now (an upgraded install); it takes the dataplane over and this
 * process exits. A successor that fails leaves this process forwarding.
 */
function spawnSuccessor(): void {
  const argv = process.argv.slice(2);
  if (!argv.includes('--takeover')) argv.push('--takeover');
  const child = spawn(process.execPath, [...process.execArgv, process.argv[1], ...argv], { stdio: 'inherit' });
  child.on('error', (e) => log.error('takeover: the successor could not be started', { error: e.message }));
  child.on('exit', (code, signal) => log.info('takeover: the successor exited', { pid: child.pid, code, signal }));
  child.unref();
  log.info('takeover: successor started (SIGHUP)', { pid: child.pid });
}

/** Where the handover socket is: `--handover PATH`, or beside the control socket. */
function handoverPath(cfg: Config, flag: string | undefined): { path: string | null; explicit: boolean } {
  if (flag === 'off') return { path: null, explicit: false };
  if (flag !== undefined) return { path: flag, explicit: true };
  return { path: path.join(path.dirname(cfg.control ? cfg.control.socket : DEFAULT_CONTROL_SOCKET), 'handover.sock'), explicit: false };
}

interface RunOptions {
  /** restore interfaces, forwarding and placement from it when it exists, and write it after every change */
  stateFile: string | null;
  /** the control socket was asked for by name (a failure to serve it is then fatal; the default path is best effort) */
  controlExplicit: boolean;
  /** the handover socket: this process listens there for a successor (null: none) */
  handover: { path: string | null; explicit: boolean };
  /** take the dataplane over from the vhostfwd listening at handover.path instead of starting fresh */
  takeover: boolean;
}

/** Run the forwarder (fresh, or taken over from a running one). */
async function run(cfg: Config, o: RunOptions): Promise<void> {
  const cpus = os.cpus().length;
  let fwd: Forwarder;
  if (o.takeover) {
    if (!o.handover.path) throw new TakeoverError('--takeover needs a handover socket (not --handover off)', 'USAGE');
    const took = await takeOver(o.handover.path, version(), cpus, (state, ports) => new Forwarder(configFor(cfg, state), { placement: state.placement, ports }), () =>
      // before the old process may exit: systemd must know the service's new main process
      sdNotify(`MAINPID=${process.pid}\nREADY=1`),
    );
    fwd = took.fwd;
  } else {
    const state = o.stateFile ? readState(o.stateFile, cpus) : null;
    if (state) {
      cfg.interfaces = state.interfaces;
      cfg.forwarding = state.forwarding;
      log.info('state restored', { file: o.stateFile, interfaces: state.interfaces.map((i) => i.name) });
    }
    fwd = new Forwarder(cfg, { placement: state?.placement, leaveOutFailed: state !== null });
  }
  const stateFile = o.stateFile;
  if (stateFile) fwd.onChange = () => writeState(stateFile, fwd.state());
  // set in closures (the handover hooks): held in one object so the compiler sees them change
  const svc: { control: ControlServer | null; handover: HandoverServer | null } = { control: null, handover: null };
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
    svc.handover?.close();
    await svc.control?.close();
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
  if (!o.takeover) await fwd.start();
  if (stateFile) writeState(stateFile, fwd.state());
  const openControl = async (): Promise<void> => {
    if (!cfg.control) return;
    try {
      svc.control = await startControl(fwd, { socket: cfg.control.socket, socketDir: cfg.control.socketDir, version: version() });
    } catch (e) {
      if (o.controlExplicit || !(e instanceof ControlSocketError)) throw e;
      log.warn('running without the control API', { error: (e as Error).message });
    }
  };
  try {
    await openControl();
  } catch (e) {
    if (!o.takeover) await fwd.stop();
    throw e;
  }
  if (o.handover.path) {
    const hooks = {
      beforeStop: async (): Promise<void> => {
        // the successor opens the control API on the same path once it polls
        await svc.control?.close();
        svc.control = null;
      },
      afterFailure: async (): Promise<void> => {
        sdNotify(`MAINPID=${process.pid}\nREADY=1`);
        try {
          await openControl();
        } catch (e) {
          log.error('the control API could not be reopened after the failed takeover', { error: (e as Error).message });
        }
      },
      done: (): void => {
        stopping = true;
        process.exit(0);
      },
    };
    try {
      svc.handover = HandoverServer.listen(o.handover.path, fwd, hooks, version(), o.takeover);
    } catch (e) {
      if (o.handover.explicit || !(e instanceof HandoverSocketError)) {
        await svc.control?.close();
        if (!o.takeover) await fwd.stop();
        throw e;
      }
      log.warn('running without takeovers (hitless restart)', { error: (e as Error).message });
    }
  }
  process.on('SIGHUP', () => {
    if (!svc.handover) {
      log.warn('SIGHUP ignored: no handover socket (--handover off, or it could not be made)');
      return;
    }
    spawnSuccessor();
  });
  if (!o.takeover) sdNotify('READY=1'); // a successor said MAINPID and READY before the old process let go
  if (o.takeover) return;
  for (const i of cfg.interfaces) {
    if (i.mode === 'server') {
      process.stdout.write(
        `${i.name}: attach a QEMU guest with\n  -object memory-backend-memfd,id=mem,size=256M,share=on -numa node,memdev=mem \\\n  -chardev socket,id=c-${i.name},path=${i.socket} -netdev vhost-user,id=n-${i.name},chardev=c-${i.name}${i.queues > 1 ? `,queues=${i.queues}` : ''} \\\n  -device virtio-net-pci,netdev=n-${i.name}${i.queues > 1 ? `,mq=on` : ''}${i.mtu !== null ? `,host_mtu=${i.mtu}` : ''}\n`,
      );
    }
  }
}

/** `vhostfwd ctl ...`: one request, its reply printed; exit codes as `run`. */
async function ctl(socket: string, json: boolean, command: string, method: string, path: string, body?: unknown): Promise<never> {
  try {
    const r = await api(socket, method, path, body);
    if (r.status >= 200 && r.status < 300) {
      process.stdout.write(json ? JSON.stringify(r.body, null, 2) + '\n' : render(command, r.body));
      process.exit(0);
    }
    const err = (r.body as { error?: { message?: string; field?: string; code?: string } }).error;
    if (json) process.stdout.write(JSON.stringify(r.body, null, 2) + '\n');
    process.stderr.write(`vhostfwd ctl: ${err?.message ?? JSON.stringify(r.body)}${err?.field ? ` (field ${err.field})` : ''}\n`);
    process.exit(r.status >= 500 ? 1 : EXIT_USAGE);
  } catch (e) {
    process.stderr.write(`vhostfwd ctl: ${(e as Error).message}\n`);
    process.exit(e instanceof ApiUnreachable ? 1 : 1);
  }
}

function ctlCommands(y: ReturnType<typeof yargs>) {
  const sock = (a: Record<string, unknown>): string => (typeof a.control === 'string' ? a.control : DEFAULT_CONTROL_SOCKET);
  const enc = encodeURIComponent;
  return y
    .option('control', { type: 'string', describe: `control API socket (default ${DEFAULT_CONTROL_SOCKET})` })
    .option('json', { type: 'boolean', default: false, describe: 'print the JSON reply (for scripts)' })
    .command('list', 'list interfaces', {}, (a) => void ctl(sock(a), a.json === true, 'list', 'GET', '/v1/interfaces'))
    .command('show <name>', 'one interface: connection, features, rings, counters', (b) => b.positional('name', { type: 'string', demandOption: true }), (a) => void ctl(sock(a), a.json === true, 'show', 'GET', `/v1/interfaces/${enc(a.name)}`))
    .command(
      'add [name]',
      'add an interface (its socket listens or connects at once) or an uplink port (its device opened at once)',
      (b) =>
        b
          .positional('name', { type: 'string', describe: 'the interface name (also --name); a TAP: its device name; af_packet/af_xdp: default the device' })
          .option('type', { choices: ['vhost-user', 'tap', 'af_packet', 'af_xdp'] as const, default: 'vhost-user' as const, describe: 'a vhost-user interface or an uplink port' })
          .option('socket', { type: 'string', describe: 'vhost-user socket path (absolute; vhost-user only)' })
          .option('mode', { choices: ['server', 'client'] as const, describe: 'vhost-user: server (default) or client' })
          .option('queues', { type: 'number', describe: 'vhost-user: queue pairs (default 1)' })
          .option('device', { type: 'string', describe: 'af_packet, af_xdp: the network device' })
          .option('queue', { type: 'number', describe: 'af_xdp: the device queue (default 0)' })
          .option('frame-size', { type: 'number', describe: 'af_packet, af_xdp: ring frame bytes' })
          .option('frames', { type: 'number', describe: 'af_packet, af_xdp: frames per ring' })
          .option('offloads', { type: 'boolean', describe: 'checksum and segmentation offloads (default true; --no-offloads)' })
          .option('mtu', { type: 'number' })
          .option('owner', { type: 'string', describe: 'user (name or uid) given the server socket' })
          .option('group', { type: 'string', describe: 'group (name or gid) given the server socket' })
          .option('permissions', { type: 'string', describe: 'octal mode of the server socket, e.g. 0660' })
          .option('mask-features', { type: 'string', array: true, describe: 'feature names removed from the offer' })
          .option('vlan', { type: 'string', describe: '802.1Q (bridge mode): access:TAG, or trunk:ID,ID,FROM-TO[:native=ID]' })
          .check((a) => {
            if (a.type === 'vhost-user' && (a.name === undefined || a.socket === undefined)) throw new Error('a vhost-user interface needs a name and --socket PATH');
            if (a.type === 'tap' && a.name === undefined && a.device === undefined) throw new Error('a TAP port needs a name (its device)');
            if ((a.type === 'af_packet' || a.type === 'af_xdp') && a.device === undefined) throw new Error(`an ${a.type} port needs --device DEV`);
            return true;
          })
          .example('$0 ctl add vm3 --socket /run/vhostfwd/vm3.sock --mode client --queues 2', '')
          .example('$0 ctl add vm5 --socket /run/vhostfwd/vm5.sock --vlan trunk:100-199:native=10', '')
          .example('$0 ctl add --type tap --name vf0', '')
          .example('$0 ctl add --type af_packet --device eth1 --vlan trunk:10,20', '')
          .example('$0 ctl add --type af_xdp --device eth1 --queue 0', ''),
      (a) => {
        // every option given goes to the API under its key, also one the type does not take:
        // the API refuses it naming the key (the config parser's errors), not the client
        const body: Record<string, unknown> = {};
        if (a.type !== 'vhost-user') body.type = a.type;
        // a TAP's device is its name
        const name = a.name ?? (a.type === 'tap' ? a.device : undefined);
        if (name !== undefined) body.name = name;
        if (a.device !== undefined && !(a.type === 'tap' && a.name === undefined)) body.device = a.device;
        const keys = [['socket', 'socket'], ['mode', 'mode'], ['queues', 'queues'], ['queue', 'queue'], ['frame-size', 'frameSize'], ['frames', 'frames'], ['offloads', 'offloads'], ['mtu', 'mtu'], ['owner', 'owner'], ['group', 'group'], ['permissions', 'permissions'], ['mask-features', 'maskFeatures']] as const;
        for (const [opt, key] of keys) if (a[opt] !== undefined) body[key] = a[opt];
        if (a.vlan !== undefined) {
          try {
            body.vlan = vlanArg(a.vlan);
          } catch (e) {
            process.stderr.write(`vhostfwd: ${(e as Error).message}\n`);
            process.exit(2);
          }
        }
        void ctl(sock(a), a.json === true, 'add', 'POST', '/v1/interfaces', body);
      },
    )
    .command('rm <name>', 'remove an interface (rings stopped, socket closed and unlinked)', (b) => b.positional('name', { type: 'string', demandOption: true }), (a) => void ctl(sock(a), a.json === true, 'rm', 'DELETE', `/v1/interfaces/${enc(a.name)}`))
    .command('forwarding', 'forwarding mode and pairs', {}, (a) => void ctl(sock(a), a.json === true, 'forwarding', 'GET', '/v1/forwarding'))
    .command(
      'pair <a> <b>',
      'cross-connect two interfaces (xconnect mode)',
      (b) => b.positional('a', { type: 'string', demandOption: true }).positional('b', { type: 'string', demandOption: true }),
      (a) => void ctl(sock(a), a.json === true, 'pair', 'POST', '/v1/forwarding/pairs', { a: a.a, b: a.b }),
    )
    .command('unpair <name>', 'remove the pair an interface is in', (b) => b.positional('name', { type: 'string', demandOption: true }), (a) => void ctl(sock(a), a.json === true, 'unpair', 'DELETE', `/v1/forwarding/pairs/${enc(a.name)}`))
    .command(
      'move <name> <queue> <worker>',
      "move a queue pair's polling to another worker",
      (b) => b.positional('name', { type: 'string', demandOption: true }).positional('queue', { type: 'number', demandOption: true }).positional('worker', { type: 'number', demandOption: true }),
      (a) => void ctl(sock(a), a.json === true, 'move', 'PUT', `/v1/interfaces/${enc(a.name)}/queues/${a.queue}`, { worker: a.worker }),
    )
    .command('stats', 'counters of every running queue', {}, (a) => void ctl(sock(a), a.json === true, 'stats', 'GET', '/v1/stats'))
    .command('version', 'version of the running vhostfwd', {}, (a) => void ctl(sock(a), a.json === true, 'version', 'GET', '/v1/version'))
    .demandCommand(1, 'give a ctl command: list, show, add, rm, forwarding, pair, unpair, move, stats, version');
}

function fail(e: unknown): never {
  if (e instanceof ConfigError) {
    process.stderr.write(`vhostfwd: bad config: ${e.message}\n`);
    process.exit(EXIT_USAGE);
  }
  if (e instanceof TakeoverError) {
    // refused before anything stopped (format, no peer, usage): 2; failed midway: 1 (the running process resumed)
    process.stderr.write(`vhostfwd: ${e.code}: ${e.message}\n`);
    process.exit(e.code === 'TAKEOVER_FAILED' ? 1 : EXIT_USAGE);
  }
  if (e instanceof SocketPathError || e instanceof UplinkOpenError || e instanceof StateFileError || e instanceof ControlSocketError || e instanceof OwnershipError || e instanceof HandoverSocketError) {
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
          .option('control', { type: 'string', describe: `control API socket (default ${DEFAULT_CONTROL_SOCKET}; "off" for none)` })
          .option('state', { type: 'string', describe: 'state file: restored at start, written after every change made through the control API' })
          .option('handover', { type: 'string', describe: 'handover socket for hitless restarts (default: handover.sock beside the control socket; "off" for none)' })
          .option('takeover', { type: 'boolean', default: false, describe: 'take the dataplane over from the vhostfwd listening on the handover socket (hitless restart)' })
          .check((a) => {
            if (!a.config && !(a.socket && a.socket.length > 0) && a.control === undefined && a.state === undefined && !a.takeover) throw new Error('give --config FILE, at least one --socket PATH, or --control PATH / --state FILE to take interfaces at run time');
            return true;
          })
          .example('$0 run --config examples/xconnect.json', 'start the interfaces of a config file')
          .example('$0 run --socket /tmp/vm1.sock --socket /tmp/vm2.sock --forward xconnect --stats-interval 1', 'two guests, cross-connected'),
      async (a) => {
        try {
          const cpus = os.cpus().length;
          const cfg = a.config ? loadConfig(a.config, cpus) : parseConfig(configFromFlags(a.socket ?? [], a.forward, a.queues, a.mode), cpus);
          if (a.control === 'off') cfg.control = false;
          else if (a.control !== undefined) cfg.control = { socket: a.control, socketDir: cfg.control ? cfg.control.socketDir : null };
          if (a['stats-interval'] !== undefined) cfg.statsInterval = a['stats-interval'];
          if (a['force-log'] !== undefined) cfg.forceLog = a['force-log'];
          if (a.metrics !== undefined) cfg.metrics = { listen: a.metrics };
          // command-line log flags win over the config file's "log" section
          if (!process.argv.some((x) => x.startsWith('--log-level'))) setLevel(cfg.log.level);
          if (!process.argv.some((x) => x.startsWith('--log-json'))) setJson(cfg.log.json);
          await run(cfg, {
            stateFile: a.state ?? null,
            controlExplicit: a.control !== undefined || (a.config !== undefined && cfg.control !== false && cfg.control.socket !== DEFAULT_CONTROL_SOCKET),
            handover: handoverPath(cfg, a.handover),
            takeover: a.takeover === true,
          });
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
    .command('ctl', 'talk to a running vhostfwd through its control API', (y) => ctlCommands(y))
    .demandCommand(1, 'give a command: run, ctl, check-config, demo, bench')
    .epilog('Exit codes: 0 ok (also after SIGINT/SIGTERM, and after a takeover by a successor), 1 runtime failure (also a stop that took over 5 s, a takeover that failed midway), 2 bad usage, config or socket path, a takeover refused. SIGHUP starts a successor with --takeover (hitless restart). SIGUSR2 pauses / resumes forced dirty logging (--force-log).')
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
