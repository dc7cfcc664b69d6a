/**
 * An independent oracle for the vhost-user wire format, written by hand from QEMU's
 * docs/interop/vhost-user.rst ("Message Specification", "Communication", "Protocol
 * features", "Front-end message types"), sharing no code and no constant with src/:
 * request ids, request payload sizes, file descriptor counts, which requests the back-end
 * answers, the protocol feature that gates each request, and byte layouts with golden
 * bytes. The codec tests compare the backend's request table, constants, encoders and
 * parsers with it; the message fuzzer takes its expectations from it. A wrong entry in
 * src/ then fails against the document instead of agreeing with itself.
 *
 * All numbers are in the machine's native byte order (the document's note), little-endian
 * on every machine vhostfwd runs on.
 */

/** Header flags ("Header": lower 2 bits version 0x01, bit 2 reply, bit 3 need_reply). */
export const SPEC_FLAGS = { VERSION: 0x1, REPLY: 0x4, NEED_REPLY: 0x8 } as const;
/** 3 x u32: request, flags, size. */
export const SPEC_HEADER_SIZE = 12;

/** "Protocol features" (#define VHOST_USER_PROTOCOL_F_*). */
export const SPEC_PF = {
  MQ: 0, LOG_SHMFD: 1, RARP: 2, REPLY_ACK: 3, MTU: 4, SLAVE_REQ: 5, CROSS_ENDIAN: 6, CRYPTO_SESSION: 7, PAGEFAULT: 8,
  CONFIG: 9, SLAVE_SEND_FD: 10, HOST_NOTIFIER: 11, INFLIGHT_SHMFD: 12, RESET_DEVICE: 13, INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15, STATUS: 16,
} as const;
/** "#define VHOST_USER_F_PROTOCOL_FEATURES 30" */
export const SPEC_F_PROTOCOL_FEATURES = 30;

/** Payload layouts of "Payload" with their sizes in bytes. */
const SPEC_PAYLOAD = {
  none: 0,
  /** a single 64-bit integer */
  u64: 8,
  /** vring state description: u32 index, u32 num */
  state: 8,
  /** vring address description: u32 index, u32 flags, u64 descriptor, u64 used, u64 available, u64 log */
  addr: 40,
  /** one region: u64 guest address, u64 size, u64 user address, u64 mmap offset */
  region: 32,
  /** memory regions description: u32 num regions, u32 padding, then num regions x region (at most 8) */
  memoryHeader: 8,
  /** single memory region description: u64 padding, then a region */
  singleRegion: 40,
  /** log description: u64 log size, u64 log offset */
  log: 16,
} as const;
const SPEC_MAX_REGIONS = 8;

/** How many file descriptors a request carries in its ancillary data. */
type SpecFds =
  | { kind: 'none' }
  | { kind: 'one' }
  /** one per memory region (SET_MEM_TABLE: "The size and ordering of the fds matches the number and ordering of memory regions") */
  | { kind: 'perRegion' }
  /** SET_VRING_KICK/CALL/ERR: one, unless bit 8 of the u64 (the invalid FD flag) is set: then none */
  | { kind: 'vringFile' }
  /** REM_MEM_REG: none SHOULD be passed; the back-end MAY accept one */
  | { kind: 'range'; min: number; max: number };

export interface SpecRequest {
  id: number;
  /** the name without VHOST_USER_ */
  name: string;
  /** request payload size: exact, or [min, max] */
  size: number | readonly [number, number];
  fds: SpecFds;
  /** the back-end sends a reply payload of its own ("Communication" and each request's reply payload) */
  replies: boolean;
  /** the protocol feature the document makes the request conditional on */
  gate?: number;
}

const none: SpecFds = { kind: 'none' };
const one: SpecFds = { kind: 'one' };
const vringFile: SpecFds = { kind: 'vringFile' };
const P = SPEC_PAYLOAD;

/**
 * "Front-end message types", ids 1..40. Only the requests a back-end for virtio-net can be
 * sent; the rest (crypto, GPU, postcopy, inflight, config, IOTLB) are listed in
 * SPEC_OTHER_IDS.
 */
export const SPEC_REQUESTS: readonly SpecRequest[] = [
  { id: 1, name: 'GET_FEATURES', size: P.none, fds: none, replies: true },
  { id: 2, name: 'SET_FEATURES', size: P.u64, fds: none, replies: false },
  { id: 3, name: 'SET_OWNER', size: P.none, fds: none, replies: false },
  { id: 4, name: 'RESET_OWNER', size: P.none, fds: none, replies: false },
  { id: 5, name: 'SET_MEM_TABLE', size: [P.memoryHeader + P.region, P.memoryHeader + SPEC_MAX_REGIONS * P.region], fds: { kind: 'perRegion' }, replies: false },
  // "the size and offset of shared memory area provided in the message" (the log description);
  // with LOG_SHMFD the fd comes along and the back-end replies ("Communication")
  { id: 6, name: 'SET_LOG_BASE', size: P.log, fds: one, replies: true, gate: SPEC_PF.LOG_SHMFD },
  { id: 7, name: 'SET_LOG_FD', size: P.none, fds: one, replies: false },
  { id: 8, name: 'SET_VRING_NUM', size: P.state, fds: none, replies: false },
  { id: 9, name: 'SET_VRING_ADDR', size: P.addr, fds: none, replies: false },
  { id: 10, name: 'SET_VRING_BASE', size: P.state, fds: none, replies: false },
  { id: 11, name: 'GET_VRING_BASE', size: P.state, fds: none, replies: true },
  { id: 12, name: 'SET_VRING_KICK', size: P.u64, fds: vringFile, replies: false },
  { id: 13, name: 'SET_VRING_CALL', size: P.u64, fds: vringFile, replies: false },
  { id: 14, name: 'SET_VRING_ERR', size: P.u64, fds: vringFile, replies: false },
  { id: 15, name: 'GET_PROTOCOL_FEATURES', size: P.none, fds: none, replies: true },
  { id: 16, name: 'SET_PROTOCOL_FEATURES', size: P.u64, fds: none, replies: false },
  { id: 17, name: 'GET_QUEUE_NUM', size: P.none, fds: none, replies: true, gate: SPEC_PF.MQ },
  { id: 18, name: 'SET_VRING_ENABLE', size: P.state, fds: none, replies: false },
  { id: 19, name: 'SEND_RARP', size: P.u64, fds: none, replies: false, gate: SPEC_PF.RARP },
  { id: 20, name: 'NET_SET_MTU', size: P.u64, fds: none, replies: false, gate: SPEC_PF.MTU },
  { id: 34, name: 'RESET_DEVICE', size: P.none, fds: none, replies: false, gate: SPEC_PF.RESET_DEVICE },
  { id: 36, name: 'GET_MAX_MEM_SLOTS', size: P.none, fds: none, replies: true, gate: SPEC_PF.CONFIGURE_MEM_SLOTS },
  { id: 37, name: 'ADD_MEM_REG', size: P.singleRegion, fds: one, replies: false, gate: SPEC_PF.CONFIGURE_MEM_SLOTS },
  { id: 38, name: 'REM_MEM_REG', size: P.singleRegion, fds: { kind: 'range', min: 0, max: 1 }, replies: false, gate: SPEC_PF.CONFIGURE_MEM_SLOTS },
  { id: 39, name: 'SET_STATUS', size: P.u64, fds: none, replies: false, gate: SPEC_PF.STATUS },
  { id: 40, name: 'GET_STATUS', size: P.none, fds: none, replies: true, gate: SPEC_PF.STATUS },
];

/** The other front-end request ids of the document, by name (not served by a net back-end without those features). */
export const SPEC_OTHER_IDS: Readonly<Record<string, number>> = {
  SET_SLAVE_REQ_FD: 21, IOTLB_MSG: 22, SET_VRING_ENDIAN: 23, GET_CONFIG: 24, SET_CONFIG: 25, CREATE_CRYPTO_SESSION: 26,
  CLOSE_CRYPTO_SESSION: 27, POSTCOPY_ADVISE: 28, POSTCOPY_LISTEN: 29, POSTCOPY_END: 30, GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32, GPU_SET_SOCKET: 33, VRING_KICK: 35,
};

/**
 * Where vhostfwd accepts more than the document describes, on purpose; each entry is a
 * superset of the document's rule (the codec test checks that) and says why.
 */
export const VHOSTFWD_TOLERATES: Readonly<Record<string, { size?: readonly [number, number]; why: string }>> = {
  RESET_OWNER: { size: [0, 8], why: 'deprecated; older frontends sent it with a u64 payload' },
  SET_LOG_FD: { size: [0, 8], why: 'the document gives no payload; a u64 (as SET_VRING_*) is accepted and ignored' },
};


export function specById(id: number): SpecRequest | undefined {
  return SPEC_REQUESTS.find((x) => x.id === id);
}

/** The payload sizes the document (plus VHOSTFWD_TOLERATES) allows for a request. */
export function allowedSize(r: SpecRequest): readonly [number, number] {
  const tol = VHOSTFWD_TOLERATES[r.name]?.size;
  if (tol) return tol;
  return typeof r.size === 'number' ? [r.size, r.size] : r.size;
}

/** The fd counts the document allows for this request with this payload: [min, max]. */
export function allowedFds(r: SpecRequest, payload: Uint8Array): readonly [number, number] {
  const dv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  switch (r.fds.kind) {
    case 'none':
      return [0, 0];
    case 'one':
      return [1, 1];
    case 'perRegion': {
      const n = payload.length >= 4 ? dv.getUint32(0, true) : 0;
      return [n, n];
    }
    case 'vringFile': {
      const noFd = payload.length >= 4 && (dv.getUint32(0, true) & 0x100) !== 0;
      return noFd ? [0, 0] : [1, 1];
    }
    case 'range':
      return [r.fds.min, r.fds.max];
  }
}

// ---- byte layouts, field by field in the document's order (little-endian) ----

function u32(v: number): number[] {
  return [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
}
function u64(v: bigint): number[] {
  const out: number[] = [];
  for (let i = 0n; i < 8n; i++) out.push(Number((v >> (8n * i)) & 0xffn));
  return out;
}

export function specHeader(request: number, flags: number, size: number): Uint8Array {
  return Uint8Array.from([...u32(request), ...u32(flags), ...u32(size)]);
}
export function specMessage(request: number, flags: number, payload: Uint8Array): Uint8Array {
  return Uint8Array.from([...specHeader(request, flags, payload.length), ...payload]);
}
export function specU64(v: bigint): Uint8Array {
  return Uint8Array.from(u64(v));
}
export function specState(index: number, num: number): Uint8Array {
  return Uint8Array.from([...u32(index), ...u32(num)]);
}
/** vring address description: index, flags, descriptor, used, available, log (used before available). */
export function specAddr(a: { index: number; flags: number; desc: bigint; used: bigint; avail: bigint; log: bigint }): Uint8Array {
  return Uint8Array.from([...u32(a.index), ...u32(a.flags), ...u64(a.desc), ...u64(a.used), ...u64(a.avail), ...u64(a.log)]);
}
export interface SpecRegion {
  gpa: bigint;
  size: bigint;
  uva: bigint;
  mmapOffset: bigint;
}
function region(r: SpecRegion): number[] {
  return [...u64(r.gpa), ...u64(r.size), ...u64(r.uva), ...u64(r.mmapOffset)];
}
export function specMemory(regions: readonly SpecRegion[]): Uint8Array {
  return Uint8Array.from([...u32(regions.length), ...u32(0), ...regions.flatMap(region)]);
}
export function specSingleRegion(r: SpecRegion): Uint8Array {
  return Uint8Array.from([...u64(0n), ...region(r)]);
}
export function specLog(size: bigint, offset: bigint): Uint8Array {
  return Uint8Array.from([...u64(size), ...u64(offset)]);
}

/** Hex of bytes, space-free, for golden comparisons. */
export function hex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

/**
 * Golden messages: literal bytes written out by hand from the layouts above (header:
 * request, flags, size; then the payload), one per payload shape the backend handles.
 */
export const GOLDEN = {
  /** GET_FEATURES, version 1, no payload */
  getFeatures: '01000000' + '01000000' + '00000000',
  /** SET_FEATURES with need_reply, u64 = VERSION_1 (bit 32) | PROTOCOL_FEATURES (bit 30) = 0x1_4000_0000 */
  setFeatures: '02000000' + '09000000' + '08000000' + '0000004001000000',
  /** a reply to GET_FEATURES: flags version | reply, u64 0x1_4000_0000 */
  getFeaturesReply: '01000000' + '05000000' + '08000000' + '0000004001000000',
  /** SET_VRING_NUM {index 1, num 256} */
  setVringNum: '08000000' + '01000000' + '08000000' + '01000000' + '00010000',
  /** GET_VRING_BASE reply {index 1, num 17} */
  getVringBaseReply: '0b000000' + '05000000' + '08000000' + '01000000' + '11000000',
  /** SET_VRING_ADDR {index 1, flags 1 (log), desc 0x7f0000001000, used 0x7f0000003000, avail 0x7f0000002000, log 0x3000} */
  setVringAddr:
    '09000000' + '01000000' + '28000000' +
    '01000000' + '01000000' + '00100000007f0000' + '00300000007f0000' + '00200000007f0000' + '0030000000000000',
  /** SET_MEM_TABLE, one region {gpa 0, size 0x10000000, uva 0x7f1200000000, mmap offset 0} */
  setMemTable:
    '05000000' + '01000000' + '28000000' +
    '01000000' + '00000000' + '0000000000000000' + '0000001000000000' + '00000000127f0000' + '0000000000000000',
  /** ADD_MEM_REG {gpa 0x100000000, size 0x8000000, uva 0x7f3400000000, mmap offset 0x1000} */
  addMemReg:
    '25000000' + '01000000' + '28000000' +
    '0000000000000000' + '0000000001000000' + '0000000800000000' + '00000000347f0000' + '0010000000000000',
  /** SET_LOG_BASE {log size 0x2000, log offset 0} */
  setLogBase: '06000000' + '01000000' + '10000000' + '0020000000000000' + '0000000000000000',
  /** SET_VRING_KICK for ring 1 with the invalid FD flag (bit 8): u64 0x101 */
  setVringKickNoFd: '0c000000' + '01000000' + '08000000' + '0101000000000000',
  /** SET_VRING_ENABLE {index 0, num 1} */
  setVringEnable: '12000000' + '01000000' + '08000000' + '00000000' + '01000000',
  /** REPLY_ACK success for SET_STATUS: flags version | reply, u64 0 */
  setStatusAck: '27000000' + '05000000' + '08000000' + '0000000000000000',
} as const;
