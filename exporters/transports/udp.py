"""UDP transport, paced, batched.

Pacing: a token bucket of `rate_msgs_s` messages per second with a small
burst; the sender sleeps when the bucket is empty. Under `flowprobe run` the
sender is the export thread (exporters/pipeline.py), never the capture loop.
Unpaced, a replay produces messages far faster than a collector on the same
host drains its socket (nfcapd's default receive buffer holds ~100
datagrams of 1400 bytes), and the kernel drops what does not fit. The
default was measured against nfcapd on this machine: replaying 104k flows
(7k messages) to nfcapd 1.7.1 with its default 208 KiB buffer lost
datagrams at 10k-20k msgs/s in 4 of 6 runs and none at 5k-7k in 7 runs;
5000 msgs/s is ~75k IPFIX records/s. Raise rate_msgs_s for a remote
collector with a large receive buffer.

Batching: messages of one export batch go out in sendmmsg() calls (C,
exporters/udpsend.c), as many as the bucket allows at a time. With `gso`
(the default; config `udp_gso`), each run of equal-sized messages in a
call is one send with UDP_SEGMENT: the kernel (or the NIC) cuts it into
the same datagrams, and the stack is crossed once per run instead of once
per datagram. A kernel or route that refuses the offload turns it off for
the socket (`gso` false in stats) and the datagrams go one by one.

Deadline: when the pipeline closes this exporter (shutdown, or a reload
retiring it) it sets ``give_up_at``; past it, paced messages still
batched are not sent but counted (`queue_timeout`), so a drain is bounded.

Refusals: a datagram to a port nobody listens on comes back as ICMP port
unreachable. With IP_RECVERR each one lands in the socket's error queue
with the start of the refused datagram; the transport keeps the header of
the last REFUSAL_MEMORY datagrams sent with their record counts, so a
refused datagram moves its records from exported to not sent
(`collector_refused`). An offloaded send is one datagram on loopback, with
one ICMP quoting its first message: the first message's header therefore
stands for the records of the whole send. This is exact on loopback; a
router may rate-limit ICMP, and a silent loss is never seen.
"""
from __future__ import annotations

import collections
import errno
import os
import socket
import time

from flowprobe.exporters._encode import ffi, lib
from flowprobe.exporters.transports import Transport

DEFAULT_RATE_MSGS_S = 5000
DEFAULT_BURST = 16
BATCH_MAX = 64            # messages held before a sendmmsg()
REFUSAL_MEMORY = 4096     # datagrams whose header is kept to credit a refusal
KEY_BYTES = 24            # header bytes that identify a datagram
IP_RECVERR = 11
IPV6_RECVERR = 25
MSG_ERRQUEUE = 0x2000


class UdpTransport(Transport):
    name = "udp"

    def __init__(self, host: str, port: int, rate_msgs_s: float = DEFAULT_RATE_MSGS_S,
                 burst: int = DEFAULT_BURST, sndbuf: int = 0, gso: bool = True):
        self.host, self.port = host, port
        super().__init__()
        self.rate = float(rate_msgs_s)
        self.burst = max(1, burst)
        self.sndbuf = sndbuf
        self.sock = None
        self._tokens = float(self.burst)
        self._last = time.monotonic()
        self._batch: list[bytes] = []
        self._batch_records: list[int] = []
        # (first KEY_BYTES of the datagram, records) of the last
        # REFUSAL_MEMORY data datagrams sent
        self._recent: collections.deque = collections.deque(maxlen=REFUSAL_MEMORY)
        self._err = ffi.new("int *")
        self._gso = ffi.new("int *", 1 if gso else 0)
        self._ngroups = ffi.new("uint32_t *")
        self.give_up_at: float | None = None   # monotonic; set by the pipeline's close
        self.pace_sleeps = 0
        self.send_calls = 0
        self.gso_sends = 0
        self.collector_unreachable = 0

    def describe(self):
        return f"udp://{self.host}:{self.port}"

    def open(self):
        fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_DGRAM)
        if self.sndbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
        try:
            if fam == socket.AF_INET6:
                self.sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            else:
                self.sock.setsockopt(socket.SOL_IP, IP_RECVERR, 1)
        except OSError:
            pass   # refusals then only show as send errors
        try:
            self.sock.connect((self.host, self.port))
        except OSError as e:
            self.send_errors += 1
            self.log.warning("export_connect_failed", error=str(e))
        self.streams_started += 1
        start = self._stream_start_message(None)
        if start:
            self.send(start, 0)

    def _take_tokens(self, want: int) -> int:
        """How many messages may go now (sleeping for the first if needed)."""
        if self.rate <= 0:
            return want
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1.0:
            self.pace_sleeps += 1
            time.sleep((1.0 - self._tokens) / self.rate)
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
        k = max(1, min(want, int(self._tokens)))
        self._tokens -= k
        return k

    def send(self, message, nrecords):
        self._batch.append(message)
        self._batch_records.append(nrecords)
        if len(self._batch) >= BATCH_MAX:
            self.push()

    def send_block(self, block) -> None:
        """A block's messages straight from its bytes, in sendmmsg() calls of
        as many as the bucket allows: no Python per message. Messages
        batched one by one since the last block (a template refresh) go in
        front, in the same calls. Anything the kernel did not take (an
        error, the drain deadline) goes on through the batch, which words
        and counts it message by message."""
        data, lens, nrecs = block.data, block.lens, block.nrecs
        if self._batch:
            data = b"".join(self._batch) + data
            lens = [len(m) for m in self._batch] + lens
            nrecs = self._batch_records + nrecs
            self._batch, self._batch_records = [], []
        total, i, off = len(lens), 0, 0
        if self.sock is not None:
            clens = ffi.new("uint32_t[]", lens)
            groups = ffi.new("uint32_t[]", total)
            cdata = ffi.from_buffer(data)
            fd = self.sock.fileno()
            while i < total:
                if self.give_up_at is not None and self.rate > 0 \
                        and time.monotonic() >= self.give_up_at:
                    break
                k = self._take_tokens(total - i)
                sent, ngroups = self._sendmmsg(fd, cdata + off, clens + i, k, groups)
                if sent > 0:
                    nbytes = sum(lens[i:i + sent])
                    self._sent_range(data, off, lens[i:i + sent], nrecs[i:i + sent], nbytes,
                                     ffi.unpack(groups, ngroups))
                    i += sent
                    off += nbytes
                if sent < k:
                    break
        for length, n in zip(lens[i:], nrecs[i:]):
            self._batch.append(data[off:off + length])
            self._batch_records.append(n)
            off += length
        # the rest, then the refusals: read after every block, as the error
        # queue holds only what the socket's receive buffer allows (a test lost
        # 472 of 3000 refusals when they were read once per export batch)
        self.push()

    def push(self) -> None:
        """Send every batched message (paced), then read what was refused."""
        self._push_batch()
        self._read_refusals()

    def _push_batch(self) -> None:
        retried = False
        while self._batch:
            if self.give_up_at is not None and self.rate > 0 \
                    and time.monotonic() >= self.give_up_at:
                self.not_sent(sum(self._batch_records), "queue_timeout")
                self._batch.clear()
                self._batch_records.clear()
                break
            k = self._take_tokens(len(self._batch))
            msgs, recs = self._batch[:k], self._batch_records[:k]
            sizes = [len(m) for m in msgs]
            buf = b"".join(msgs)
            if self.sock is None:
                sent, err = 0, errno.EBADF
            else:
                groups = ffi.new("uint32_t[]", k)
                sent, ngroups = self._sendmmsg(self.sock.fileno(), ffi.from_buffer(buf),
                                               ffi.new("uint32_t[]", sizes), k, groups)
                err = self._err[0] if sent < k else 0
            if sent:
                self._sent_range(buf, 0, sizes[:sent], recs[:sent], sum(sizes[:sent]),
                                 ffi.unpack(groups, ngroups))
            del self._batch[:sent], self._batch_records[:sent]
            if sent == k:
                continue
            if err == errno.ECONNREFUSED and (sent or not retried):
                # The error of an earlier datagram (in the error queue):
                # this one did not go; retry it once.
                self.send_errors += 1
                self.collector_unreachable += 1
                self.log.warning("export_collector_unreachable", error=os.strerror(err))
                retried = True
                self._read_refusals()
                continue
            self.send_errors += 1
            self.not_sent(self._batch_records.pop(0), "collector_refused"
                          if err == errno.ECONNREFUSED else "send_error")
            self._batch.pop(0)
            self.log.warning("export_send_failed", error=os.strerror(err))

    def _sendmmsg(self, fd: int, cdata, clens, k: int, groups) -> tuple[int, int]:
        """udp_send_batch() of k messages: (messages sent, sends made, their
        sizes in groups); says once if the kernel turned the offload down
        (it stays off for this socket)."""
        self.send_calls += 1
        gso = self._gso[0]
        sent = lib.udp_send_batch(fd, cdata, clens, k, self._gso, groups, self._ngroups, self._err)
        if gso and not self._gso[0]:
            self.log.warning("export_udp_gso_off",
                             reason="refused by the kernel or the route (no checksum "
                                    "offload, or a message above the path MTU)")
        return sent, self._ngroups[0]

    def _sent_range(self, data: bytes, off: int, lens: list, nrecords: list,
                    nbytes: int, groups: list) -> None:
        """Count datagrams the kernel took (messages back to back in data
        from off, in sends of groups[0], groups[1], ... messages), and
        remember each send that carried records: a refusal names it by the
        first KEY_BYTES bytes of its first datagram, looked up only when one
        comes back."""
        self.messages_sent += len(lens)
        self.bytes_sent += nbytes
        self.records_sent += sum(nrecords)
        keys = []
        i = 0
        for c in groups:
            n = sum(nrecords[i:i + c]) if c > 1 else nrecords[i]
            if n:
                keys.append((data[off:off + KEY_BYTES], n))
            if c > 1:
                self.gso_sends += 1
                off += sum(lens[i:i + c])
            else:
                off += lens[i]
            i += c
        self._recent.extend(keys)

    def _read_refusals(self) -> None:
        """Move the records of refused datagrams from exported to not sent."""
        if self.sock is None:
            return
        while True:
            try:
                data, _, _, _ = self.sock.recvmsg(KEY_BYTES, 512, MSG_ERRQUEUE | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.send_errors += 1
            self.collector_unreachable += 1
            n = self._forget(bytes(data[:KEY_BYTES]))
            if n:
                self.records_sent -= n
                self.not_sent(n, "collector_refused")
                self.log.warning("export_collector_refused", records=n)

    def _forget(self, key: bytes) -> int:
        """Records of the remembered datagram starting with ``key`` (0 if
        none), which is forgotten: a refusal is credited once."""
        for i, (k, n) in enumerate(self._recent):
            if k == key:
                del self._recent[i]
                return n
        return 0

    def poll(self):
        self.push()

    def close(self):
        self.push()
        if self.sock is not None:
            time.sleep(0.001)         # a last ICMP on its way (loopback: already here)
            self._read_refusals()
            self.sock.close()
            self.sock = None

    def pending_records(self):
        return sum(self._batch_records)

    def stats(self):
        d = super().stats()
        d["pace_sleeps"] = self.pace_sleeps
        d["send_calls"] = self.send_calls
        d["gso"] = bool(self._gso[0])
        d["gso_sends"] = self.gso_sends
        d["collector_unreachable"] = self.collector_unreachable
        return d
