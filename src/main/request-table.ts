/**
 * The one table of vhost-user requests the backend serves (after DPDK lib/vhost's
 * handler table): name, payload size, fd count, the protocol feature that must be acked,
 * whether it has a reply payload, whether the datapath must pause around it, and the
 * typed handler. Device.handle() checks everything here before the handler runs.
 */
import { MAX_REGIONS, PF, Req, VRING_NOFD_MASK, reqName } from '../shared/constants';
import { Message } from './codec';
import type { Device } from './device';
import { REGION_SIZE } from './messages';

type FdRule = number | { min: number; max: number };

export interface RequestSpec {
  name: string;
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
  /** stop running rings of the device first (they restart after the handler). */
  pause: boolean;
  handle: (d: Device, m: Message) => Buffer | void | Promise<Buffer | void>;
}

const none = (): FdRule => 0;
const one = (): FdRule => 1;
/** SET_VRING_KICK/CALL/ERR: one fd unless bit 8 (no fd) is set in the u64. */
const vringFd = (m: Message): FdRule => (m.payload.length >= 8 && (m.payload.readUInt32LE(0) & VRING_NOFD_MASK) ? 0 : 1);
/** SET_MEM_TABLE: one fd per region. */
const regionFds = (m: Message): FdRule => (m.payload.length >= 4 ? Math.min(m.payload.readUInt32LE(0), MAX_REGIONS + 1) : 0);

const U64 = 8;
const STATE = 8;
const ADDR = 40;

const specs: RequestSpec[] = [
  { name: 'GET_FEATURES', size: 0, fds: none, replies: true, pause: false, handle: (d) => d.getFeatures() },
  { name: 'SET_FEATURES', size: U64, fds: none, replies: false, pause: false, handle: (d, m) => d.setFeatures(m) },
  { name: 'SET_OWNER', size: 0, fds: none, replies: false, pause: false, handle: (d) => d.setOwner() },
  { name: 'RESET_OWNER', size: { min: 0, max: U64 }, fds: none, replies: false, pause: true, handle: (d) => d.resetOwner() },
  { name: 'SET_MEM_TABLE', size: { min: 8 + REGION_SIZE, max: 8 + MAX_REGIONS * REGION_SIZE }, fds: regionFds, replies: false, pause: true, handle: (d, m) => d.setMemTable(m) },
  { name: 'SET_LOG_BASE', size: 16, fds: one, protocolFeature: PF.LOG_SHMFD, replies: true, pause: false, handle: (d, m) => d.setLogBase(m) },
  { name: 'SET_LOG_FD', size: { min: 0, max: U64 }, fds: one, replies: false, pause: false, handle: (d, m) => d.setLogFd(m) },
  { name: 'SET_VRING_NUM', size: STATE, fds: none, replies: false, pause: true, handle: (d, m) => d.setVringNum(m) },
  { name: 'SET_VRING_ADDR', size: ADDR, fds: none, replies: false, pause: false, handle: (d, m) => d.setVringAddr(m) },
  { name: 'SET_VRING_BASE', size: STATE, fds: none, replies: false, pause: true, handle: (d, m) => d.setVringBase(m) },
  { name: 'GET_VRING_BASE', size: STATE, fds: none, replies: true, pause: false, handle: (d, m) => d.getVringBase(m) },
  { name: 'SET_VRING_KICK', size: U64, fds: vringFd, replies: false, pause: true, handle: (d, m) => d.setVringKick(m) },
  { name: 'SET_VRING_CALL', size: U64, fds: vringFd, replies: false, pause: true, handle: (d, m) => d.setVringCall(m) },
  { name: 'SET_VRING_ERR', size: U64, fds: vringFd, replies: false, pause: false, handle: (d, m) => d.setVringErr(m) },
  { name: 'GET_PROTOCOL_FEATURES', size: 0, fds: none, needsProtocolFeatures: true, replies: true, pause: false, handle: (d) => d.getProtocolFeatures() },
  { name: 'SET_PROTOCOL_FEATURES', size: U64, fds: none, needsProtocolFeatures: true, replies: false, pause: false, handle: (d, m) => d.setProtocolFeatures(m) },
  { name: 'GET_QUEUE_NUM', size: 0, fds: none, protocolFeature: PF.MQ, replies: true, pause: false, handle: (d) => d.getQueueNum() },
  { name: 'SET_VRING_ENABLE', size: STATE, fds: none, needsProtocolFeatures: true, replies: false, pause: false, handle: (d, m) => d.setVringEnable(m) },
  { name: 'SEND_RARP', size: U64, fds: none, protocolFeature: PF.RARP, replies: false, pause: false, handle: (d, m) => d.sendRarp(m) },
  { name: 'NET_SET_MTU', size: U64, fds: none, protocolFeature: PF.NET_MTU, replies: false, pause: false, handle: (d, m) => d.netSetMtu(m) },
  { name: 'GET_MAX_MEM_SLOTS', size: 0, fds: none, protocolFeature: PF.CONFIGURE_MEM_SLOTS, replies: true, pause: false, handle: (d) => d.getMaxMemSlots() },
  { name: 'ADD_MEM_REG', size: 8 + REGION_SIZE, fds: one, protocolFeature: PF.CONFIGURE_MEM_SLOTS, replies: false, pause: true, handle: (d, m) => d.addMemReg(m) },
  { name: 'REM_MEM_REG', size: 8 + REGION_SIZE, fds: () => ({ min: 0, max: 1 }), protocolFeature: PF.CONFIGURE_MEM_SLOTS, replies: false, pause: true, handle: (d, m) => d.remMemReg(m) },
  { name: 'SET_STATUS', size: U64, fds: none, protocolFeature: PF.STATUS, replies: false, pause: false, handle: (d, m) => d.setStatus(m) },
  { name: 'GET_STATUS', size: 0, fds: none, protocolFeature: PF.STATUS, replies: true, pause: false, handle: (d) => d.getStatus() },
  { name: 'RESET_DEVICE', size: 0, fds: none, protocolFeature: PF.RESET_DEVICE, replies: false, pause: true, handle: (d) => d.resetDevice() },
];

export const REQUESTS: ReadonlyMap<number, RequestSpec> = new Map(
  specs.map((s) => {
    const code = (Req as unknown as Record<string, number>)[s.name];
    return [code, s] as const;
  }),
);

// The table names must be the spec's names: catch a typo at load time, not at run time.
for (const [code, s] of REQUESTS) {
  if (code === undefined || reqName(code) !== s.name) throw new Error(`request table: unknown request name ${s.name}`);
}
