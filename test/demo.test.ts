import t from 'tap';
import { demo } from '../src/demo';

t.test('npm start demo: bridge, live migration midway, zero loss outside the migration window', async (t) => {
  const r = await demo({ seconds: 3, quiet: true });
  t.ok(r.sent.ab > 1000 && r.sent.ba > 1000, 'traffic flowed both ways');
  t.equal(r.lostOutsideWindow, 0, 'no frame lost outside the migration window');
  t.ok(r.memoryImageMatches, 'snapshot + logged pages rebuild the guest memory byte for byte');
  t.ok(r.dirtyPages > 0, 'the backend logged dirty pages');
  t.ok(r.received.ab > r.sent.ab - r.inWindow - 1, 'frames reached the migrated guest');
  t.equal(r.rarpSeen, 1, "the RARP announcing the migrated guest reached the other guest");
  t.ok(r.ok);
});
