/**
 * Memory ordering against the guest and the other threads, decided once.
 *
 * Node 20's TurboFan does not inline Atomics.load / Atomics.store: each is a call into a
 * builtin that validates the typed array and the index, about ten times a plain load or
 * store (bench/NOTES.md #25), and the poll loop made many such calls per round.
 *
 * What the rings need is acquire (avail->idx, then the avail entries and descriptors it
 * covers), release (used entries and packet bytes, then used->idx; the ring lock's unlock)
 * and, in two places, a full fence (used->idx then the guest's notification fields;
 * the kick request then avail->idx). On x86 (TSO) every plain aligned load is an acquire
 * and every plain store a release; V8 emits one machine load or store per typed-array
 * access and keeps them in program order (they are on its effect chain), so there a plain
 * access is the acquire or the release. The full fences stay Atomics.store (an xchg), and
 * a load after one needs nothing more; the first of them (used->idx, then the notification
 * fields) is taken once per poller sweep instead of per burst when no dirty log is on, its
 * decisions provisional until then (ring-core.ts). Elsewhere (ARM64) every ordered access is
 * an Atomics call, as the memory model asks.
 *
 * VHOSTFWD_ORDERING=atomics forces the portable form on x86 too (the tests run both).
 */
export const TSO: boolean =
  process.env.VHOSTFWD_ORDERING !== 'atomics' && (process.arch === 'x64' || process.arch === 'ia32');
