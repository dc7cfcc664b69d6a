/**
 * Micro-benchmark of the worker hot path alone, single thread, hot caches: a "reflector"
 * driver keeps guest A's TX ring and guest B's RX ring full by bumping avail->idx over
 * fixed descriptors, so the time measured is the backend's per-packet work (dequeue,
 * forward, enqueue with copy, used ring, publish). Complements bench/run.ts (real
 * frontend, cache misses included). Run: node dist/bench/dataplane.js [size] [seconds] [log]
 * [bulk] [hdr0] [inorder] [pool=N] [packets=N] [burst=N]
 */
import { DirtyLog } from '../src/workers/dirty-log';
import { GuestMemory } from '../src/workers/guest-memory';
import { PacketBatch, BURST } from '../src/workers/packet-batch';
import { CopyQueue } from '../src/workers/bulk-copy';
import { openQueue } from '../src/workers/open-queue';
import type { RingQueue } from '../src/workers/ring-format';
import { CTRL_INTS, STATS_SLOTS, VringDesc } from '../src/shared/types';
import { VRING_DESC_F_WRITE } from '../src/protocol/constants';
import { native } from '../src/native';

const SIZE = Number(process.argv[2] ?? 64);
const SECONDS = Number(process.argv[3] ?? 2);
const LOG = process.argv.includes('log');
/** `jslog`: mark dirty pages in JavaScript (DirtyLog without the addon), as before NOTES.md #21 */
const JS_LOG = process.argv.includes('jslog');
const BULK = process.argv.includes('bulk');
/** `inorder`: VIRTIO_F_IN_ORDER negotiated (as testpmd's virtio PMD does against us): one TX used entry a burst */
const IN_ORDER = process.argv.includes('inorder');
const Q = 256;
// `pool=N`: the driver hands out N buffers in turn (each descriptor gets the next one when it
// comes back), as testpmd's mbuf pool does, so packet and header lines come from memory, not
// the cache: a single-thread meter for the loop's cache misses (prefetching, NOTES.md).
const POOL = Number(process.argv.find((x) => x.startsWith('pool='))?.slice(5) ?? 0);
const MEM = Math.max(4 << 20, 0x100000 + POOL * 2048);

function guest(): { sab: SharedArrayBuffer; dv: DataView; gm: GuestMemory } {
  const sab = new SharedArrayBuffer(MEM);
  return { sab, dv: new DataView(sab), gm: new GuestMemory([{ gpa: 0, size: MEM, uva: 0x7f0000000000, sab, sabOffset: 0 }]) };
}

const DESC = 0x10000;
const AVAIL = 0x20000;
const USED = 0x30000;
const BUF = 0x100000;
// Where the virtio-net header sits in each 2 KiB buffer: DPDK's virtio PMD puts it right
// before the packet, which starts 128 bytes in (RTE_PKTMBUF_HEADROOM): 116. `hdr0` puts it at
// the buffer start instead (packet 4 bytes off 8-alignment, as some Linux layouts are).
const HDR_AT = process.argv.includes('hdr0') ? 0 : 116;

function ring(g: ReturnType<typeof guest>, index: number, write: boolean, bufLen: number, logSab: SharedArrayBuffer | null): RingQueue {
  for (let i = 0; i < Q; i++) {
    const o = DESC + i * 16;
    g.dv.setUint32(o, BUF + i * 2048 + HDR_AT, true);
    g.dv.setUint32(o + 4, 0, true);
    g.dv.setUint32(o + 8, bufLen, true);
    g.dv.setUint16(o + 12, write ? VRING_DESC_F_WRITE : 0, true);
    g.dv.setUint16(AVAIL + 4 + 2 * i, i, true);
  }
  g.dv.setUint16(AVAIL + 2, Q, true); // every descriptor available
  const vd: VringDesc = {
    device: 1, port: 0, index, size: Q,
    desc: { region: 0, offset: DESC }, avail: { region: 0, offset: AVAIL }, used: { region: 0, offset: USED },
    logUsedGpa: LOG ? USED : -1, kickFd: -1, callFd: -1,
    features: { hdrLen: 12, mrgRxbuf: true, eventIdx: true, indirect: true, inOrder: IN_ORDER, logAll: LOG, netBits: 0 },
    ctrl: new SharedArrayBuffer(CTRL_INTS * 4), stats: new SharedArrayBuffer(STATS_SLOTS * 8),
  };
  const log = new DirtyLog();
  if (logSab && !JS_LOG) {
    // what the poller does: the addon marks a burst's page runs (NOTES.md #21)
    log.enableNative(native);
  }
  if (logSab) log.set({ sab: logSab, offset: 0, size: logSab.byteLength });
  return openQueue(vd, g.gm, log);
}

const a = guest();
const b = guest();
const logA = LOG ? new SharedArrayBuffer(MEM / 4096 / 8) : null;
const logB = LOG ? new SharedArrayBuffer(MEM / 4096 / 8) : null;
const tx = ring(a, 1, false, SIZE + 12, logA);
const rx = ring(b, 0, true, 2048, logB);
const batch = new PacketBatch(BURST);
if (BULK) {
  // what the poller does: the addon's one-call-per-burst memcpy for copies >= BULK_MIN
  const q = new CopyQueue(native);
  a.gm.enableBulk(native);
  b.gm.enableBulk(native);
  tx.bulk = q;
  rx.bulk = q;
}
const availA = new Uint16Array(a.sab, AVAIL, 2);
const availB = new Uint16Array(b.sab, AVAIL, 2);
const descA = new Uint32Array(a.sab, DESC, Q * 4);
const descB = new Uint32Array(b.sab, DESC, Q * 4);
let slot = 0;
let next = 0;
// the buffers in a fixed shuffled order, so the CPU's stride prefetchers cannot follow it
const order = new Uint32Array(POOL);
for (let i = 0; i < POOL; i++) order[i] = i;
for (let i = POOL - 1, x = 12345; i > 0; i--) {
  x = (Math.imul(x, 1103515245) + 12345) >>> 0;
  const j = x % (i + 1);
  const t = order[i];
  order[i] = order[j];
  order[j] = t;
}

// `burst=N`: bursts of N packets instead of BURST (a frontend slower than the poller leaves
// partial bursts: the per-burst costs, e.g. the log's used-ring marks, weigh more)
const BURST_N = Math.min(BURST, Number(process.argv.find((x) => x.startsWith('burst='))?.slice(6) ?? BURST));
let packets = 0;
const run = (ms: number) => {
  const end = performance.now() + ms;
  do {
    for (let r = 0; r < 64; r++) {
      const n = tx.dequeueBurst(batch, BURST_N);
      rx.acquire();
      rx.enqueueBurst(a.gm, batch, null, n);
      rx.flush();
      rx.release();
      tx.completeBurst(batch);
      // the reflector driver: hand the same descriptors back (with pool=N, new buffers)
      if (POOL > 0) {
        for (let k = 0; k < n; k++) {
          const w = ((slot + k) & (Q - 1)) * 4;
          descA[w] = BUF + order[next] * 2048 + HDR_AT;
          if (++next === POOL) next = 0;
          descB[w] = BUF + order[next] * 2048 + HDR_AT;
          if (++next === POOL) next = 0;
        }
        slot = (slot + n) & (Q - 1);
      }
      availA[1] = (availA[1] + n) & 0xffff;
      availB[1] = (availB[1] + n) & 0xffff;
      packets += n;
    }
  } while (performance.now() < end);
};
// `packets=N`: a fixed amount of work instead of a time (profiles and instruction counts of
// the same work; callgrind's counts of JIT code did not match native runs: NOTES.md)
const FIXED = Number(process.argv.find((x) => x.startsWith('packets='))?.slice(8) ?? 0);
const runPackets = (n: number) => {
  const end = packets + n;
  while (packets < end) run(0);
};
if (FIXED > 0) runPackets(FIXED / 4);
else run(300); // warm up, let TurboFan settle
packets = 0;
const t0 = performance.now();
if (FIXED > 0) runPackets(FIXED);
else run(SECONDS * 1000);
const secs = (performance.now() - t0) / 1000;
process.stdout.write(`size ${SIZE}${POOL > 0 ? ` pool ${POOL}` : ''} log ${LOG ? 'on' : 'off'} bulk ${BULK ? 'on' : 'off'}${IN_ORDER ? ' inorder' : ''}${BURST_N !== BURST ? ` burst ${BURST_N}` : ''}: ${(packets / secs / 1e6).toFixed(2)} Mpps, ${((secs * 1e9) / packets).toFixed(1)} ns/packet\n`);
