"""The export pipeline: the capture loop hands records over and never waits.

    pipes = ExportPipeline(exporters)            # an ExporterSet
    table = FlowTable(flow_cfg, pipes.sink)      # copies records into queues
    ...; pipes.tick(now_ns)                      # housekeeping, no waiting
    pipes.begin_drain(drain_timeout_s)           # shutdown: the ring is done
    table.flush(); pipes.close(drain_timeout_s)  # bounded drain, then close

Each exporter gets a sender thread and a queue bounded in bytes
(`queue_bytes`, default DEFAULT_QUEUE_BYTES). ``sink`` copies the record
array once (one bytes object shared by every queue) and appends it to each
queue that has room; a queue without room drops the batch and counts its
records as not sent with reason `queue_full`. Encoding, pacing, TCP
reconnects and file writes all happen in the sender thread. The C encoder
and sendmmsg() run without the GIL (cffi releases it around every call), so
the reader's ingest runs in parallel with them.

Accounting: records handed to an exporter (``records_handed``) = exported +
not sent (every reason) + not exportable + pending. At close, nothing is
pending: the queue is drained within the timeout, and what is still queued
then is counted as not sent (`queue_timeout`); so is the rest of a batch
the sender is pacing out when the deadline passes (the UDP transport gives
up at ``give_up_at``).

Reload: ``retire(timeout_s)`` is close() without the wait. The old
pipeline's sender threads drain and close on their own (bounded by the
same deadline) while the reader goes on reading its ring and hands every
new record to the new pipeline; ``finished()`` says when they are done.

Threads, not a process: records are 112-byte structs already in this
process; a thread takes them with one memcpy per batch and needs no shared
memory protocol, and the work that could stall (sleep, connect, write)
releases the GIL.
"""
from __future__ import annotations

import collections
import threading
import time

import structlog

from flowprobe.exporters._encode import ffi
from flowprobe.exporters.exporter import _address

DEFAULT_QUEUE_BYTES = 16 << 20
DEFAULT_DRAIN_TIMEOUT_S = 10.0
RECORD_SIZE = ffi.sizeof("struct ft_record")
IDLE_WAIT_S = 0.1


class ExportQueue:
    """One exporter's queue and sender thread."""

    def __init__(self, exporter, queue_bytes: int = 0):
        self.exporter = exporter
        self.max_bytes = queue_bytes or DEFAULT_QUEUE_BYTES
        self.items: collections.deque = collections.deque()
        self.bytes = 0                   # queued, and being encoded
        self.cond = threading.Condition()
        self.tick_ns: int | None = None
        self.closing = False             # no more records will come
        self.draining = False            # shutdown: put() waits for room
        self.deadline = 0.0
        # written by the capture thread only
        self.records_handed = 0
        self.records_queue_full = 0
        # written by the sender thread only
        self.records_queue_timeout = 0
        self.batches = 0
        exporter.extra_not_sent = lambda: self.records_queue_full + self.records_queue_timeout
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"export:{exporter.name}")
        self.thread.start()

    # -- capture side ---------------------------------------------------
    def put(self, chunk: bytes, n: int) -> None:
        self.records_handed += n
        with self.cond:
            while self.draining and self.bytes + len(chunk) > self.max_bytes \
                    and self.bytes and time.monotonic() < self.deadline:
                self.cond.wait(min(IDLE_WAIT_S, max(0.0, self.deadline - time.monotonic())))
            if self.bytes + len(chunk) > self.max_bytes and self.bytes:
                self.records_queue_full += n
                return
            self.items.append((chunk, n))
            self.bytes += len(chunk)
            self.cond.notify()

    def tick(self, now_ns: int) -> None:
        with self.cond:
            self.tick_ns = now_ns
            self.cond.notify()

    def drain_from(self, deadline: float) -> None:
        """Shutdown: from now on put() waits for room until ``deadline``."""
        with self.cond:
            self.draining = True
            self.deadline = deadline

    def close(self, deadline: float) -> None:
        with self.cond:
            self.draining = self.closing = True
            self.deadline = deadline
            self.cond.notify()
        # a paced batch being sent when the deadline passes stops there
        transport = getattr(self.exporter, "transport", None)
        if transport is not None:
            transport.give_up_at = deadline

    def pending_records(self) -> int:
        """Records queued or being encoded (an upper bound of what this
        queue may still export)."""
        with self.cond:
            return self.bytes // RECORD_SIZE

    # -- sender side ----------------------------------------------------
    def _run(self) -> None:
        log = structlog.get_logger("flowprobe.export").bind(exporter=self.exporter.name)
        while True:
            with self.cond:
                while not self.items and self.tick_ns is None and not self.closing:
                    self.cond.wait(IDLE_WAIT_S)
                item = self.items.popleft() if self.items else None
                tick, self.tick_ns = self.tick_ns, None
                closing = self.closing
            try:
                if item is not None:
                    chunk, n = item
                    if closing and time.monotonic() > self.deadline:
                        self.records_queue_timeout += n
                    else:
                        self.exporter.sink(_address(ffi.from_buffer(chunk)), n)
                        self.batches += 1
                    with self.cond:
                        self.bytes -= len(chunk)
                        self.cond.notify_all()
                if tick is not None:
                    self.exporter.tick(tick)
                if closing and item is None:
                    self.exporter.close()
                    return
            except Exception as e:  # noqa: BLE001 - the sender must outlive a bug
                log.warning("export_sender_failed", error=str(e))
                if closing and item is None:
                    return

    def stats(self) -> dict:
        st = self.exporter.stats()
        by = dict(st.get("records_not_sent_by", {}))
        for reason, n in (("queue_full", self.records_queue_full),
                          ("queue_timeout", self.records_queue_timeout)):
            if n:
                by[reason] = by.get(reason, 0) + n
        st["records_not_sent_by"] = by
        st["records_not_sent"] += self.records_queue_full + self.records_queue_timeout
        st["records_handed"] = self.records_handed
        with self.cond:
            st["records_pending"] += sum(n for _, n in self.items)
        st["queue_bytes"] = self.bytes
        st["queue_max_bytes"] = self.max_bytes
        return st


class ExportPipeline:
    """An ExporterSet behind per-exporter queues and sender threads."""

    def __init__(self, exporters):
        self.exporters = exporters
        self.queues = [ExportQueue(e, getattr(e, "queue_bytes", 0)) for e in exporters]

    def __iter__(self):
        return iter(self.exporters)

    def __len__(self):
        return len(self.exporters)

    def attach(self, table) -> None:
        self.exporters.attach(table)

    def sink(self, records, n: int) -> None:
        """Copy the records once and queue them for every exporter."""
        if n <= 0:
            return
        chunk = ffi.buffer(ffi.cast("char *", _address(records)), n * RECORD_SIZE)[:]
        for q in self.queues:
            q.put(chunk, n)

    def tick(self, now_ns: int = 0) -> None:
        for q in self.queues:
            q.tick(now_ns)

    def begin_drain(self, timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S) -> None:
        """Shutdown starts: the capture is over, so from now on sink()
        waits (until the drain deadline) for room instead of dropping."""
        self._deadline = time.monotonic() + timeout_s
        for q in self.queues:
            q.drain_from(self._deadline)

    def close(self, timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S) -> None:
        """Drain every queue (in parallel, bounded), then close the exporters."""
        self.retire(timeout_s)
        self.join()

    def retire(self, timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S) -> None:
        """Start the bounded drain and close, and return at once: the sender
        threads finish on their own by the deadline (reload)."""
        self._deadline = getattr(self, "_deadline", None) or time.monotonic() + timeout_s
        for q in self.queues:
            q.close(self._deadline)

    def join(self, grace_s: float = 10.0) -> None:
        """Wait for the sender threads (until the deadline, plus ``grace_s``
        for a close that is already under way)."""
        deadline = getattr(self, "_deadline", None) or time.monotonic()
        for q in self.queues:
            q.thread.join(max(0.0, deadline - time.monotonic()) + grace_s)

    def finished(self) -> bool:
        """Every sender thread has closed its exporter and ended."""
        return not any(q.thread.is_alive() for q in self.queues)

    def pending_records(self) -> dict[str, int]:
        """Per exporter: records queued or being encoded."""
        return {q.exporter.name: q.pending_records() for q in self.queues}

    def stats(self) -> dict:
        return {q.exporter.name: q.stats() for q in self.queues}
