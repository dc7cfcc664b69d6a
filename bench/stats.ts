/**
 * Round statistics of bench/run.ts. On the shared dev VM whole trials of either backend drop
 * to about half speed at random ("the slow mode", bench/NOTES.md), so a cell's rounds are
 * bimodal: the median of all rounds depends on how many slow trials each backend drew, and the
 * best round is a single sample. The fast-mode median sits between: the median of the rounds
 * within FAST_FRACTION of the cell's best, which keeps every round of a steady machine.
 */

/** Rounds at or above this fraction of the best are counted as fast mode (slow ones sit at 0.3-0.6). */
export const FAST_FRACTION = 0.65;

export function median(xs: readonly number[]): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** The rounds in fast mode (>= fraction x best) and their median. */
export function fastMode(xs: readonly number[], fraction = FAST_FRACTION): { median: number | null; rounds: number } {
  if (xs.length === 0) return { median: null, rounds: 0 };
  const floor = Math.max(...xs) * fraction;
  const fast = xs.filter((x) => x >= floor);
  return { median: median(fast), rounds: fast.length };
}

export const ratio = (a: number | null, b: number | null): number | null => (a !== null && b !== null && b > 0 ? a / b : null);

/** The three statistics of one backend's cell that the table compares between backends. */
export interface CellStats {
  medianMpps: number | null;
  bestMpps: number | null;
  fastMpps: number | null;
}

/** a / b by medians of all rounds, by best rounds and by fast-mode medians (null where a side is missing). */
export function compareCells(a: CellStats | undefined, b: CellStats | undefined): { median: number | null; best: number | null; fast: number | null } {
  return {
    median: ratio(a?.medianMpps ?? null, b?.medianMpps ?? null),
    best: ratio(a?.bestMpps ?? null, b?.bestMpps ?? null),
    fast: ratio(a?.fastMpps ?? null, b?.fastMpps ?? null),
  };
}
