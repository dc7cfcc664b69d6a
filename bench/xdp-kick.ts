/**
 * The cost of the AF_XDP data path's only syscall (issue 22): the sendto() kick that
 * XDP_USE_NEED_WAKEUP asks for on the TX ring, and the recvfrom() wakeup of the fill ring.
 * Measured on a veth pair this script creates and removes (root): an empty kick (the syscall's
 * floor), then bursts of 32 and 64 frames of 64 bytes written into the TX ring as a worker
 * does, published, kicked and their completions reaped (copy mode: the kick is where the
 * kernel builds and sends the skbs, so it carries the burst's transmit cost).
 *
 *   node dist/bench/xdp-kick.js [iterations]
 *
 * libxdp's xsk_ring_prod__submit + sendto makes the same syscall: the measurement is what the
 * raw-syscall choice (addon/xdp.cc) costs against it, i.e. nothing extra per burst.
 */
import { execFileSync } from 'node:child_process';
import { native } from '../src/native';

const iterations = Number(process.argv[2] ?? 20000);
const A = `xkb${process.pid % 10000}`;
const B = `xkc${process.pid % 10000}`;
const ip = (...args: string[]): string => execFileSync('ip', args, { encoding: 'utf8' });

function main(): void {
  ip('link', 'add', A, 'type', 'veth', 'peer', 'name', B);
  try {
    ip('link', 'set', A, 'up');
    ip('link', 'set', B, 'up');
    const x = native.xdpOpen(A, 0, 2048, 256);
    const tx = new Uint32Array(native.mmap(x.fd, x.tx.bytes, x.tx.pgoff));
    const comp = new Uint32Array(native.mmap(x.fd, x.comp.bytes, x.comp.pgoff));
    const umem = new Uint8Array(native.mmap(x.umemFd, x.umemBytes, 0));
    const mask = x.entries - 1;
    for (let k = 0; k < x.entries; k++) {
      const o = (x.entries + k) * x.frameSize;
      umem.fill(0xff, o, o + 6); // broadcast, so the peer takes it
      umem[o + 12] = 0x88;
      umem[o + 13] = 0xb5;
    }
    console.log(`veth ${A}: socket ${x.zeroCopy ? 'zero-copy' : 'copy'} mode, program in ${x.driverMode ? 'driver' : 'generic'} mode`);
    const time = (what: string, n: number, per: number, f: () => void): void => {
      for (let i = 0; i < Math.min(n, 1000); i++) f();
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < n; i++) f();
      const ns = Number(process.hrtime.bigint() - t0) / n;
      console.log(`${what}: ${(ns / 1000).toFixed(2)} us a burst${per > 1 ? `, ${(ns / per).toFixed(0)} ns a frame` : ''}`);
    };
    time('sendto kick, TX ring empty (the syscall floor)', iterations, 1, () => native.xdpKick(x.fd, 1));
    time('recvfrom wakeup (fill ring)', iterations, 1, () => native.xdpWakeRx(x.fd));
    let prod = tx[x.tx.producer >> 2];
    for (const burst of [32, 64]) {
      time(`burst of ${burst} x 64 B: descriptors, publish, kick, reap`, Math.max(1, iterations / 10), burst, () => {
        for (let k = 0; k < burst; k++) {
          const d = (x.tx.desc >> 2) + 4 * ((prod + k) & mask);
          tx[d] = (x.entries + ((prod + k) & mask)) * x.frameSize;
          tx[d + 1] = 0;
          tx[d + 2] = 64;
          tx[d + 3] = 0;
        }
        prod = (prod + burst) >>> 0;
        Atomics.store(tx, x.tx.producer >> 2, prod);
        native.xdpKick(x.fd, Math.ceil(burst / 32) + 1);
        // wait for the completions (copy mode: the skbs are freed in the peer's softirq)
        for (let spin = 0; spin < 1e6 && Atomics.load(comp, x.comp.producer >> 2) !== prod; spin++);
        Atomics.store(comp, x.comp.consumer >> 2, Atomics.load(comp, x.comp.producer >> 2));
      });
    }
    native.close(x.linkFd);
    native.close(x.fd);
    native.close(x.umemFd);
  } finally {
    ip('link', 'del', A);
  }
}

main();
