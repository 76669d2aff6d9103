"""An idle reader sleeps in poll() between ticks instead of spinning."""
import subprocess
import sys

IDLE = """
import dataclasses, sys, threading
from flowprobe.config import default_config
from flowprobe.probe.reader import Reader
cfg = default_config()
r = Reader(cfg, sys.argv[1], index=0)
calls = [0]
wait = r.ring.next_block
def counted(*a, **kw):
    calls[0] += 1
    return wait(*a, **kw)
r.ring.next_block = counted
threading.Timer(2.0, lambda: setattr(r, "stopping", True)).start()
r.run()
print(calls[0])
"""


def test_idle_reader_waits_once_per_tick(veth):
    """Over 2 s without traffic the reader waits about once per 100 ms tick
    (regression: a poll timeout truncated to 0 ms spun through the last
    millisecond of every tick, thousands of waits per second)."""
    out = subprocess.run(veth.argv(veth.cap_ns, sys.executable, "-c", IDLE, veth.cap_if),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    waits = int(out.stdout.split()[-1])
    assert 10 <= waits <= 60, waits
