/**
 * The one table of vhost-user requests the backend serves (after DPDK lib/vhost's
 * handler table and rust-vmm vhost's backend_req_handler.rs): name, payload size, fd
 * count, the protocol feature that must be acked, whether it has a reply payload, what
 * the datapath does around it, the parser of its wire struct (src/protocol/messages.ts), and the typed
 * handler. Device.handle() checks size, fds and gating here, parses the payload into its
 * typed value, pauses as the `pause` column says, and only then runs the handler: a
 * handler never sees a Message, only a validated typed payload (and the fds, counted).
 *
 * The handlers are the methods of BackendRequests, declared here and implemented by
 * Device: this module does not import device.ts.
 */
import { MAX_REGIONS, PF, Req, VRING_NOFD_MASK, reqName } from '../protocol/constants';
import { Message } from '../protocol/codec';
import {
  LogArea, MemoryRegion, REGION_SIZE, VringAddr, VringFile, VringState, parseLog, parseMemoryTable, parseRarpMac, parseSingleRegion, parseU64,
  parseVringAddr, parseVringFile, parseVringState,
} from '../protocol/messages';

/** What a handler gets with its typed payload. */
export interface RequestContext {
  /** the request's name, from its table entry: errors and log lines name it. */
  readonly name: string;
  /**
   * The message's fds, their number already checked against the table's `fds` rule. A
   * handler takes the ones it keeps (splice); whatever is left is closed if it fails.
   */
  readonly fds: number[];
}

type Reply = Buffer | void | Promise<Buffer | void>;

/**
 * The typed handlers, one per request in the table (implemented by Device). Each gets the
 * value its wire struct parsed into, already checked by the struct's own parser; the
 * checks that need the device's state (ring index in range, features offered, ...) are
 * the handler's, and throw a ProtocolError naming `rq.name`.
 */
export interface BackendRequests {
  getFeatures(): Buffer;
  setFeatures(features: bigint, rq: RequestContext): Promise<void>;
  /** SET_FEATURES' `pause` decision: true when `features` will be accepted and change more than LOG_ALL. */
  featuresChangeRingLayout(features: bigint): boolean;
  setOwner(): void;
  resetOwner(): void;
  setMemTable(regions: MemoryRegion[], rq: RequestContext): void;
  setLogBase(area: LogArea, rq: RequestContext): Promise<Buffer>;
  setLogFd(rq: RequestContext): void;
  setVringNum(state: VringState, rq: RequestContext): void;
  setVringAddr(addr: VringAddr, rq: RequestContext): Promise<void>;
  setVringBase(state: VringState, rq: RequestContext): void;
  getVringBase(state: VringState, rq: RequestContext): Promise<Buffer>;
  setVringKick(file: VringFile, rq: RequestContext): void;
  setVringCall(file: VringFile, rq: RequestContext): void;
  setVringErr(file: VringFile, rq: RequestContext): void;
  getProtocolFeatures(): Buffer;
  setProtocolFeatures(features: bigint, rq: RequestContext): void;
  getQueueNum(): Buffer;
  setVringEnable(state: VringState, rq: RequestContext): Promise<void>;
  sendRarp(mac: Buffer): void;
  netSetMtu(mtu: bigint, rq: RequestContext): void;
  getMaxMemSlots(): Buffer;
  addMemReg(region: MemoryRegion, rq: RequestContext): void;
  remMemReg(region: MemoryRegion, rq: RequestContext): void;
  setStatus(status: bigint, rq: RequestContext): void;
  getStatus(): Buffer;
  resetDevice(): void;
}

/** Every running ring of the device stops first when `when` says so, decided on the typed payload and the device's state. */
interface PauseAllWhen<P> {
  when(h: BackendRequests, payload: P): boolean;
  why: string;
}

/**
 * What the datapath does around a request. This column is the whole truth: no handler
 * stops rings on its own except the `ownRing` ones, each for the reason written there.
 *  - 'none': nothing stops (the handler changes nothing a worker reads, or changes it in
 *    place and waits for the workers' ack);
 *  - 'all': every running ring of the device stops before the handler (after the
 *    workers confirm) and restarts after it (Device.resumeRings);
 *  - PauseAllWhen: 'all' when its `when` holds, else 'none';
 *  - ownRing: the table stops nothing; the handler stops at most the ring its payload
 *    names, because stopping the others would drop what they carry for no reason.
 */
type Pause<P> = 'none' | 'all' | PauseAllWhen<P> | { ownRing: string };

type FdRule = number | { min: number; max: number };

export interface RequestSpec<P = unknown> {
  name: keyof typeof Req;
  /** exact payload size, or a range for variable-size payloads. */
  size: number | { min: number; max: number };
  /** how many fds must come with the message (may depend on the payload). */
  fds: (m: Message) => FdRule;
  /** the protocol feature that must have been acked before this request is valid. */
  protocolFeature?: number;
  /** request only valid when VHOST_USER_F_PROTOCOL_FEATURES is offered. */
  needsProtocolFeatures?: boolean;
  /** the request has a reply payload of its own (REPLY_ACK does not add a second one). */
  replies: boolean;
  pause: Pause<P>;
  /** the wire struct's parser (src/protocol/messages.ts): its own validity checks, errors named `name`. */
  parse(payload: Buffer, name: string): P;
  handle(h: BackendRequests, payload: P, rq: RequestContext): Reply;
}

/** Whether every running ring must stop before `spec`'s handler runs with `payload`. */
export function pausesAllRings<P>(spec: RequestSpec<P>, h: BackendRequests, payload: P): boolean {
  const p = spec.pause;
  if (p === 'all' || p === 'none') return p === 'all';
  return 'when' in p && p.when(h, payload);
}

const none = (): FdRule => 0;
const one = (): FdRule => 1;
/** SET_VRING_KICK/CALL/ERR: one fd unless bit 8 (no fd) is set in the u64. */
const vringFd = (m: Message): FdRule => (m.payload.length >= 8 && (m.payload.readUInt32LE(0) & VRING_NOFD_MASK) ? 0 : 1);
/** SET_MEM_TABLE: one fd per region. */
const regionFds = (m: Message): FdRule => (m.payload.length >= 4 ? Math.min(m.payload.readUInt32LE(0), MAX_REGIONS + 1) : 0);

/** No payload, or one the backend ignores (RESET_OWNER's, SET_LOG_FD's). */
const nothing = (): undefined => undefined;

/** Infers each entry's payload type, so that its parser and its handler must agree. */
const entry = <P>(s: RequestSpec<P>): RequestSpec<P> => s;

const U64 = 8;
const STATE = 8;
const ADDR = 40;

const specs: RequestSpec[] = [
  entry({ name: 'GET_FEATURES', size: 0, fds: none, replies: true, pause: 'none', parse: nothing, handle: (h) => h.getFeatures() }),
  entry({
    name: 'SET_FEATURES', size: U64, fds: none, replies: false,
    pause: {
      when: (h, f) => h.featuresChangeRingLayout(f),
      why: 'a change besides LOG_ALL re-derives the rings (header length, event idx, ...): every running ring stops. LOG_ALL alone '
        + '(migration starting or ending) is applied to the running rings in place (setRingLogging, acked by the workers): nothing is dropped. '
        + 'Features that were not offered stop nothing: the handler refuses them and the device is reset.',
    },
    parse: parseU64, handle: (h, f, rq) => h.setFeatures(f, rq),
  }),
  entry({ name: 'SET_OWNER', size: 0, fds: none, replies: false, pause: 'none', parse: nothing, handle: (h) => h.setOwner() }),
  entry({ name: 'RESET_OWNER', size: { min: 0, max: U64 }, fds: none, replies: false, pause: 'all', parse: nothing, handle: (h) => h.resetOwner() }),
  entry({
    name: 'SET_MEM_TABLE', size: { min: 8 + REGION_SIZE, max: 8 + MAX_REGIONS * REGION_SIZE }, fds: regionFds, replies: false, pause: 'all',
    parse: parseMemoryTable, handle: (h, regions, rq) => h.setMemTable(regions, rq),
  }),
  entry({
    name: 'SET_LOG_BASE', size: 16, fds: one, protocolFeature: PF.LOG_SHMFD, replies: true, pause: 'none',
    parse: parseLog, handle: (h, area, rq) => h.setLogBase(area, rq),
  }),
  entry({ name: 'SET_LOG_FD', size: { min: 0, max: U64 }, fds: one, replies: false, pause: 'none', parse: nothing, handle: (h, _, rq) => h.setLogFd(rq) }),
  entry({ name: 'SET_VRING_NUM', size: STATE, fds: none, replies: false, pause: 'all', parse: parseVringState, handle: (h, s, rq) => h.setVringNum(s, rq) }),
  entry({
    name: 'SET_VRING_ADDR', size: ADDR, fds: none, replies: false,
    pause: {
      ownRing: 'stops its ring only when the ring moves (new descriptor, available or used address); a started ring whose three '
        + 'addresses stay (migration setting VHOST_VRING_F_LOG or a log address) keeps running and takes its new used-ring log in place. '
        + 'No other ring depends on this ring\'s addresses.',
    },
    parse: parseVringAddr, handle: (h, a, rq) => h.setVringAddr(a, rq),
  }),
  entry({ name: 'SET_VRING_BASE', size: STATE, fds: none, replies: false, pause: 'all', parse: parseVringState, handle: (h, s, rq) => h.setVringBase(s, rq) }),
  entry({
    name: 'GET_VRING_BASE', size: STATE, fds: none, replies: true,
    pause: {
      ownRing: 'stops only the ring it reads (last_avail_idx is final once its worker confirms); the frontend sends one per ring '
        + 'when it stops the device, and the other rings keep forwarding until their own.',
    },
    parse: parseVringState, handle: (h, s, rq) => h.getVringBase(s, rq),
  }),
  entry({ name: 'SET_VRING_KICK', size: U64, fds: vringFd, replies: false, pause: 'all', parse: parseVringFile, handle: (h, f, rq) => h.setVringKick(f, rq) }),
  entry({ name: 'SET_VRING_CALL', size: U64, fds: vringFd, replies: false, pause: 'all', parse: parseVringFile, handle: (h, f, rq) => h.setVringCall(f, rq) }),
  entry({ name: 'SET_VRING_ERR', size: U64, fds: vringFd, replies: false, pause: 'none', parse: parseVringFile, handle: (h, f, rq) => h.setVringErr(f, rq) }),
  entry({ name: 'GET_PROTOCOL_FEATURES', size: 0, fds: none, needsProtocolFeatures: true, replies: true, pause: 'none', parse: nothing, handle: (h) => h.getProtocolFeatures() }),
  entry({
    name: 'SET_PROTOCOL_FEATURES', size: U64, fds: none, needsProtocolFeatures: true, replies: false, pause: 'none',
    parse: parseU64, handle: (h, f, rq) => h.setProtocolFeatures(f, rq),
  }),
  entry({ name: 'GET_QUEUE_NUM', size: 0, fds: none, protocolFeature: PF.MQ, replies: true, pause: 'none', parse: nothing, handle: (h) => h.getQueueNum() }),
  entry({
    name: 'SET_VRING_ENABLE', size: STATE, fds: none, needsProtocolFeatures: true, replies: false,
    pause: {
      ownRing: 'disabling stops only that ring (enabling starts it after the handler, in resumeRings): QEMU sends one per ring '
        + 'whenever a multi-queue guest changes its queue pairs (ethtool -L), and pausing every ring for each dropped what other ports sent meanwhile.',
    },
    parse: parseVringState, handle: (h, s, rq) => h.setVringEnable(s, rq),
  }),
  entry({ name: 'SEND_RARP', size: U64, fds: none, protocolFeature: PF.RARP, replies: false, pause: 'none', parse: parseRarpMac, handle: (h, mac) => h.sendRarp(mac) }),
  entry({ name: 'NET_SET_MTU', size: U64, fds: none, protocolFeature: PF.NET_MTU, replies: false, pause: 'none', parse: parseU64, handle: (h, mtu, rq) => h.netSetMtu(mtu, rq) }),
  entry({ name: 'GET_MAX_MEM_SLOTS', size: 0, fds: none, protocolFeature: PF.CONFIGURE_MEM_SLOTS, replies: true, pause: 'none', parse: nothing, handle: (h) => h.getMaxMemSlots() }),
  entry({
    name: 'ADD_MEM_REG', size: 8 + REGION_SIZE, fds: one, protocolFeature: PF.CONFIGURE_MEM_SLOTS, replies: false, pause: 'all',
    parse: parseSingleRegion, handle: (h, r, rq) => h.addMemReg(r, rq),
  }),
  entry({
    name: 'REM_MEM_REG', size: 8 + REGION_SIZE, fds: () => ({ min: 0, max: 1 }), protocolFeature: PF.CONFIGURE_MEM_SLOTS, replies: false, pause: 'all',
    parse: parseSingleRegion, handle: (h, r, rq) => h.remMemReg(r, rq),
  }),
  entry({ name: 'SET_STATUS', size: U64, fds: none, protocolFeature: PF.STATUS, replies: false, pause: 'none', parse: parseU64, handle: (h, s, rq) => h.setStatus(s, rq) }),
  entry({ name: 'GET_STATUS', size: 0, fds: none, protocolFeature: PF.STATUS, replies: true, pause: 'none', parse: nothing, handle: (h) => h.getStatus() }),
  entry({ name: 'RESET_DEVICE', size: 0, fds: none, protocolFeature: PF.RESET_DEVICE, replies: false, pause: 'all', parse: nothing, handle: (h) => h.resetDevice() }),
];

export const REQUESTS: ReadonlyMap<number, RequestSpec> = new Map(specs.map((s) => [Req[s.name], s] as const));

// The table names must be the spec's names (the type says so; this catches a cast).
for (const [code, s] of REQUESTS) {
  if (code === undefined || reqName(code) !== s.name) throw new Error(`request table: unknown request name ${s.name}`);
}
