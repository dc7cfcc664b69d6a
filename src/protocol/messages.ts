/**
 * One type per vhost-user payload struct, each with its own parser and validity check
 * (after rust-vmm vhost's message.rs). Parsers get a payload whose size the codec has
 * already checked against the request's spec; they check the values.
 */
import { MAX_REGIONS, VRING_IDX_MASK, VRING_NOFD_MASK } from './constants';

/** A protocol error: the request is malformed or not allowed now. The device is reset. */
export class ProtocolError extends Error {
  constructor(readonly request: string, readonly reason: string) {
    super(`${request}: ${reason}`);
    this.name = 'ProtocolError';
  }
}

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** Read a u64 that is used as an address or size; it must fit a JS number exactly. */
function readU64Number(buf: Buffer, off: number, req: string, field: string): number {
  const v = buf.readBigUInt64LE(off);
  if (v > MAX_SAFE) throw new ProtocolError(req, `${field} 0x${v.toString(16)} is beyond 2^53`);
  return Number(v);
}

/** VhostUserVringState: u32 index, u32 num. */
export interface VringState {
  index: number;
  num: number;
}
export function parseVringState(p: Buffer): VringState {
  return { index: p.readUInt32LE(0), num: p.readUInt32LE(4) };
}
export function encodeVringState(s: VringState): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(s.index >>> 0, 0);
  b.writeUInt32LE(s.num >>> 0, 4);
  return b;
}

/** VhostUserVringAddr: u32 index, u32 flags, u64 desc/used/avail user addresses, u64 log guest address. */
export interface VringAddr {
  index: number;
  flags: number;
  desc: number;
  used: number;
  avail: number;
  log: number;
}
export function parseVringAddr(p: Buffer, req: string): VringAddr {
  return {
    index: p.readUInt32LE(0),
    flags: p.readUInt32LE(4),
    desc: readU64Number(p, 8, req, 'descriptor address'),
    used: readU64Number(p, 16, req, 'used address'),
    avail: readU64Number(p, 24, req, 'available address'),
    log: readU64Number(p, 32, req, 'log address'),
  };
}
export function encodeVringAddr(a: VringAddr): Buffer {
  const b = Buffer.alloc(40);
  b.writeUInt32LE(a.index, 0);
  b.writeUInt32LE(a.flags, 4);
  b.writeBigUInt64LE(BigInt(a.desc), 8);
  b.writeBigUInt64LE(BigInt(a.used), 16);
  b.writeBigUInt64LE(BigInt(a.avail), 24);
  b.writeBigUInt64LE(BigInt(a.log), 32);
  return b;
}

/** The u64 of SET_VRING_KICK/CALL/ERR: ring index in bits 0-7, bit 8 set when no fd is passed. */
export interface VringFile {
  index: number;
  noFd: boolean;
}
export function parseVringFile(p: Buffer, req: string): VringFile {
  const v = p.readBigUInt64LE(0);
  if ((v & ~BigInt(VRING_IDX_MASK | VRING_NOFD_MASK)) !== 0n) {
    throw new ProtocolError(req, `reserved bits set in 0x${v.toString(16)}`);
  }
  const n = Number(v);
  return { index: n & VRING_IDX_MASK, noFd: (n & VRING_NOFD_MASK) !== 0 };
}

/** VhostUserMemoryRegion: guest_phys_addr, memory_size, userspace_addr, mmap_offset (all u64). */
export interface MemoryRegion {
  gpa: number;
  size: number;
  uva: number;
  mmapOffset: number;
}
export const REGION_SIZE = 32;

function parseRegion(p: Buffer, off: number, req: string): MemoryRegion {
  const r = {
    gpa: readU64Number(p, off, req, 'guest_phys_addr'),
    size: readU64Number(p, off + 8, req, 'memory_size'),
    uva: readU64Number(p, off + 16, req, 'userspace_addr'),
    mmapOffset: readU64Number(p, off + 24, req, 'mmap_offset'),
  };
  checkRegion(r, req);
  return r;
}

/** A region must be non-empty and must not wrap (all ends below 2^53, see readU64Number). */
function checkRegion(r: MemoryRegion, req: string): void {
  if (r.size === 0) throw new ProtocolError(req, 'region of size 0');
  const tag = `region gpa 0x${r.gpa.toString(16)} size 0x${r.size.toString(16)}`;
  if (r.gpa + r.size > Number.MAX_SAFE_INTEGER) throw new ProtocolError(req, `${tag} wraps the guest address space`);
  if (r.uva + r.size > Number.MAX_SAFE_INTEGER) throw new ProtocolError(req, `${tag} wraps the user address space`);
  if (r.mmapOffset + r.size > Number.MAX_SAFE_INTEGER) throw new ProtocolError(req, `${tag} mmap_offset wraps`);
}

/** Regions must not overlap in guest-physical or frontend-virtual space. */
function checkNoOverlap(regions: readonly MemoryRegion[], req: string): void {
  for (let i = 0; i < regions.length; i++) {
    for (let j = i + 1; j < regions.length; j++) {
      const a = regions[i];
      const b = regions[j];
      if (a.gpa < b.gpa + b.size && b.gpa < a.gpa + a.size) {
        throw new ProtocolError(req, `regions ${i} and ${j} overlap in guest physical space`);
      }
      if (a.uva < b.uva + b.size && b.uva < a.uva + a.size) {
        throw new ProtocolError(req, `regions ${i} and ${j} overlap in user address space`);
      }
    }
  }
}

/** VhostUserMemory: u32 nregions, u32 padding, nregions x VhostUserMemoryRegion. */
export function parseMemoryTable(p: Buffer, req: string): MemoryRegion[] {
  const n = p.readUInt32LE(0);
  if (n === 0) throw new ProtocolError(req, 'no regions');
  if (n > MAX_REGIONS) throw new ProtocolError(req, `${n} regions, at most ${MAX_REGIONS}`);
  if (p.length < 8 + n * REGION_SIZE) {
    throw new ProtocolError(req, `payload of ${p.length} bytes is too short for ${n} regions`);
  }
  const regions: MemoryRegion[] = [];
  for (let i = 0; i < n; i++) regions.push(parseRegion(p, 8 + i * REGION_SIZE, req));
  checkNoOverlap(regions, req);
  return regions;
}
export function encodeMemoryTable(regions: readonly MemoryRegion[]): Buffer {
  const b = Buffer.alloc(8 + regions.length * REGION_SIZE);
  b.writeUInt32LE(regions.length, 0);
  regions.forEach((r, i) => encodeRegionAt(b, 8 + i * REGION_SIZE, r));
  return b;
}
function encodeRegionAt(b: Buffer, off: number, r: MemoryRegion): void {
  b.writeBigUInt64LE(BigInt(r.gpa), off);
  b.writeBigUInt64LE(BigInt(r.size), off + 8);
  b.writeBigUInt64LE(BigInt(r.uva), off + 16);
  b.writeBigUInt64LE(BigInt(r.mmapOffset), off + 24);
}

/** VhostUserSingleMemRegion (ADD_MEM_REG / REM_MEM_REG): u64 padding, one region. */
export function parseSingleRegion(p: Buffer, req: string): MemoryRegion {
  return parseRegion(p, 8, req);
}
export function encodeSingleRegion(r: MemoryRegion): Buffer {
  const b = Buffer.alloc(8 + REGION_SIZE);
  encodeRegionAt(b, 8, r);
  return b;
}

/** VhostUserLog: u64 mmap_size, u64 mmap_offset. */
export interface LogArea {
  mmapSize: number;
  mmapOffset: number;
}
export function parseLog(p: Buffer, req: string): LogArea {
  const l = {
    mmapSize: readU64Number(p, 0, req, 'mmap_size'),
    mmapOffset: readU64Number(p, 8, req, 'mmap_offset'),
  };
  if (l.mmapSize === 0) throw new ProtocolError(req, 'log of size 0');
  if (l.mmapSize + l.mmapOffset > Number.MAX_SAFE_INTEGER) throw new ProtocolError(req, 'log area wraps');
  return l;
}
export function encodeLog(l: LogArea): Buffer {
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(BigInt(l.mmapSize), 0);
  b.writeBigUInt64LE(BigInt(l.mmapOffset), 8);
  return b;
}

/** The plain u64 payload (SET_FEATURES, SET_PROTOCOL_FEATURES, NET_SET_MTU, SET_STATUS): its meaning is the handler's to check. */
export function parseU64(p: Buffer): bigint {
  return p.readBigUInt64LE(0);
}

/** SEND_RARP's u64: the guest's MAC address in its first 6 bytes. */
export function parseRarpMac(p: Buffer): Buffer {
  return p.subarray(0, 6);
}

export function encodeU64(v: bigint | number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(v), 0);
  return b;
}
