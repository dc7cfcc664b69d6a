/**
 * Long fuzz runs (the test suite runs a bounded number): node dist/bench/fuzz.js
 *   [--target walker|messages|all] [--runs N] [--seed S] [--save-corpus]
 * A failure prints fast-check's counterexample (seed, path, shrunk input): add the input
 * to test/hostile/corpus/ so the suite replays it. --save-corpus (walker) rewrites
 * corpus/walker.json with one input per distinct outcome (GuestError rule or 'ok') and adds
 * to corpus/messages.json one input per new (outcome, request).
 */
import fc from 'fast-check';
import { WalkerInput, loadCorpus, runWalker, saveCorpus, walkerInputArb } from '../kit/fuzz/walker';
import { MsgInput, fuzzMessages } from '../kit/fuzz/messages';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1] : def;
}

async function main(): Promise<void> {
  const target = arg('target', 'all');
  const runs = Number(arg('runs', '20000'));
  const seed = Number(arg('seed', String(Date.now() % 2 ** 31)));
  console.log(`fuzz target=${target} runs=${runs} seed=${seed}`);
  if (target === 'walker' || target === 'all') {
    const by = new Map<string, WalkerInput & { expect: string }>();
    for (const c of loadCorpus<WalkerInput & { expect: string }>('walker.json')) by.set(c.expect, c);
    const seen = new Map<string, number>();
    const t0 = Date.now();
    fc.assert(
      fc.property(walkerInputArb, (inp) => {
        const o = runWalker(inp).outcome;
        seen.set(o, (seen.get(o) ?? 0) + 1);
        if (!by.has(o)) by.set(o, { ...inp, expect: o });
      }),
      { seed, numRuns: runs, includeErrorInReport: true },
    );
    console.log(`walker: ${runs} runs in ${Date.now() - t0} ms`, Object.fromEntries(seen));
    if (process.argv.includes('--save-corpus')) saveCorpus('walker.json', [...by.values()]);
  }
  if (target === 'messages' || target === 'all') {
    const r = await fuzzMessages({ seed, runs: Math.max(1, Math.floor(runs / 20)) });
    console.log(`messages: ${r.runs} runs in ${r.ms} ms`, r.outcomes);
    if (process.argv.includes('--save-corpus')) {
      // one input per (outcome, request), at most 40: the header-level resets first
      const old = loadCorpus<MsgInput & { expect: string }>('messages.json');
      const seen = new Set(old.map((c) => `${c.expect} ${c.request}`));
      const add = r.examples.filter((c) => !seen.has(`${c.expect} ${c.request}`) && seen.add(`${c.expect} ${c.request}`));
      saveCorpus('messages.json', [...old, ...add].slice(0, 40));
    }
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  },
);
