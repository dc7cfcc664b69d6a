/** The addon's bulk copier (the worker hot-path helper): bytes land, bounds are enforced. */
import t from 'tap';
import v8 from 'node:v8';
import vm from 'node:vm';
import { native } from '../src/native';
import { CopyQueue } from '../src/workers/bulk-copy';

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

t.test('copyRun runs a bound job array, returns an errno instead of throwing, CopyQueue names the error', async (t) => {
  const a = new SharedArrayBuffer(8192);
  const b = new SharedArrayBuffer(8192);
  const ua = new Uint8Array(a);
  const ub = new Uint8Array(b);
  for (let i = 0; i < ua.length; i++) ua[i] = (i * 13 + 5) & 0xff;
  const ia = native.copyRegister(a);
  const ib = native.copyRegister(b);
  const jobs = new Float64Array(10);
  const j1 = native.copyBind(jobs);
  const j2 = native.copyBind(new Float64Array(5));
  t.not(j1, j2, 'two live bindings have distinct ids');
  jobs.set([ia, 10, ib, 20, 300, ia, 4096, ib, 7000, 1000]);
  t.equal(native.copyRun(j1, 1), 0, 'one job ran');
  t.same([...ub.subarray(20, 320)], [...ua.subarray(10, 310)], 'byte-exact');
  t.equal(ub[7000], 0, 'the second job was not run (count 1)');
  t.equal(native.copyRun(j1, 2), 0, 'two jobs ran');
  t.same([...ub.subarray(7000, 8000)], [...ua.subarray(4096, 5096)], 'second job byte-exact');
  t.equal(ub[8000], 0, 'byte after the destination untouched');
  // the binding reads the array as it is now, not as it was when bound
  jobs.set([ia, 0, ib, 0, 64, ia, 0, ib, 8190, 4]);
  const before = Uint8Array.from(ub);
  t.equal(native.copyRun(j1, 2), 34 /* ERANGE */, 'a batch with a job past the end is refused');
  t.same([...ub], [...before], 'nothing copied, not even the valid first job');
  t.equal(native.copyRun(j1, 3), 22 /* EINVAL */, 'count beyond the bound array refused');
  t.equal(native.copyRun(9999, 1), 22 /* EINVAL */, 'unknown binding refused');
  t.equal(native.copyRun(j1, -1), 22 /* EINVAL */, 'negative count refused');
  t.equal(native.copyRun(j1, 1.5), 22 /* EINVAL */, 'fractional count refused');
  t.throws(() => native.copyBind(new Float32Array(5) as unknown as Float64Array), { code: 'ERR_INVALID_ARG_TYPE' });
  t.same([...ub], [...before], 'refused runs copied nothing');

  const q = new CopyQueue(native);
  q.add(ia, 100, ib, 200, 256);
  q.run();
  t.same([...ub.subarray(200, 456)], [...ua.subarray(100, 356)], 'CopyQueue.run copies through copyRun');
  q.add(ia, 0, ib, 8000, 256);
  t.throws(() => q.run(), { code: 'ERANGE', syscall: 'copyBatch' }, 'a refused queue throws the named error');
  t.doesNotThrow(() => q.run(), 'the refused jobs were dropped from the queue');
  native.copyUnregister(ia);
  native.copyUnregister(ib);
});

t.test('copyPrefetch: a hint over bound [region, offset] pairs; bad pairs skipped without a load, bad id or count refused', async (t) => {
  const a = new SharedArrayBuffer(4096);
  const ua = new Uint8Array(a);
  for (let i = 0; i < ua.length; i++) ua[i] = (i * 7 + 3) & 0xff;
  const before = Uint8Array.from(ua);
  const ia = native.copyRegister(a);
  const pairs = new Float64Array(16);
  const id = native.copyBind(pairs);
  pairs.set([ia, 0, ia, 4095, ia, 64]);
  t.equal(native.copyPrefetch(id, 3), 0, 'three lines inside the region prefetched');
  // every pair below is outside what the addon mapped: each one skipped (a pointer past the
  // region is never formed), the call still answers 0 and the process lives
  pairs.set([ia, 4096, ia, 1e15, ia, -1, ia, NaN, 9999, 0, -1, 0, NaN, 0, ia, 2 ** 53]);
  t.equal(native.copyPrefetch(id, 8), 0, 'pairs past the end, negative, NaN or of an unknown region: skipped');
  t.same([...ua], [...before], 'a prefetch writes nothing');
  t.equal(native.copyPrefetch(id, 9), 22 /* EINVAL */, 'count beyond the bound array (8 pairs) refused');
  t.equal(native.copyPrefetch(9999, 1), 22 /* EINVAL */, 'unknown binding refused');
  t.equal(native.copyPrefetch(id, -1), 22 /* EINVAL */, 'negative count refused');
  native.copyUnregister(ia);
  pairs.set([ia, 0]);
  t.equal(native.copyPrefetch(id, 1), 0, 'a pair of a region unregistered since: skipped');
});

t.test('a collected job array frees its binding (held weakly), a live one keeps it', async (t) => {
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  const keep = new Float64Array(5);
  const kept = native.copyBind(keep);
  const ids: number[] = [];
  for (let i = 0; i < 50; i++) ids.push(native.copyBind(new Float64Array(5)));
  gc();
  gc();
  const again = native.copyBind(new Float64Array(5));
  t.ok(again < Math.max(...ids), `a freed id is reused (got ${again}, highest was ${Math.max(...ids)})`);
  t.not(again, kept, 'the live binding was not freed');
  t.equal(native.copyRun(kept, 1), 34 /* ERANGE: all-zero job, unknown region */, 'the live binding still runs its (refused) job');
});
