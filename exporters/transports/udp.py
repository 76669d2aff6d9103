"""UDP transport, paced.

Pacing: a token bucket of `rate_msgs_s` messages per second with a small
burst; send() sleeps when the bucket is empty. Unpaced, a replay produces
messages far faster than a collector on the same host drains its socket
(nfcapd's default receive buffer holds ~100 datagrams of 1400 bytes), and the
kernel drops what does not fit. The default was measured against nfcapd on
this machine: replaying 104k flows (7k messages) to nfcapd 1.7.1 with its
default 208 KiB buffer lost datagrams at 10k-20k msgs/s in 4 of 6 runs and
none at 5k-7k in 7 runs; 5000 msgs/s is ~75k IPFIX records/s. The sleep
bounds export to about rate_msgs_s x records per message: raise rate_msgs_s
for a remote collector with a large receive buffer.
"""
from __future__ import annotations

import errno
import socket
import time

from flowprobe.exporters.transports import Transport

DEFAULT_RATE_MSGS_S = 5000
DEFAULT_BURST = 16


class UdpTransport(Transport):
    name = "udp"

    def __init__(self, host: str, port: int, rate_msgs_s: float = DEFAULT_RATE_MSGS_S,
                 burst: int = DEFAULT_BURST, sndbuf: int = 0):
        self.host, self.port = host, port
        super().__init__()
        self.rate = float(rate_msgs_s)
        self.burst = max(1, burst)
        self.sndbuf = sndbuf
        self.sock = None
        self._tokens = float(self.burst)
        self._last = time.monotonic()
        self.pace_sleeps = 0
        self.collector_unreachable = 0

    def describe(self):
        return f"udp://{self.host}:{self.port}"

    def open(self):
        fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_DGRAM)
        if self.sndbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
        try:
            self.sock.connect((self.host, self.port))
        except OSError as e:
            self.send_errors += 1
            self.log.warning("export_connect_failed", error=str(e))
        self.streams_started += 1
        start = self._stream_start_message(None)
        if start:
            self._send(start, 0)

    def _pace(self):
        if self.rate <= 0:
            return
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1.0:
            wait = (1.0 - self._tokens) / self.rate
            self.pace_sleeps += 1
            time.sleep(wait)
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
        self._tokens -= 1.0

    def _send(self, message: bytes, nrecords: int) -> None:
        self._pace()
        for attempt in range(2):
            try:
                self.sock.send(message)
                self.messages_sent += 1
                self.bytes_sent += len(message)
                self.records_sent += nrecords
                return
            except OSError as e:
                # ECONNREFUSED reports an ICMP port unreachable caused by an
                # earlier datagram (already gone): count it, and retry this one.
                if attempt == 0 and e.errno == errno.ECONNREFUSED:
                    self.send_errors += 1
                    self.collector_unreachable += 1
                    self.log.warning("export_collector_unreachable", error=str(e))
                    continue
                self.send_errors += 1
                self.records_not_sent += nrecords
                self.log.warning("export_send_failed", error=str(e))
                return

    def send(self, message, nrecords):
        self._send(message, nrecords)

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def stats(self):
        d = super().stats()
        d["pace_sleeps"] = self.pace_sleeps
        d["collector_unreachable"] = self.collector_unreachable
        return d
