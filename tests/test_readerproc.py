"""The reader process handle: the control pipe between supervisor and reader."""
import os

from flowprobe.config import Config, load_config_text
from flowprobe.probe.readerproc import Control, ReaderProcess, ReaderSpec


def test_control_pipe_carries_configs_in_order():
    """Configs written by the supervisor arrive whole and in order, even split."""
    r = ReaderProcess(ReaderSpec(0, "x", 0, None, 0))
    rfd, r.control_fd = os.pipe()
    ctl = Control(rfd)
    assert ctl.poll() == []
    cfg = load_config_text("flow:\n  idle_timeout_s: 3\n", "t")
    assert r.send_config(2, cfg) and r.send_config(3, Config())
    assert ctl.poll() == [(2, cfg), (3, Config())]
    r.close_control()
    assert ctl.poll() == [] and ctl.closed
    os.close(rfd)
