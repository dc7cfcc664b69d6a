/**
 * Fuzz (b): the descriptor walker and Virtqueue over random descriptor tables in a plain
 * SharedArrayBuffer (seeded fast-check; HOSTILE_FUZZ_RUNS / HOSTILE_FUZZ_SEED change the
 * budget). Property: only GuestError is ever thrown, and nothing is read or written outside
 * what the guest described (see runWalker). The corpus (one input per distinct outcome)
 * is replayed first.
 */
import t from 'tap';
import fc from 'fast-check';
import { FUZZ_SEED, WalkerInput, loadCorpus, runWalker, walkerInputArb } from './fuzz-lib';

t.test('walker corpus replays', async (t) => {
  const corpus = loadCorpus<WalkerInput & { expect: string }>('walker.json');
  t.ok(corpus.length >= 10, `${corpus.length} corpus inputs`);
  for (const c of corpus) t.equal(runWalker(c).outcome, c.expect, `corpus: ${c.expect}`);
});

t.test('walker property: only GuestError, no access outside the guest description', async (t) => {
  const runs = Number(process.env.HOSTILE_FUZZ_RUNS ?? 5000);
  const seen = new Map<string, number>();
  const t0 = Date.now();
  fc.assert(
    fc.property(walkerInputArb, (inp) => {
      const o = runWalker(inp).outcome;
      seen.set(o, (seen.get(o) ?? 0) + 1);
    }),
    { seed: FUZZ_SEED, numRuns: runs, includeErrorInReport: true },
  );
  t.pass(`${runs} runs in ${Date.now() - t0} ms (seed ${FUZZ_SEED}); outcomes: ${JSON.stringify(Object.fromEntries(seen))}`);
  t.ok(seen.size >= 8, 'the generator reaches many distinct rules');
});
