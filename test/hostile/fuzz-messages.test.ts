/**
 * Fuzz (a): random messages at a live forwarder (kit/fuzz/messages.ts for the properties).
 * The corpus (corpus/messages.json) is replayed first; then a seeded, bounded fast-check run
 * (HOSTILE_FUZZ_RUNS / HOSTILE_FUZZ_SEED; scripts/fuzz.sh for long runs).
 */
import t from 'tap';
import { FUZZ_SEED, loadCorpus } from '../../kit/fuzz/walker';
import { MsgInput, fuzzMessages, fuzzOne } from '../../kit/fuzz/messages';
import { Bystander, startArena } from '../../kit/hostile/harness';
import { fdCount } from '../../kit/env';

t.test('message corpus replays', async (t) => {
  const arena = await startArena();
  t.teardown(arena.stop);
  const corpus = loadCorpus<MsgInput & { expect: string; note?: string }>('messages.json');
  t.ok(corpus.length >= 8, `${corpus.length} corpus inputs`);
  const by = new Bystander(arena.b1, arena.b2);
  by.start();
  const baseline = fdCount();
  for (const c of corpus) t.equal(await fuzzOne(arena, c, baseline), c.expect, `corpus: ${c.note ?? c.expect}`);
  const f = await by.stop();
  t.same([f.recvAB, f.recvBA, f.mismatched], [f.sentAB, f.sentBA, 0], 'bystanders lost nothing');
});

t.test('message property: never crashes or hangs, header-level violations reset, no fd leak', async (t) => {
  const runs = Number(process.env.HOSTILE_FUZZ_RUNS ?? 300);
  const r = await fuzzMessages({ seed: FUZZ_SEED, runs });
  t.pass(`${r.runs} runs in ${r.ms} ms (seed ${FUZZ_SEED}); outcomes ${JSON.stringify(r.outcomes)}`);
  t.ok(Object.keys(r.outcomes).length >= 4, 'several outcomes reached');
});
