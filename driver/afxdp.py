"""AF_XDP receive path: the idiomatic classes over flowprobe.driver._afxdp.

``XdpProgram`` is flowprobe's own XDP program on one interface: six
hand-assembled instructions that redirect every frame to the XSK bound to
its RX queue (``bpf_redirect_map(xskmap, rx_queue_index, XDP_DROP)``). It
is loaded with bpf() and attached through a bpf_link, so the kernel detaches
it when its last fd closes -- on exit, on kill -9, on a crash. A queue with
no socket drops: the capture NIC's own stack never sees a frame. At attach
time a "flowprobe_xsk" program left by a netlink attach is removed; any other
program on the interface is an error naming it.

``XskRing`` is one RX-only XSK socket on one queue with the interface of
``driver.afpacket.Ring``::

    with XskRing("eth1", queue=0) as ring:           # owns its XdpProgram
        batch = table.packet_batch(ring.block_capacity)
        while running:
            n = ring.next_block(batch.address, batch.cap, timeout_ms=100)
            table.ingest(LINKTYPE_ETHERNET, batch, n)
            ring.release_block()                    # frames -> fill ring

Several queues: attach one ``XdpProgram`` (in the supervisor) and give it to
every ring (``program=``), or in another process ``XdpProgram.find(iface)``.

Frames carry their VLAN tags in-band (vlan_valid = 0). Timestamps: one
CLOCK_REALTIME reading per batch when it is read (AF_XDP has no kernel
timestamp). Frames larger than a UMEM chunk are dropped by the kernel and
counted in ``rx_dropped``; ``check_mtu`` refuses at start an MTU whose
full-size frames cannot fit.

Waiting: ``sleep`` (default) paces the reader: after a batch that did not
fill its array it sleeps ``sleep_us`` before looking again, so a batch holds
~sleep_us of traffic (one Python round trip per batch, not per few frames).
``poll()`` makes the kernel wake the reader per packet (on veth, on the
sender's CPU). On veth at 250-500 kpps (trafgen, 2M frames, reader
pinned to its own CPU): sleep 1000 us ~0.19 CPU s/Mpkt, 100 %
captured; poll 0.7-1.4 CPU s/Mpkt; TPACKET_V3 0.11-0.14 for comparison.
"""
from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import Any

import structlog

from flowprobe.driver._afxdp import ffi, lib
from flowprobe.driver.afpacket import RingError

log = structlog.get_logger("flowprobe.xsk")

XDP_MODES = {"auto": lib.AFXDP_MODE_AUTO, "native": lib.AFXDP_MODE_NATIVE,
             "skb": lib.AFXDP_MODE_SKB}
MODE_NAMES = {lib.AFXDP_MODE_NATIVE: "native", lib.AFXDP_MODE_SKB: "skb"}
WAIT_MODES = {"sleep": lib.AFXDP_WAIT_SLEEP, "poll": lib.AFXDP_WAIT_POLL}
PROG_NAME = "flowprobe_xsk"

DEFAULT_UMEM_FRAMES = 32768
DEFAULT_FRAME_SIZE = 2048
DEFAULT_SLEEP_US = 1000
DEFAULT_BUSY_RETRY_MS = 5000
MAX_BATCH = 2048
XDP_PACKET_HEADROOM = 256     # the kernel keeps it in front of each frame
L2_OVERHEAD = 14 + 2 * 4      # Ethernet header and two VLAN tags

STAT_FIELDS = ("rx_dropped", "rx_invalid_descs", "rx_ring_full",
               "rx_fill_ring_empty_descs", "delivered", "batches", "wakeups",
               "busy_retries", "away_max_us")


class XskError(RingError):
    """An AF_XDP call failed; carries the interface and the errno. A
    RingError, so the reader loop treats both backends alike (EINTR)."""


def rx_queues(iface: str) -> list[int]:
    """The RX queue numbers of ``iface`` (from /sys/class/net/IF/queues)."""
    qdir = Path("/sys/class/net") / iface / "queues"
    qs = sorted(int(p.name[3:]) for p in qdir.glob("rx-*"))
    if not qs:
        raise XskError(iface, 19, "list RX queues")   # ENODEV
    return qs


def capture_queues(capture: Any, iface: str) -> list[int]:
    """The queues afxdp readers capture on: ``capture.queues`` = N gives
    0 .. N-1, 0 gives every RX queue of the NIC. Reader i takes entry i."""
    nic = rx_queues(iface)
    if capture.queues and capture.queues < len(nic):
        log.warning("xdp_queues_not_captured", iface=iface,
                    captured=capture.queues, nic_queues=len(nic),
                    effect="frames on the other queues are dropped by the XDP "
                           "program and counted nowhere: steer RSS to the "
                           "captured queues (ethtool -X) or capture them all")
    return list(range(capture.queues)) if capture.queues else nic


def max_frame(frame_size: int) -> int:
    """Largest frame (L2 header included) a chunk of frame_size holds."""
    return frame_size - XDP_PACKET_HEADROOM


def check_mtu(iface: str, frame_size: int) -> int:
    """The interface MTU, or ValueError when MTU-sized frames (two VLAN tags
    included) cannot fit a UMEM chunk of ``frame_size`` bytes."""
    mtu = int((Path("/sys/class/net") / iface / "mtu").read_text())
    if mtu + L2_OVERHEAD > max_frame(frame_size):
        raise ValueError(
            f"{iface}: MTU {mtu} does not fit an AF_XDP frame of {frame_size} "
            f"bytes (room for {max_frame(frame_size)} bytes after the kernel's "
            f"{XDP_PACKET_HEADROOM}-byte headroom, MTU+{L2_OVERHEAD} needed); "
            f"raise capture.frame_size (2048 or 4096) or lower the MTU to "
            f"{max_frame(4096) - L2_OVERHEAD} or less")
    return mtu


def attached_program(iface: str) -> dict:
    """What XDP program ``iface`` runs: {prog_id, mode, name} (id 0: none)."""
    pid, mode = ffi.new("uint32_t *"), ffi.new("uint32_t *")
    name = ffi.new("char[]", 16)
    rc = lib.afxdp_prog_query(socket.if_nametoindex(iface), pid, mode, name, 16)
    if rc < 0:
        raise XskError(iface, -rc, "query XDP program")
    return {"prog_id": pid[0], "mode": MODE_NAMES.get(mode[0], "none"),
            "name": ffi.string(name).decode(errors="replace")}


def xdp_status(iface: str) -> str:
    """One line for ``nic check``: the XDP program attached and its mode."""
    info = attached_program(iface)
    if not info["prog_id"]:
        return "none"
    whose = "flowprobe" if info["name"] == PROG_NAME else "not flowprobe's"
    return f"id {info['prog_id']} name {info['name']} mode {info['mode']} ({whose})"


class XdpProgram:
    """flowprobe's redirect program on one interface (see module docstring).

    ``attach`` makes an owner: closing it detaches the program. ``find``
    makes a handle on a program another process attached.
    """

    def __init__(self, iface: str, prog: Any, owner: bool):
        self.iface = iface
        self._prog = prog
        self.owner = owner
        self.prog_id = prog.prog_id
        self.mode = MODE_NAMES[prog.mode]
        self.stale_removed = prog.stale_removed

    @classmethod
    def attach(cls, iface: str, *, queues: int | None = None,
               mode: str = "auto") -> "XdpProgram":
        if mode not in XDP_MODES:
            raise ValueError(f"xdp_mode: unknown {mode!r} "
                             f"(expected: {', '.join(XDP_MODES)})")
        nq = queues or (max(rx_queues(iface)) + 1)
        prog = ffi.new("struct afxdp_prog *")
        other = ffi.new("uint32_t *")
        rc = lib.afxdp_prog_attach(prog, socket.if_nametoindex(iface), nq,
                                   XDP_MODES[mode], other)
        if rc == -17:   # EEXIST
            info = attached_program(iface)
            off = {"skb": "xdpgeneric", "native": "xdpdrv"}.get(info["mode"], "xdp")
            raise XskError(iface, 17, "attach XDP program",
                           f"program {info['name']!r} id {other[0]} is attached "
                           f"and was not put there by flowprobe; remove it "
                           f"(ip link set dev {iface} {off} off) or capture elsewhere")
        if rc == -16:   # EBUSY: a live bpf_link holds the interface
            raise XskError(iface, 16, "attach XDP program",
                           "another flowprobe is capturing on this interface")
        if rc < 0:
            hint = ("native XDP refused the MTU" if rc == -34 else "")  # ERANGE
            raise XskError(iface, -rc, f"attach XDP program ({mode} mode)", hint)
        self = cls(iface, prog, owner=True)
        log.info("xdp_program_attached", iface=iface, prog_id=self.prog_id,
                 xdp_mode=self.mode, requested=mode, queues=nq,
                 stale_removed=self.stale_removed)
        return self

    @classmethod
    def find(cls, iface: str) -> "XdpProgram | None":
        """A handle on the flowprobe program a running process (e.g. the
        supervisor) attached to ``iface`` through its bpf_link, or None."""
        prog = ffi.new("struct afxdp_prog *")
        rc = lib.afxdp_prog_open(prog, socket.if_nametoindex(iface))
        if rc == -2:    # ENOENT
            return None
        if rc < 0:
            raise XskError(iface, -rc, "open attached XDP program")
        return cls(iface, prog, owner=False)

    @property
    def map_fd(self) -> int:
        return self._prog.map_fd

    def close(self) -> None:
        """Close the fds; for the owner this detaches the program."""
        if self._prog is not None:
            lib.afxdp_prog_close(self._prog)
            if self.owner:
                log.info("xdp_program_detached", iface=self.iface,
                         prog_id=self.prog_id)
            self._prog = None

    def __del__(self) -> None:
        if getattr(self, "_prog", None) is not None:   # no logging at teardown
            lib.afxdp_prog_close(self._prog)
            self._prog = None

    def __enter__(self) -> "XdpProgram":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class XskRing:
    """An RX-only XSK socket on one queue (see module docstring)."""

    def __init__(self, iface: str, queue: int = 0, *,
                 program: XdpProgram | None = None, xdp_mode: str = "auto",
                 umem_frames: int = DEFAULT_UMEM_FRAMES,
                 frame_size: int = DEFAULT_FRAME_SIZE, wait: str = "sleep",
                 sleep_us: int = DEFAULT_SLEEP_US, zerocopy: bool = True,
                 busy_retry_ms: int = DEFAULT_BUSY_RETRY_MS):
        if wait not in WAIT_MODES:
            raise ValueError(f"wait: unknown {wait!r} "
                             f"(expected: {', '.join(WAIT_MODES)})")
        if len(iface.encode()) >= 16:
            raise ValueError(f"{iface}: interface name too long")
        self.iface = iface
        self.queue = queue
        self.ifindex = socket.if_nametoindex(iface)
        self._rx = None
        self.mtu = check_mtu(iface, frame_size)
        self._own_program = program is None
        self.program = program or XdpProgram.attach(iface, mode=xdp_mode)
        try:
            cfg = ffi.new("struct afxdp_rx_config *")
            cfg.ifname = iface.encode()
            cfg.queue = queue
            cfg.umem_frames = umem_frames
            cfg.frame_size = frame_size
            cfg.xdp_mode = XDP_MODES[self.program.mode]
            cfg.wait_mode = WAIT_MODES[wait]
            cfg.sleep_us = sleep_us
            cfg.busy_retry_ms = busy_retry_ms
            cfg.try_zerocopy = int(zerocopy)
            zc = ffi.new("uint8_t *")
            err = ffi.new("int *")
            ptr = lib.afxdp_rx_open(cfg, self.program.map_fd, zc, err)
            if ptr == ffi.NULL:
                hint = (f"queue still held by another AF_XDP socket after "
                        f"{busy_retry_ms} ms of retries" if err[0] == -16 else "")
                raise XskError(iface, -err[0], f"open AF_XDP socket on queue {queue}",
                               hint)
        except BaseException:
            if self._own_program:
                self.program.close()
            raise
        self._rx = ffi.gc(ptr, lib.afxdp_rx_close)
        self.zerocopy = bool(zc[0])
        self.xdp_mode = self.program.mode
        self.wait = wait
        self.block_capacity = min(MAX_BATCH, umem_frames // 2)
        self._stats = ffi.new("struct afxdp_rx_stats *")
        log.info("xsk_opened", iface=iface, queue=queue, xdp_mode=self.xdp_mode,
                 zerocopy=self.zerocopy, umem_frames=umem_frames,
                 frame_size=frame_size, mtu=self.mtu, wait=wait,
                 sleep_us=sleep_us, prog_id=self.program.prog_id)

    @classmethod
    def from_config(cls, capture: Any, iface: str | None = None,
                    queue: int = 0, **overrides: Any) -> "XskRing":
        """A ring from config.schema.CaptureConfig; ``overrides`` win. Uses
        the program a running supervisor attached to ``iface`` when there is
        one, else attaches (and on close detaches) its own."""
        iface = iface or capture.interface
        if not iface:
            raise ValueError("capture.interface: no interface given")
        kw = {"xdp_mode": capture.xdp_mode, "umem_frames": capture.umem_frames,
              "frame_size": capture.frame_size, "wait": capture.xdp_wait,
              "sleep_us": capture.xdp_sleep_us,
              "program": XdpProgram.find(iface)}
        kw.update(overrides)
        return cls(iface, queue, **kw)

    def fileno(self) -> int:
        return lib.afxdp_rx_fd(self._rx)

    def next_block(self, pkts_address: int, cap: int,
                   timeout_ms: int = 100) -> int:
        """Fill the ``struct ft_pkt`` array at ``pkts_address`` from up to
        ``cap`` RX descriptors (waiting up to ``timeout_ms``); returns the
        count. Frame data stays valid until :meth:`release_block`."""
        n = lib.afxdp_rx_next_batch(self._rx, timeout_ms,
                                    ffi.cast("void *", pkts_address), cap,
                                    self.ifindex)
        if n < 0:
            raise XskError(self.iface, -n, "read AF_XDP RX ring")
        return n

    def release_block(self) -> bool:
        """Return the batch's frames to the fill ring. Always True: a batch
        is never larger than the array it was read into."""
        rc = lib.afxdp_rx_release_batch(self._rx)
        if rc < 0:
            raise XskError(self.iface, -rc, "refill AF_XDP fill ring")
        return True

    def set_filter(self, expr: str) -> None:
        """AF_XDP captures every frame of its queue: only the empty filter
        is accepted (config.schema refuses a filter with backend afxdp)."""
        if expr:
            raise XskError(self.iface, errno.EOPNOTSUPP, f"attach filter {expr!r}",
                           "AF_XDP captures every frame")

    def stats(self) -> dict:
        """64-bit totals: XDP_STATISTICS and the reader's own counters.
        ``kernel_drops`` = rx_dropped (too big, fill ring empty) +
        rx_ring_full and ``kernel_packets`` = delivered + kernel_drops, so
        they read like the TPACKET_V3 ring's."""
        rc = lib.afxdp_rx_stats(self._rx, self._stats)
        if rc < 0:
            raise XskError(self.iface, -rc, "read XDP_STATISTICS")
        out = {f: getattr(self._stats, f) for f in STAT_FIELDS}
        out["kernel_drops"] = out["rx_dropped"] + out["rx_ring_full"]
        out["kernel_packets"] = out["delivered"] + out["kernel_drops"]
        out["walked"] = out["delivered"]
        out["xdp_mode"] = self.xdp_mode
        out["zerocopy"] = int(self.zerocopy)
        out["queue"] = self.queue
        return out

    def close(self) -> None:
        rx, self._rx = self._rx, None
        if rx is not None:
            ffi.gc(rx, None)
            lib.afxdp_rx_close(rx)
            log.info("xsk_closed", iface=self.iface, queue=self.queue)
        if self._own_program and self.program is not None:
            self.program.close()
            self.program = None

    def __enter__(self) -> "XskRing":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
