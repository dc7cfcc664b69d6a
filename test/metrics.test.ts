/** The HTTP endpoint: /metrics (Prometheus) and /stats (JSON) count exactly what passed. */
import t from 'tap';
import http from 'node:http';
import { SyntheticGuest, frame, macOf } from '../src/frontend/guest';
import { startForwarder, waitUntil } from '../kit/env';

function get(port: number, p: string): Promise<{ status: number; body: string; type: string }> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: p }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, type: String(res.headers['content-type']) }));
    }).on('error', reject);
  });
}

t.test('Prometheus and JSON stats count N frames exactly', async (t) => {
  const env = await startForwarder(['a', 'b'], { metrics: { listen: '127.0.0.1:0' } });
  t.teardown(env.stop);
  const port = env.fwd.metrics!.port;
  const a = await SyntheticGuest.start({ socket: env.sock('a'), mac: macOf(1) });
  const b = await SyntheticGuest.start({ socket: env.sock('b'), mac: macOf(2) });
  t.teardown(() => { a.close(); b.close(); });
  const N = 100;
  const frames = Array.from({ length: N }, (_, i) => frame(macOf(2), macOf(1), 200, i));
  let sent = 0;
  let got = 0;
  await waitUntil(() => {
    if (sent < N) sent += a.send(0, frames.slice(sent, sent + 32));
    got += b.receive(0).length;
    return got >= N;
  }, 5000, 'frames through');
  const m = await get(port, '/metrics');
  t.equal(m.status, 200);
  t.match(m.type, /text\/plain/);
  t.match(m.body, new RegExp(`vhostfwd_packets_total\\{iface="a",queue="0",dir="tx"\\} ${N}\\b`), 'a took N frames from its guest');
  t.match(m.body, new RegExp(`vhostfwd_packets_total\\{iface="b",queue="0",dir="rx"\\} ${N}\\b`), 'b delivered N frames to its guest');
  t.match(m.body, new RegExp(`vhostfwd_bytes_total\\{iface="b",queue="0",dir="rx"\\} ${N * 200}\\b`), 'bytes');
  t.match(m.body, /vhostfwd_drops_total\{iface="b",queue="0",dir="rx",cause="no_buffer"\} 0\b/, 'drops by cause');
  t.match(m.body, /vhostfwd_interface_connected\{iface="a"\} 1\b/, 'connected gauge');
  // sent 32 at a time: at least ceil(N / 32) bursts each way, at most one per frame
  const bursts = (dir: string, iface: string): number => Number(new RegExp(`vhostfwd_bursts_total\\{iface="${iface}",queue="0",dir="${dir}"\\} (\\d+)`).exec(m.body)?.[1] ?? -1);
  for (const [iface, dir] of [['a', 'tx'], ['b', 'rx']]) {
    const n = bursts(dir, iface);
    t.ok(n >= Math.ceil(N / 32) && n <= N, `${iface} ${dir}: ${n} bursts for ${N} frames`);
  }
  const s = await get(port, '/stats');
  t.equal(s.status, 200);
  const j = JSON.parse(s.body) as { interfaces: Array<{ name: string; connected: boolean; queues: Array<{ dir: string; packets: number }> }> };
  const ib = j.interfaces.find((i) => i.name === 'b')!;
  t.ok(ib.connected);
  t.equal(ib.queues.find((q) => q.dir === 'rx')?.packets, N, 'JSON rx packets of b');
  t.equal((await get(port, '/healthz')).body, 'ok\n');
  t.equal((await get(port, '/nope')).status, 404);
});
