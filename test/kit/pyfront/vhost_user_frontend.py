"""
A vhost-user frontend written from QEMU's docs/interop/vhost-user.rst and the virtio 1.x
split-ring layout, sharing no code with vhostfwd's src/ (own framing, own structs, own ring
code, another language): a bug in vhostfwd's codec or an assumption both sides of
vhostfwd's own TypeScript frontend share cannot hide from it.

It plays a guest: its memory is a memfd (plain or hugetlb) mapped here, its rings and
buffers live in that memory, kicks and calls are eventfds. Used by churn.py (the reconnect
churn test) and importable by other tests.
"""
import mmap
import os
import socket
import struct
import time

# ---- vhost-user wire (docs/interop/vhost-user.rst, "Message types") ----
GET_FEATURES = 1
SET_FEATURES = 2
SET_OWNER = 3
RESET_OWNER = 4
SET_MEM_TABLE = 5
SET_LOG_BASE = 6
SET_LOG_FD = 7
SET_VRING_NUM = 8
SET_VRING_ADDR = 9
SET_VRING_BASE = 10
GET_VRING_BASE = 11
SET_VRING_KICK = 12
SET_VRING_CALL = 13
SET_VRING_ERR = 14
GET_PROTOCOL_FEATURES = 15
SET_PROTOCOL_FEATURES = 16
GET_QUEUE_NUM = 17
SET_VRING_ENABLE = 18

HDR = struct.Struct('<III')  # request, flags, size
FLAG_VERSION = 0x1
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8
VRING_NOFD = 0x100

# feature bits (virtio 1.x and vhost-user)
F_MRG_RXBUF = 15
F_LOG_ALL = 26
F_INDIRECT = 28
F_EVENT_IDX = 29
F_PROTOCOL_FEATURES = 30
F_VERSION_1 = 32
# protocol feature bits
PF_MQ = 0
PF_LOG_SHMFD = 1
PF_REPLY_ACK = 3

# ---- split virtqueue layout (virtio 1.x, 2.7) ----
DESC = struct.Struct('<QIHH')  # addr, len, flags, next
DESC_F_NEXT = 1
DESC_F_WRITE = 2
USED_ELEM = struct.Struct('<II')  # id, len

MFD_HUGETLB = getattr(os, 'MFD_HUGETLB', 0x4)
UVA_BASE = 0x7F00_0000_0000  # our "process addresses" for the regions (the backend only translates them)


class ProtocolError(Exception):
    pass


class Region:
    def __init__(self, gpa, size, uva, fd, mmap_offset, view, view_offset):
        self.gpa, self.size, self.uva = gpa, size, uva
        self.fd, self.mmap_offset = fd, mmap_offset
        self.view, self.view_offset = view, view_offset


class GuestMemory:
    """One memfd, 1 or 2 regions. Two regions: the second half of the memfd at gpa 1 GiB."""

    made = 0  # memfds made by this process: each is named apart (pyfront-guest-PID-N in /proc/*/maps)

    def __init__(self, size, regions=1, hugepages=False):
        flags = MFD_HUGETLB if hugepages else 0
        if regions == 2 and size < 4 << 20:
            size = 4 << 20  # each half holds the buffers, and is a whole number of 2 MiB huge pages
        GuestMemory.made += 1
        self.fd = os.memfd_create('pyfront-guest-%d-%d' % (os.getpid(), GuestMemory.made), flags)
        os.ftruncate(self.fd, size)
        self.size = size
        self.map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.hugepages = hugepages
        if regions == 1:
            self.regions = [Region(0, size, UVA_BASE, self.fd, 0, self.map, 0)]
        else:
            half = size // 2
            self.regions = [
                Region(0, half, UVA_BASE, self.fd, 0, self.map, 0),
                Region(0x4000_0000, half, UVA_BASE + 0x1_0000_0000, self.fd, half, self.map, half),
            ]

    def close(self):
        try:
            self.map.close()
        except BufferError:
            pass
        os.close(self.fd)

    def _at(self, gpa, n):
        for r in self.regions:
            if r.gpa <= gpa and gpa + n <= r.gpa + r.size:
                return r.view_offset + gpa - r.gpa
        raise ValueError('gpa 0x%x+%d outside guest memory' % (gpa, n))

    def read(self, gpa, n):
        o = self._at(gpa, n)
        return bytes(self.map[o:o + n])

    def write(self, gpa, data):
        o = self._at(gpa, len(data))
        self.map[o:o + len(data)] = data

    def u16(self, gpa):
        return struct.unpack_from('<H', self.map, self._at(gpa, 2))[0]

    def put_u16(self, gpa, v):
        # One 2-byte store, as a driver publishes avail->idx: struct.pack_into zero-fills its
        # target before packing, so the device could read a torn 0 in between (and rightly
        # reset the ring for an index far ahead). A native 'H' memoryview item is one store.
        o = self._at(gpa, 2)
        if o % 2:
            raise ValueError('u16 at gpa 0x%x is not aligned' % gpa)
        with memoryview(self.map) as whole, whole[o:o + 2] as part, part.cast('H') as h:
            h[0] = v

    def uva_of(self, gpa):
        for r in self.regions:
            if r.gpa <= gpa < r.gpa + r.size:
                return r.uva + gpa - r.gpa
        raise ValueError('gpa 0x%x outside guest memory' % gpa)


class SplitRing:
    """The driver side of one split virtqueue in guest memory."""

    def __init__(self, mem, index, num, desc, avail, used, bufs, buf_size=2048, blocking_fds=False):
        self.mem, self.index, self.num = mem, index, num
        self.desc, self.avail, self.used, self.bufs, self.buf_size = desc, avail, used, bufs, buf_size
        self.avail_idx = 0  # next avail->idx we publish (free-running u16)
        self.last_used = 0  # used entries consumed
        # QEMU and DPDK make their eventfds non-blocking; the spec does not ask for it, and
        # Python's default is blocking: both kinds are used (the backend must cope with either).
        flags = os.EFD_CLOEXEC if blocking_fds else os.EFD_NONBLOCK | os.EFD_CLOEXEC
        self.kick = os.eventfd(0, flags)
        self.call = os.eventfd(0, flags)
        # zero the ring areas: a fresh device starts from index 0
        mem.write(desc, bytes(16 * num))
        mem.write(avail, bytes(6 + 2 * num))
        mem.write(used, bytes(6 + 8 * num))

    def close(self):
        for fd in (self.kick, self.call):
            try:
                os.close(fd)
            except OSError:
                pass

    def buf(self, i):
        return self.bufs + i * self.buf_size

    def post(self, slot, length, writable):
        """Descriptor `slot` -> buffer `slot`, put in the avail ring (not yet published)."""
        self.mem.write(self.desc + 16 * slot, DESC.pack(self.buf(slot), length, DESC_F_WRITE if writable else 0, 0))
        self.mem.put_u16(self.avail + 4 + 2 * (self.avail_idx % self.num), slot)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF

    def publish(self):
        self.mem.put_u16(self.avail + 2, self.avail_idx)

    def do_kick(self):
        os.eventfd_write(self.kick, 1)

    def used_idx(self):
        return self.mem.u16(self.used + 2)

    def take_used(self):
        """Used elements the device returned since the last call: [(id, len)]."""
        out = []
        idx = self.used_idx()
        while self.last_used != idx:
            e = self.mem.read(self.used + 4 + 8 * (self.last_used % self.num), 8)
            out.append(USED_ELEM.unpack(e))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out


class Guest:
    """Memory, one RX ring (index 0) and one TX ring (index 1), the driver's view of both."""

    def __init__(self, mem_size=2 << 20, regions=1, hugepages=False, num=256, blocking_fds=False):
        self.mem = GuestMemory(mem_size, regions, hugepages)
        r1 = self.mem.regions[-1].gpa  # buffers in the last region (the second one when there are two)
        self.rx = SplitRing(self.mem, 0, num, 0x0000, 0x1000, 0x2000, r1 + 0x10000, blocking_fds=blocking_fds)
        self.tx = SplitRing(self.mem, 1, num, 0x4000, 0x5000, 0x6000, r1 + 0x10000 + num * 2048, blocking_fds=blocking_fds)
        self.hdr_len = 12
        self.mrg = False
        self.tx_free = list(range(num))
        self.tx_sent = 0  # TX descriptors consumed by the device (last_avail_idx expected)
        self.rx_taken = 0

    def rings(self):
        return (self.rx, self.tx)

    def apply_features(self, features):
        """Header length and mergeable RX as the acked features say (virtio 1.x 5.1.6)."""
        self.mrg = bool(features >> F_MRG_RXBUF & 1)
        self.hdr_len = 12 if (self.mrg or features >> F_VERSION_1 & 1) else 10

    def close(self):
        for r in self.rings():
            r.close()
        self.mem.close()

    def fill_rx(self):
        """Post every RX buffer (the ring starts full)."""
        for i in range(self.rx.num):
            self.rx.post(i, self.rx.buf_size, True)
        self.rx.publish()

    def send(self, frames):
        """Post frames on the TX ring and kick; returns how many were posted."""
        for u in self.tx.take_used():
            self.tx_free.append(u[0])
            self.tx_sent += 1
        n = 0
        for f in frames:
            if not self.tx_free:
                break
            slot = self.tx_free.pop()
            self.mem.write(self.tx.buf(slot), bytes(self.hdr_len) + f)
            self.tx.post(slot, self.hdr_len + len(f), False)
            n += 1
        self.tx.publish()
        self.tx.do_kick()
        return n

    def reclaim_tx(self):
        for u in self.tx.take_used():
            self.tx_free.append(u[0])
            self.tx_sent += 1

    def receive(self):
        """Frames the device wrote into RX buffers since the last call; buffers are reposted."""
        out = []
        for (slot, length) in self.rx.take_used():
            if slot >= self.rx.num or length < self.hdr_len or length > self.rx.buf_size:
                raise ProtocolError('RX used element id %d len %d is invalid' % (slot, length))
            data = self.mem.read(self.rx.buf(slot), length)
            if self.mrg:
                nb = struct.unpack_from('<H', data, 10)[0]
                if nb != 1:
                    raise ProtocolError('num_buffers %d for a small frame' % nb)
            out.append(data[self.hdr_len:])
            self.rx_taken += 1
            self.rx.post(slot, self.rx.buf_size, True)
        if out:
            self.rx.publish()
        return out


class Connection:
    """Framing of vhost-user messages over the unix socket, fds with SCM_RIGHTS."""

    def __init__(self, path, timeout=5.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.reply_ack = False

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        self.sock.close()

    def send(self, req, payload=b'', fds=(), need_reply=False):
        flags = FLAG_VERSION | (FLAG_NEED_REPLY if need_reply else 0)
        data = HDR.pack(req, flags, len(payload)) + payload
        if fds:
            socket.send_fds(self.sock, [data], list(fds))
        else:
            self.sock.sendall(data)

    def _recv_exact(self, n):
        b = b''
        while len(b) < n:
            chunk = self.sock.recv(n - len(b))
            if not chunk:
                raise ProtocolError('backend closed the socket')
            b += chunk
        return b

    def recv_reply(self, req):
        req_got, flags, size = HDR.unpack(self._recv_exact(12))
        payload = self._recv_exact(size) if size else b''
        if req_got != req:
            raise ProtocolError('reply to request %d, expected %d' % (req_got, req))
        if not flags & FLAG_REPLY or flags & 0x3 != FLAG_VERSION:
            raise ProtocolError('reply flags 0x%x' % flags)
        return payload

    def request(self, req, payload=b'', fds=()):
        """A request without a reply of its own: with REPLY_ACK negotiated, ask for the ack and check it."""
        self.send(req, payload, fds, need_reply=self.reply_ack)
        if self.reply_ack:
            p = self.recv_reply(req)
            (status,) = struct.unpack('<Q', p)
            if status != 0:
                raise ProtocolError('request %d failed with status %d' % (req, status))

    def get_u64(self, req):
        self.send(req)
        p = self.recv_reply(req)
        if len(p) != 8:
            raise ProtocolError('reply of %d bytes to request %d' % (len(p), req))
        return struct.unpack('<Q', p)[0]


def negotiate(conn, guest, protocol_features, reply_ack, want_mrg, legacy, ring_order=(0, 1)):
    """
    QEMU's order: features, owner, memory, then each ring: num, addr, base, call, kick
    (+enable). The caller posts RX buffers first (guest.fill_rx()). Returns the features acked.
    """
    offered = conn.get_u64(GET_FEATURES)
    features = 0
    if not legacy:
        if not offered >> F_VERSION_1 & 1:
            raise ProtocolError('VERSION_1 not offered')
        features |= 1 << F_VERSION_1
    if want_mrg and offered >> F_MRG_RXBUF & 1:
        features |= 1 << F_MRG_RXBUF
    if protocol_features:
        if not offered >> F_PROTOCOL_FEATURES & 1:
            raise ProtocolError('PROTOCOL_FEATURES not offered')
        features |= 1 << F_PROTOCOL_FEATURES
        pf_offered = conn.get_u64(GET_PROTOCOL_FEATURES)
        pf = (1 << PF_REPLY_ACK) if reply_ack and pf_offered >> PF_REPLY_ACK & 1 else 0
        conn.send(SET_PROTOCOL_FEATURES, struct.pack('<Q', pf))
        conn.reply_ack = bool(pf >> PF_REPLY_ACK & 1)
    guest.apply_features(features)
    conn.request(SET_OWNER)
    conn.request(SET_FEATURES, struct.pack('<Q', features))
    regs = guest.mem.regions
    table = struct.pack('<II', len(regs), 0) + b''.join(struct.pack('<QQQQ', r.gpa, r.size, r.uva, r.mmap_offset) for r in regs)
    conn.request(SET_MEM_TABLE, table, [r.fd for r in regs])
    for i in ring_order:
        r = guest.rings()[i]
        conn.request(SET_VRING_NUM, struct.pack('<II', i, r.num))
        # vring address: index, flags, descriptor, used, available, log (in that order)
        conn.request(SET_VRING_ADDR, struct.pack('<IIQQQQ', i, 0, guest.mem.uva_of(r.desc), guest.mem.uva_of(r.used), guest.mem.uva_of(r.avail), 0))
        conn.request(SET_VRING_BASE, struct.pack('<II', i, 0))
        conn.request(SET_VRING_CALL, struct.pack('<Q', i), [r.call])
        conn.request(SET_VRING_KICK, struct.pack('<Q', i), [r.kick])
    if protocol_features:
        for i in ring_order:
            conn.request(SET_VRING_ENABLE, struct.pack('<II', i, 1))
    # Requests are handled in order: once this reply is here every request above is done.
    conn.get_u64(GET_FEATURES)
    return features


def get_vring_base(conn, index):
    conn.send(GET_VRING_BASE, struct.pack('<II', index, 0))
    p = conn.recv_reply(GET_VRING_BASE)
    i, num = struct.unpack('<II', p)
    if i != index:
        raise ProtocolError('GET_VRING_BASE answered for ring %d, asked %d' % (i, index))
    return num


def wait_frames(guest, want, deadline_s):
    """Frames received until `want` arrived or the deadline passed."""
    got = []
    end = time.monotonic() + deadline_s
    while len(got) < want and time.monotonic() < end:
        f = guest.receive()
        if f:
            got.extend(f)
        else:
            time.sleep(0.0002)
    return got
