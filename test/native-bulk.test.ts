/** The addon's bulk copier (the worker hot-path helper): bytes land, bounds are enforced. */
import t from 'tap';
import { native } from '../src/native';

t.test('copyBatch copies between registered SharedArrayBuffers, refuses out-of-bounds jobs whole', async (t) => {
  const a = new SharedArrayBuffer(8192);
  const b = new SharedArrayBuffer(8192);
  const ua = new Uint8Array(a);
  const ub = new Uint8Array(b);
  for (let i = 0; i < ua.length; i++) ua[i] = (i * 7) & 0xff;
  const ia = native.copyRegister(a);
  const ib = native.copyRegister(b);
  t.not(ia, ib, 'distinct ids');
  native.copyBatch(Float64Array.from([ia, 100, ib, 3, 1518, ia, 5000, ib, 4000, 256]), 2);
  t.same([...ub.subarray(3, 3 + 1518)], [...ua.subarray(100, 100 + 1518)], 'first job byte-exact');
  t.same([...ub.subarray(4000, 4256)], [...ua.subarray(5000, 5256)], 'second job byte-exact');
  t.equal(ub[2], 0, 'byte before the first destination untouched');
  t.equal(ub[3 + 1518], 0, 'byte after the first destination untouched');
  const before = Uint8Array.from(ub);
  // second job runs past b's end: nothing at all is copied, not even the valid first job
  t.throws(() => native.copyBatch(Float64Array.from([ia, 0, ib, 0, 64, ia, 0, ib, 8190, 4]), 2), { code: 'ERANGE' });
  t.same([...ub], [...before], 'a batch with a bad job copies nothing');
  t.throws(() => native.copyBatch(Float64Array.from([ia, 0.5, ib, 0, 4]), 1), { code: 'ERANGE' }, 'fractional offsets refused');
  t.throws(() => native.copyBatch(Float64Array.from([99, 0, ib, 0, 4]), 1), { code: 'ERANGE' }, 'unknown id refused');
  for (const [name, job] of [
    ['NaN length', [ia, 0, ib, 0, NaN]],
    ['negative offset', [ia, -4, ib, 0, 4]],
    ['offset + length wrapping 2^64', [ia, 2 ** 64 - 2, ib, 0, 4]],
    ['offset past 2^53', [ia, 2 ** 60, ib, 0, 4]],
    ['infinite length', [ia, 0, ib, 0, Infinity]],
    ['negative id', [-1, 0, ib, 0, 4]],
  ] as Array<[string, number[]]>) {
    t.throws(() => native.copyBatch(Float64Array.from(job), 1), { code: 'ERANGE' }, `${name} refused`);
  }
  t.same([...ub], [...before], 'refused batches copied nothing');
  native.copyUnregister(ia);
  t.throws(() => native.copyBatch(Float64Array.from([ia, 0, ib, 0, 4]), 1), { code: 'ERANGE' }, 'unregistered id refused');
  native.copyUnregister(ib);
});
