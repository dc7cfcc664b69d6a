/**
 * The state file (`vhostfwd run --state FILE`): interfaces, forwarding and queue placement as
 * the control API left them, written after every change so that a restart comes back as it
 * was (QEMU guests with reconnect=1 then find their sockets again). Writes are atomic: a
 * temporary file in the same directory, fsync, rename over the old one, fsync of the
 * directory, so a crash leaves the old state or the new one, never half of one. A file that
 * is corrupt or from a newer vhostfwd is refused by name and left untouched.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ConfigError, Forwarding, InterfaceConfig, interfaceToRaw, parseConfig } from '../config';
import type { ForwarderState } from '../forwarder';

/** Version of the state file format this vhostfwd writes (and the newest it reads). */
const STATE_VERSION = 1;

export class StateFileError extends Error {
  constructor(readonly file: string, why: string) {
    super(`state file ${file}: ${why} (left untouched)`);
    this.name = 'StateFileError';
  }
}

/** The file's JSON: the config file's own form for interfaces and forwarding (also what a takeover sends, handover/). */
export function stateToJson(s: ForwarderState): unknown {
  return { version: STATE_VERSION, interfaces: s.interfaces.map(interfaceToRaw), forwarding: s.forwarding, placement: s.placement };
}

export function writeState(file: string, s: ForwarderState): void {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.tmp`);
  const fd = fs.openSync(tmp, 'w', 0o600);
  try {
    fs.writeSync(fd, JSON.stringify(stateToJson(s), null, 2) + '\n');
    fs.fsyncSync(fd);
  } catch (e) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  fs.closeSync(fd);
  fs.renameSync(tmp, file);
  const d = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(d);
  } finally {
    fs.closeSync(d);
  }
}

/**
 * Read a state file; null when there is none yet. Interfaces and forwarding go through the
 * config's own validation (a hand-edited file is held to the same rules).
 */
export function readState(file: string, cpuCount: number): ForwarderState | null {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new StateFileError(file, `cannot be read: ${(e as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new StateFileError(file, `is not valid JSON (${(e as Error).message})`);
  }
  try {
    return stateFromJson(raw, cpuCount);
  } catch (e) {
    if (e instanceof StateFormatError) throw new StateFileError(file, e.message);
    throw e;
  }
}

/** A state record that is not valid: what is wrong, as a state file's refusal says it. */
export class StateFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StateFormatError';
  }
}

/** Validate a state record (stateToJson's form) from a file or a takeover peer. */
export function stateFromJson(raw: unknown, cpuCount: number): ForwarderState {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new StateFormatError('is not a JSON object');
  const o = raw as Record<string, unknown>;
  if (typeof o.version !== 'number' || !Number.isInteger(o.version) || o.version < 1) throw new StateFormatError(`has no valid version (got ${JSON.stringify(o.version)})`);
  if (o.version > STATE_VERSION) throw new StateFormatError(`is from a newer vhostfwd (format version ${o.version}; this one reads up to ${STATE_VERSION})`);
  let interfaces: InterfaceConfig[];
  let forwarding: Forwarding;
  try {
    const cfg = parseConfig({ interfaces: o.interfaces, forwarding: o.forwarding, control: false }, cpuCount);
    interfaces = cfg.interfaces;
    forwarding = cfg.forwarding;
  } catch (e) {
    if (e instanceof ConfigError) throw new StateFormatError(`is invalid: ${e.message}`);
    throw e;
  }
  const placement: Record<string, number> = {};
  const p = o.placement ?? {};
  if (typeof p !== 'object' || p === null || Array.isArray(p)) throw new StateFormatError('is invalid: placement: expected an object');
  for (const [k, v] of Object.entries(p as Record<string, unknown>)) {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw new StateFormatError(`is invalid: placement.${k}: expected a worker number`);
    placement[k] = v;
  }
  return { interfaces, forwarding, placement };
}
