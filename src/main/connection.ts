/**
 * One vhost-user connection: framing over a non-blocking unix socket, fds in and out,
 * readiness from the libuv loop (no busy polling, no blocking on the main thread).
 * Messages are handed to the handler one at a time: the next one is not dispatched
 * before the previous handler's promise settles (a GET_VRING_BASE waits for a worker).
 */
import { native, PollHandle, POLL_ERROR } from '../native';
import { Framer, FrameError, Message } from '../protocol/codec';

const SEND_TIMEOUT_MS = 1000;

export type MessageHandler = (m: Message) => Promise<void>;

export class Connection {
  private readonly framer = new Framer();
  private poll: PollHandle | null = null;
  private readonly queue: Message[] = [];
  private busy = false;
  private closed = false;

  constructor(
    readonly fd: number,
    private readonly onMessage: MessageHandler,
    private readonly onClose: (reason: string) => void,
  ) {}

  start(): void {
    this.poll = native.poll(this.fd, (ev) => this.readable(ev));
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** No message partly read, queued or being handled: a takeover may take the socket now. */
  get idle(): boolean {
    return !this.busy && this.queue.length === 0 && !this.framer.partial;
  }

  /** Stop reading (a takeover is handing the socket on); requests wait in the socket. */
  pause(): void {
    this.poll?.close();
    this.poll = null;
  }

  /** Read again after a takeover that failed (what arrived meanwhile is read at once). */
  resume(): void {
    if (!this.closed && !this.poll) this.start();
  }

  /** The takeover succeeded: the next process reads this socket; close our copy, report nothing. */
  abandon(): void {
    if (this.closed) return;
    this.closed = true;
    this.poll?.close();
    this.poll = null;
    safeClose(this.fd);
  }

  /** Send one message (header + payload already encoded) with optional fds. */
  send(bytes: Uint8Array, fds: readonly number[] = []): void {
    if (this.closed) return;
    try {
      // Bounded: a frontend that floods requests and never reads our replies must not
      // block the main thread (and with it every other interface's control plane).
      native.sendmsg(this.fd, bytes, fds, SEND_TIMEOUT_MS);
    } catch (e) {
      this.close(`cannot send a reply: ${(e as Error).message}`);
    }
  }

  /** Close the socket and every fd of a message not yet handled; report `reason` once. */
  close(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.poll?.close();
    this.poll = null;
    for (const fd of this.framer.takeFds()) safeClose(fd);
    for (const m of this.queue.splice(0)) for (const fd of m.fds) safeClose(fd);
    safeClose(this.fd);
    this.onClose(reason);
  }

  private readable(events: number): void {
    if (this.closed) return;
    if (events & POLL_ERROR) {
      // a hangup may still leave bytes to read: drain first, EOF then closes
    }
    try {
      for (;;) {
        const buf = this.framer.nextBuffer();
        const r = native.recvmsg(this.fd, buf);
        if (r.bytes === -1) break;
        if (r.bytes === 0 && buf.length > 0) {
          for (const fd of r.fds) safeClose(fd);
          this.close(this.framer.partial ? 'peer closed the socket in the middle of a message' : 'peer closed the socket');
          return;
        }
        const m = this.framer.advance(r.bytes, r.fds);
        if (m) this.queue.push(m);
      }
    } catch (e) {
      const err = e as Error & { code?: string };
      const why = err instanceof FrameError ? err.message : `recvmsg failed: ${err.code ?? ''} ${err.message}`;
      this.close(why);
      return;
    }
    void this.pump();
  }

  private async pump(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      while (!this.closed && this.queue.length > 0) {
        const m = this.queue.shift() as Message;
        await this.onMessage(m);
      }
    } finally {
      this.busy = false;
    }
  }
}

export function safeClose(fd: number): void {
  if (fd < 0) return;
  try {
    native.close(fd);
  } catch {
    // already closed: nothing to release
  }
}
