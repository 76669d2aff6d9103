"""The built-in collector: UDP and TCP listeners and RFC 5655 files.

A `Collector` owns its sockets, one `MessageDecoder` and the transport
counters. Every decoded record goes to the `on_record(rec)` callback (flows
as IANA-named dicts, options records with `"_options": True`).

    with Collector(["udp://127.0.0.1:4739"], on_record=print) as c:
        c.serve(count=100, timeout_s=10)
    c.summary()

Listen URLs: `udp://HOST:PORT` (NetFlow v5, v9 or IPFIX datagrams) and
`tcp://HOST:PORT` (IPFIX messages framed by their length field, RFC 7011
s10.4; v5/v9 have no length field and are not framed over TCP). Port 0 binds
an ephemeral port; `addresses` tells which.
"""

from __future__ import annotations

import selectors
import socket
import struct
import time
from collections import Counter
from urllib.parse import urlsplit

import structlog

from flowprobe.collector.decode import IPFIX_VERSION, MessageDecoder

log = structlog.get_logger("flowprobe.collector")

LISTEN_SCHEMES = ("tcp", "udp")
UDP_RCVBUF_BYTES = 16 << 20
_MAX_DATAGRAM = 65535
_TCP_BUF_LIMIT = 1 << 20


def parse_listen(url: str) -> tuple[str, str, int]:
    """`udp://127.0.0.1:4739` -> ("udp", "127.0.0.1", 4739)."""
    parts = urlsplit(url)
    if parts.scheme not in LISTEN_SCHEMES:
        raise ValueError("listen %r: unknown scheme %r (expected: %s)"
                         % (url, parts.scheme, ", ".join(LISTEN_SCHEMES)))
    if parts.hostname is None or parts.port is None:
        raise ValueError("listen %r: expected SCHEME://HOST:PORT" % url)
    return parts.scheme, parts.hostname, parts.port


class Collector:
    """Receives export messages and hands decoded records to a callback."""

    def __init__(self, listens: list[str], on_record=None):
        self.listens = [parse_listen(u) for u in listens]
        self.on_record = on_record or (lambda rec: None)
        self.decoder = MessageDecoder()
        self.counters: Counter = Counter()
        self.addresses: list[tuple[str, str, int]] = []
        self._sel = selectors.DefaultSelector()
        self._tcp_bufs: dict[socket.socket, tuple[bytearray, tuple]] = {}
        self._flows = 0

    # -- life cycle ----------------------------------------------------------
    def open(self) -> "Collector":
        """Bind every listener (before the exporters start sending)."""
        for scheme, host, port in self.listens:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            if scheme == "udp":
                sock = socket.socket(family, socket.SOCK_DGRAM)
                _grow_rcvbuf(sock)
                sock.bind((host, port))
                self._sel.register(sock, selectors.EVENT_READ, self._on_datagram)
            else:
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
                sock.listen(16)
                self._sel.register(sock, selectors.EVENT_READ, self._on_accept)
            sock.setblocking(False)
            bound = sock.getsockname()
            self.addresses.append((scheme, bound[0], bound[1]))
            log.info("collector_listening", scheme=scheme, host=bound[0], port=bound[1])
        return self

    def close(self) -> None:
        for key in list(self._sel.get_map().values()):
            self._sel.unregister(key.fileobj)
            key.fileobj.close()
        self._tcp_bufs.clear()
        self._sel.close()

    def __enter__(self) -> "Collector":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- main loop -------------------------------------------------------------
    def serve(self, count: int | None = None, timeout_s: float | None = None,
              idle_timeout_s: float | None = None) -> None:
        """Receive until `count` flows were decoded, `timeout_s` passed, or
        nothing arrived for `idle_timeout_s`; forever when all are None."""
        start = last = time.monotonic()
        while count is None or self._flows < count:
            now = time.monotonic()
            waits = [1.0]
            if timeout_s is not None:
                waits.append(start + timeout_s - now)
            if idle_timeout_s is not None:
                waits.append(last + idle_timeout_s - now)
            wait = min(waits)
            if wait <= 0:
                return
            events = self._sel.select(wait)
            if events:
                last = time.monotonic()
            for key, _ in events:
                key.data(key.fileobj)
                if count is not None and self._flows >= count:
                    return

    def read_file(self, path: str) -> None:
        """Decode an IPFIX file (RFC 5655: a sequence of IPFIX messages)."""
        self.counters["files"] += 1
        with open(path, "rb") as f:
            buf = f.read()
        rest = self._frames(buf, ("file", path))
        if rest:
            self.counters["file_trailing_bytes"] += len(rest)
            log.warning("file_truncated", path=path, trailing_bytes=len(rest))

    # -- transports ------------------------------------------------------------
    def _on_datagram(self, sock: socket.socket) -> None:
        for _ in range(256):  # bounded: let other sockets have a turn
            try:
                data, peer = sock.recvfrom(_MAX_DATAGRAM)
            except BlockingIOError:
                return
            self.counters["udp_datagrams"] += 1
            self.counters["udp_bytes"] += len(data)
            self._deliver(data, ("udp",) + tuple(peer[:2]))

    def _on_accept(self, lsock: socket.socket) -> None:
        conn, peer = lsock.accept()
        conn.setblocking(False)
        self.counters["tcp_connections"] += 1
        self._tcp_bufs[conn] = (bytearray(), ("tcp",) + tuple(peer[:2]))
        self._sel.register(conn, selectors.EVENT_READ, self._on_stream)
        log.info("tcp_exporter_connected", peer="%s:%d" % peer[:2])

    def _on_stream(self, conn: socket.socket) -> None:
        buf, exporter = self._tcp_bufs[conn]
        try:
            chunk = conn.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            chunk = b""
            log.warning("tcp_exporter_error", peer=exporter, error=str(exc))
        if not chunk:
            if buf:
                self.counters["tcp_truncated_bytes"] += len(buf)
            self._drop_conn(conn, "closed")
            return
        self.counters["tcp_bytes"] += len(chunk)
        buf += chunk
        rest = self._frames(buf, exporter)
        if rest is None:
            self._drop_conn(conn, "bad_framing")
        else:
            del buf[:len(buf) - len(rest)]
            if len(buf) > _TCP_BUF_LIMIT:
                self._drop_conn(conn, "buffer_overflow")

    def _drop_conn(self, conn, why: str) -> None:
        _, exporter = self._tcp_bufs.pop(conn)
        self._sel.unregister(conn)
        conn.close()
        self.counters["tcp_closed_" + why] += 1
        log.info("tcp_exporter_disconnected", peer=exporter, reason=why)

    def _frames(self, buf, exporter):
        """Decode every whole IPFIX message in a stream buffer. Returns the
        incomplete tail, or None when the stream is not IPFIX (unframeable)."""
        off = 0
        while len(buf) - off >= 4:
            version, length = struct.unpack_from("!HH", buf, off)
            if version != IPFIX_VERSION or length < 16:
                self.counters["stream_framing_errors"] += 1
                log.warning("stream_framing_error", exporter=exporter,
                            version=version, length=length)
                return None
            if len(buf) - off < length:
                break
            self._deliver(bytes(buf[off:off + length]), exporter)
            off += length
        return bytes(buf[off:])

    def _deliver(self, data: bytes, exporter) -> None:
        for rec in self.decoder.decode(data, exporter):
            if not rec.get("_options"):
                self._flows += 1
            self.on_record(rec)

    # -- reporting ---------------------------------------------------------
    def summary(self) -> dict:
        """Transport counters and decoder counters in one dict."""
        out = self.decoder.summary()
        out.update(("transport_" + k, v) for k, v in sorted(self.counters.items()))
        return out


def _grow_rcvbuf(sock: socket.socket) -> None:
    """A big receive buffer: exporters replaying files send in bursts.
    SO_RCVBUFFORCE (root) passes net.core.rmem_max; else take what we get."""
    force = getattr(socket, "SO_RCVBUFFORCE", 33)
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, UDP_RCVBUF_BYTES)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF_BYTES)
