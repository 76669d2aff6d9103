"""The choice of capture backend, behind one small protocol.

Both live backends hand out packets the same way: a TPACKET_V3 ring
(driver/afpacket.py, ``Ring``) and an AF_XDP socket (driver/afxdp.py,
``XskRing``) fill a caller-owned ``struct ft_pkt`` array per call and get
it back in order. :class:`CaptureRing` states what the reader loop uses of
them; :func:`open_ring` is the one factory, driven by ``capture.backend``.

The supervisor sizes its reader slots with :func:`rings_per_interface`,
attaches the AF_XDP program once per interface with
:func:`attach_shared_programs`, and checks interfaces with
:func:`linktype_of`. Every import is at module top: a reader forked after a
privilege drop imports nothing (tests/live/test_privdrop.py).
"""
from __future__ import annotations

from typing import Any, Protocol

from flowprobe.driver.afpacket import Ring, RingError
from flowprobe.driver.afxdp import XdpProgram, XskRing, capture_queues
from flowprobe.errors import CaptureSetupError

__all__ = ["ARPHRD_LINKTYPE", "CaptureRing", "attach_shared_programs",
           "linktype_of", "open_ring", "rings_per_interface"]

#: ARPHRD_* of the capture interface -> the link type of what the ring hands
#: out (SOCK_RAW packet sockets deliver the device's link-layer header).
ARPHRD_LINKTYPE = {1: 1, 772: 1, 65534: 101}


class CaptureRing(Protocol):
    """What the reader loop needs of a live capture ring.

    One reader owns one ring: ``next_block`` fills the ``struct ft_pkt``
    array at ``pkts_address`` (at most ``cap`` entries, ``block_capacity``
    fits a whole block) and returns the count; the packet data stays valid
    until ``release_block``, which returns False while part of the block is
    still unread. Failures raise :class:`RingError` (``XskError`` is one)
    carrying the interface and the errno.
    """

    iface: str
    ifindex: int
    block_capacity: int

    def next_block(self, pkts_address: int, cap: int, timeout_ms: int = 100) -> int: ...

    def release_block(self) -> bool: ...

    def set_filter(self, expr: str) -> None: ...

    def stats(self) -> dict: ...

    def close(self) -> None: ...


def linktype_of(iface: str) -> int:
    """The link type a ring on ``iface`` delivers, or CaptureSetupError."""
    try:
        with open(f"/sys/class/net/{iface}/type") as fh:
            arphrd = int(fh.read())
    except OSError:
        raise CaptureSetupError(f"{iface}: no such interface") from None
    if arphrd not in ARPHRD_LINKTYPE:
        raise CaptureSetupError(f"{iface}: unsupported device type {arphrd} "
                                f"(expected Ethernet, loopback or raw IP)")
    return ARPHRD_LINKTYPE[arphrd]


def _backend(cfg: Any) -> str:
    return getattr(cfg.capture, "backend", "afpacket")


def open_ring(cfg: Any, iface: str, index: int, fanout_group: int = 0) -> CaptureRing:
    """The one factory of capture rings (reader ``index`` on ``iface``).

    ``capture.backend`` picks it: ``afpacket``, a TPACKET_V3 ring in fanout
    group ``fanout_group``; ``afxdp``, an XSK socket on the reader's RX queue
    (entry ``index`` of :func:`capture_queues`). Raises CaptureSetupError
    with the interface named.
    """
    try:
        if _backend(cfg) == "afxdp":
            queues = capture_queues(cfg.capture, iface)
            if index >= len(queues):
                raise ValueError(f"reader {index} has no queue: afxdp captures "
                                 f"{len(queues)} RX queue(s), one reader each")
            queue = queues[index]
            return XskRing.from_config(cfg.capture, iface, queue=queue)
        return Ring.from_config(cfg.capture, iface, fanout_group=fanout_group)
    except (RingError, OSError, ValueError) as exc:
        raise CaptureSetupError(f"{iface}: cannot open capture ring: {exc}") from None


def rings_per_interface(cfg: Any, iface: str, workers: int) -> int:
    """How many readers ``iface`` gets: ``workers`` TPACKET_V3 rings in one
    fanout group, or with AF_XDP one reader per captured RX queue."""
    if _backend(cfg) != "afxdp":
        return workers
    try:
        return len(capture_queues(cfg.capture, iface))
    except (OSError, ValueError) as exc:
        raise CaptureSetupError(f"{iface}: {exc}") from None


def attach_shared_programs(cfg: Any, ifaces: list[str]) -> list:
    """With AF_XDP, attach the redirect program once per interface, owned by
    the caller (the supervisor) for its lifetime, so that a reader restart on
    one queue never detaches the program under the other queues. Close the
    returned handles to detach. Nothing to do for TPACKET_V3."""
    if _backend(cfg) != "afxdp":
        return []
    programs = []
    try:
        for iface in ifaces:
            programs.append(XdpProgram.attach(
                iface, queues=max(capture_queues(cfg.capture, iface)) + 1,
                mode=cfg.capture.xdp_mode))
    except (OSError, ValueError) as exc:
        for prog in programs:
            prog.close()
        raise CaptureSetupError(f"cannot attach XDP program: {exc}") from None
    return programs
