/**
 * Issue 25: a device record from the handover peer is validated field by field before the
 * successor uses it (DESIGN.md: everything from outside, the handover peer included, is
 * refused by name). A well-formed record passes unchanged; each malformed one is refused
 * naming its field.
 */
import t from 'tap';
import { SnapshotError, checkDeviceSnapshot } from '../src/main/handover/snapshot';

const ring = (index: number) => ({
  index, num: 256, addr: { index, flags: 0, desc: 0x7f0000100000, used: 0x7f0000102000, avail: 0x7f0000101000, log: 0 },
  lastAvailIdx: 65535, hasKick: true, enabled: true, kick: 3, call: 4, err: -1, stats: [1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], started: true,
});
const valid = {
  features: '170006000', protocolFeatures: '1cb', lastLogAllFeatures: null, owner: true, status: 15, mtu: null,
  regions: [{ gpa: 0, size: 16 << 20, uva: 0x7f0000000000, mmapOffset: 0, refs: 2, fd: 0 }],
  log: { mmapSize: 4096, mmapOffset: 0, fd: 5 },
  rings: [ring(0), ring(1)],
};

type Mutation = [string, (r: typeof valid) => unknown, RegExp];
const mutations: Mutation[] = [
  ['not an object', () => [], /^handover record dev: expected an object/],
  ['features not hex', (r) => ({ ...r, features: '0x1' }), /dev\.features: expected up to 16 hex digits/],
  ['features over 64 bits', (r) => ({ ...r, features: '1'.repeat(17) }), /dev\.features/],
  ['status 256', (r) => ({ ...r, status: 256 }), /dev\.status: expected an integer 0\.\.255/],
  ['mtu 10', (r) => ({ ...r, mtu: 10 }), /dev\.mtu/],
  ['owner a string', (r) => ({ ...r, owner: 'yes' }), /dev\.owner: expected true or false/],
  ['510 regions', (r) => ({ ...r, regions: Array.from({ length: 510 }, () => r.regions[0]) }), /dev\.regions: 510 entries, at most 509/],
  ['a region of size 0', (r) => ({ ...r, regions: [{ ...r.regions[0], size: 0 }] }), /dev\.regions\[0\]\.size/],
  ['a negative gpa', (r) => ({ ...r, regions: [{ ...r.regions[0], gpa: -4096 }] }), /dev\.regions\[0\]\.gpa/],
  ['a gpa past 2^53', (r) => ({ ...r, regions: [{ ...r.regions[0], gpa: 2 ** 60 }] }), /dev\.regions\[0\]\.gpa/],
  ['refs 0', (r) => ({ ...r, regions: [{ ...r.regions[0], refs: 0 }] }), /dev\.regions\[0\]\.refs/],
  ['a fractional fd', (r) => ({ ...r, regions: [{ ...r.regions[0], fd: 1.5 }] }), /dev\.regions\[0\]\.fd/],
  ['a log of size 0', (r) => ({ ...r, log: { ...r.log, mmapSize: 0 } }), /dev\.log\.mmapSize/],
  ['queue size 3', (r) => ({ ...r, rings: [{ ...ring(0), num: 3 }] }), /dev\.rings\[0\]\.num: 3 is not a power of two/],
  ['queue size 65536', (r) => ({ ...r, rings: [{ ...ring(0), num: 65536 }] }), /dev\.rings\[0\]\.num/],
  ['last_avail_idx 65536', (r) => ({ ...r, rings: [{ ...ring(0), lastAvailIdx: 65536 }] }), /dev\.rings\[0\]\.lastAvailIdx/],
  ['unknown ring flags', (r) => ({ ...r, rings: [{ ...ring(0), addr: { ...ring(0).addr, flags: 2 } }] }), /dev\.rings\[0\]\.addr\.flags/],
  ['a kick fd -2', (r) => ({ ...r, rings: [{ ...ring(0), kick: -2 }] }), /dev\.rings\[0\]\.kick/],
  ['a counter NaN', (r) => ({ ...r, rings: [{ ...ring(0), stats: [Number.NaN] }] }), /dev\.rings\[0\]\.stats\[0\]: expected a counter/],
  ['17 counters', (r) => ({ ...r, rings: [{ ...ring(0), stats: new Array(17).fill(0) }] }), /dev\.rings\[0\]\.stats: 17 entries/],
  ['257 rings', (r) => ({ ...r, rings: Array.from({ length: 257 }, (_, i) => ring(i % 256)) }), /dev\.rings: 257 entries, at most 256/],
  ['started missing', (r) => ({ ...r, rings: [{ ...ring(0), started: undefined }] }), /dev\.rings\[0\]\.started/],
];

t.test('a well-formed device record passes unchanged', async (t) => {
  t.same(checkDeviceSnapshot(JSON.parse(JSON.stringify(valid)), 'dev'), valid);
  t.same(checkDeviceSnapshot({ ...valid, log: null, lastLogAllFeatures: '170006000', mtu: 9000 }, 'dev').mtu, 9000, 'null log, an MTU, LOG_ALL features');
});

t.test('each malformed device record is refused naming its field', async (t) => {
  for (const [what, mutate, re] of mutations) {
    let err: unknown = null;
    try {
      checkDeviceSnapshot(mutate(JSON.parse(JSON.stringify(valid)) as typeof valid), 'dev');
    } catch (e) {
      err = e;
    }
    t.ok(err instanceof SnapshotError, `${what}: refused (SnapshotError)`);
    t.match((err as Error | null)?.message ?? '', re, `${what}: names the field (${(err as Error | null)?.message ?? 'accepted'})`);
  }
});
