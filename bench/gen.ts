/**
 * A paced traffic generator for bench/run.ts's partial-load rows: two synthetic guests (our
 * TypeScript frontend, src/frontend/guest.ts) on a backend's two vhost-user sockets, guest A
 * sending 64 B frames to guest B at a set rate, B receiving them. testpmd cannot pace its
 * transmit in 22.11, so the same generator is the frontend of every backend here (vhostfwd,
 * DPDK net_vhost, OVS dpdkvhostuser), and the backend's CPU time is what is compared.
 *
 * Phases (one connection for all): `peak` sends as fast as credit allows for `seconds`, then
 * one phase per rate in --rates (frames per second: the same absolute loads for every
 * backend, whatever each one's peak with this generator). Each phase prints
 * `phase NAME start` and `phase NAME end {json}` on stdout, so that the bench samples the
 * backend's CPU time at the same moments. It prints `ready` once both guests are connected
 * and starts on a `go` line on stdin. Run: echo go | node dist/bench/gen.js --a SOCK --b SOCK.
 *
 * Not src/frontend/traffic.ts: that generator builds and numbers every frame (its credit is
 * counted by sequence numbers, for byte-exact checks), which held it near 25 kpps when tried
 * here; this one sends one frame again and again and counts its credit by frames received.
 */
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { SyntheticGuest, frame, macOf } from '../src/frontend/guest';

const argv = yargs(hideBin(process.argv))
  .option('a', { type: 'string', demandOption: true, describe: 'socket of the sending port' })
  .option('b', { type: 'string', demandOption: true, describe: 'socket of the receiving port' })
  .option('size', { type: 'number', default: 64 })
  .option('seconds', { type: 'number', default: 5, describe: 'seconds per phase' })
  .option('rates', { type: 'string', default: '10000,50000,100000', describe: 'offered loads, frames per second, one phase each after the peak' })
  .strict()
  .parseSync();

const BURST = 32;

interface PhaseResult {
  /** target frames per second (0: as fast as credit allows) */
  targetPps: number;
  sent: number;
  received: number;
  seconds: number;
  pps: number;
}

async function main(): Promise<void> {
  const a = await SyntheticGuest.start({ socket: argv.a, mac: macOf(1) });
  const b = await SyntheticGuest.start({ socket: argv.b, mac: macOf(2) });
  // one frame, sent again and again: the generator's own cost stays small and flat
  const f = frame(b.mac, a.mac, argv.size, 1);
  const batch: Uint8Array[] = Array.from({ length: BURST }, () => f);
  const subs = Array.from({ length: BURST + 1 }, (_, n) => batch.slice(0, n));
  // in flight at most 3/4 of B's posted RX buffers: what is lost is the backend's
  const credit = Math.floor((b.queueSize * 3) / 4);
  let inFlight = 0;
  // connected: the caller starts its backend's forwarding (DPDK's `start`), then says go
  process.stdout.write('ready\n');
  await new Promise<void>((resolve) => {
    process.stdin.on('data', (d: Buffer) => {
      if (d.toString().includes('go')) resolve();
    });
  });
  process.stdin.pause();

  // the phases never yield to the event loop: nothing but the rings is needed while they run,
  // and a yield per burst would cap the paced levels below their targets
  const phase = (name: string, targetPps: number): PhaseResult => {
    process.stdout.write(`phase ${name} start\n`);
    const t0 = process.hrtime.bigint();
    const end = t0 + BigInt(Math.round(argv.seconds * 1e9));
    let sent = 0;
    let received = 0;
    for (;;) {
      const now = process.hrtime.bigint();
      if (now >= end) break;
      const due = targetPps > 0 ? Math.floor((Number(now - t0) / 1e9) * targetPps) - sent : BURST;
      const n = Math.min(BURST, due, credit - inFlight);
      if (n > 0) {
        const k = a.send(0, subs[n]);
        sent += k;
        inFlight += k;
      }
      a.reclaim(0);
      const got = b.receive(0).length;
      received += got;
      inFlight = Math.max(0, inFlight - got);
    }
    // what is still in flight arrives in the next phase: counted there, as the sender's rate is
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const r: PhaseResult = { targetPps, sent, received, seconds, pps: received / seconds };
    process.stdout.write(`phase ${name} end ${JSON.stringify(r)}\n`);
    return r;
  };

  phase('peak', 0);
  for (const rate of argv.rates.split(',').map(Number)) {
    if (!(rate > 0)) throw new Error(`--rates: ${rate}: frames per second > 0`);
    phase(String(rate), rate);
  }
  a.close();
  b.close();
  process.exit(0);
}

main().catch((e: unknown) => {
  process.stderr.write(`gen: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
