/** The addon's dirty-log marker (logBind / logRun): exactly the pages of the runs, never outside the log. */
import t from 'tap';
import v8 from 'node:v8';
import vm from 'node:vm';
import { native } from '../src/native';

const EINVAL = 22;
const ERANGE = 34;

function bitsOf(log: Uint8Array): number[] {
  const pages: number[] = [];
  for (let i = 0; i < log.length * 8; i++) if (log[i >> 3] & (1 << (i & 7))) pages.push(i);
  return pages;
}

t.test('logRun sets the bits of page runs in a log view, counts the pages, touches nothing else', async (t) => {
  // the log view starts 3 bytes into its SharedArrayBuffer: bit positions are the view's
  const sab = new SharedArrayBuffer(32);
  const whole = new Uint8Array(sab);
  const log = new Uint8Array(sab, 3, 16); // 128 pages
  const runs = new Float64Array(16);
  const id = native.logBind(log, runs);
  // one page; a run inside one byte; a run over three bytes; the last page of the log
  runs.set([5, 5, 9, 11, 14, 30, 127, 127]);
  t.equal(native.logRun(id, 4, true), 1 + 3 + 17 + 1, 'pages marked');
  const want = [5, 9, 10, 11, ...Array.from({ length: 17 }, (_, k) => 14 + k), 127];
  t.same(bitsOf(log), want, 'exactly the pages of the runs');
  t.ok(whole.subarray(0, 3).every((x) => x === 0) && whole.subarray(19).every((x) => x === 0), 'nothing outside the view');
  t.equal(native.logRun(id, 4, false), 22, 'unfenced: the same pages counted again');
  t.same(bitsOf(log), want, 'bits already set stay as they are');
  // the frontend takes a byte (QEMU exchanges words): the next run sets the bit again
  Atomics.exchange(log, 0, 0);
  runs.set([5, 5]);
  t.equal(native.logRun(id, 1, true), 1);
  t.same(bitsOf(log), want, 'page 5 set again after the clear, nothing else changed');
  t.equal(native.logRun(id, 0, true), 0, 'an empty burst');
  native.logUnbind(id);
});

t.test('logRun refuses a bad burst whole (negative errno, no bit written) and a bad binding', async (t) => {
  const log = new Uint8Array(new SharedArrayBuffer(8)); // 64 pages
  const runs = new Float64Array(8);
  const id = native.logBind(log, runs);
  for (const [name, run] of [
    ['a page past the log', [60, 64]],
    ['first after last', [7, 6]],
    ['a negative page', [-1, 3]],
    ['NaN', [NaN, 3]],
    ['an infinite run', [0, Infinity]],
    ['2^60', [2 ** 60, 2 ** 60]],
  ] as Array<[string, number[]]>) {
    runs.set([1, 1, ...run]); // a valid first run: still nothing may be written
    t.equal(native.logRun(id, 2, true), -ERANGE, `${name}: -ERANGE`);
    t.ok(log.every((x) => x === 0), `${name}: no bit written, not even the valid run's`);
  }
  runs.set([1, 1, 2, 2]);
  t.equal(native.logRun(id, 5, true), -EINVAL, 'a count beyond the run array');
  t.equal(native.logRun(id, -1, true), -EINVAL, 'a negative count');
  t.equal(native.logRun(id, 1.5, true), -EINVAL, 'a fractional count');
  t.equal(native.logRun(9999, 1, true), -EINVAL, 'an unknown binding');
  t.ok(log.every((x) => x === 0), 'nothing written by refused calls');
  native.logUnbind(id);
  t.equal(native.logRun(id, 1, true), -EINVAL, 'an unbound binding');
  t.ok(log.every((x) => x === 0));
  t.throws(() => native.logBind(new Int32Array(2) as unknown as Uint8Array, runs), { code: 'ERR_INVALID_ARG_TYPE' }, 'a log view that is not bytes');
  t.throws(() => native.logBind(log, new Float32Array(2) as unknown as Float64Array), { code: 'ERR_INVALID_ARG_TYPE' }, 'runs that are not doubles');
});

t.test('bindings: an unbound id is reused, a collected run array frees its slot, a live one keeps it', async (t) => {
  const log = new Uint8Array(new SharedArrayBuffer(8));
  const a = native.logBind(log, new Float64Array(2));
  native.logUnbind(a);
  const b = native.logBind(log, new Float64Array(2));
  t.equal(b, a, 'the unbound slot is taken again');
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  const keep = Float64Array.from([3, 3]);
  const kept = native.logBind(log, keep);
  const ids: number[] = [];
  for (let i = 0; i < 50; i++) ids.push(native.logBind(log, new Float64Array(2)));
  gc();
  gc();
  const again = native.logBind(log, new Float64Array(2));
  t.ok(again < Math.max(...ids), `a freed id is reused (got ${again}, highest was ${Math.max(...ids)})`);
  t.not(again, kept, 'the live binding was not freed');
  t.equal(native.logRun(kept, 1, true), 1, 'the live binding still marks');
  t.same(bitsOf(log), [3]);
});
