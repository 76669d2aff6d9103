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

Anyone who can reach a listener can try to exhaust the collector, so every
resource a peer can make it hold is bounded (`CollectorLimits`, defaults in
the README's "Built-in collector"): TCP connections (beyond the limit, or
when accept() finds no file descriptor, a connection is reset and counted),
idle time and unfinished-message time per connection, bytes buffered per
connection, and the template cache (cache.py). The kernel's drops on each
UDP socket are read (SO_MEMINFO) and reported; the receive buffer is
configurable and a clamp by the kernel is reported. Housekeeping runs once a
second; refusals, drops and the counters are logged once per stats interval.
"""

from __future__ import annotations

import errno
import os
import resource
import selectors
import socket
import struct
import time
from collections import Counter
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

import structlog

from flowprobe.collector import cache
from flowprobe.collector.decode import IPFIX_VERSION, MessageDecoder

log = structlog.get_logger("flowprobe.collector")

LISTEN_SCHEMES = ("tcp", "udp")
UDP_RCVBUF_BYTES = 16 << 20
_MAX_DATAGRAM = 65535
_MAX_IPFIX_MESSAGE = 65535
_HOUSEKEEPING_S = 1.0
_ACCEPT_BACKOFF_S = (0.05, 2.0)   # first and longest pause after EMFILE/ENFILE
_FD_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# SO_MEMINFO (Linux 4.12+) fills u32 sk_meminfo[SK_MEMINFO_VARS]; index 8 is
# the socket's drop count (sk_drops: full receive buffer, bad checksum...).
_SO_MEMINFO = 55
_SK_MEMINFO_DROPS = 8
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


@dataclass(frozen=True)
class CollectorLimits:
    """What a peer may make the collector hold; one field, one default."""
    max_connections: int = 256          # TCP connections open at once
    tcp_idle_timeout_s: float = 120.0   # a connection silent this long is cut
    tcp_message_timeout_s: float = 10.0  # a started message must end within this
    tcp_buffer_bytes: int = _MAX_IPFIX_MESSAGE  # buffered per connection (largest message)
    rcvbuf_bytes: int = UDP_RCVBUF_BYTES  # UDP SO_RCVBUF (SO_RCVBUFFORCE as root)
    max_templates: int = cache.DEFAULT_MAX_TEMPLATES
    max_templates_per_domain: int = cache.DEFAULT_MAX_PER_DOMAIN
    max_template_fields: int = cache.DEFAULT_MAX_FIELDS
    stats_interval_s: float = 10.0      # refusals, drops, counters logged this often

    def __post_init__(self):
        errors = ["%s must be > 0, not %r" % (k, v) for k, v in asdict(self).items()
                  if not v > 0]
        if self.tcp_buffer_bytes < 16:
            errors.append("tcp_buffer_bytes must be >= 16 (an IPFIX header)")
        if errors:
            raise ValueError("; ".join(errors))


class _TcpPeer:
    """One accepted connection: its bytes not yet framed, and its clocks."""
    __slots__ = ("exporter", "buf", "last_rx", "partial_since")

    def __init__(self, exporter: tuple, now: float):
        self.exporter, self.buf = exporter, bytearray()
        self.last_rx, self.partial_since = now, None


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

    def __init__(self, listens: list[str], on_record=None,
                 limits: CollectorLimits | None = None):
        self.listens = [parse_listen(u) for u in listens]
        self.on_record = on_record or (lambda rec: None)
        self.limits = limits = limits or CollectorLimits()
        self.decoder = MessageDecoder(max_templates=limits.max_templates,
                                      max_per_domain=limits.max_templates_per_domain,
                                      max_fields=limits.max_template_fields)
        self.counters: Counter = Counter()
        self.addresses: list[tuple[str, str, int]] = []
        self.udp_rcvbuf: list[dict] = []      # per UDP listener: requested, granted
        self._sel = selectors.DefaultSelector()
        self._peers: dict[socket.socket, _TcpPeer] = {}
        self._udp_socks: list[socket.socket] = []
        self._udp_drops: dict[socket.socket, int] = {}
        self._paused: dict[socket.socket, float] = {}   # listener -> resume time
        self._backoff_s = _ACCEPT_BACKOFF_S[0]
        self._spare_fd: int | None = None
        self._next_housekeeping = 0.0
        self._next_stats = 0.0
        self._logged: Counter = Counter()    # counter values already logged
        self._last_state: tuple = ()
        self._flows = 0

    # -- life cycle ----------------------------------------------------------
    def open(self) -> "Collector":
        """Bind every listener (before the exporters start sending)."""
        for scheme, host, port in self.listens:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            if scheme == "udp":
                sock = socket.socket(family, socket.SOCK_DGRAM)
                rcvbuf = _set_rcvbuf(sock, self.limits.rcvbuf_bytes)
                sock.bind((host, port))
                self._sel.register(sock, selectors.EVENT_READ, self._on_datagram)
                self._udp_socks.append(sock)
            else:
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
                sock.listen(128)
                self._sel.register(sock, selectors.EVENT_READ, self._on_accept)
                if self._spare_fd is None:
                    self._spare_fd = os.open(os.devnull, os.O_RDONLY)
                    _check_fd_limit(self.limits.max_connections)
            sock.setblocking(False)
            bound = sock.getsockname()
            self.addresses.append((scheme, bound[0], bound[1]))
            log.info("collector_listening", scheme=scheme, host=bound[0], port=bound[1])
            if scheme == "udp":
                rcvbuf["listen"] = "udp://%s:%d" % bound[:2]
                self.udp_rcvbuf.append(rcvbuf)
                if rcvbuf["clamped"]:
                    log.warning("udp_rcvbuf_clamped", **rcvbuf, hint=(
                        "raise net.core.rmem_max, or run with CAP_NET_ADMIN "
                        "(SO_RCVBUFFORCE)"))
        return self

    def close(self) -> None:
        self._read_udp_drops()  # the last word: drops after the last datagram
        for key in list(self._sel.get_map().values()):
            self._sel.unregister(key.fileobj)
            key.fileobj.close()
        for sock in self._paused:
            sock.close()
        self._paused.clear()
        self._peers.clear()
        self._udp_socks.clear()
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None
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
            if now >= self._next_housekeeping:
                self._housekeeping(now)
            events = self._sel.select(min(wait, _HOUSEKEEPING_S))
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
        used = self._frames(buf, ("file", path), _MAX_IPFIX_MESSAGE)
        rest = len(buf) - used if used is not None else 0
        if rest:
            self.counters["file_trailing_bytes"] += rest
            log.warning("file_truncated", path=path, trailing_bytes=rest)

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
        for _ in range(64):  # bounded: let other sockets have a turn
            try:
                conn, peer = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _FD_EXHAUSTED:
                    self._accept_exhausted(lsock, exc)
                else:  # ECONNABORTED and kin: that peer is gone, not us
                    self.counters["tcp_accept_errors"] += 1
                return
            if len(self._peers) >= self.limits.max_connections:
                self._refuse(conn, "tcp_refused_limit")
                continue
            self._backoff_s = _ACCEPT_BACKOFF_S[0]
            conn.setblocking(False)
            self.counters["tcp_connections"] += 1
            self._peers[conn] = _TcpPeer(("tcp",) + tuple(peer[:2]), time.monotonic())
            self._sel.register(conn, selectors.EVENT_READ, self._on_stream)
            log.info("tcp_exporter_connected", peer="%s:%d" % peer[:2],
                     connections=len(self._peers))

    def _accept_exhausted(self, lsock: socket.socket, exc: OSError) -> None:
        """accept() found no file descriptor (EMFILE/ENFILE) or no memory.
        Give back the spare descriptor kept for this, accept and reset the
        waiting peer with it (else it would wait in the backlog and the
        listener would stay readable: a spin); when even that fails, stop
        accepting for a while, doubling the pause up to 2 s."""
        self.counters["tcp_accept_errors"] += 1
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None
            try:
                conn, _ = lsock.accept()
            except OSError:
                pass
            else:
                self._refuse(conn, "tcp_refused_no_fd")
                return
            finally:
                try:
                    self._spare_fd = os.open(os.devnull, os.O_RDONLY)
                except OSError:
                    self._spare_fd = None
        self._sel.unregister(lsock)
        self._paused[lsock] = time.monotonic() + self._backoff_s
        self.counters["tcp_accept_pauses"] += 1
        if self._logged["accept_paused"] == 0:
            log.warning("tcp_accept_paused", error=exc.strerror, pause_s=self._backoff_s,
                        connections=len(self._peers))
        self._logged["accept_paused"] += 1
        self._backoff_s = min(self._backoff_s * 2, _ACCEPT_BACKOFF_S[1])

    def _refuse(self, conn: socket.socket, why: str) -> None:
        """Reset (not close) a connection we will not serve: no TIME_WAIT
        here, and the exporter learns at once."""
        self.counters["tcp_refused"] += 1
        self.counters[why] += 1
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        conn.close()

    def _on_stream(self, conn: socket.socket) -> None:
        peer = self._peers[conn]
        try:
            chunk = conn.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            chunk = b""
            log.warning("tcp_exporter_error", peer=peer.exporter, error=str(exc))
        if not chunk:
            if peer.buf:
                self.counters["tcp_truncated_bytes"] += len(peer.buf)
            self._drop_conn(conn, "closed")
            return
        now = peer.last_rx = time.monotonic()
        self.counters["tcp_bytes"] += len(chunk)
        peer.buf += chunk
        used = self._frames(peer.buf, peer.exporter, self.limits.tcp_buffer_bytes)
        if used is None:
            self._drop_conn(conn, "bad_framing")
            return
        if used == len(peer.buf):
            peer.buf, peer.partial_since = bytearray(), None  # frees the buffer
        elif used or peer.partial_since is None:
            del peer.buf[:used]
            peer.partial_since = now  # a new message has begun

    def _drop_conn(self, conn, why: str) -> None:
        peer = self._peers.pop(conn)
        self._sel.unregister(conn)
        conn.close()
        self.counters["tcp_closed_" + why] += 1
        log.info("tcp_exporter_disconnected", peer=peer.exporter, reason=why,
                 buffered_bytes=len(peer.buf))

    def _frames(self, buf, exporter, max_length: int):
        """Decode every whole IPFIX message in a stream buffer. Returns how
        many bytes were used (the rest is an unfinished message), or None
        when the stream is not IPFIX (unframeable) or announces a message
        longer than max_length (what we are willing to buffer)."""
        off = 0
        while len(buf) - off >= 4:
            version, length = struct.unpack_from("!HH", buf, off)
            if version != IPFIX_VERSION or length < 16 or length > max_length:
                self.counters["stream_framing_errors"] += 1
                if length > max_length and version == IPFIX_VERSION:
                    self.counters["stream_messages_too_long"] += 1
                log.warning("stream_framing_error", exporter=exporter,
                            version=version, length=length, max_length=max_length)
                return None
            if len(buf) - off < length:
                break
            self._deliver(bytes(buf[off:off + length]), exporter)
            off += length
        return off

    def _deliver(self, data: bytes, exporter) -> None:
        for rec in self.decoder.decode(data, exporter):
            if not rec.get("_options"):
                self._flows += 1
            self.on_record(rec)

    # -- housekeeping ----------------------------------------------------------
    def _housekeeping(self, now: float) -> None:
        """Once a second: cut idle and stalled connections, resume paused
        listeners, read the kernel's UDP drops; log once per stats interval."""
        self._next_housekeeping = now + _HOUSEKEEPING_S
        lim = self.limits
        for conn, peer in list(self._peers.items()):
            if now - peer.last_rx > lim.tcp_idle_timeout_s:
                self._drop_conn(conn, "idle_timeout")
            elif peer.partial_since is not None \
                    and now - peer.partial_since > lim.tcp_message_timeout_s:
                self.counters["tcp_truncated_bytes"] += len(peer.buf)
                self._drop_conn(conn, "message_timeout")
        for lsock, resume in list(self._paused.items()):
            if now >= resume:
                del self._paused[lsock]
                self._sel.register(lsock, selectors.EVENT_READ, self._on_accept)
        self._read_udp_drops()
        if now >= self._next_stats:
            self._next_stats = now + lim.stats_interval_s
            self._log_stats()

    def _read_udp_drops(self) -> None:
        for sock in self._udp_socks:
            drops = _kernel_drops(sock)
            if drops is not None:
                self._udp_drops[sock] = drops
        if self._udp_drops:
            self.counters["udp_kernel_drops"] = sum(self._udp_drops.values())

    def _log_stats(self) -> None:
        """Refusals and drops as warnings, then the main counters (the
        summary at exit has them all): only a change is worth a line."""
        c, seen = self.counters, self._logged
        if c["tcp_refused"] > seen["tcp_refused"]:
            log.warning("tcp_connections_refused", new=c["tcp_refused"] - seen["tcp_refused"],
                        total=c["tcp_refused"], connections=len(self._peers),
                        max_connections=self.limits.max_connections,
                        no_fd=c["tcp_refused_no_fd"], accept_errors=c["tcp_accept_errors"])
            seen["tcp_refused"] = c["tcp_refused"]
        if c["udp_kernel_drops"] > seen["udp_kernel_drops"]:
            log.warning("udp_kernel_drops", new=c["udp_kernel_drops"] - seen["udp_kernel_drops"],
                        total=c["udp_kernel_drops"], rcvbuf=self.udp_rcvbuf)
            seen["udp_kernel_drops"] = c["udp_kernel_drops"]
        state = (sum(c.values()), sum(self.decoder.counters.values()))
        if state != self._last_state:
            self._last_state = state
            d = self.decoder.counters
            log.info("collector_stats", flows=d["flows"], messages=d["messages"],
                     malformed_messages=d["malformed_messages"],
                     tcp_connections_open=len(self._peers), tcp_refused=c["tcp_refused"],
                     udp_datagrams=c["udp_datagrams"], udp_kernel_drops=c["udp_kernel_drops"],
                     templates_cached=len(self.decoder.templates),
                     templates_evicted=d["templates_evicted_domain"]
                     + d["templates_evicted_total"])

    # -- reporting ---------------------------------------------------------
    def summary(self) -> dict:
        """Transport counters and decoder counters in one dict, with the
        UDP receive buffers (granted by the kernel, clamped or not)."""
        out = self.decoder.summary()
        out.update(("transport_" + k, v) for k, v in sorted(self.counters.items()))
        out["transport_tcp_connections_open"] = len(self._peers)
        if self.udp_rcvbuf:
            out["transport_udp_rcvbuf"] = self.udp_rcvbuf
            out["transport_udp_kernel_drops"] = self.counters["udp_kernel_drops"]
        return out


def _set_rcvbuf(sock: socket.socket, requested: int) -> dict:
    """Ask for a receive buffer of `requested` bytes: SO_RCVBUFFORCE (needs
    CAP_NET_ADMIN) passes net.core.rmem_max, SO_RCVBUF is clamped to it.
    Linux stores (and getsockopt returns) twice the granted size."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, requested)
        how = "SO_RCVBUFFORCE"
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, requested)
        how = "SO_RCVBUF"
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
    return {"requested": requested, "granted": granted, "clamped": granted < requested,
            "option": how}


def _check_fd_limit(max_connections: int) -> None:
    """Say at start when the descriptor limit, not --max-connections, will
    end up refusing connections (accept() failing with EMFILE is handled,
    but the operator should know which bound is the real one)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and max_connections + 32 > soft:
        log.warning("tcp_max_connections_above_fd_limit", max_connections=max_connections,
                    rlimit_nofile=soft, hint="raise LimitNOFILE / ulimit -n, or lower "
                    "--max-connections")


def _kernel_drops(sock: socket.socket) -> int | None:
    """The kernel's count of datagrams dropped on this socket (SO_MEMINFO's
    SK_MEMINFO_DROPS), or None where the kernel does not give it."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, 4 * (_SK_MEMINFO_DROPS + 1))
    except OSError:
        return None
    if len(raw) < 4 * (_SK_MEMINFO_DROPS + 1):
        return None
    return struct.unpack_from("=I", raw, 4 * _SK_MEMINFO_DROPS)[0]
