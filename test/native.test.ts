// Tests of the C++ addon through its typed wrapper (src/native.ts). Every test checks a
// real kernel-visible outcome: bytes through a passed fd, /proc/self/fd counts,
// /proc/<tid>/status affinity, /proc/self/maps mappings.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';
import { Worker } from 'node:worker_threads';
import { setTimeout as sleep } from 'node:timers/promises';
import { native, NativeError, POLL_ERROR, POLL_READABLE } from '../src/native';

/** Compiled wrapper, loaded by worker code (dist/test -> dist/src/native.js). */
const NATIVE_JS = JSON.stringify(path.join(__dirname, '..', 'src', 'native.js'));

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

function tmpDir(tt: tap.Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vhostfwd-native-'));
  tt.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A connected pair over a real listening socket: [client, server side]. */
function socketPair(tt: tap.Test): [number, number] {
  const sock = path.join(tmpDir(tt), 'sock');
  const lfd = native.listen(sock, 4);
  tt.equal(native.accept(lfd), -1, 'accept with nothing pending returns -1');
  const c = native.connect(sock);
  const s = native.accept(lfd);
  tt.ok(s >= 0, 'accepted a connection');
  native.close(lfd);
  tt.teardown(() => {
    for (const fd of [c, s]) {
      try { native.close(fd); } catch { /* already closed by the test */ }
    }
  });
  return [c, s];
}

function fdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

function expectCode(tt: tap.Test, fn: () => unknown, code: string, syscall: string, msg: string): void {
  try {
    fn();
    tt.fail(`${msg}: did not throw`);
  } catch (e) {
    const err = e as NativeError;
    tt.equal(err.code, code, `${msg}: code`);
    tt.equal(err.syscall, syscall, `${msg}: syscall`);
    tt.match(err.message, syscall, `${msg}: message names the syscall`);
  }
}

/** Run `body` (CommonJS source; `native`, `parentPort`, `workerData` in scope) in a worker. */
function startWorker(body: string, workerData?: unknown): Worker {
  const src = `
    const { parentPort, workerData } = require('node:worker_threads');
    const { native } = require(${NATIVE_JS});
    ${body}
  `;
  return new Worker(src, { eval: true, workerData });
}

function nextMessage<T>(w: Worker): Promise<T> {
  return new Promise((resolve, reject) => {
    w.once('message', resolve);
    w.once('error', reject);
  });
}

function exitCode(w: Worker): Promise<number> {
  return new Promise((resolve) => w.once('exit', resolve));
}


t.test('an fd really crosses the socket: write through the received fd, read through the original', async (t) => {
  const [c, s] = socketPair(t);
  const memfd = native.memfdCreate('vhostfwd-test-pass', 4096);
  t.teardown(() => native.close(memfd));

  t.equal(native.recvmsg(s, new Uint8Array(16)).bytes, -1, 'nothing to read yet: -1');
  t.equal(native.sendmsg(c, Uint8Array.from([1, 2, 3, 4]), [memfd]), 4, 'sent 4 bytes');
  const buf = new Uint8Array(16);
  const r = native.recvmsg(s, buf);
  t.equal(r.bytes, 4);
  t.same([...buf.subarray(0, 4)], [1, 2, 3, 4]);
  t.equal(r.fds.length, 1, 'one fd arrived');
  const got = r.fds[0];
  t.not(got, memfd, 'it is a new descriptor');
  const flags = /flags:\s+([0-7]+)/.exec(fs.readFileSync(`/proc/self/fdinfo/${got}`, 'utf8'));
  t.ok(flags && (parseInt(flags[1], 8) & 0o2000000) !== 0, 'received fd is O_CLOEXEC');

  const msg = Buffer.from('written through the received fd');
  fs.writeSync(got, msg, 0, msg.length, 0);
  native.close(got);
  const back = Buffer.alloc(msg.length);
  t.equal(fs.readSync(memfd, back, 0, back.length, 0), msg.length);
  t.equal(back.toString(), msg.toString(), 'the original fd sees the bytes');

  // A message longer than the receive buffer arrives in pieces; the fd only with the first.
  const pipe = native.eventfdCreate(0);
  native.sendmsg(c, new Uint8Array(10).fill(7), [pipe]);
  native.close(pipe);
  const small = new Uint8Array(4);
  const a = native.recvmsg(s, small);
  const b = native.recvmsg(s, small);
  const d = native.recvmsg(s, small);
  t.same([a.bytes, b.bytes, d.bytes], [4, 4, 2], 'stream pieces');
  t.same([a.fds.length, b.fds.length, d.fds.length], [1, 0, 0], 'fd with the first piece only');
  native.close(a.fds[0]);

  t.equal(native.sendmsg(c, new Uint8Array(0), []), 0, 'empty send without fds is a no-op');
  expectCode(t, () => native.sendmsg(c, new Uint8Array(0), [memfd]), 'EINVAL', 'sendmsg', 'fds without data');
  expectCode(t, () => native.recvmsg(s, new Uint8Array(0)), 'EINVAL', 'recvmsg', 'empty receive buffer');
});

t.test('poll: a message arrives as a libuv event, without spinning', async (t) => {
  const [c, s] = socketPair(t);
  const events: number[] = [];
  let wake: () => void = () => {};
  const h = native.poll(s, (ev) => {
    events.push(ev);
    if (ev & POLL_READABLE) {
      // drain, so a level-triggered watch would not fire again
      const buf = new Uint8Array(64);
      while (native.recvmsg(s, buf).bytes > 0) { /* drain */ }
    }
    wake();
  });
  t.teardown(() => h.close());

  const cpu0 = process.cpuUsage();
  await sleep(200);
  const cpu = process.cpuUsage(cpu0);
  t.same(events, [], 'no event while the socket is idle');
  t.ok(cpu.user + cpu.system < 100_000, `idle watch costs no CPU (${cpu.user + cpu.system} us in 200 ms)`);

  const arrived = new Promise<void>((r) => { wake = r; });
  native.sendmsg(c, Buffer.from('ping'), []);
  await arrived;
  t.equal(events.length, 1, 'one callback');
  t.equal(events[0] & POLL_READABLE, POLL_READABLE, 'readable bit');
  t.equal(events[0] & POLL_ERROR, 0, 'no error bit');
  await sleep(50);
  t.equal(events.length, 1, 'drained socket fires no more');

  // Peer hangup: POLL_ERROR, and the read says EOF.
  const hung = new Promise<void>((r) => { wake = r; });
  native.close(c);
  await hung;
  const last = events[events.length - 1];
  t.equal(last & POLL_ERROR, POLL_ERROR, 'hangup sets POLL_ERROR');
  t.equal(native.recvmsg(s, new Uint8Array(8)).bytes, 0, 'EOF after hangup');
});

t.test('poll: close() inside the callback, twice, and after close no more callbacks', async (t) => {
  const efd = native.eventfdCreate(0);
  t.teardown(() => native.close(efd));
  let calls = 0;
  let resolve: () => void = () => {};
  const fired = new Promise<void>((r) => { resolve = r; });
  const h = native.poll(efd, () => {
    calls++;
    h.close();
    h.close();
    resolve();
  });
  native.eventfdWrite(efd, 1);
  await fired;
  await sleep(30);
  t.equal(calls, 1, 'the still-readable eventfd fires no more after close()');
  h.close();
  // the fd is free to be watched again
  let again = 0;
  const h2 = native.poll(efd, () => { again++; h2.close(); });
  await sleep(30);
  t.equal(again, 1, 'a new watch on the same fd works');

  expectCode(t, () => native.poll(123456, () => {}), 'EBADF', 'uv_poll_init', 'poll on a bad fd');
});

t.test('poll: a worker that exits with an open watch shuts down cleanly', async (t) => {
  for (const how of ['terminate', 'process.exit'] as const) {
    const w = startWorker(`
      const efd = native.eventfdCreate(0);
      native.poll(efd, () => {});
      parentPort.postMessage('ready');
      parentPort.once('message', () => process.exit(0));
    `);
    t.equal(await nextMessage(w), 'ready');
    const done = exitCode(w);
    if (how === 'terminate') await w.terminate();
    else w.postMessage('exit');
    t.equal(await done, how === 'terminate' ? 1 : 0, `${how}: worker exited, main thread alive`);
  }
});

t.test('two mmaps of one memfd and a worker all see the same bytes', async (t) => {
  const size = 64 * 1024;
  const fd = native.memfdCreate('vhostfwd-test-share', size);
  t.teardown(() => native.close(fd));
  const st = native.fdStat(fd);
  t.match(st, { size, blksize: 4096, dev: Number, ino: Number });
  t.ok(st.ino > 0, 'the memfd has an inode number');

  const m1 = native.mmap(fd, size, 0);
  const m2 = native.mmap(fd, size, 0);
  const m3 = native.mmap(fd, 4096, 4096);
  t.ok(m1 instanceof SharedArrayBuffer, 'a real SharedArrayBuffer');
  t.equal(m1.byteLength, size);
  t.equal(m3.byteLength, 4096);

  const a = new Uint8Array(m1);
  const b = new Uint8Array(m2);
  a[100] = 42;
  a[4096 + 5] = 99;
  t.equal(b[100], 42, 'second mapping sees the write');
  t.equal(new Uint8Array(m3)[5], 99, 'offset mapping sees the write at its offset');
  const viaFile = Buffer.alloc(1);
  fs.readSync(fd, viaFile, 0, 1, 100);
  t.equal(viaFile[0], 42, 'the file itself holds the byte');

  // The worker gets m1 (shared, not copied) and also maps the fd itself (fds are per process).
  const w = startWorker(`
    const i32 = new Int32Array(workerData.sab);
    const own = new Int32Array(native.mmap(workerData.fd, 4096, 0));
    const seen = new Uint8Array(workerData.sab)[100];
    Atomics.or(i32, 8, 0x10);
    Atomics.or(own, 9, 0x20);
    parentPort.postMessage({ seen });
  `, { sab: m1, fd });
  const reply = await nextMessage<{ seen: number }>(w);
  await exitCode(w);
  t.equal(reply.seen, 42, 'worker read what the main thread wrote');
  const i1 = new Int32Array(m1);
  const i2 = new Int32Array(m2);
  Atomics.or(i1, 8, 0x1);
  t.equal(Atomics.load(i1, 8), 0x11, 'worker Atomics.or seen by the main thread (merged with ours)');
  t.equal(Atomics.load(i2, 8), 0x11, '... and through the second mapping');
  t.equal(Atomics.load(i2, 9), 0x20, 'worker write through its own mapping seen here');
});

t.test('a mapping lives until the last isolate drops the SAB, then it is unmapped', async (t) => {
  const name = `vhostfwd-test-life-${process.pid}`;
  const fd = native.memfdCreate(name, 4096);
  t.teardown(() => native.close(fd));
  const mapped = () => fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(`memfd:${name}`)).length;

  let sab: SharedArrayBuffer | null = native.mmap(fd, 4096, 0);
  new Uint8Array(sab)[0] = 7;
  t.equal(mapped(), 1, 'mapped');
  const w = startWorker(`
    const u8 = new Uint8Array(workerData.sab);
    parentPort.postMessage('got');
    parentPort.on('message', () => parentPort.postMessage(u8[0]));
  `, { sab });
  t.equal(await nextMessage(w), 'got');
  sab = null;
  for (let i = 0; i < 5; i++) { gc(); await sleep(10); }
  t.equal(mapped(), 1, 'main thread dropped it; the worker still holds the mapping');
  w.postMessage('read');
  t.equal(await nextMessage(w), 7, 'worker reads valid memory');
  await w.terminate();
  let left = mapped();
  for (let i = 0; i < 200 && left > 0; i++) { gc(); await sleep(10); left = mapped(); }
  t.equal(left, 0, 'unmapped once no isolate holds it');
});

t.test('retire: the guest pages go now, views held anywhere read zeros, the file keeps its bytes', async (t) => {
  const name = `vhostfwd-test-retire-${process.pid}`;
  const fd = native.memfdCreate(name, 2 * 4096);
  t.teardown(() => native.close(fd));
  const mapped = () => fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(`memfd:${name}`)).length;
  const sab = native.mmap(fd, 2 * 4096, 0);
  new Uint8Array(sab).fill(0xab);
  const w = startWorker(`
    const u8 = new Uint8Array(workerData.sab);
    parentPort.postMessage(u8[4096]);
    parentPort.on('message', () => parentPort.postMessage(u8[4096]));
  `, { sab });
  t.equal(await nextMessage(w), 0xab, 'a worker sees the guest bytes');
  t.equal(native.retire(sab), true, 'retired');
  t.equal(mapped(), 0, 'the memfd is no longer mapped (its pages can go back to the guest host)');
  t.equal(new Uint8Array(sab)[0], 0, 'the main thread\'s view reads zeros, no fault');
  w.postMessage('read');
  t.equal(await nextMessage(w), 0, 'the worker\'s view too');
  const viaFile = Buffer.alloc(1);
  fs.readSync(fd, viaFile, 0, 1, 4096);
  t.equal(viaFile[0], 0xab, 'the guest memory itself is untouched');
  new Uint8Array(sab)[0] = 1;
  fs.readSync(fd, viaFile, 0, 1, 0);
  t.equal(viaFile[0], 0xab, 'a late write through a retired view does not reach the guest');
  await w.terminate();
  t.equal(native.retire(new SharedArrayBuffer(8)), false, 'a SharedArrayBuffer not from mmap: false');
  t.throws(() => native.retire(new ArrayBuffer(8) as unknown as SharedArrayBuffer), { code: 'ERR_INVALID_ARG_TYPE' });
});

t.test('isEventfd: eventfds only', async (t) => {
  const e = native.eventfdCreate(0);
  const m = native.memfdCreate('vhostfwd-test-not-eventfd', 4096);
  const p = fs.openSync('/proc/self/status', 'r');
  t.equal(native.isEventfd(e), true, 'an eventfd');
  t.equal(native.isEventfd(m), false, 'a memfd is not');
  t.equal(native.isEventfd(p), false, 'a regular file is not');
  expectCode(t, () => native.isEventfd(0x7ffffff0), 'EBADF', 'fcntl', 'a closed fd');
  for (const fd of [e, m]) native.close(fd);
  fs.closeSync(p);
});

t.test("a worker's affinity is its own", async (t) => {
  const mainBefore = native.getAffinity();
  t.ok(mainBefore.length >= 1, `main thread cpus: ${mainBefore.join(',')}`);
  const target = mainBefore.length >= 2 ? mainBefore[1] : mainBefore[0];
  const w = startWorker(`
    native.setAffinity([workerData.target]);
    parentPort.postMessage({ tid: native.gettid(), cpus: native.getAffinity() });
    parentPort.once('message', () => process.exit(0));
  `, { target });
  const r = await nextMessage<{ tid: number; cpus: number[] }>(w);
  t.not(r.tid, native.gettid(), 'a different kernel thread');
  t.same(r.cpus, [target], 'worker reads back its own set');
  const status = fs.readFileSync(`/proc/${process.pid}/task/${r.tid}/status`, 'utf8');
  t.match(status, new RegExp(`Cpus_allowed_list:\\s+${target}\\n`), 'the kernel agrees');
  t.same(native.getAffinity(), mainBefore, 'main thread affinity unchanged');
  const done = exitCode(w);
  w.postMessage('exit');
  await done;
  expectCode(t, () => native.setAffinity([]), 'EINVAL', 'sched_setaffinity', 'empty cpu set');
});

t.test('9 fds: EPROTO and no fd leak; 8 fds are fine', async (t) => {
  const [c, s] = socketPair(t);
  const makeFds = (n: number) => Array.from({ length: n }, () => native.eventfdCreate(0));

  expectCode(t, () => native.sendmsg(c, Uint8Array.of(1), makeFds(0).concat(new Array<number>(9).fill(0))),
    'EINVAL', 'sendmsg', 'sendmsg refuses more than 8 fds');

  const before = fdCount();
  const nine = makeFds(9);
  native.sendmsgUnchecked(c, Uint8Array.of(1, 2), nine);
  for (const fd of nine) native.close(fd);
  expectCode(t, () => native.recvmsg(s, new Uint8Array(16)), 'EPROTO', 'recvmsg', '9 fds');
  t.equal(fdCount(), before, 'every received fd was closed');

  const eight = makeFds(8);
  native.sendmsg(c, Uint8Array.of(3), eight);
  for (const fd of eight) native.close(fd);
  const r = native.recvmsg(s, new Uint8Array(16));
  t.equal(r.bytes, 1);
  t.equal(r.fds.length, 8, '8 fds accepted');
  t.equal(fdCount(), before + 8, 'and they are open, owned by us');
  for (const fd of r.fds) native.close(fd);
  t.equal(fdCount(), before);
});

t.test('peer closes mid-message: fewer bytes, then 0 = EOF', async (t) => {
  const [c, s] = socketPair(t);
  native.sendmsg(c, Uint8Array.of(1, 2, 3), []);
  native.close(c);
  const buf = new Uint8Array(10);
  t.equal(native.recvmsg(s, buf).bytes, 3, 'the 3 bytes that were sent');
  t.equal(native.recvmsg(s, buf).bytes, 0, 'then EOF');
  t.equal(native.read(s, buf), 0, 'read agrees: EOF');
  expectCode(t, () => native.sendmsg(s, Uint8Array.of(1), []), 'EPIPE', 'sendmsg', 'send to a closed peer');
});

t.test('eventfd, waitReadable, waitAny', async (t) => {
  const e = native.eventfdCreate(0);
  t.equal(native.eventfdRead(e), 0, 'empty counter reads 0');
  let t0 = Date.now();
  t.equal(native.waitReadable(e, 30), false, 'times out');
  t.ok(Date.now() - t0 >= 25, 'and really waited');
  native.eventfdWrite(e, 2);
  native.eventfdWrite(e, 3);
  t.equal(native.waitReadable(e, 1000), true, 'readable after a write');
  t.equal(native.eventfdRead(e), 5, 'counter summed');
  t.equal(native.eventfdRead(e), 0, 'and reset');
  const init = native.eventfdCreate(7);
  t.equal(native.eventfdRead(init), 7, 'initval');
  native.close(init);

  const fds = [native.eventfdCreate(0), native.eventfdCreate(0), native.eventfdCreate(0)];
  const set = Int32Array.of(fds[0], -1, fds[1], fds[2], e);
  t0 = Date.now();
  t.equal(native.waitAny(set, 4, 30), -1, 'timeout: -1');
  t.ok(Date.now() - t0 >= 25, 'and really waited');
  native.eventfdWrite(fds[2], 1);
  t.equal(native.waitAny(set, 4, 1000), 3, 'index of the readable fd');
  native.eventfdWrite(fds[0], 1);
  t.equal(native.waitAny(set, 4, 1000), 0, 'first readable wins');
  native.eventfdWrite(e, 1);
  native.eventfdRead(fds[0]);
  native.eventfdRead(fds[2]);
  t.equal(native.waitAny(set, 4, 0), -1, 'fds past count are not watched');
  native.eventfdRead(e);
  expectCode(t, () => native.waitAny(set, 6, 0), 'EINVAL', 'poll', 'count past the array');
  expectCode(t, () => native.waitAny(new Int32Array(65537).fill(-1), 65537, 0), 'EINVAL', 'poll', 'more than 65536');
  // past the 64 kept on the stack (a worker with 128 queue pairs watches 129 fds and more)
  const many = Array.from({ length: 300 }, () => native.eventfdCreate(0));
  const big = Int32Array.from(many);
  t.equal(native.waitAny(big, 300, 0), -1, '300 fds: none readable');
  native.eventfdWrite(many[299], 1);
  t.equal(native.waitAny(big, 300, 1000), 299, '300 fds: the last one readable is found');
  native.eventfdWrite(many[64], 1);
  t.equal(native.waitAny(big, 300, 1000), 64, '300 fds: the first readable past the stack array');
  for (const f of many) native.close(f);

  // The real use: a worker sleeps in waitAny on kick + wake fds; the main thread wakes it.
  const sab = new SharedArrayBuffer(8);
  const w = startWorker(`
    const set = new Int32Array(workerData.sab);
    parentPort.postMessage('sleeping');
    parentPort.postMessage(native.waitAny(set, 2, 5000));
  `, { sab });
  new Int32Array(sab).set([fds[0], fds[1]]);
  t.equal(await nextMessage(w), 'sleeping');
  await sleep(20);
  native.eventfdWrite(fds[1], 1);
  t.equal(await nextMessage(w), 1, 'worker woke on the wake fd');
  await exitCode(w);

  for (const fd of [...fds, e]) native.close(fd);
  expectCode(t, () => native.waitReadable(e, 0), 'EBADF', 'poll', 'closed fd');
});

t.test('errors carry errno names', async (t) => {
  const fd = native.memfdCreate('vhostfwd-test-err', 8192);
  t.teardown(() => native.close(fd));
  expectCode(t, () => native.mmap(fd, 4096, 100), 'EINVAL', 'mmap', 'unaligned offset');
  expectCode(t, () => native.connect(path.join(tmpDir(t), 'missing')), 'ENOENT', 'connect', 'missing socket');
  expectCode(t, () => native.listen('/nonexistent-dir/x/sock', 1), 'ENOENT', 'bind', 'missing dir');
  expectCode(t, () => native.close(987654), 'EBADF', 'close', 'bad fd');
  expectCode(t, () => native.fdStat(987654), 'EBADF', 'fstat', 'bad fd');
  try {
    native.connect(path.join(tmpDir(t), 'missing'));
  } catch (e) {
    t.equal((e as NativeError).errno, -os.constants.errno.ENOENT, 'errno is negated, like Node');
  }
  t.throws(() => native.close('3' as unknown as number), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' }, 'wrong arg type');
  t.throws(() => native.close(NaN), { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' }, 'NaN is not coerced to fd 0');
  t.throws(() => native.fdStat(1.5), { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' }, 'non-integer fd');
});
