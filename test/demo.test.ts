import t from 'tap';
import { demo } from '../src/demo';

t.test('npm start demo: bridge, live migration midway, zero loss outside the migration window', async (t) => {
  const r = await demo({ seconds: 3, quiet: true });
  // the outcomes, checked here from the counts (not the demo's own verdict alone)
  t.ok(r.sent.ab > 0 && r.sent.ba > 0, `traffic flowed both ways (${r.sent.ab}, ${r.sent.ba} frames sent)`);
  t.equal(r.received.ba, r.sent.ba, 'B->A: every frame B sent reached A (B stops sending during its migration)');
  t.ok(r.received.ab <= r.sent.ab, 'A->B: no frame received that was not sent');
  t.ok(r.received.ab >= r.sent.ab - r.inWindow, `A->B: all but the ${r.inWindow} frames sent while B migrated arrived (${r.received.ab} of ${r.sent.ab})`);
  t.equal(r.lostOutsideWindow, 0, 'no frame lost outside the migration window');
  t.equal(r.duplicates, 0, 'no frame delivered twice');
  t.equal(r.reordered, 0, 'no frame delivered out of order');
  t.equal(r.guardsBroken, 0, 'no guard byte after any guest buffer touched');
  t.ok(r.memoryImageMatches, 'snapshot + logged pages rebuild the guest memory byte for byte');
  t.ok(r.dirtyPages > 0, 'the backend logged dirty pages');
  t.equal(r.rarpSeen, 1, 'the RARP announcing the migrated guest reached the other guest');
  t.ok(r.ok, 'and the demo itself reports OK');
});
