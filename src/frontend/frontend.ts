/**
 * The frontend side of vhost-user, one typed method per request (after rust-vmm vhost's
 * frontend.rs): what QEMU sends, encoded with src/protocol/messages.ts. Requests without a
 * reply of their own wait for the backend's ack when REPLY_ACK was negotiated (so a refusal
 * surfaces here, named) and are sent plainly otherwise. The one negotiation of our test
 * frontends (the synthetic guest, the control-plane tests, the hostile suite) is negotiate().
 *
 * Raw requests (malformed ones, replies the tests inspect byte by byte) stay on the
 * VhostUserClient underneath (`client`).
 */
import { F, PF, Req, bit, hasBit } from '../protocol/constants';
import {
  LogArea, MemoryRegion, VringAddr, encodeLog, encodeMemoryTable, encodeSingleRegion, encodeU64, encodeVringAddr, encodeVringState,
} from '../protocol/messages';
import { VhostUserClient } from './vhost-user-client';

const EMPTY = Buffer.alloc(0);

export interface NegotiateOptions {
  /** negotiate VHOST_USER_F_PROTOCOL_FEATURES when offered (default true) */
  protocol?: boolean;
  /** protocol features to ack, of those offered (default: all offered) */
  protocolWant?: bigint;
  /** virtio features to ack, of those offered (PROTOCOL_FEATURES among them only when negotiated) */
  want: bigint;
  /** SET_OWNER before the protocol features (default: after them, as QEMU 7.2 does) */
  ownerFirst?: boolean;
  /** with MQ negotiated, GET_QUEUE_NUM must say at least this many queue pairs (else an error) */
  queueCheck?: number;
}

export interface Negotiated {
  offered: bigint;
  protocolFeatures: bigint;
  features: bigint;
}

export class Frontend {
  /** protocol features acked (SET_PROTOCOL_FEATURES): REPLY_ACK among them makes every request acked */
  protocolFeatures = 0n;

  constructor(readonly client: VhostUserClient) {}

  /** A request without a reply of its own: acked with REPLY_ACK negotiated (a refusal throws), else plain. */
  async request(req: Req, payload: Uint8Array = EMPTY, fds: readonly number[] = []): Promise<void> {
    if (hasBit(this.protocolFeatures, PF.REPLY_ACK)) {
      const r = await this.client.callU64(req, payload, fds, true);
      if (r !== 0n) throw new Error(`backend refused ${Req[req] ?? req}: ack ${r}`);
    } else {
      this.client.send(req, payload, fds);
    }
  }

  getFeatures(): Promise<bigint> {
    return this.client.callU64(Req.GET_FEATURES);
  }

  setFeatures(features: bigint): Promise<void> {
    return this.request(Req.SET_FEATURES, encodeU64(features));
  }

  getProtocolFeatures(): Promise<bigint> {
    return this.client.callU64(Req.GET_PROTOCOL_FEATURES);
  }

  /** Sent plainly: REPLY_ACK takes effect once this request negotiated it. */
  setProtocolFeatures(pf: bigint): void {
    this.client.send(Req.SET_PROTOCOL_FEATURES, encodeU64(pf));
    this.protocolFeatures = pf;
  }

  async getQueueNum(): Promise<number> {
    return Number(await this.client.callU64(Req.GET_QUEUE_NUM));
  }

  async getMaxMemSlots(): Promise<number> {
    return Number(await this.client.callU64(Req.GET_MAX_MEM_SLOTS));
  }

  setOwner(): Promise<void> {
    return this.request(Req.SET_OWNER);
  }

  resetOwner(): Promise<void> {
    return this.request(Req.RESET_OWNER);
  }

  setMemTable(regions: readonly MemoryRegion[], fds: readonly number[]): Promise<void> {
    return this.request(Req.SET_MEM_TABLE, encodeMemoryTable(regions), fds);
  }

  addMemReg(region: MemoryRegion, fd: number): Promise<void> {
    return this.request(Req.ADD_MEM_REG, encodeSingleRegion(region), [fd]);
  }

  remMemReg(region: MemoryRegion): Promise<void> {
    return this.request(Req.REM_MEM_REG, encodeSingleRegion(region));
  }

  setVringNum(index: number, num: number): Promise<void> {
    return this.request(Req.SET_VRING_NUM, encodeVringState({ index, num }));
  }

  setVringBase(index: number, num: number): Promise<void> {
    return this.request(Req.SET_VRING_BASE, encodeVringState({ index, num }));
  }

  /** Stops the ring; its last_avail_idx. */
  async getVringBase(index: number): Promise<number> {
    const m = await this.client.call(Req.GET_VRING_BASE, encodeVringState({ index, num: 0 }));
    return m.payload.readUInt32LE(4);
  }

  setVringAddr(addr: VringAddr): Promise<void> {
    return this.request(Req.SET_VRING_ADDR, encodeVringAddr(addr));
  }

  setVringKick(index: number, fd: number): Promise<void> {
    return this.request(Req.SET_VRING_KICK, encodeU64(index), [fd]);
  }

  setVringCall(index: number, fd: number): Promise<void> {
    return this.request(Req.SET_VRING_CALL, encodeU64(index), [fd]);
  }

  setVringEnable(index: number, enable: boolean): Promise<void> {
    return this.request(Req.SET_VRING_ENABLE, encodeVringState({ index, num: enable ? 1 : 0 }));
  }

  /** SET_LOG_BASE always has a reply (with LOG_SHMFD): the backend says it mapped the log. */
  async setLogBase(area: LogArea, fd: number): Promise<void> {
    await this.client.callU64(Req.SET_LOG_BASE, encodeLog(area), [fd]);
  }

  sendRarp(mac: Uint8Array): Promise<void> {
    const p = Buffer.alloc(8);
    p.set(mac, 0);
    return this.request(Req.SEND_RARP, p);
  }

  netSetMtu(mtu: number): Promise<void> {
    return this.request(Req.NET_SET_MTU, encodeU64(mtu));
  }

  setStatus(status: number): Promise<void> {
    return this.request(Req.SET_STATUS, encodeU64(status));
  }

  async getStatus(): Promise<number> {
    return Number(await this.client.callU64(Req.GET_STATUS));
  }

  /**
   * The negotiation before memory, as QEMU does it: GET_FEATURES; GET/SET_PROTOCOL_FEATURES
   * (when offered and wanted); SET_OWNER; SET_FEATURES with the wanted features that were
   * offered. Returns what was offered and acked.
   */
  async negotiate(o: NegotiateOptions): Promise<Negotiated> {
    const offered = await this.getFeatures();
    const protocol = o.protocol !== false && hasBit(offered, F.VHOST_USER_F_PROTOCOL_FEATURES);
    if (o.ownerFirst) await this.setOwner();
    if (protocol) {
      const pf = await this.getProtocolFeatures();
      this.setProtocolFeatures(pf & (o.protocolWant ?? pf));
      if (o.queueCheck !== undefined && hasBit(this.protocolFeatures, PF.MQ)) {
        const qn = await this.getQueueNum();
        if (qn < o.queueCheck) throw new Error(`backend serves ${qn} queue pairs, ${o.queueCheck} wanted`);
      }
    }
    if (!o.ownerFirst) await this.setOwner();
    let features = offered & o.want;
    if (!protocol) features &= ~bit(F.VHOST_USER_F_PROTOCOL_FEATURES);
    await this.setFeatures(features);
    return { offered, protocolFeatures: this.protocolFeatures, features };
  }
}
