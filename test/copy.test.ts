/**
 * copyBytes must be byte-exact on every path (Float64, Uint32, Uint16 loops, Buffer.copy),
 * at every alignment and length, for every bit pattern: the Float64 path moves packet bytes
 * as doubles, so NaN payloads (signalling, quiet, negative) must survive both the first,
 * interpreted calls and the optimised code TurboFan makes once the function is hot.
 */
import t from 'tap';
import { checkF64Exact, copyBytes, COPY_LOOP_MAX, F64_EXACT } from '../src/workers/copy';
import { makeViews } from '../src/workers/guest-memory';

const SIZE = 1 << 16;

/** Source bytes: every 8-byte word an IEEE NaN or infinity pattern, at every byte phase. */
function nanBytes(seed: number): Uint8Array {
  const b = new Uint8Array(SIZE);
  const dv = new DataView(b.buffer);
  let x = seed >>> 0;
  for (let o = 0; o + 8 <= SIZE; o += 8) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    dv.setUint32(o, x, true);
    dv.setUint32(o + 4, ((x >>> 5) & 0x800fffff) | 0x7ff00000, true);
  }
  // the corner patterns: smallest sNaN, canonical qNaN, negative sNaN, -infinity
  dv.setBigUint64(0, 0x7ff0000000000001n, true);
  dv.setBigUint64(8, 0x7ff8000000000000n, true);
  dv.setBigUint64(16, 0xfff7ffffffffffffn, true);
  dv.setBigUint64(24, 0xfff0000000000000n, true);
  return b;
}

t.test('the engine keeps NaN bits through Float64Arrays (else the Float64 path is off)', async (t) => {
  t.equal(F64_EXACT, true, 'load-time check passed on this Node');
  t.equal(checkF64Exact(20000), true, 'still exact once the check itself is optimised');
});

t.test('copyBytes is byte-exact for NaN patterns at every alignment and length, cold and hot', async (t) => {
  const srcSab = new SharedArrayBuffer(SIZE);
  const dstSab = new SharedArrayBuffer(SIZE);
  const src = makeViews(srcSab, 0, SIZE);
  const dst = makeViews(dstSab, 0, SIZE);
  const dst8 = new Uint8Array(dstSab);
  let mismatches = 0;
  let copies = 0;
  const lens = [0, 1, 7, 8, 9, 60, 64, 76, 127, 128, 200, COPY_LOOP_MAX, COPY_LOOP_MAX + 8, 1518];
  // Round 0 runs cold (interpreter); later rounds run the same calls after thousands of
  // warm-up copies, when copyBytes is optimised.
  for (let round = 0; round < 4; round++) {
    const bytes = nanBytes(round * 7919 + 1);
    new Uint8Array(srcSab).set(bytes);
    if (round > 0) for (let w = 0; w < 20000; w++) copyBytes(dst, (w * 8) & 0x7ff8, src, (w * 16) & 0x7ff8, 64 + (w & 63));
    for (const dPhase of [0, 1, 2, 4, 8, 12]) {
      for (const sPhase of [0, 2, 4, 8, 12]) {
        for (const len of lens) {
          const dOff = 4096 + dPhase;
          const sOff = 8192 + sPhase;
          dst8.fill(0xa5);
          copyBytes(dst, dOff, src, sOff, len);
          copies++;
          for (let k = 0; k < len; k++) if (dst8[dOff + k] !== bytes[sOff + k]) mismatches++;
          // nothing written around the copy
          if (dst8[dOff - 1] !== 0xa5 || dst8[dOff + len] !== 0xa5) mismatches++;
        }
      }
    }
  }
  t.equal(mismatches, 0, `${copies} copies byte-exact, no byte written outside`);
});
