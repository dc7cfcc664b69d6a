/**
 * Micro-benchmark: copying one packet segment between two SharedArrayBuffers (two guests'
 * memories), the only per-byte work of the dataplane. Run: node dist/bench/copy.js
 *
 * Candidates (all views made once, as GuestMemory does):
 *   set+subarray  dst.set(src.subarray(a, b), off)   allocates one subarray per call
 *   byte loop     for (...) dst[d + i] = src[s + i]
 *   u32 loop      Uint32Array views, both sides 4-aligned (len/4 words + byte tail)
 *   Buffer.copy   Buffer views made once; native copy, no JS allocation, fixed call cost
 *   hybrid        src/workers/copy.ts: u32/u16 loop when small and aligned, Buffer.copy otherwise
 * "src+2" rows: source 2 bytes off the destination's alignment (e.g. a 10-byte header on one
 * side and 12 on the other): V8/Node then copy SAB bytes one at a time.
 * Last line: dirty-log marking cost, Atomics.or per page vs. the per-burst word cache.
 */
import { copyBytes, COPY_LOOP_MAX } from '../src/workers/copy';
import { DirtyLog } from '../src/workers/dirty-log';
import { makeViews } from '../src/workers/guest-memory';

const SIZES = [64, 128, 256, 1518];
const SLOTS = 1024; // rotate through 1024 slots so that we do not measure one hot cache line
const STRIDE = 2048;

const srcSab = new SharedArrayBuffer(SLOTS * STRIDE + 64);
const dstSab = new SharedArrayBuffer(SLOTS * STRIDE + 64);
const src = makeViews(srcSab, 0, srcSab.byteLength);
const dst = makeViews(dstSab, 0, dstSab.byteLength);
const src8 = src.u8;
const dst8 = dst.u8;
const src32 = src.u32!;
const dst32 = dst.u32!;
for (let i = 0; i < src8.length; i++) src8[i] = (i * 31) & 0xff;

/** Copy `len` bytes at slot k; `mis` shifts the source. */
type Fn = (len: number, iters: number, mis: number) => void;

const setSubarray: Fn = (len, iters, mis) => {
  for (let k = 0; k < iters; k++) {
    const o = (k & (SLOTS - 1)) * STRIDE;
    dst8.set(src8.subarray(o + mis, o + mis + len), o);
  }
};
const byteLoop: Fn = (len, iters, mis) => {
  for (let k = 0; k < iters; k++) {
    const o = (k & (SLOTS - 1)) * STRIDE;
    for (let i = 0; i < len; i++) dst8[o + i] = src8[o + mis + i];
  }
};
const u32Loop: Fn = (len, iters) => {
  for (let k = 0; k < iters; k++) {
    const o = (k & (SLOTS - 1)) * STRIDE;
    const w = o >>> 2;
    const n = len >>> 2;
    for (let i = 0; i < n; i++) dst32[w + i] = src32[w + i];
    for (let i = n << 2; i < len; i++) dst8[o + i] = src8[o + i];
  }
};
const bufferCopy: Fn = (len, iters, mis) => {
  for (let k = 0; k < iters; k++) {
    const o = (k & (SLOTS - 1)) * STRIDE;
    src.buf.copy(dst.buf, o, o + mis, o + mis + len);
  }
};
const hybrid: Fn = (len, iters, mis) => {
  for (let k = 0; k < iters; k++) {
    const o = (k & (SLOTS - 1)) * STRIDE;
    copyBytes(dst, o, src, o + mis, len);
  }
};

function measure(fn: Fn, len: number, mis: number): number {
  fn(len, 20000, mis); // warm up / let TurboFan optimise
  let best = Infinity;
  for (let r = 0; r < 5; r++) {
    const iters = 200000;
    const t0 = process.hrtime.bigint();
    fn(len, iters, mis);
    const ns = Number(process.hrtime.bigint() - t0) / iters;
    if (ns < best) best = ns;
  }
  return best;
}

function check(fn: Fn, len: number, mis: number): void {
  dst8.fill(0);
  fn(len, SLOTS, mis);
  for (let k = 0; k < SLOTS; k++) {
    const o = k * STRIDE;
    for (let i = 0; i < len; i++) if (dst8[o + i] !== src8[o + mis + i]) throw new Error(`copy mismatch len ${len}`);
    if (dst8[o + len] !== 0) throw new Error(`copy overran len ${len}`);
  }
}

const rows: [string, Fn, number][] = [
  ['set+subarray', setSubarray, 0],
  ['byte loop', byteLoop, 0],
  ['u32 loop (4-aligned)', u32Loop, 0],
  ['Buffer.copy', bufferCopy, 0],
  [`hybrid (loop<=${COPY_LOOP_MAX})`, hybrid, 0],
  ['set+subarray, src+2', setSubarray, 2],
  ['Buffer.copy, src+2', bufferCopy, 2],
  ['hybrid, src+2', hybrid, 2],
  ['hybrid, src+1', hybrid, 1],
];
console.log(`node ${process.version}  ns per copy (best of 5 x 200k)`);
console.log('strategy'.padEnd(26) + SIZES.map((s) => String(s).padStart(9)).join(''));
for (const [name, fn, mis] of rows) {
  for (const s of SIZES) check(fn, s + 3, mis);
  console.log(name.padEnd(26) + SIZES.map((s) => measure(fn, s, mis).toFixed(1).padStart(9)).join(''));
}

// Dirty log: marking a 1518-byte buffer (1-2 pages) + its used entry, 32 packets per burst.
{
  const logSab = new SharedArrayBuffer(1 << 16);
  const bursts = 20000;
  const run = (cache: boolean): number => {
    const log = new DirtyLog(cache);
    log.set({ sab: logSab, offset: 0, size: logSab.byteLength });
    const t0 = process.hrtime.bigint();
    for (let b = 0; b < bursts; b++) {
      for (let p = 0; p < 32; p++) {
        log.markRange(0x100000 + ((b * 32 + p) & 1023) * 2048, 1518);
        log.markRange(0x4000 + p * 8, 8);
      }
      log.markRange(0x4002, 2);
      log.flush();
    }
    return Number(process.hrtime.bigint() - t0) / (bursts * 32);
  };
  for (let w = 0; w < 3; w++) { run(false); run(true); }
  console.log(`dirty log, ns per packet: Atomics.or per page ${run(false).toFixed(1)}, word cache ${run(true).toFixed(1)}`);
}
