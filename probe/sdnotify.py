"""systemd notify protocol, by hand: datagrams to $NOTIFY_SOCKET.

``notify("READY=1")``, ``notify("WATCHDOG=1")``, ``notify("STATUS=...")``.
Without NOTIFY_SOCKET (not under systemd Type=notify) every call is a no-op.
An abstract socket is given as ``@name``.
"""
from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.address = ("\0" + address[1:]) if address.startswith("@") else address
        self.sock = None
        if self.address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def watchdog_interval_s(self) -> float | None:
        """Half of WATCHDOG_USEC (when the watchdog is meant for this pid)."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
            return None
        return int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None

    def notify(self, *lines: str) -> bool:
        if self.sock is None:
            return False
        try:
            self.sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError:
            return False

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
