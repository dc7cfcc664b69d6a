/**
 * Minimal structured logger: one line per event, level filtered, to stderr.
 * Tests capture lines through `setSink` to assert that an error was named.
 */
export type Level = 'debug' | 'info' | 'warn' | 'error';
const ORDER: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface LogLine {
  level: Level;
  msg: string;
  fields: Record<string, unknown>;
}

let threshold: Level = (process.env.VHOSTFWD_LOG as Level | undefined) ?? 'info';
let sink: ((l: LogLine) => void) | null = null;
let json = false;

export function setLevel(l: Level): void {
  threshold = l;
}
export function setJson(on: boolean): void {
  json = on;
}
/** The one extra receiver of every line, whatever the level (tests); null removes it. */
export function setSink(fn: ((l: LogLine) => void) | null): void {
  sink = fn;
}

function emit(level: Level, msg: string, fields: Record<string, unknown>): void {
  if (sink) sink({ level, msg, fields });
  if (ORDER[level] < ORDER[threshold]) return;
  if (json) {
    process.stderr.write(JSON.stringify({ t: new Date().toISOString(), level, msg, ...fields }) + '\n');
  } else {
    const kv = Object.entries(fields).map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`).join(' ');
    process.stderr.write(`${new Date().toISOString()} ${level.toUpperCase()} ${msg}${kv ? ' ' + kv : ''}\n`);
  }
}

export const log = {
  debug: (msg: string, f: Record<string, unknown> = {}) => emit('debug', msg, f),
  info: (msg: string, f: Record<string, unknown> = {}) => emit('info', msg, f),
  warn: (msg: string, f: Record<string, unknown> = {}) => emit('warn', msg, f),
  error: (msg: string, f: Record<string, unknown> = {}) => emit('error', msg, f),
};
