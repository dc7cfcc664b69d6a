/**
 * One configured interface (a port of the forwarder): its vhost-user socket in server
 * mode (listen, accept again after each disconnect) or client mode (connect, reconnect
 * with backoff), and the device of the current connection. A disconnect or a reset
 * releases everything of that device; the other interfaces never notice.
 */
import fs from 'node:fs';
import { native, PollHandle } from '../native';
import { Connection, safeClose } from './connection';
import { OwnershipError, SocketOwnership, listenOwned } from './control/ownership';
import { Dataplane, Device, DeviceOptions, DeviceSnapshot } from './device';
import { log } from './log';

export interface InterfaceOptions extends Omit<DeviceOptions, 'port'> {
  socket: string;
  mode: 'server' | 'client';
  /** owner, group and mode of the server socket (null fields: as created) */
  ownership?: SocketOwnership;
}

const BACKOFF_MIN_MS = 50;
const BACKOFF_MAX_MS = 2000;

/** Why a server socket could not be made, in an operator's words (the CLI prints this one line). */
const LISTEN_CAUSES: Record<string, string> = {
  ENOENT: 'its directory does not exist',
  ENOTDIR: 'a component of its directory is not a directory',
  EACCES: 'permission denied',
  EROFS: 'read-only file system',
  EADDRINUSE: 'something that is not a socket is in the way (only a socket left by an earlier run is replaced)',
  ENAMETOOLONG: 'the path is too long for a unix socket (at most 107 bytes)',
};

export class SocketPathError extends Error {
  constructor(readonly iface: string, readonly socket: string, cause: NodeJS.ErrnoException) {
    const code = cause.code ?? '';
    super(`interface ${iface}: cannot listen on ${socket}: ${LISTEN_CAUSES[code] ?? cause.message}${code ? ` (${cause.syscall ?? 'bind'} ${code})` : ''}`);
    this.name = 'SocketPathError';
  }
}

/** How long a newcomer waits for the interface's current frontend to go (acceptPending). */
const WAITING_MS = 1000;

export class Interface {
  device: Device | null = null;
  private conn: Connection | null = null;
  private listenFd = -1;
  private listenPoll: PollHandle | null = null;
  /** a frontend accepted while the current one had not gone yet (acceptPending) */
  private waiting: { fd: number; timer: NodeJS.Timeout } | null = null;
  private retryTimer: NodeJS.Timeout | null = null;
  private backoff = BACKOFF_MIN_MS;
  private stopped = false;
  /** connections accepted so far (tests and stats). */
  connections = 0;
  /** reasons of the last resets (most recent last, bounded). */
  readonly resets: string[] = [];
  private readonly listeners: Array<(ev: 'connected' | 'disconnected', d: Device) => void> = [];

  constructor(readonly opts: InterfaceOptions, readonly port: number, private readonly dp: Dataplane) {}

  get name(): string {
    return this.opts.name;
  }

  on(fn: (ev: 'connected' | 'disconnected', d: Device) => void): void {
    this.listeners.push(fn);
  }

  start(): void {
    if (this.opts.mode === 'server') {
      try {
        this.listenFd = listenOwned(this.opts.socket, 4, this.opts.ownership ?? { owner: null, group: null, permissions: null });
      } catch (e) {
        if (e instanceof OwnershipError) throw e;
        throw new SocketPathError(this.name, this.opts.socket, e as NodeJS.ErrnoException);
      }
      this.listenPoll = native.poll(this.listenFd, () => this.acceptPending());
      log.info('listening', { iface: this.name, socket: this.opts.socket });
    } else {
      this.tryConnect();
    }
  }

  private acceptPending(): void {
    for (;;) {
      let fd: number;
      try {
        fd = native.accept(this.listenFd);
      } catch (e) {
        log.warn('accept failed', { iface: this.name, error: (e as Error).message });
        return;
      }
      if (fd < 0) return;
      if (this.conn) {
        // One frontend per interface. A frontend that reconnects at once can be accepted
        // before its old connection's hangup is read (both are ready in one loop turn), so
        // the newcomer waits up to WAITING_MS for the current one to go; if it stays, the
        // newcomer is refused and the current one keeps running. One waits at a time.
        if (this.waiting) this.refuseWaiting('another frontend arrived');
        const timer = setTimeout(() => this.refuseWaiting(`the current frontend stayed ${WAITING_MS} ms`), WAITING_MS);
        this.waiting = { fd, timer };
        continue;
      }
      this.attach(fd);
    }
  }

  private refuseWaiting(why: string): void {
    const w = this.waiting;
    if (!w) return;
    this.waiting = null;
    clearTimeout(w.timer);
    log.warn('second frontend refused while one is connected', { iface: this.name, why });
    safeClose(w.fd);
  }

  private tryConnect(): void {
    this.retryTimer = null;
    if (this.stopped) return;
    let fd: number;
    try {
      fd = native.connect(this.opts.socket);
    } catch (e) {
      log.debug('connect failed; retrying', { iface: this.name, error: (e as Error).message, inMs: this.backoff });
      this.retryTimer = setTimeout(() => this.tryConnect(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
      return;
    }
    this.backoff = BACKOFF_MIN_MS;
    this.attach(fd);
  }

  private attach(fd: number, snap: DeviceSnapshot | null = null, fds: readonly number[] = [], read = true): Device {
    this.connections++;
    let device: Device | null = null;
    const conn = new Connection(
      fd,
      (m) => (device as Device).handle(m),
      (reason) => void this.detached(device as Device, reason),
    );
    device = new Device({ ...this.opts, port: this.port }, this.dp, {
      send: (b, fds) => conn.send(b, fds ?? []),
      reset: (reason) => conn.close(reason),
    });
    this.conn = conn;
    this.device = device;
    if (snap) {
      try {
        device.adopt(snap, fds);
      } catch (e) {
        this.conn = null;
        this.device = null;
        conn.abandon();
        device.abandon();
        throw e;
      }
    }
    if (snap) log.info('frontend connection taken over', { iface: this.name, device: device.id, regions: snap.regions.length, dirtyLog: snap.log !== null, rings: snap.rings.filter((r) => r.started).length });
    else log.info('frontend connected', { iface: this.name, device: device.id });
    for (const l of this.listeners) l('connected', device);
    if (read) conn.start();
    return device;
  }

  private async detached(device: Device, reason: string): Promise<void> {
    if (this.conn?.isClosed) this.conn = null;
    if (this.device === device) this.device = null;
    this.resets.push(reason);
    if (this.resets.length > 32) this.resets.shift();
    const level = reason === 'shutting down' || reason === 'peer closed the socket' ? 'info' : 'error';
    log[level]('device reset', { iface: this.name, device: device.id, reason });
    await device.release();
    for (const l of this.listeners) l('disconnected', device);
    const w = this.waiting;
    if (w && !this.conn && !this.stopped) {
      this.waiting = null;
      clearTimeout(w.timer);
      this.attach(w.fd);
    }
    if (this.opts.mode === 'client' && !this.stopped && !this.retryTimer) {
      this.retryTimer = setTimeout(() => this.tryConnect(), this.backoff);
    }
  }

  // ---- takeover (handover/): this process hands the interface to the next one ----

  /** Whether the connection (if any) is between messages: quiesce() may run now. */
  get idle(): boolean {
    return this.conn === null || this.conn.idle;
  }

  /**
   * Stop taking anything in: no accept, no read, no reconnect. A frontend waiting to be
   * accepted is refused (it connects again, to whichever process then listens).
   */
  quiesce(): void {
    this.refuseWaiting('a takeover is in progress');
    this.listenPoll?.close();
    this.listenPoll = null;
    this.conn?.pause();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
  }

  /** The takeover failed: accept, read and reconnect again as before. */
  resumeAfterHandover(): void {
    if (this.stopped) return;
    if (this.listenFd >= 0 && !this.listenPoll) this.listenPoll = native.poll(this.listenFd, () => this.acceptPending());
    this.conn?.resume();
    if (this.opts.mode === 'client' && !this.conn && !this.retryTimer) this.retryTimer = setTimeout(() => this.tryConnect(), BACKOFF_MIN_MS);
  }

  /** The fds the next process needs: the listening socket and the frontend's connection. */
  get handoverFds(): { listen: number; conn: number } {
    return { listen: this.listenFd, conn: this.conn && !this.conn.isClosed ? this.conn.fd : -1 };
  }

  /**
   * The takeover succeeded: close our copies of everything without a word to the frontend
   * and without unlinking the socket path (the next process listens on it now).
   */
  abandon(): void {
    this.stopped = true;
    this.listenPoll?.close();
    this.listenPoll = null;
    safeClose(this.listenFd);
    this.listenFd = -1;
    this.conn?.abandon();
    this.conn = null;
    this.device?.abandon();
    this.device = null;
  }

  /** prepareAdopt() ran and finishAdopt() has not: the fds are ours but not polled yet */
  adopting = false;

  /**
   * Take what the previous process handed over (instead of start()): its listening socket,
   * and its frontend's connection with the device state and memory. Neither socket is polled
   * yet (the previous process still serves them) and no ring starts: finishAdopt() does that
   * once the previous process stopped (Forwarder.startFromHandover starts the rings).
   */
  prepareAdopt(listenFd: number, connFd: number, snap: DeviceSnapshot | null, fds: readonly number[]): void {
    this.adopting = true;
    if (listenFd >= 0) this.listenFd = listenFd;
    if (connFd >= 0 && snap) this.attach(connFd, snap, fds, false);
    else if (connFd >= 0) safeClose(connFd);
  }

  /** The previous process let go: accept and read (and reconnect, in client mode) from now on. */
  finishAdopt(): void {
    this.adopting = false;
    if (this.listenFd >= 0 && !this.listenPoll) {
      this.listenPoll = native.poll(this.listenFd, () => this.acceptPending());
      log.info('listening (taken over)', { iface: this.name, socket: this.opts.socket });
    }
    this.conn?.resume();
    if (this.opts.mode === 'client' && !this.conn) this.tryConnect();
  }

  /** Close the connection and the listening socket; unlink the socket path we created. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.refuseWaiting('shutting down');
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const d = this.device;
    this.conn?.close('shutting down');
    if (d) await d.release();
    this.listenPoll?.close();
    this.listenPoll = null;
    if (this.listenFd >= 0) {
      safeClose(this.listenFd);
      this.listenFd = -1;
      try {
        fs.unlinkSync(this.opts.socket);
      } catch {
        // already gone
      }
    }
  }
}
