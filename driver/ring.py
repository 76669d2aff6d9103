"""TPACKET_V3 receive ring: the idiomatic class over flowprobe.driver._ring.

One ``Ring`` is one AF_PACKET socket with an mmap'd RX ring (never a TX
ring) bound to one interface, optionally a member of a PACKET_FANOUT_HASH
group. The reader loop is one C call per block::

    with Ring("eth1", filter_expr="udp", fanout_group=7) as ring:
        batch = table.packet_batch(ring.block_capacity)
        while running:
            n = ring.next_block(batch.address, batch.cap, timeout_ms=100)
            table.ingest(LINKTYPE_ETHERNET, batch, n)
            ring.release_block()      # strictly in order, after ingest

Fragments and fanout: FLAG_DEFRAG is off by default. Packet counts then
stay wire counts (with DEFRAG the group sees reassembled datagrams: fewer,
larger packets, and fragments of datagrams that never complete are lost to
the capture). Without it a first fragment is hashed on its 5-tuple and the
later fragments on (addresses, protocol), so they may land in another ring;
the flow table keys non-first fragments with ports 0 anyway, so every flow
key still lives in exactly one ring.

Timestamps: software (kernel receive time) by default. ``hw_timestamps``
first asks the NIC to stamp every received packet (SIOCSHWTSTAMP, see
:func:`enable_hw_timestamps`) and then sets PACKET_TIMESTAMP raw hardware;
a NIC that refuses (veth) gets one ``hw_timestamps_unavailable`` warning and
the ring keeps software timestamps. ``stats()["hw_timestamped"]`` counts the
packets that carried a hardware stamp.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

import structlog

from flowprobe.driver._ring import ffi, lib

log = structlog.get_logger("flowprobe.ring")

#: Defaults absorb ~100 ms at 1 Mpps of small frames: 32 x 1 MiB blocks
#: hold ~150k packets at snaplen 128. The config schema owns the values
#: used in production; these only serve direct use of the class.
DEFAULT_BLOCK_SIZE = 1 << 20
DEFAULT_BLOCK_COUNT = 32
DEFAULT_FRAME_SIZE = 2048
DEFAULT_BLOCK_TIMEOUT_MS = 10
DEFAULT_SNAPLEN = 128
MAX_FILTER_INSNS = 4096  # BPF_MAXINSNS

PACKET_FANOUT_FLAG_IGNORE_OUTGOING = 0x4000
PACKET_FANOUT_FLAG_DEFRAG = 0x8000
SAMPLING_MODES = {"deterministic": lib.RING_SAMPLE_DETERMINISTIC,
                  "random": lib.RING_SAMPLE_RANDOM}
STAT_FIELDS = ("kernel_packets", "kernel_drops", "freeze_q_cnt", "walked",
               "delivered", "sampled_out", "blocks", "truncated",
               "hw_timestamped")


SIOCSHWTSTAMP = 0x89B0
HWTSTAMP_TX_OFF = 0
HWTSTAMP_FILTER_ALL = 1


def enable_hw_timestamps(iface: str) -> str | None:
    """Turn on the NIC's receive timestamping for every packet
    (SIOCSHWTSTAMP, struct hwtstamp_config {flags 0, tx_type OFF,
    rx_filter ALL}). Returns None when the NIC accepted, else the reason it
    refused (veth: EOPNOTSUPP). The setting is device-wide and stays after
    the process exits, as with ptp4l or `hwstamp_ctl`."""
    config = (ctypes.c_int * 3)(0, HWTSTAMP_TX_OFF, HWTSTAMP_FILTER_ALL)
    # struct ifreq: 16-byte name, then the union whose ifr_data is a pointer
    ifreq = bytearray(struct.pack("16sP", iface.encode()[:15],
                                  ctypes.addressof(config)).ljust(40, b"\0"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            fcntl.ioctl(sock.fileno(), SIOCSHWTSTAMP, ifreq)
        except OSError as exc:
            return f"SIOCSHWTSTAMP: {errno.errorcode.get(exc.errno, exc.errno)}: " \
                   f"{os.strerror(exc.errno)}"
    if config[2] == 0:   # the driver may downgrade rx_filter (NONE: refused)
        return "SIOCSHWTSTAMP: rx_filter downgraded to HWTSTAMP_FILTER_NONE"
    return None


class RingError(OSError):
    """A ring call failed; carries the interface and the errno."""

    def __init__(self, iface: str, err: int, what: str, detail: str = ""):
        msg = f"{what} on {iface}: {os.strerror(err)}"
        if detail:
            msg += f" ({detail})"
        super().__init__(err, msg)
        self.iface = iface
        self.detail = detail


@dataclass(frozen=True)
class Filter:
    """A compiled classic BPF program (cdata array of struct ring_insn)."""

    expr: str
    insns: object
    length: int


def compile_filter(iface: str | None, expr: str, snaplen: int) -> Filter:
    """Compile ``expr`` on a live libpcap handle of ``iface``.

    Accept returns are set to ``snaplen`` (TPACKET_V3 has no snap length of
    its own). Must run in the interface's network namespace. ``iface`` None
    compiles for the Ethernet link type without an interface (a check of
    the expression, as ``flowprobe config check`` does).
    """
    insns = ffi.new("struct ring_insn[]", MAX_FILTER_INSNS)
    err = ffi.new("char[]", 512)
    n = lib.ring_filter_compile(iface.encode() if iface else ffi.NULL, expr.encode(),
                                snaplen, insns, MAX_FILTER_INSNS, err, 512)
    if n < 0:
        raise RingError(iface or "Ethernet", -n, f"compile filter {expr!r}",
                        ffi.string(err).decode(errors="replace"))
    return Filter(expr, insns, n)


class Ring:
    """An RX-only TPACKET_V3 ring on one interface (see module docstring)."""

    def __init__(self, iface: str, *, filter_expr: str = "",
                 snaplen: int = DEFAULT_SNAPLEN,
                 block_size: int = DEFAULT_BLOCK_SIZE,
                 block_count: int = DEFAULT_BLOCK_COUNT,
                 frame_size: int = DEFAULT_FRAME_SIZE,
                 block_timeout_ms: int = DEFAULT_BLOCK_TIMEOUT_MS,
                 fanout_group: int = 0, fanout_defrag: bool = False,
                 sampling_rate: int = 1, sampling_mode: str = "deterministic",
                 random_seed: int = 0, busy_poll: bool = False,
                 hw_timestamps: bool = False):
        if sampling_mode not in SAMPLING_MODES:
            raise ValueError(f"sampling_mode: unknown {sampling_mode!r} "
                             f"(expected: {', '.join(sorted(SAMPLING_MODES))})")
        if not 0 <= fanout_group <= 0xFFFF:
            raise ValueError("fanout_group must be 0..65535")
        self.iface = iface
        self.ifindex = socket.if_nametoindex(iface)
        self.snaplen = snaplen
        self.sampling_rate = sampling_rate
        self.sampling_mode = sampling_mode
        self.fanout_group = fanout_group
        self._ring = None
        if hw_timestamps:
            reason = enable_hw_timestamps(iface)
            if reason:
                log.warning("hw_timestamps_unavailable", iface=iface, reason=reason,
                            using="software timestamps")
                hw_timestamps = False
        self.hw_timestamps = hw_timestamps
        self.filter = compile_filter(iface, filter_expr, snaplen)
        cfg = ffi.new("struct ring_config *")
        cfg.ifindex = self.ifindex
        cfg.block_size = block_size
        cfg.block_count = block_count
        cfg.frame_size = frame_size
        cfg.block_timeout_ms = block_timeout_ms
        cfg.snaplen = snaplen
        cfg.fanout_group = fanout_group
        cfg.fanout_defrag = int(fanout_defrag)
        cfg.busy_poll = int(busy_poll)
        cfg.hw_timestamps = int(hw_timestamps)
        cfg.sampling_mode = SAMPLING_MODES[sampling_mode]
        cfg.sampling_rate = sampling_rate
        cfg.random_seed = random_seed
        flags = ffi.new("uint32_t *")
        err = ffi.new("int *")
        ptr = lib.ring_open(cfg, self.filter.insns, self.filter.length,
                            flags, err)
        if ptr == ffi.NULL:
            raise RingError(iface, -err[0], "open TPACKET_V3 ring")
        self._ring = ffi.gc(ptr, lib.ring_close)
        #: PACKET_FANOUT flags the kernel accepted (IGNORE_OUTGOING, DEFRAG)
        self.fanout_flags = flags[0]
        self.block_capacity = lib.ring_block_capacity(self._ring)
        self._stats = ffi.new("struct ring_stats *")
        log.info("ring_opened", iface=iface, ifindex=self.ifindex,
                 filter=filter_expr, snaplen=snaplen, block_size=block_size,
                 block_count=block_count, block_timeout_ms=block_timeout_ms,
                 fanout_group=fanout_group, fanout_flags=hex(self.fanout_flags),
                 sampling_rate=sampling_rate, sampling_mode=sampling_mode,
                 hw_timestamps=hw_timestamps)
        if fanout_group and not self.ignores_outgoing:
            log.warning("fanout_sees_outgoing", iface=iface,
                        reason="kernel lacks PACKET_FANOUT_FLAG_IGNORE_OUTGOING")

    @classmethod
    def from_config(cls, capture: Any, iface: str | None = None,
                    **overrides: Any) -> "Ring":
        """A ring from config.schema.CaptureConfig (the source of defaults);
        ``overrides`` (e.g. fanout_group) win over the config."""
        iface = iface or capture.interface
        if not iface:
            raise ValueError("capture.interface: no interface given")
        kw = {"filter_expr": capture.filter, "snaplen": capture.snaplen,
              "block_size": capture.block_size, "block_count": capture.block_count,
              "frame_size": capture.frame_size,
              "block_timeout_ms": capture.block_timeout_ms,
              "busy_poll": capture.busy_poll,
              "sampling_rate": capture.sampling_rate,
              "sampling_mode": capture.sampling_mode,
              "hw_timestamps": capture.hw_timestamps,
              "fanout_defrag": capture.fanout_defrag}
        kw.update(overrides)
        return cls(iface, **kw)

    @property
    def ignores_outgoing(self) -> bool:
        """True when the fanout group drops outgoing packets (Linux 6.2+)."""
        return bool(self.fanout_flags & PACKET_FANOUT_FLAG_IGNORE_OUTGOING)

    def fileno(self) -> int:
        return lib.ring_fd(self._ring)

    def next_block(self, pkts_address: int, cap: int,
                   timeout_ms: int = 100) -> int:
        """Fill the ``struct ft_pkt`` array at ``pkts_address`` from the next
        block (waiting up to ``timeout_ms``); returns the packet count.
        Packet data stays valid until :meth:`release_block`."""
        n = lib.ring_next_block(self._ring, timeout_ms,
                                ffi.cast("void *", pkts_address), cap)
        if n < 0:
            raise RingError(self.iface, -n, "read ring block")
        return n

    def release_block(self) -> bool:
        """Hand the block back. False when part of it is still unread (the
        array was smaller than the block): call next_block again first."""
        rc = lib.ring_release_block(self._ring)
        if rc == -errno.EAGAIN:
            return False
        if rc < 0:
            raise RingError(self.iface, -rc, "release ring block")
        return True

    def set_filter(self, expr: str) -> None:
        """Replace the kernel filter atomically."""
        prog = compile_filter(self.iface, expr, self.snaplen)
        rc = lib.ring_set_filter(self._ring, prog.insns, prog.length)
        if rc < 0:
            raise RingError(self.iface, -rc, f"attach filter {expr!r}")
        self.filter = prog

    def stats(self) -> dict:
        """64-bit running totals (reads and resets the kernel's counters)."""
        rc = lib.ring_stats(self._ring, self._stats)
        if rc < 0:
            raise RingError(self.iface, -rc, "read PACKET_STATISTICS")
        return {f: getattr(self._stats, f) for f in STAT_FIELDS}

    def close(self) -> None:
        ring, self._ring = self._ring, None
        if ring is not None:
            ffi.gc(ring, None)   # detach the finalizer, then close now
            lib.ring_close(ring)

    def __enter__(self) -> "Ring":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
