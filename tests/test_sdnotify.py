"""systemd notify over a real unix datagram socket."""
import socket

from flowprobe.probe.sdnotify import Notifier


def test_sd_notify_sends_datagrams(tmp_path, monkeypatch):
    """With NOTIFY_SOCKET set, READY/STATUS arrive as one datagram; the
    watchdog interval is half of WATCHDOG_USEC."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        monkeypatch.setenv("WATCHDOG_USEC", "4000000")
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        n = Notifier()
        assert n.notify("READY=1", "STATUS=2/2 readers running")
        assert srv.recv(4096) == b"READY=1\nSTATUS=2/2 readers running"
        assert n.watchdog_interval_s() == 2.0
        n.close()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not Notifier().notify("READY=1")
