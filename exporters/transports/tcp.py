"""TCP transport (IPFIX over TCP, RFC 7011 section 10.4), never blocking.

- Non-blocking connect; while the collector is down, reconnect attempts back
  off exponentially (backoff_min_s .. backoff_max_s).
- Messages wait in a bounded buffer (max_buffer_bytes); a message that does
  not fit is dropped whole and its records are counted as not sent.
- Each new connection starts with the template message (on_stream_start),
  then the buffered messages, oldest first.
- Bytes written but not yet acknowledged by the peer are tracked with
  SIOCOUTQ: when the connection fails, the messages they belong to are put
  back at the head of the buffer and resent on the next connection. Data the
  peer's kernel acknowledged but its process never read (a collector killed
  with a full receive buffer) cannot be known to the sender: TCP's limit.
- Accounting at close: after the bounded flush, the write side is shut
  down and the transport waits (within the same bound) until the peer has
  acknowledged every byte. Messages acknowledged are exported; what is
  still buffered or unacknowledged is not sent (`connection_lost`), and
  then the connection is reset (SO_LINGER 0), not closed, so the kernel
  does not deliver it afterwards.
"""
from __future__ import annotations

import collections
import errno
import select
import socket
import struct
import time

from flowprobe.exporters.transports import Transport

DOWN, CONNECTING, UP = "down", "connecting", "up"
TCP_INFO_LEN = 232
TCPI_BYTES_ACKED = 120     # offsetof(struct tcp_info, tcpi_bytes_acked), Linux >= 4.1


class TcpTransport(Transport):
    name = "tcp"

    def __init__(self, host: str, port: int, max_buffer_bytes: int = 4 << 20,
                 backoff_min_s: float = 0.1, backoff_max_s: float = 30.0,
                 close_timeout_s: float = 5.0):
        self.host, self.port = host, port
        super().__init__()
        self.max_buffer = max_buffer_bytes
        self.close_timeout = close_timeout_s
        self.backoff_min, self.backoff_max = backoff_min_s, backoff_max_s
        self.state = DOWN
        self.sock = None
        self.queue = collections.deque()   # [message, nrecords] not yet written
        self.queued_bytes = 0
        self.queued_records = 0
        self.head_off = 0                  # bytes of queue[0] already written
        self.inflight = collections.deque()  # written, maybe not acknowledged
        self.inflight_bytes = 0
        self.inflight_records = 0
        self.conn_written = 0              # bytes written on this connection
        self._backoff = backoff_min_s
        self._next_attempt = 0.0
        self.connects = 0
        self.disconnects = 0
        self.records_requeued = 0

    def describe(self):
        return f"tcp://{self.host}:{self.port}"

    # -- public -------------------------------------------------------------
    def open(self):
        self._pump()

    def send(self, message, nrecords):
        if self.queued_bytes + len(message) > self.max_buffer:
            self.not_sent(nrecords, "buffer_full")
            self.log.warning("export_buffer_full", buffered_bytes=self.queued_bytes,
                             state=self.state)
        else:
            self.queue.append([message, nrecords])
            self.queued_bytes += len(message)
            self.queued_records += nrecords
        self._pump()

    def poll(self):
        self._pump()

    def flush(self, timeout_s: float = 5.0) -> None:
        """Try to write the buffer out before close (bounded in time)."""
        end = time.monotonic() + timeout_s
        while (self.queue or self._unacked()) and time.monotonic() < end:
            self._pump()
            if self.state == UP and self.queue:
                socket_wait(self.sock, write=True, timeout=0.05)
            else:
                time.sleep(0.01)

    def close(self):
        end = time.monotonic() + self.close_timeout
        self.flush(self.close_timeout)
        if self.sock is not None and self.state == UP:
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            # credit what the peer acknowledges, within the same bound
            while self.inflight and time.monotonic() < end:
                unacked = self._unacked()
                self._trim_inflight(unacked)
                if not unacked:
                    break
                time.sleep(0.005)
            self._trim_inflight(self._unacked())
            if self.inflight:
                # Out of time: reset rather than close, so the kernel does
                # not deliver later what is counted here as not sent.
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))
        self.not_sent(self.queued_records + self.inflight_records, "connection_lost")
        self.queue.clear()
        self.inflight.clear()
        self.queued_bytes = self.queued_records = self.inflight_bytes = 0
        self.inflight_records = 0
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.state = DOWN

    def pending_records(self):
        return self.queued_records + self.inflight_records

    def stats(self):
        d = super().stats()
        d.update(state=self.state, connects=self.connects,
                 disconnects=self.disconnects, records_requeued=self.records_requeued,
                 buffered_bytes=self.queued_bytes)
        return d

    # -- internals ----------------------------------------------------------
    def _unacked(self) -> int:
        """Bytes written on this connection that the peer has not
        acknowledged: TCP_INFO's bytes_acked (it survives a reset, unlike
        SIOCOUTQ, whose queue a RST purges)."""
        if self.sock is None or self.state != UP:
            return 0
        try:
            info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
            acked = struct.unpack_from("Q", info, TCPI_BYTES_ACKED)[0] - 1   # the SYN
        except (OSError, struct.error):
            return self.inflight_bytes
        return max(0, self.conn_written - max(0, acked))

    def _trim_inflight(self, unacked: int) -> None:
        unacked = max(0, unacked - self.head_off)   # the head's partial write
        while self.inflight and self.inflight_bytes - len(self.inflight[0][0]) >= unacked:
            msg, n = self.inflight.popleft()
            self.inflight_bytes -= len(msg)
            self.inflight_records -= n
            self.records_sent += n

    def _connect(self):
        now = time.monotonic()
        if now < self._next_attempt:
            return
        fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rc = self.sock.connect_ex((self.host, self.port))
        if rc in (0, errno.EINPROGRESS):
            self.state = CONNECTING
        else:
            self._fail(OSError(rc, "connect failed"))

    def _check_connecting(self):
        if not socket_wait(self.sock, write=True, timeout=0):
            return
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail(OSError(err, "connect failed"))
            return
        self.state = UP
        self.connects += 1
        self.streams_started += 1
        self._backoff = self.backoff_min
        self.head_off = 0
        self.conn_written = 0
        head = self.queue[0][0] if self.queue else None
        start = self._stream_start_message(head)
        if start:
            self.queue.appendleft([start, 0])
            self.queued_bytes += len(start)
        self.log.log.info("export_connected", connects=self.connects)

    def _fail(self, err: OSError):
        """Connection lost: requeue what the peer did not acknowledge."""
        self._trim_inflight(self._unacked())
        # head message partially written on the old connection: resend whole
        self.head_off = 0
        while self.inflight:
            msg, n = self.inflight.pop()
            self.inflight_bytes -= len(msg)
            self.inflight_records -= n
            if n == 0:
                continue          # template message: the new stream gets fresh ones
            self.queue.appendleft([msg, n])
            self.queued_bytes += len(msg)
            self.queued_records += n
            self.records_requeued += n
        # drop a leading template message left from the old stream
        while self.queue and self.queue[0][1] == 0:
            self.queued_bytes -= len(self.queue.popleft()[0])
        if self.state == UP:
            self.disconnects += 1
        self.send_errors += 1
        self.log.warning("export_connection_failed", error=str(err), state=self.state,
                         retry_in_s=round(self._backoff, 2))
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.state = DOWN
        self._next_attempt = time.monotonic() + self._backoff
        self._backoff = min(self.backoff_max, self._backoff * 2)

    def _peer_closed(self) -> bool:
        if not socket_wait(self.sock, write=False, timeout=0):
            return False
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return data == b""          # collectors never send: EOF means gone

    def _pump(self):
        if self.state == DOWN:
            self._connect()
        if self.state == CONNECTING:
            self._check_connecting()
        if self.state != UP:
            return
        if self._peer_closed():
            self._fail(OSError(errno.ECONNRESET, "collector closed the connection"))
            return
        try:
            while self.queue:
                msg, n = self.queue[0]
                sent = self.sock.send(memoryview(msg)[self.head_off:])
                self.head_off += sent
                self.bytes_sent += sent
                self.conn_written += sent
                if self.head_off < len(msg):
                    break
                self.queue.popleft()
                self.head_off = 0
                self.queued_bytes -= len(msg)
                self.queued_records -= n
                self.messages_sent += 1
                self.inflight.append((msg, n))
                self.inflight_bytes += len(msg)
                self.inflight_records += n
        except BlockingIOError:
            pass
        except OSError as e:
            self._fail(e)
            return
        self._trim_inflight(self._unacked())


def socket_wait(sock, write: bool, timeout: float) -> bool:
    p = select.poll()
    p.register(sock, select.POLLOUT if write else select.POLLIN)
    ev = p.poll(int(timeout * 1000))
    return bool(ev)
