"""Transports: move finished messages to a collector or a file.

A transport is `open()`, `send(message, nrecords)`, `poll()`, `close()`,
with counters. Every record handed to a transport ends as exported
(`records_sent`), pending (still buffered) or not sent under one reason of
NOT_SENT_REASONS (`not_sent(n, reason)`); at close nothing is pending. It never raises on a collector failure: failures are counted
and logged at a limited rate. `on_stream_start` (set by the Exporter)
returns the template message that must open every new stream (UDP socket,
TCP connection, file).
"""
from __future__ import annotations

import time

import structlog


class RateLimitedLog:
    """At most one line per event per `interval_s`, with the count suppressed."""

    def __init__(self, log, interval_s: float = 10.0):
        self.log = log
        self.interval = interval_s
        self._last: dict = {}
        self._suppressed: dict = {}

    def warning(self, event: str, **kw) -> None:
        now = time.monotonic()
        last = self._last.get(event)
        if last is not None and now - last < self.interval:
            self._suppressed[event] = self._suppressed.get(event, 0) + 1
            return
        self._last[event] = now
        kw["suppressed"] = self._suppressed.pop(event, 0)
        self.log.warning(event, **kw)


#: Why records were not sent, one counter each (stats "records_not_sent_by").
NOT_SENT_REASONS = (
    "queue_full",          # the reader's export queue was full (pipeline.py)
    "queue_timeout",       # still queued when the drain at close ran out of time
    "collector_refused",   # UDP: ICMP port unreachable for the datagram
    "send_error",          # UDP: any other send failure
    "buffer_full",         # TCP: the reconnect buffer was full
    "connection_lost",     # TCP: unacknowledged at close, or never connected
    "disk_full",           # file: ENOSPC / EDQUOT (the partial message is cut back)
    "file_error",          # file: cannot create or write (permissions, I/O)
    "encoder_error",       # the encoder failed on the batch
    "exporter_closed",     # records reached an exporter already closed
    "no_subscriber",       # ZeroMQ: no ntopng subscribed when the message was due
    "hwm_full",            # ZeroMQ: the socket's high-water mark was reached
)


class Transport:
    name = "?"

    def __init__(self):
        self.on_stream_start = None     # () -> bytes | None, or (head) -> bytes
        self.messages_sent = 0
        self.bytes_sent = 0
        self.records_sent = 0
        self.records_not_sent = 0
        self.records_not_sent_by: dict[str, int] = {}
        self.send_errors = 0
        self.streams_started = 0
        self.log = RateLimitedLog(structlog.get_logger("flowprobe.export").bind(
            transport=self.name, dest=self.describe()))

    def describe(self) -> str:
        return "?"

    def open(self) -> None:
        raise NotImplementedError

    def send(self, message: bytes, nrecords: int) -> None:
        raise NotImplementedError

    def send_block(self, block) -> None:
        """Send the messages of a MessageBlock (exporters/base.py); one by
        one unless the transport has a faster way."""
        for message, nrecords in block.messages():
            self.send(message, nrecords)

    def push(self) -> None:
        """Send what send() batched (the end of an export batch)."""

    def poll(self) -> None:
        """Make progress without new messages (reconnects, buffered data)."""

    def close(self) -> None:
        raise NotImplementedError

    def not_sent(self, nrecords: int, reason: str) -> None:
        """Count records that will never reach the collector, with why."""
        if nrecords <= 0:
            return
        self.records_not_sent += nrecords
        self.records_not_sent_by[reason] = self.records_not_sent_by.get(reason, 0) + nrecords

    def pending_records(self) -> int:
        return 0

    def stats(self) -> dict:
        return {"messages": self.messages_sent, "bytes": self.bytes_sent,
                "records_exported": self.records_sent,
                "records_not_sent": self.records_not_sent,
                "records_not_sent_by": dict(self.records_not_sent_by),
                "records_pending": self.pending_records(),
                "send_errors": self.send_errors,
                "streams_started": self.streams_started}

    def _stream_start_message(self, head: bytes | None = None):
        if self.on_stream_start is None:
            return None
        return self.on_stream_start(head)
