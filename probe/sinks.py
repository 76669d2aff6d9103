"""Record sinks of `replay` and `run`: JSON lines, and the fan-out to
several sinks.

A sink is called with a ``struct ft_record *`` and a count (one expired
batch). ``JsonLines`` hands the whole batch to C (exporters/jsonl.c), which
formats every record and writes the lines to a file descriptor: one C call
per batch, no Python per record. The line format is the contract written in
exporters/jsonl.h, the same keys and values as
``probe.flowtable.table.record_to_dict`` (IANA IPFIX names).
"""
from __future__ import annotations

import os
from typing import Callable

from flowprobe.exporters._enc import ffi, lib

#: A sink receives a ``struct ft_record *`` (any cffi module's) and a count.
Sink = Callable[[object, int], None]

#: Writes up to this size to a pipe are atomic (POSIX PIPE_BUF on Linux).
PIPE_BUF = 4096
#: Chunk size of a single writer (replay): large writes, few system calls.
LARGE_CHUNK = 1 << 20


def record_address(records) -> int:
    """The address of a record array, whichever cffi module made it."""
    if isinstance(records, int):
        return records
    return int(ffi.cast("uintptr_t", records))


class JsonLines:
    """One JSON object per record and line, written to ``fd``.

    ``shared=True`` (readers of `run` sharing stdout): every write is at
    most PIPE_BUF bytes of whole lines, so lines of different readers never
    interleave; otherwise writes are up to LARGE_CHUNK bytes. A failed write
    raises OSError (BrokenPipeError when the reader of a pipe went away).
    """

    def __init__(self, fd: int = 1, *, shared: bool = False) -> None:
        self.fd = fd
        self.chunk = PIPE_BUF if shared else LARGE_CHUNK
        self._cap = self.chunk + lib.JSONL_LINE_MAX
        self._buf = ffi.new("char[]", self._cap)

    def __call__(self, records, n: int) -> None:
        if n <= 0:
            return
        rc = lib.jsonl_write(self.fd, record_address(records), n, self._buf,
                             self._cap, self.chunk)
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc))


def format_line(record) -> bytes:
    """One record's line (tests, and the odd record outside a batch)."""
    buf = ffi.new("char[]", lib.JSONL_LINE_MAX)
    n = lib.jsonl_format(record_address(record), buf)
    return ffi.buffer(buf, n)[:]


def fan_out(sinks: list[Sink]) -> Sink:
    """One sink that hands each record batch to every sink in turn."""
    if len(sinks) == 1:
        return sinks[0]

    def sink(records, n: int) -> None:
        for s in sinks:
            s(records, n)
    return sink


__all__ = ["JsonLines", "PIPE_BUF", "Sink", "fan_out", "format_line", "record_address"]
