"""Live-test fixtures: a veth pair between two fresh network namespaces.

Every namespace and interface name starts with ``fp`` plus a random tag;
teardown deletes both namespaces (which deletes the veth pair) even when
the test fails. Live tests need root; CI runs as root, so a skip there is a
failure to investigate. Traffic is synthetic (198.18.0.0/15, 2001:db8::/32).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

LIVE_DIR = Path(__file__).resolve().parent
if str(LIVE_DIR) not in sys.path:
    sys.path.insert(0, str(LIVE_DIR))
for _path in (LIVE_DIR.parent, LIVE_DIR.parent / "support"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
from repo import SENDER  # noqa: E402  (tests/support is on the path now)

STATE_DIR = Path("/run/flowprobe")


def run(argv, check=True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True,
                          timeout=60, **kw)


@dataclass
class VethPair:
    """cap_if lives in cap_ns (the capture end), send_if in send_ns."""

    cap_ns: str
    send_ns: str
    cap_if: str
    send_if: str

    def argv(self, ns: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def run(self, ns: str, *argv: str, check=True) -> subprocess.CompletedProcess:
        return run(self.argv(ns, *argv), check=check)

    def python(self, ns: str, *argv: str, check=True) -> subprocess.CompletedProcess:
        return self.run(ns, sys.executable, *argv, check=check)

    def link_stats(self, ns: str, iface: str) -> dict:
        out = self.run(ns, "ip", "-j", "-s", "link", "show", iface).stdout
        st = json.loads(out)[0]["stats64"]
        return {"rx_packets": st["rx"]["packets"], "rx_dropped": st["rx"]["dropped"],
                "tx_packets": st["tx"]["packets"]}

    def send(self, pcap: Path, *, pps: int = 0, max_seconds: float = 30) -> dict:
        """Replay pcap out of send_if (bounded); returns the sender's report."""
        out = self.python(self.send_ns, str(SENDER), self.send_if,
                          str(pcap), "--pps", str(pps),
                          "--max-seconds", str(max_seconds)).stdout
        return json.loads(out)


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("live tests need root (network namespaces, AF_PACKET)")


def _disable_ipv6(ns: str, iface: str) -> None:
    # before link up: no DAD, router solicitations or MLD on the pair
    run(["ip", "netns", "exec", ns, "sh", "-c",
         f"echo 1 > /proc/sys/net/ipv6/conf/{iface}/disable_ipv6"])


@pytest.fixture
def veth():
    """A quiet veth pair: IPv6 off on both ends, no addresses, sender TSO/GSO/
    tx-checksum off (wire-like frames), capture GRO off; both ends up."""
    _require_root()
    tag = uuid.uuid4().hex[:8]
    pair = VethPair(f"fp{tag}c", f"fp{tag}s", f"fp{tag}c", f"fp{tag}s")
    try:
        run(["ip", "netns", "add", pair.cap_ns])
        run(["ip", "netns", "add", pair.send_ns])
        run(["ip", "link", "add", pair.cap_if, "netns", pair.cap_ns, "type", "veth",
             "peer", "name", pair.send_if, "netns", pair.send_ns])
        _disable_ipv6(pair.cap_ns, pair.cap_if)
        _disable_ipv6(pair.send_ns, pair.send_if)
        pair.run(pair.send_ns, "ethtool", "-K", pair.send_if, "tso", "off",
                 "gso", "off", "tx", "off")
        pair.run(pair.cap_ns, "ethtool", "-K", pair.cap_if, "gro", "off")
        pair.run(pair.send_ns, "ip", "link", "set", pair.send_if, "up")
        pair.run(pair.cap_ns, "ip", "link", "set", pair.cap_if, "up")
        yield pair
    finally:
        run(["ip", "netns", "del", pair.cap_ns], check=False)
        run(["ip", "netns", "del", pair.send_ns], check=False)
        (STATE_DIR / f"{pair.cap_if}.json").unlink(missing_ok=True)


class Capture:
    """capture_worker.py running in the capture namespace."""

    def __init__(self, pair: VethPair, *args: str):
        self.proc = subprocess.Popen(
            pair.argv(pair.cap_ns, sys.executable, str(LIVE_DIR / "capture_worker.py"),
                      pair.cap_if, *args),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.proc.kill()
            raise RuntimeError(f"capture worker failed: {line}{self.proc.stderr.read()}")
        self.info = json.loads(line[6:])

    def _say(self, word: str) -> None:
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def go(self) -> None:
        self._say("GO")

    def finish(self, timeout: float = 60) -> dict:
        """Tell the worker the sender is done; return its result."""
        try:
            self._say("DONE")
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        if self.proc.returncode != 0:
            raise RuntimeError(f"capture worker exit {self.proc.returncode}: {err}")
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def capture(veth):
    """capture(*worker_args) -> Capture; killed at teardown."""
    started = []

    def start(*args: str) -> Capture:
        c = Capture(veth, *args)
        started.append(c)
        return c

    yield start
    for c in started:
        c.kill()
