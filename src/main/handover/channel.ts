/**
 * The takeover channel between a running vhostfwd and its successor: one unix stream
 * socket carrying JSON messages with file descriptors (SCM_RIGHTS).
 *
 * Frame: u32 LE JSON length, u32 LE fd count, the JSON; up to 8 fds ride with its first
 * byte (the addon's recvmsg takes 8 at most). A message with more fds is sent as a first
 * frame and as many `{"more":true}` frames as its fds need. Every frame is answered by an
 * ack frame before the next one goes: a unix stream socket may hand two frames to one
 * recvmsg, and then their fds could not be told apart; in lockstep each read sees one frame.
 *
 * Blocking with deadlines on purpose: a takeover is a short, ordered conversation while the
 * rings stand still, and nothing else of the process may run in between (no vhost-user
 * request, no control request); every wait is bounded, a peer that hangs is a named error.
 */
import { native, PollHandle } from '../../native';
import { safeClose } from '../connection';

const MAX_FDS_PER_FRAME = 8;
/** a state message holds the MAC table (256 KiB as base64) and every device: bounded anyway */
const MAX_FRAME = 64 << 20;

export class HandoverError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HandoverError';
  }
}

export class HandoverChannel {
  private readonly head = Buffer.alloc(8);

  constructor(readonly fd: number, private readonly timeoutMs: number) {}

  /** Send `msg` with `fds` (any number); returns once the peer acknowledged every frame. */
  send(msg: unknown, fds: readonly number[] = []): void {
    this.frame(msg, fds.slice(0, MAX_FDS_PER_FRAME), fds.length);
    for (let i = MAX_FDS_PER_FRAME; i < fds.length; i += MAX_FDS_PER_FRAME) this.frame({ more: true }, fds.slice(i, i + MAX_FDS_PER_FRAME), 0);
  }

  /** Receive one message and all of its fds (acknowledging each frame). */
  recv(): { msg: Record<string, unknown>; fds: number[] } {
    const first = this.readFrame();
    this.ack();
    const fds = first.fds;
    try {
      while (fds.length < first.total) {
        const more = this.readFrame();
        fds.push(...more.fds);
        this.ack();
      }
    } catch (e) {
      for (const fd of fds) safeClose(fd);
      throw e;
    }
    return { msg: first.msg, fds };
  }

  /**
   * Like recv(), but waits for the first byte on the event loop instead of blocking the
   * thread: the running process serves its frontends while its successor starts up.
   */
  async recvLater(timeoutMs = this.timeoutMs): Promise<{ msg: Record<string, unknown>; fds: number[] }> {
    await new Promise<void>((resolve, reject) => {
      let handle: PollHandle | null = null;
      const timer = setTimeout(() => {
        handle?.close();
        reject(new HandoverError(`the other process sent nothing for ${timeoutMs} ms`));
      }, timeoutMs);
      handle = native.poll(this.fd, () => {
        handle?.close();
        clearTimeout(timer);
        resolve();
      });
    });
    return this.recv();
  }

  close(): void {
    safeClose(this.fd);
  }

  private frame(msg: unknown, fds: readonly number[], total: number): void {
    const json = Buffer.from(JSON.stringify(msg));
    const head = Buffer.alloc(8);
    head.writeUInt32LE(json.length, 0);
    head.writeUInt32LE(total, 4);
    try {
      native.sendmsg(this.fd, Buffer.concat([head, json]), fds, this.timeoutMs);
    } catch (e) {
      throw new HandoverError(`sending to the other process failed: ${(e as Error).message}`);
    }
    const a = this.readFrame();
    if (a.msg.ack !== true) throw new HandoverError(`expected an acknowledgement, got ${JSON.stringify(a.msg).slice(0, 200)}`);
  }

  private ack(): void {
    const json = Buffer.from('{"ack":true}');
    const head = Buffer.alloc(8);
    head.writeUInt32LE(json.length, 0);
    try {
      native.sendmsg(this.fd, Buffer.concat([head, json]), [], this.timeoutMs);
    } catch (e) {
      throw new HandoverError(`sending to the other process failed: ${(e as Error).message}`);
    }
  }

  private readFrame(): { msg: Record<string, unknown>; fds: number[]; total: number } {
    const fds: number[] = [];
    try {
      this.readExact(this.head, fds);
      const len = this.head.readUInt32LE(0);
      const total = this.head.readUInt32LE(4);
      if (len === 0 || len > MAX_FRAME) throw new HandoverError(`a frame of ${len} bytes`);
      const body = Buffer.alloc(len);
      this.readExact(body, fds);
      let msg: unknown;
      try {
        msg = JSON.parse(body.toString('utf8'));
      } catch (e) {
        throw new HandoverError(`a frame that is not JSON: ${(e as Error).message}`);
      }
      if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) throw new HandoverError('a frame that is not a JSON object');
      return { msg: msg as Record<string, unknown>, fds, total };
    } catch (e) {
      for (const fd of fds) safeClose(fd);
      throw e;
    }
  }

  private readExact(buf: Buffer, fds: number[]): void {
    const end = Date.now() + this.timeoutMs;
    let got = 0;
    while (got < buf.length) {
      const left = end - Date.now();
      if (left <= 0 || !native.waitReadable(this.fd, left)) throw new HandoverError(`the other process sent nothing for ${this.timeoutMs} ms`);
      let r;
      try {
        r = native.recvmsg(this.fd, buf.subarray(got));
      } catch (e) {
        throw new HandoverError(`reading from the other process failed: ${(e as Error).message}`);
      }
      fds.push(...r.fds);
      if (r.bytes === 0) throw new HandoverError('the other process closed the handover socket');
      if (r.bytes > 0) got += r.bytes;
    }
  }
}
