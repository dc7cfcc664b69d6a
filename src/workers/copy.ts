/**
 * Byte copy between two guests' memories (different SharedArrayBuffers), without allocating.
 *
 * Measured with bench/copy.ts (node v20.20.2, 2-core dev VM, ns per copy, views made once,
 * 1024 rotating 2 KiB slots):
 *                          64     128     256    1518
 *   set+subarray            48.3    51.6    59.3   111.4   (allocates a subarray per call)
 *   byte loop               90.9   178.4   366.3  2142.5
 *   u32 loop (4-aligned)    24.8    48.8    98.3   513.7
 *   Buffer.copy             58.9    61.8    72.4   125.5   (native, no JS allocation)
 *   hybrid (this function)  15.8    30.1    76.7   128.1
 *   src 2 bytes off dst alignment (10- vs 12-byte headers):
 *   Buffer.copy             74.9    93.9   132.3   490.5   (SAB bytes then go one at a time)
 *   hybrid (u16 loop)       29.1    56.5   132.7   489.9
 * So: a Uint32 (else Uint16) loop up to 128 bytes when both offsets allow it, Buffer.copy
 * otherwise: it is within ~10% of set+subarray at 1518 bytes without the per-call garbage.
 */
import { RegionViews } from './guest-memory';

/** Copies of at most this many bytes use a Uint32 / Uint16 loop when alignment allows. */
export const COPY_LOOP_MAX = 128;

/** Copy `len` bytes from src[sOff..] to dst[dOff..] (offsets inside the regions). */
export function copyBytes(dst: RegionViews, dOff: number, src: RegionViews, sOff: number, len: number): void {
  // Small-integer indices (not doubles) let TurboFan index the typed arrays directly:
  // measured 148 -> see bench/NOTES.md. Offsets past 2 GiB take the Buffer.copy path.
  if (len <= COPY_LOOP_MAX && dOff < 0x7fff_ffff && sOff < 0x7fff_ffff) {
    const d32 = dst.u32;
    const s32 = src.u32;
    if ((((dOff | 0) | (sOff | 0)) & 3) === 0 && d32 !== null && s32 !== null) {
      const dw = (dOff | 0) >> 2;
      const sw = (sOff | 0) >> 2;
      const n = len >>> 2;
      for (let i = 0; i < n; i++) d32[dw + i] = s32[sw + i];
      copyTail(dst.u8, dOff, src.u8, sOff, n << 2, len);
      return;
    }
    const d16 = dst.u16;
    const s16 = src.u16;
    if ((((dOff | 0) | (sOff | 0)) & 1) === 0 && d16 !== null && s16 !== null) {
      const dw = (dOff | 0) >> 1;
      const sw = (sOff | 0) >> 1;
      const n = len >>> 1;
      for (let i = 0; i < n; i++) d16[dw + i] = s16[sw + i];
      copyTail(dst.u8, dOff, src.u8, sOff, n << 1, len);
      return;
    }
  }
  src.buf.copy(dst.buf, dOff, sOff, sOff + len);
}

function copyTail(d: Uint8Array, dOff: number, s: Uint8Array, sOff: number, from: number, len: number): void {
  for (let i = from; i < len; i++) d[dOff + i] = s[sOff + i];
}
