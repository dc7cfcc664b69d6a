/**
 * vhost-user wire format: a 12-byte header (u32 request, u32 flags, u32 size), `size`
 * bytes of payload, and file descriptors carried with SCM_RIGHTS on the header's bytes.
 *
 * The framer reassembles messages from a non-blocking stream: it says which buffer to read
 * into next and consumes what was read. It validates the header (version, size bound)
 * but not the request: the backend's src/main/request-table.ts checks per-request sizes and
 * fd counts. Shared by the backend (src/main/connection.ts) and our frontend.
 */
import { FLAG_NEED_REPLY, FLAG_REPLY, FLAG_VERSION, FLAG_VERSION_MASK, HEADER_SIZE, MAX_FDS, MAX_PAYLOAD, reqName } from './constants';

export interface Message {
  request: number;
  flags: number;
  payload: Buffer;
  /** fds received with the message; ownership passes to whoever handles the message. */
  fds: number[];
}

export function needsReply(m: Message): boolean {
  return (m.flags & FLAG_NEED_REPLY) !== 0;
}

/** A framing error: the stream cannot be trusted any more (the connection is closed). */
export class FrameError extends Error {
  constructor(reason: string) {
    super(reason);
    this.name = 'FrameError';
  }
}

export function encodeMessage(request: number, flags: number, payload: Uint8Array = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(HEADER_SIZE + payload.length);
  b.writeUInt32LE(request, 0);
  b.writeUInt32LE(flags, 4);
  b.writeUInt32LE(payload.length, 8);
  b.set(payload, HEADER_SIZE);
  return b;
}

export function encodeReply(request: number, payload: Uint8Array): Buffer {
  return encodeMessage(request, FLAG_VERSION | FLAG_REPLY, payload);
}

export class Framer {
  private readonly header = Buffer.alloc(HEADER_SIZE);
  private headerGot = 0;
  private payload: Buffer | null = null;
  private payloadGot = 0;
  private fds: number[] = [];
  private request = 0;
  private flags = 0;

  /** where the next read must land; never more than the rest of the current message. */
  nextBuffer(): Uint8Array {
    if (this.payload === null) return this.header.subarray(this.headerGot);
    return this.payload.subarray(this.payloadGot);
  }

  /** true when a message is partly read (for 'disconnect in the middle of a message'). */
  get partial(): boolean {
    return this.headerGot > 0 || this.fds.length > 0;
  }

  /** fds held for an incomplete message (closed by the owner on disconnect). */
  takeFds(): number[] {
    const f = this.fds;
    this.fds = [];
    return f;
  }

  /**
   * Account for `n` bytes just read into nextBuffer() and the fds that came with them.
   * Returns a whole message when one is complete. Throws FrameError on a bad header or
   * when fds arrive anywhere but with the header (a frontend never does that).
   */
  advance(n: number, fds: readonly number[]): Message | null {
    if (fds.length > 0) {
      for (const fd of fds) this.fds.push(fd);
      if (this.payload !== null || this.fds.length > MAX_FDS) {
        throw new FrameError(this.payload !== null ? 'file descriptors arrived with payload bytes' : `more than ${MAX_FDS} file descriptors`);
      }
    }
    if (this.payload === null) {
      this.headerGot += n;
      if (this.headerGot < HEADER_SIZE) return null;
      this.request = this.header.readUInt32LE(0);
      this.flags = this.header.readUInt32LE(4);
      const size = this.header.readUInt32LE(8);
      if ((this.flags & FLAG_VERSION_MASK) !== FLAG_VERSION) {
        throw new FrameError(`${reqName(this.request)}: unsupported version in flags 0x${this.flags.toString(16)}`);
      }
      if (size > MAX_PAYLOAD) {
        throw new FrameError(`${reqName(this.request)}: payload size ${size} exceeds ${MAX_PAYLOAD}`);
      }
      this.payload = Buffer.alloc(size);
      this.payloadGot = 0;
    } else {
      this.payloadGot += n;
    }
    if (this.payloadGot < this.payload.length) return null;
    const msg: Message = { request: this.request, flags: this.flags, payload: this.payload, fds: this.fds };
    this.payload = null;
    this.headerGot = 0;
    this.fds = [];
    return msg;
  }
}
