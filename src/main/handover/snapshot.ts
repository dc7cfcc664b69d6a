/**
 * Validation of a device record from the handover peer (the running process a takeover
 * takes over from): every field is checked for type and range before Device.adopt uses it,
 * and a bad one is refused naming its path, as a config key or a vhost-user field would be.
 */
import { MAX_MEM_SLOTS, MAX_QUEUE_SIZE } from '../../protocol/constants';
import { STATS_SLOTS } from '../../shared/types';
import type { DeviceSnapshot, RingPosition } from '../device';

export class SnapshotError extends Error {
  constructor(readonly field: string, why: string) {
    super(`handover record ${field}: ${why}`);
    this.name = 'SnapshotError';
  }
}

type Obj = Record<string, unknown>;

function obj(v: unknown, at: string): Obj {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new SnapshotError(at, 'expected an object');
  return v as Obj;
}

function int(v: unknown, at: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) throw new SnapshotError(at, `expected an integer ${min}..${max}, got ${JSON.stringify(v)}`);
  return v;
}

function bool(v: unknown, at: string): boolean {
  if (typeof v !== 'boolean') throw new SnapshotError(at, `expected true or false, got ${JSON.stringify(v)}`);
  return v;
}

function hex64(v: unknown, at: string): string {
  if (typeof v !== 'string' || !/^[0-9a-f]{1,16}$/.test(v)) throw new SnapshotError(at, `expected up to 16 hex digits, got ${JSON.stringify(v)}`);
  return v;
}

function arr(v: unknown, at: string, max: number): unknown[] {
  if (!Array.isArray(v)) throw new SnapshotError(at, 'expected an array');
  if (v.length > max) throw new SnapshotError(at, `${v.length} entries, at most ${max}`);
  return v;
}

const U64 = Number.MAX_SAFE_INTEGER;
const FD = 1 << 20;

function stats(v: unknown, at: string): number[] {
  return arr(v, at, STATS_SLOTS).map((n, k) => {
    if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) throw new SnapshotError(`${at}[${k}]`, `expected a counter, got ${JSON.stringify(n)}`);
    return n;
  });
}

/**
 * The ring positions of the takeover's last message (where each ring of each interface
 * stopped), or SnapshotError naming the first bad field.
 */
export function checkPositions(v: unknown, at: string): Array<{ name: string; rings: RingPosition[] }> {
  return arr(v, at, 4096).map((e, i) => {
    const p = `${at}[${i}]`;
    const x = obj(e, p);
    if (typeof x.name !== 'string') throw new SnapshotError(`${p}.name`, 'expected a string');
    const rings = arr(x.rings, `${p}.rings`, 256).map((r, k) => {
      const q = `${p}.rings[${k}]`;
      const y = obj(r, q);
      return { index: int(y.index, `${q}.index`, 0, 255), lastAvailIdx: int(y.lastAvailIdx, `${q}.lastAvailIdx`, 0, 65535), stats: stats(y.stats, `${q}.stats`), started: bool(y.started, `${q}.started`) };
    });
    return { name: x.name, rings };
  });
}

/** A device record as Device.adopt takes it, or SnapshotError naming the first bad field. */
export function checkDeviceSnapshot(v: unknown, at: string): DeviceSnapshot {
  const o = obj(v, at);
  const regions = arr(o.regions, `${at}.regions`, MAX_MEM_SLOTS).map((r, i) => {
    const p = `${at}.regions[${i}]`;
    const x = obj(r, p);
    return {
      gpa: int(x.gpa, `${p}.gpa`, 0, U64), size: int(x.size, `${p}.size`, 1, U64), uva: int(x.uva, `${p}.uva`, 0, U64),
      mmapOffset: int(x.mmapOffset, `${p}.mmapOffset`, 0, U64), refs: int(x.refs, `${p}.refs`, 1, 65536), fd: int(x.fd, `${p}.fd`, 0, FD),
    };
  });
  let logRec: DeviceSnapshot['log'] = null;
  if (o.log !== null) {
    const l = obj(o.log, `${at}.log`);
    logRec = { mmapSize: int(l.mmapSize, `${at}.log.mmapSize`, 1, U64), mmapOffset: int(l.mmapOffset, `${at}.log.mmapOffset`, 0, U64), fd: int(l.fd, `${at}.log.fd`, 0, FD) };
  }
  const rings = arr(o.rings, `${at}.rings`, 256).map((r, i) => {
    const p = `${at}.rings[${i}]`;
    const x = obj(r, p);
    const num = int(x.num, `${p}.num`, 0, MAX_QUEUE_SIZE);
    if (num & (num - 1)) throw new SnapshotError(`${p}.num`, `${num} is not a power of two`);
    let addr: DeviceSnapshot['rings'][number]['addr'] = null;
    if (x.addr !== null) {
      const a = obj(x.addr, `${p}.addr`);
      addr = {
        index: int(a.index, `${p}.addr.index`, 0, 255), flags: int(a.flags, `${p}.addr.flags`, 0, 1),
        desc: int(a.desc, `${p}.addr.desc`, 0, U64), used: int(a.used, `${p}.addr.used`, 0, U64), avail: int(a.avail, `${p}.addr.avail`, 0, U64), log: int(a.log, `${p}.addr.log`, 0, U64),
      };
    }
    return {
      index: int(x.index, `${p}.index`, 0, 255), num, addr, lastAvailIdx: int(x.lastAvailIdx, `${p}.lastAvailIdx`, 0, 65535),
      hasKick: bool(x.hasKick, `${p}.hasKick`), enabled: bool(x.enabled, `${p}.enabled`),
      kick: int(x.kick, `${p}.kick`, -1, FD), call: int(x.call, `${p}.call`, -1, FD), err: int(x.err, `${p}.err`, -1, FD),
      stats: stats(x.stats, `${p}.stats`), started: bool(x.started, `${p}.started`),
    };
  });
  return {
    features: hex64(o.features, `${at}.features`),
    protocolFeatures: hex64(o.protocolFeatures, `${at}.protocolFeatures`),
    lastLogAllFeatures: o.lastLogAllFeatures === null ? null : hex64(o.lastLogAllFeatures, `${at}.lastLogAllFeatures`),
    owner: bool(o.owner, `${at}.owner`),
    status: int(o.status, `${at}.status`, 0, 255),
    mtu: o.mtu === null ? null : int(o.mtu, `${at}.mtu`, 68, 65535),
    regions,
    log: logRec,
    rings,
  };
}
