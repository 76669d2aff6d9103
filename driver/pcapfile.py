"""Capture files (pcap, pcapng) as batches of ``struct ft_pkt``.

The C side (driver/pcapfile.c) fills a caller-owned packet array per call;
Python only moves addresses and counts, never single packets::

    with open_capture(path) as cap:
        batch = table.packet_batch(4096)
        while (n := cap.read_into(batch.address, batch.cap)):
            table.ingest(cap.linktype, batch, n)

Packet data pointers stay valid until the next ``read_into`` or ``close``
(both readers; the mmap reader maps the file in windows and unmaps the ones
a batch pointed into once the next read has started; for a large file a
reader thread walks a few batches ahead and ``read_into`` copies the next
one out): ingest a batch before reading the next one. ``stats()`` counts
what was handed out, not what the reader thread walked ahead.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import struct
from pathlib import Path
from typing import Any

from flowprobe.driver._pcapfile import ffi, lib

__all__ = [
    "CaptureFile",
    "CaptureFileError",
    "CaptureShrunkError",
    "TruncatedCaptureError",
    "open_capture",
    "PKT_SIZE",
]

PKT_SIZE: int = lib.PF_PKT_SIZE
_STAT_FIELDS = (
    "packets",
    "cap_bytes",
    "wire_bytes",
    "truncated_records",
    "clipped_records",
    "batches",
)


class CaptureFileError(Exception):
    """A capture file that cannot be opened or read (missing, unreadable,
    unknown format, corrupt)."""

    def __init__(self, path: str, reason: str, errno: int = 0) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.errno = errno


class TruncatedCaptureError(CaptureFileError):
    """A record was cut short or corrupt. Every packet before it has been
    delivered; reading stops here (``stats()["truncated_records"]``)."""


class CaptureShrunkError(TruncatedCaptureError):
    """The file shrank while it was read (truncated by another process).
    Every packet before the new end has been delivered; reading stops here.
    The packets of the batch being read at the cut may hold zeros where
    their bytes were cut off (the mmap reader survives the SIGBUS)."""


def _reason(raw: str, path: str) -> str:
    # errbuf texts start with the path; keep the reason only.
    prefix = f"{path}: "
    return raw[len(prefix):] if raw.startswith(prefix) else raw


class CaptureFile:
    """One open capture file. ``linktype`` is a LINKTYPE_* value (fixed for
    the file), ``is_mmap`` tells which reader serves it."""

    def __init__(self, path: str | os.PathLike[str], force_libpcap: bool = False) -> None:
        self.path = os.fspath(path)
        errbuf = ffi.new("char[]", lib.PF_ERRBUF_SIZE)
        err = ffi.new("int *")
        reader = lib.pf_open(self.path.encode(), int(force_libpcap), errbuf, err)
        if reader == ffi.NULL:
            code = -err[0]
            reason = _reason(ffi.string(errbuf).decode(errors="replace"), self.path)
            raise CaptureFileError(self.path, reason or os.strerror(code), code)
        self._reader: Any = reader
        self.linktype: int = lib.pf_linktype(reader)
        self.snaplen: int = lib.pf_snaplen(reader)
        self.is_mmap: bool = bool(lib.pf_is_mmap(reader))

    def read_into(self, address: int, cap: int) -> int:
        """Fill up to ``cap`` ``struct ft_pkt`` at ``address``; return the
        count, 0 at the end of the file. Raises TruncatedCaptureError on a
        corrupt/cut record (after the packets before it were returned),
        CaptureShrunkError (one) when the file shrank while being read."""
        if self._reader is None:
            raise CaptureFileError(self.path, "read from a closed capture file", _errno.EBADF)
        n = lib.pf_next_batch(self._reader, ffi.cast("void *", address), cap)
        if n >= 0:
            return n
        reason = ffi.string(lib.pf_errmsg(self._reader)).decode(errors="replace")
        if n == -_errno.EBADMSG:
            raise TruncatedCaptureError(self.path, reason, -n)
        if n == -_errno.ESTALE:
            raise CaptureShrunkError(self.path, reason, -n)
        if n == -_errno.EOPNOTSUPP:
            reason = f"{reason} (libpcap reads one link type per pcapng file)"
        raise CaptureFileError(self.path, reason or os.strerror(-n), -n)

    def stats(self) -> dict[str, int]:
        """64-bit counters: packets, cap_bytes, wire_bytes,
        truncated_records, clipped_records, batches."""
        if self._reader is None:
            return dict(self._final_stats)
        st = ffi.new("struct pf_stats *")
        lib.pf_stats(self._reader, st)
        return {name: getattr(st, name) for name in _STAT_FIELDS}

    def close(self) -> None:
        """Release the reader; packet pointers it handed out die with it."""
        if self._reader is not None:
            self._final_stats = self.stats()
            lib.pf_close(self._reader)
            self._reader = None

    def __enter__(self) -> CaptureFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_reader", None) is not None:
            self.close()

    def __repr__(self) -> str:
        kind = "mmap" if self.is_mmap else "libpcap"
        return f"CaptureFile({self.path!r}, linktype={self.linktype}, reader={kind})"


def open_capture(path: str | os.PathLike[str], force_libpcap: bool = False) -> CaptureFile:
    """Open ``path``: the zero-copy mmap reader for classic pcap files,
    libpcap for pcapng and everything else (or when forced)."""
    return CaptureFile(Path(path), force_libpcap=force_libpcap)


# --- test/debug helpers: never on the production path ---------------------

_PKT = struct.Struct("=QIIQIHBB")  # data, caplen, wirelen, ts_ns, ifindex, vlan_tci, vlan_valid, pad
assert _PKT.size == PKT_SIZE


def alloc_pkt_array(cap: int) -> tuple[Any, int]:
    """A zeroed ``struct ft_pkt[cap]`` (as raw bytes) for use without a flow
    table; returns (keep-alive object, address)."""
    buf = ffi.new("uint64_t[]", cap * PKT_SIZE // 8)
    return buf, int(ffi.cast("uintptr_t", buf))


def debug_batch(address: int, n: int, with_data: bool = True) -> list[tuple]:
    """Copy ``n`` packet descriptors at ``address`` into tuples
    (caplen, wirelen, ts_ns, ifindex, vlan_tci, vlan_valid, data|None).
    Slow by design; tests only."""
    raw = ctypes.string_at(address, n * PKT_SIZE)
    out = []
    for i in range(n):
        ptr, caplen, wirelen, ts_ns, ifindex, tci, vvalid, _ = _PKT.unpack_from(raw, i * PKT_SIZE)
        data = ctypes.string_at(ptr, caplen) if with_data and caplen else (b"" if with_data else None)
        out.append((caplen, wirelen, ts_ns, ifindex, tci, vvalid, data))
    return out
