/**
 * Byte copy between two guests' memories (different SharedArrayBuffers), without allocating.
 *
 * bench/copy.ts measures the candidates (bench/NOTES.md #9 has the numbers): a word loop
 * beats Buffer.copy's call for small copies and loses to it for large ones; wider words win
 * when both offsets allow them; set+subarray allocates per call, and Buffer.copy goes a byte
 * at a time when source and destination are misaligned to each other (10- against 12-byte
 * headers). So: a Float64 loop (8 bytes per load/store) when both offsets are 8-aligned, else
 * a Uint32 (else Uint16) loop, up to COPY_LOOP_MAX bytes; Buffer.copy above that.
 *
 * Float64 moves must keep every bit, NaN payloads included. ECMAScript lets an engine pick
 * any NaN encoding on a Float64Array store; V8 keeps the bits (checked on this Node in every
 * tier: test/copy.test.ts), and F64_EXACT re-checks at load time on whatever engine runs us:
 * if a NaN pattern does not survive, the Float64 path is never taken.
 */
import { RegionViews } from './guest-memory';

/** Copies of at most this many bytes use a word loop when alignment allows. */
export const COPY_LOOP_MAX = 256;

/** Float64 loads/stores round-trip every bit pattern here (NaNs included). */
export const F64_EXACT = checkF64Exact();

/** Copy `len` bytes from src[sOff..] to dst[dOff..] (offsets inside the regions). */
export function copyBytes(dst: RegionViews, dOff: number, src: RegionViews, sOff: number, len: number): void {
  // Small-integer indices (not doubles) let TurboFan index the typed arrays directly
  // (bench/NOTES.md). Offsets past 2 GiB take the Buffer.copy path.
  if (len <= COPY_LOOP_MAX && dOff < 0x7fff_ffff && sOff < 0x7fff_ffff) {
    const di = dOff | 0;
    const si = sOff | 0;
    const d64 = dst.f64;
    const s64 = src.f64;
    if (((di | si) & 7) === 0 && d64 !== null && s64 !== null && F64_EXACT) {
      const dw = di >> 3;
      const sw = si >> 3;
      const n = len >>> 3;
      for (let i = 0; i < n; i++) d64[dw + i] = s64[sw + i];
      copyTail(dst.u8, di, src.u8, si, n << 3, len);
      return;
    }
    const d32 = dst.u32;
    const s32 = src.u32;
    if (((di | si) & 3) === 0 && d32 !== null && s32 !== null) {
      const dw = di >> 2;
      const sw = si >> 2;
      const n = len >>> 2;
      for (let i = 0; i < n; i++) d32[dw + i] = s32[sw + i];
      copyTail(dst.u8, di, src.u8, si, n << 2, len);
      return;
    }
    const d16 = dst.u16;
    const s16 = src.u16;
    if (((di | si) & 1) === 0 && d16 !== null && s16 !== null) {
      const dw = di >> 1;
      const sw = si >> 1;
      const n = len >>> 1;
      for (let i = 0; i < n; i++) d16[dw + i] = s16[sw + i];
      copyTail(dst.u8, di, src.u8, si, n << 1, len);
      return;
    }
  }
  src.buf.copy(dst.buf, dOff, sOff, sOff + len);
}

function copyTail(d: Uint8Array, dOff: number, s: Uint8Array, sOff: number, from: number, len: number): void {
  for (let i = from; i < len; i++) d[dOff + i] = s[sOff + i];
}

/** Copy NaN and infinity patterns (signalling, quiet, payloads, both signs) through Float64Arrays. */
export function checkF64Exact(rounds = 1): boolean {
  const n = 64;
  const a = new Float64Array(n);
  const b = new Float64Array(n);
  const a32 = new Uint32Array(a.buffer);
  const b32 = new Uint32Array(b.buffer);
  let x = 0x9e3779b9;
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < n; i++) {
      x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
      a32[2 * i] = i < 4 ? [1, 0, 0xffffffff, 1][i] : x;
      // exponent all ones: NaN (or infinity when the mantissa is 0), any sign and quiet bit
      a32[2 * i + 1] = i < 4 ? [0x7ff00000, 0x7ff80000, 0xfff7ffff, 0xfff00000][i] : ((x >>> 3) & 0x800fffff) | 0x7ff00000;
    }
    for (let i = 0; i < n; i++) b[i] = a[i];
    for (let i = 0; i < 2 * n; i++) if (a32[i] !== b32[i]) return false;
  }
  return true;
}
