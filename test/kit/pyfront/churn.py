"""
Reconnect churn against a running vhostfwd, driven by the independent Python frontend
(vhost_user_frontend.py, no code shared with vhostfwd).

Two cross-connected interfaces (A, B) are churned: each cycle picks one of them at random,
makes its current frontend leave in one of several ways, connects a fresh one with a random
negotiation (with or without PROTOCOL_FEATURES and REPLY_ACK, legacy / VERSION_1 /
MRG_RXBUF), random memory (plain or hugetlb memfd, 2 MiB or 256 MiB, one or two regions),
blocking or non-blocking eventfds and ring setup order, then checks that the fresh device
forwards (time from its last setup reply to the first frame at the peer) and passes a
random burst byte-exact both ways. A bystander pair (C, D) exchanges frames byte-exact
before and after every cycle.

Ways to leave: close with rings running; GET_VRING_BASE for every ring (indices checked)
then close; RESET_OWNER then close; half a message then close; SIGKILL of the process that
holds the connection (a forked child).

Protocol with the test on stdin/stdout (one JSON object per line):
  -> {"event": "baseline"}  after the warm-up cycles, with A and B disconnected; waits for a line
  -> {"event": "end", ...summary}  after the last cycle, A and B disconnected; waits for a line
Exit status 0 when every check held, 1 otherwise (the summary names the failures).
"""
import argparse
import json
import os
import random
import signal
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vhost_user_frontend as vu  # noqa: E402

CHILDREN = set()  # frontends living in forked children, killed whatever way the driver exits

LEAVES = ['close-running', 'get-vring-base', 'reset-owner', 'half-message', 'sigkill']


class Session:
    """One frontend on one socket: the guest here, the connection here or in a child."""

    def __init__(self, path, rng, allow_huge, leave, fixed=None):
        v = fixed or {
            'pf': rng.random() < 0.7,
            'reply_ack': rng.random() < 0.5,
            'kind': rng.choice(['v1', 'v1-mrg', 'legacy']),
            'size': rng.choice([2 << 20, 256 << 20]),
            'regions': rng.choice([1, 2]),
            'huge': allow_huge and rng.random() < 0.3,
            'blocking': rng.random() < 0.5,
            'order': rng.choice([(0, 1), (1, 0)]),
        }
        self.variant = v
        self.leave = leave
        self.path = path
        self.guest = vu.Guest(v['size'], v['regions'], v['huge'], blocking_fds=v['blocking'])
        self.guest.fill_rx()
        self.conn = None
        self.child = None
        self.seq = 0
        args = dict(protocol_features=v['pf'], reply_ack=v['reply_ack'], want_mrg=v['kind'] == 'v1-mrg', legacy=v['kind'] == 'legacy', ring_order=v['order'])
        if leave == 'sigkill':
            self._start_child(args)
        else:
            self.conn = vu.Connection(path)
            self.features = vu.negotiate(self.conn, self.guest, **args)
        self.ready_at = time.monotonic()

    def _start_child(self, args):
        r, w = os.pipe()
        keep = {self.guest.mem.fd, w}
        for ring in self.guest.rings():
            keep |= {ring.kick, ring.call}
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                # not the test's pipes: an orphaned child must not hold them open
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 0)
                os.dup2(null, 1)
                # only what this connection needs: an inherited copy of another session's
                # socket would keep that connection open after its owner closed it
                for name in os.listdir('/proc/self/fd'):
                    fd = int(name)
                    if fd > 2 and fd not in keep:
                        try:
                            os.close(fd)
                        except OSError:
                            pass
                conn = vu.Connection(self.path)
                features = vu.negotiate(conn, self.guest, **args)
                os.write(w, struct.pack('<Q', features))
                while True:
                    time.sleep(60)
            except BaseException as e:  # noqa: B902 - report anything, then exit
                os.write(2, ('churn child: %r\n' % (e,)).encode())
            os._exit(code)
        os.close(w)
        got = b''
        end = time.monotonic() + 10
        while len(got) < 8 and time.monotonic() < end:
            chunk = os.read(r, 8 - len(got))
            if not chunk:
                break
            got += chunk
        os.close(r)
        if len(got) != 8:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise vu.ProtocolError('the child frontend did not finish its setup')
        self.child = pid
        CHILDREN.add(pid)
        self.features = struct.unpack('<Q', got)[0]
        self.guest.apply_features(self.features)

    def frames(self, rng, n, tag):
        out = []
        for _ in range(n):
            self.seq += 1
            size = rng.randint(60, 1514)
            head = struct.pack('<6s6sHII', b'\x02\x00\x00\x00\x00\x01', b'\x02\x00\x00\x00\x00\x02', 0x88B5, tag, self.seq)
            out.append(head + rng.randbytes(size - len(head)))
        return out

    def end(self, failures):
        """Leave as planned; check what the backend answered where there is an answer."""
        g = self.guest
        try:
            if self.leave == 'sigkill':
                os.kill(self.child, signal.SIGKILL)
                os.waitpid(self.child, 0)
                CHILDREN.discard(self.child)
            elif self.leave == 'get-vring-base':
                g.reclaim_tx()
                for ring in g.rings():
                    want = ring.avail_idx if ring.index == 1 else ring.used_idx()
                    got = vu.get_vring_base(self.conn, ring.index)
                    if got != want:
                        failures.append('GET_VRING_BASE ring %d: %d, expected %d' % (ring.index, got, want))
            elif self.leave == 'reset-owner':
                self.conn.send(vu.RESET_OWNER)
            elif self.leave == 'half-message':
                self.conn.sock.sendall(vu.HDR.pack(vu.SET_VRING_NUM, vu.FLAG_VERSION, 8) + b'\x00\x01\x02')
        except (OSError, vu.ProtocolError) as e:
            failures.append('leaving by %s: %r' % (self.leave, e))
        if self.conn:
            self.conn.close()
        g.close()


def exchange(a, b, rng, n, tag, failures, what, deadline=2.0):
    """n frames a -> b and n frames b -> a, byte-exact and in order; returns (sent, received)."""
    sent_total = received_total = 0
    for src, dst in ((a, b), (b, a)):
        sent = src.frames(rng, n, tag)
        posted = src.guest.send(sent)
        got = vu.wait_frames(dst.guest, posted, deadline)
        src.guest.reclaim_tx()
        sent_total += n
        received_total += sum(1 for x, y in zip(got, sent) if x == y)
        if posted != n or got != sent[:posted]:
            t = src.guest.tx
            failures.append('%s: %d of %d frames posted, %d received, %s (TX avail %d used %d)' % (what, posted, n, len(got), 'prefix byte-exact' if got == sent[:len(got)] else 'CONTENT DIFFERS', t.avail_idx, t.used_idx()))
    return sent_total, received_total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--a', required=True)
    ap.add_argument('--b', required=True)
    ap.add_argument('--c', required=True)
    ap.add_argument('--d', required=True)
    ap.add_argument('--cycles', type=int, default=200)
    ap.add_argument('--warmup', type=int, default=6)
    ap.add_argument('--seed', type=int, default=1)
    ap.add_argument('--hugepages', action='store_true')
    ap.add_argument('--forward-ms', type=float, default=100.0)
    opts = ap.parse_args()
    rng = random.Random(opts.seed)
    failures = []
    plain = {'pf': True, 'reply_ack': True, 'kind': 'v1', 'size': 2 << 20, 'regions': 1, 'huge': False, 'blocking': False, 'order': (0, 1)}
    c = Session(opts.c, rng, False, 'close-running', plain)
    d = Session(opts.d, rng, False, 'close-running', plain)
    bystander = {'sent': 0, 'received': 0}

    def by(tag):
        n = rng.randint(1, 16)
        sent, received = exchange(c, d, rng, n, tag, failures, 'bystander pair')
        bystander['sent'] += sent
        bystander['received'] += received

    by(0)
    cur = {}
    paths = {'A': opts.a, 'B': opts.b}
    stats = {'cycles': 0, 'leaves': {k: 0 for k in LEAVES}, 'variants': {}, 'forwardMs': [], 'slow': 0, 'frames': 0}

    def cycle(i, record):
        name = rng.choice(['A', 'B'])
        other = 'B' if name == 'A' else 'A'
        if name in cur:
            s = cur.pop(name)
            s.end(failures)
            if record:
                stats['leaves'][s.leave] += 1
        by(i)
        if other not in cur:
            cur[other] = Session(paths[other], rng, opts.hugepages, rng.choice(LEAVES))
        try:
            s = Session(paths[name], rng, opts.hugepages, rng.choice(LEAVES))
        except (OSError, vu.ProtocolError) as e:
            failures.append('cycle %d: connecting a fresh frontend on %s failed: %r' % (i, name, e))
            return
        cur[name] = s
        # the fresh device forwards: time from its last setup reply to the first frame at the peer
        peer = cur[other]
        first = s.frames(rng, 1, i)
        s.guest.send(first)
        got = vu.wait_frames(peer.guest, 1, 2.0)
        ms = (time.monotonic() - s.ready_at) * 1000
        if got != first:
            failures.append('cycle %d: the fresh device on %s forwarded nothing in 2 s (%s)' % (i, name, json.dumps(s.variant)))
        elif record:
            stats['forwardMs'].append(round(ms, 2))
            if ms > opts.forward_ms:
                stats['slow'] += 1
                failures.append('cycle %d: first frame through the fresh device on %s after %.1f ms' % (i, name, ms))
        n = rng.randint(1, 64)
        sent, received = exchange(s, peer, rng, n, i, failures, 'cycle %d %s<->%s' % (i, name, other))
        if record:
            stats['frames'] += received + (1 if got == first else 0)
        by(i)
        if record:
            stats['cycles'] += 1
            key = '%s%s %s %dMiB x%d%s%s' % ('pf' if s.variant['pf'] else 'nopf', '+ack' if s.variant['pf'] and s.variant['reply_ack'] else '', s.variant['kind'], s.variant['size'] >> 20, s.variant['regions'], ' huge' if s.variant['huge'] else '', ' blocking' if s.variant['blocking'] else '')
            stats['variants'][key] = stats['variants'].get(key, 0) + 1

    def leave_all():
        for k in list(cur):
            cur.pop(k).end(failures)

    def report(event, extra):
        sys.stdout.write(json.dumps(dict(event=event, **extra)) + '\n')
        sys.stdout.flush()
        sys.stdin.readline()

    for i in range(opts.warmup):
        cycle(i, False)
    leave_all()
    by(0)
    report('baseline', {})
    for i in range(opts.cycles):
        cycle(1000 + i, True)
    leave_all()
    by(1)
    f = stats['forwardMs']
    summary = dict(stats, bystander=bystander, failures=failures[:50], failureCount=len(failures),
                   forwardMsMax=max(f) if f else None, forwardMsMedian=sorted(f)[len(f) // 2] if f else None)
    del summary['forwardMs']
    report('end', summary)
    c.end(failures)
    d.end(failures)
    sys.exit(0 if not failures else 1)


if __name__ == '__main__':
    try:
        main()
    finally:
        for pid in CHILDREN:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
