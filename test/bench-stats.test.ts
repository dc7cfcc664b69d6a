/** bench/stats.ts: the statistics the benchmark table is made of. */
import t from 'tap';
import { FAST_FRACTION, compareCells, fastMode, median, ratio } from '../bench/stats';

t.test('median of odd, even and empty round lists; input not reordered', async (t) => {
  const xs = [5, 1, 4];
  t.equal(median(xs), 4);
  t.same(xs, [5, 1, 4], 'the caller\'s array is left as it was');
  t.equal(median([1, 2, 3, 10]), 2.5);
  t.equal(median([]), null);
});

t.test('fast mode: the rounds within FAST_FRACTION of the best, and their median', async (t) => {
  // a cell as the VM gives it: three fast rounds, two in the slow mode at about half speed
  t.same(fastMode([12.1, 5.0, 11.5, 6.2, 12.4]), { median: 12.1, rounds: 3 });
  t.same(fastMode([10, 10, 10]), { median: 10, rounds: 3 }, 'a steady machine keeps every round');
  const edge = 10 * FAST_FRACTION;
  t.same(fastMode([10, edge, edge - 0.01]), { median: (10 + edge) / 2, rounds: 2 }, 'the threshold itself counts as fast');
  t.same(fastMode([]), { median: null, rounds: 0 });
  t.equal(FAST_FRACTION, 0.65);
});

t.test('ratio: null when either side is missing or the divisor is zero', async (t) => {
  t.equal(ratio(3, 4), 0.75);
  t.equal(ratio(null, 4), null);
  t.equal(ratio(3, null), null);
  t.equal(ratio(3, 0), null);
});

t.test('compareCells: a / b by medians, best rounds and fast-mode medians, as the vf/DPDK and vf/OVS columns', async (t) => {
  const vf = { medianMpps: 6, bestMpps: 12, fastMpps: 10 };
  const ovs = { medianMpps: 8, bestMpps: 10, fastMpps: 10 };
  t.same(compareCells(vf, ovs), { median: 0.75, best: 1.2, fast: 1 });
  t.same(compareCells(vf, undefined), { median: null, best: null, fast: null }, 'a backend not measured in the row');
  t.same(compareCells({ medianMpps: null, bestMpps: null, fastMpps: null }, ovs), { median: null, best: null, fast: null }, 'every round failed');
});
