"""UDP export cost: one send() per message (as before) against sendmmsg()
batches, on a replay exporting unpaced IPFIX to a local socket.

    python bench/sendmmsg.py CAPTURE [--reps N]

Each variant runs `flowprobe replay CAPTURE -c CFG` (CFG: one IPFIX/UDP
export with rate_msgs_s: 0) in a fresh process, to a UDP socket bound on 127.0.0.1 that never reads
(the kernel's delivery work is the same either way); prints wall and CPU
seconds, messages and send calls. Bounded by the capture's size.
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import sys, json, resource, time
from flowprobe.exporters.transports import udp
if sys.argv[1] == "send":
    def send(self, message, nrecords):       # the former path: send() per message
        self.send_calls += 1
        self.sock.send(message)
        self._sent(message, nrecords)
    udp.UdpTransport.send = send
from flowprobe.probe.cli import main
t0 = time.monotonic()
rc = main(["replay", sys.argv[2], "-c", sys.argv[3]])
wall = time.monotonic() - t0
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"rc": rc, "wall_s": round(wall, 3), "user_s": ru.ru_utime, "sys_s": ru.ru_stime}),
      file=sys.stderr)
"""


def one(variant: str, capture: str, cfg: str) -> dict:
    cp = subprocess.run([sys.executable, "-c", CHILD, variant, capture, cfg],
                        capture_output=True, text=True, timeout=600)
    lines = [json.loads(x) for x in cp.stderr.splitlines() if x.startswith("{")]
    res = next(x for x in lines if "wall_s" in x)
    done = next((x for x in lines if x.get("event") == "replay_done"), {})
    ex = (done.get("exporters") or [{}])[0]
    res.update(messages=ex.get("messages"), send_calls=ex.get("transport", {}).get("send_calls"),
               records=ex.get("records_exported"))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture")
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args(argv)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    port = sink.getsockname()[1]
    cfg = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    cfg.write(f"logging:\n  format: json\nexport:\n  - url: ipfix://127.0.0.1:{port}\n"
              f"    rate_msgs_s: 0\n")
    cfg.close()
    for rep in range(a.reps):
        for variant in ("send", "sendmmsg"):
            r = one(variant, a.capture, cfg.name)
            print(f"{variant:9} wall {r['wall_s']:6.2f} s  user {r['user_s']:5.2f}  "
                  f"sys {r['sys_s']:5.2f}  messages {r['messages']}  send calls "
                  f"{r['send_calls']}  records {r['records']}")
            time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
