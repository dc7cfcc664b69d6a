/**
 * The message layer of our TypeScript vhost-user frontend: sends requests (with fds)
 * and awaits replies, in order, over a non-blocking unix socket watched by the libuv loop.
 * Used by the test driver, the benchmark and the demo; reuses the backend's codec.
 */
import { native, PollHandle } from '../native';
import { setTimeout as sleep } from 'node:timers/promises';
import { Framer, Message, encodeMessage } from '../protocol/codec';
import { FLAG_NEED_REPLY, FLAG_REPLY, FLAG_VERSION, reqName } from '../protocol/constants';

interface Pending {
  request: number;
  resolve: (m: Message) => void;
  reject: (e: Error) => void;
}

export class VhostUserClient {
  private readonly framer = new Framer();
  private poll: PollHandle | null = null;
  private readonly pending: Pending[] = [];
  private closedReason: string | null = null;
  private readonly closeWaiters: Array<(reason: string) => void> = [];

  private constructor(readonly fd: number) {
    this.poll = native.poll(fd, () => this.readable());
  }

  /** Connect to a backend listening at `path` (retrying until `timeoutMs`). */
  static async connect(path: string, timeoutMs = 5000): Promise<VhostUserClient> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      try {
        return new VhostUserClient(native.connect(path));
      } catch (e) {
        if (Date.now() > end) throw e;
        await sleep(20);
      }
    }
  }

  /** Wrap an already connected fd (client-mode backends connect to us). */
  static fromFd(fd: number): VhostUserClient {
    return new VhostUserClient(fd);
  }

  get closed(): string | null {
    return this.closedReason;
  }

  /** Resolves with the reason once the backend closes the connection. */
  waitClosed(): Promise<string> {
    if (this.closedReason !== null) return Promise.resolve(this.closedReason);
    return new Promise((r) => this.closeWaiters.push(r));
  }

  /** Send a request; no reply expected. */
  send(request: number, payload: Uint8Array = Buffer.alloc(0), fds: readonly number[] = [], flags = FLAG_VERSION): void {
    if (this.closedReason !== null) throw new Error(`connection closed: ${this.closedReason}`);
    native.sendmsg(this.fd, encodeMessage(request, flags, payload), fds);
  }

  /** Send a request and wait for its reply (a GET_*, or any request sent with NEED_REPLY). */
  call(request: number, payload: Uint8Array = Buffer.alloc(0), fds: readonly number[] = [], needReply = false): Promise<Message> {
    const p = new Promise<Message>((resolve, reject) => this.pending.push({ request, resolve, reject }));
    try {
      this.send(request, payload, fds, FLAG_VERSION | (needReply ? FLAG_NEED_REPLY : 0));
    } catch (e) {
      this.pending.pop();
      return Promise.reject(e);
    }
    return p;
  }

  /** call() and read the reply as a u64. */
  async callU64(request: number, payload?: Uint8Array, fds?: readonly number[], needReply = false): Promise<bigint> {
    const m = await this.call(request, payload, fds, needReply);
    if (m.payload.length !== 8) throw new Error(`${reqName(request)} reply of ${m.payload.length} bytes`);
    return m.payload.readBigUInt64LE(0);
  }

  close(): void {
    this.shutdown('closed by frontend');
  }

  private readable(): void {
    try {
      for (;;) {
        const buf = this.framer.nextBuffer();
        const r = native.recvmsg(this.fd, buf);
        if (r.bytes === -1) return;
        if (r.bytes === 0) {
          this.shutdown('backend closed the connection');
          return;
        }
        const m = this.framer.advance(r.bytes, r.fds);
        if (m) this.deliver(m);
      }
    } catch (e) {
      this.shutdown((e as Error).message);
    }
  }

  private deliver(m: Message): void {
    const p = this.pending.shift();
    if (!p) return; // unsolicited: backend-initiated requests are not negotiated
    if ((m.flags & FLAG_REPLY) === 0 || m.request !== p.request) {
      p.reject(new Error(`expected reply to ${reqName(p.request)}, got ${reqName(m.request)} flags 0x${m.flags.toString(16)}`));
      return;
    }
    p.resolve(m);
  }

  private shutdown(reason: string): void {
    if (this.closedReason !== null) return;
    this.closedReason = reason;
    this.poll?.close();
    this.poll = null;
    try {
      native.close(this.fd);
    } catch {
      // already closed
    }
    for (const p of this.pending.splice(0)) p.reject(new Error(`connection closed: ${reason}`));
    for (const w of this.closeWaiters.splice(0)) w(reason);
  }
}
