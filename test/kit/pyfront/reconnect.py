"""
Scenarios of issue 17 for test/reconnect.test.ts, with the independent Python frontend.

  rounds: a peer guest on --peer stays up; on --dev, --rounds times: connect, set up (QEMU's
          order, optionally with blocking eventfds as Python's os.eventfd makes them), one
          frame each way, close 0.1 s later. Prints one JSON line per round:
          {"round": i, "setupMs": .., "toPeer": bool, "fromPeer": bool, "error": str|null}
  bad-kick: connect to --dev and give ring 1 a pipe instead of an eventfd as its kick fd
          (REPLY_ACK on). Prints {"status": n|null, "closed": bool, "error": str|null}.
Every wait is bounded; the exit status is 0 whatever the outcome (the test judges it).
"""
import argparse
import json
import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vhost_user_frontend as vu  # noqa: E402


def frame(tag, n):
    head = struct.pack('<6s6sHII', b'\x02\x00\x00\x00\x00\x01', b'\x02\x00\x00\x00\x00\x02', 0x88B5, tag, n)
    return head + bytes((n * 7 + i) & 0xFF for i in range(64 - len(head)))


def rounds(opts):
    peer = vu.Guest(2 << 20, 1, False)
    peer.fill_rx()
    pconn = vu.Connection(opts.peer)
    vu.negotiate(pconn, peer, protocol_features=True, reply_ack=True, want_mrg=False, legacy=False)
    for i in range(opts.rounds):
        out = {'round': i, 'setupMs': None, 'toPeer': False, 'fromPeer': False, 'error': None}
        g = vu.Guest(2 << 20, 1, False, blocking_fds=opts.blocking)
        g.fill_rx()
        conn = None
        try:
            t0 = time.monotonic()
            conn = vu.Connection(opts.dev, timeout=5.0)
            vu.negotiate(conn, g, protocol_features=opts.pf, reply_ack=opts.pf, want_mrg=False, legacy=False)
            out['setupMs'] = round((time.monotonic() - t0) * 1000, 2)
            f = frame(i, 1)
            g.send([f])
            out['toPeer'] = vu.wait_frames(peer, 1, 2.0) == [f]
            back = frame(i, 2)
            peer.send([back])
            out['fromPeer'] = vu.wait_frames(g, 1, 2.0) == [back]
            peer.reclaim_tx()
            time.sleep(0.1)
        except Exception as e:  # noqa: BLE001 - reported to the test, which names it
            out['error'] = repr(e)
        finally:
            if conn:
                conn.close()
            g.close()
        sys.stdout.write(json.dumps(out) + '\n')
        sys.stdout.flush()
    pconn.close()
    peer.close()


def bad_kick(opts):
    g = vu.Guest(2 << 20, 1, False)
    out = {'status': None, 'closed': False, 'error': None}
    conn = vu.Connection(opts.dev, timeout=5.0)
    r, w = os.pipe()
    try:
        features = (1 << vu.F_VERSION_1) | (1 << vu.F_PROTOCOL_FEATURES)
        conn.get_u64(vu.GET_FEATURES)
        conn.get_u64(vu.GET_PROTOCOL_FEATURES)
        conn.send(vu.SET_PROTOCOL_FEATURES, struct.pack('<Q', 1 << vu.PF_REPLY_ACK))
        conn.reply_ack = True
        conn.request(vu.SET_OWNER)
        conn.request(vu.SET_FEATURES, struct.pack('<Q', features))
        regs = g.mem.regions
        table = struct.pack('<II', len(regs), 0) + b''.join(struct.pack('<QQQQ', x.gpa, x.size, x.uva, x.mmap_offset) for x in regs)
        conn.request(vu.SET_MEM_TABLE, table, [x.fd for x in regs])
        conn.send(vu.SET_VRING_KICK, struct.pack('<Q', 1), [r], need_reply=True)
        out['status'] = struct.unpack('<Q', conn.recv_reply(vu.SET_VRING_KICK))[0]
        try:
            out['closed'] = conn.sock.recv(1) == b''
        except OSError:
            out['closed'] = True
    except Exception as e:  # noqa: BLE001
        out['error'] = repr(e)
    finally:
        os.close(r)
        os.close(w)
        conn.close()
        g.close()
    sys.stdout.write(json.dumps(out) + '\n')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('scenario', choices=['rounds', 'bad-kick'])
    ap.add_argument('--dev', required=True)
    ap.add_argument('--peer')
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--blocking', action='store_true')
    ap.add_argument('--pf', action='store_true')
    opts = ap.parse_args()
    if opts.scenario == 'rounds':
        rounds(opts)
    else:
        bad_kick(opts)


if __name__ == '__main__':
    main()
